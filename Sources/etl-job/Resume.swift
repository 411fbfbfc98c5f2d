import ArgumentParser
import DurableETL

struct Resume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Continue an interrupted run exactly where it stopped, every pipeline it runs.")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var bucket: BucketOptions

    func run() async throws {
        try await reportingErrors {
            let settings = try connection.resolved(bucket)
            let job = DurableJob(settings: settings, logger: connection.makeLogger())
            try await runInterruptibly { stop, progress in
                try await job.resume(resolve: Pipelines.mapping(named:), stop: stop, observer: progress)
            }
        }
    }
}
