import ArgumentParser
import DurableETL
import ETLCore
import Foundation

struct Worker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load partitions of a job that 'etl-job start --partitions' planned in the target, one after another, until the job is finished.")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup(title: "Job") var mapping: MappingOptions
    @OptionGroup(title: "Run") var bucket: BucketOptions

    @Flag(name: .customLong("no-wait"), help: "Exit when no partition is left to claim, instead of waiting while other workers hold the last ones (and taking over any whose worker dies).")
    var noWait = false

    func run() async throws {
        try await reportingErrors(rerun: "etl-job worker") {
            let settings = try connection.resolved(bucket)
            let resolve = Pipelines.resolver(given: try mapping.load())
            let job = DurableJob(settings: settings, logger: try connection.makeLogger())
            let stop = StopToken()
            let trap = SignalTrap(stop: stop) { signal in
                Console.standardError.line("etl-job: stopping (signal \(signal)): the partition this worker holds goes back to the others")
            }
            var report: WorkerReport?
            var failure: (any Error)?
            do {
                report = try await job.work(resolve: resolve, wait: !noWait, stop: stop, observer: Progress())
            } catch {
                failure = error
            }
            withExtendedLifetime(trap) {}
            if case .signal(let number) = stop.reason {
                if let report { print(report.render()) }
                Console.standardError.line("etl-job: stopped; any worker continues the job")
                throw ExitCode(128 + number)
            }
            if let failure { throw failure }
            if let report { print(report.render()) }
        }
    }
}
