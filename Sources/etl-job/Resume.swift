import ArgumentParser
import DurableETL
import ETLCore

struct Resume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Continue an interrupted run exactly where it stopped, every pipeline it runs.")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup(title: "Job") var mapping: MappingOptions
    @OptionGroup(title: "Run") var bucket: BucketOptions
    @OptionGroup(title: "Output") var report: ReportOptions

    func run() async throws {
        try await reportingErrors {
            let settings = try connection.resolved(bucket)
            try await OperationsServer.start(bucket.operations, readiness: ReadinessProbe(settings, maxLag: bucket.operations.maxLag))
            let resolve = Pipelines.resolver(given: try mapping.load())
            let job = DurableJob(settings: settings, logger: try connection.makeLogger())
            try await runInterruptibly(reportJSON: report.reportJSON) { stop, progress in
                let age = ProcessAge.seconds
                var report = try await job.resume(resolve: resolve, stop: stop, observer: progress)
                report.include(start: age)
                return report
            }
        }
    }
}
