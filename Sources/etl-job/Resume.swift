import ArgumentParser
import Users

struct Resume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Continue an interrupted run exactly where it stopped.")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var bucket: BucketOptions

    func run() async throws {
        try await reportingErrors {
            let settings = try connection.resolved(bucket)
            let job = UsersJob(settings: settings, logger: connection.makeLogger())
            try await runInterruptibly { stop, progress in try await job.resume(stop: stop, observer: progress) }
        }
    }
}
