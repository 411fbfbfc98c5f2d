import ArgumentParser
import DurableETL
import ETLCore
import Foundation

struct Worker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load partitions of a job split into partitions in the target, one after another, until the job is finished.",
        discussion: "With --partitions n, the first worker to come plans the job as 'etl-job start --partitions n' would (the others wait for its plan), so that every worker runs the same command.")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup(title: "Job") var pipelines: PipelineOptions
    @OptionGroup(title: "Run") var bucket: BucketOptions

    @Option(help: ArgumentHelp(
        "Plan the job split into at most n partitions per pipeline (from the source options, as 'etl-job start --partitions n' does) unless the target holds it already, then load.",
        valueName: "n"))
    var partitions: Int?

    @Flag(name: .customLong("no-wait"), help: "Exit when no partition is left to claim, instead of waiting while other workers hold the last ones (and taking over any whose worker dies).")
    var noWait = false

    func validate() throws {
        if let partitions, !(1...10_000).contains(partitions) { throw ValidationError("--partitions must be between 1 and 10000") }
        if partitions == nil, !pipelines.names.isEmpty {
            throw ValidationError("--pipeline chooses what --partitions plans; without it a worker loads the jobs the target holds")
        }
        if partitions != nil, connection.source.sourceDump != nil {
            throw ValidationError("--source-dump plans a whole dump, which 'etl-job start --partitions n --source-dump DIR' does once; then run workers without --partitions")
        }
    }

    func run() async throws {
        // What a failure advises: this worker again, not a resume of a state directory.
        GoOn.advise("run 'etl-job worker' again")
        try await reportingErrors {
            let settings = try connection.resolved(bucket)
            try await OperationsServer.start(bucket.operations, readiness: ReadinessProbe(settings, maxLag: bucket.operations.maxLag))
            let resolve = Pipelines.resolver(given: try pipelines.mapping.load())
            let job = DurableJob(settings: settings, logger: try connection.makeLogger())
            let stop = StopToken()
            let trap = SignalTrap(stop: stop) { signal in
                Console.standardError.line("etl-job: stopping (signal \(signal)): a partition this worker holds goes back to the others")
            }
            var report: WorkerReport?
            var failure: (any Error)?
            do {
                if let partitions {
                    let mappings = try pipelines.mappings()
                    try settings.source.refuse(for: mappings, ofJob: false)
                    let said = try await Threads.blocking(name: "plan") { try job.planUnlessPlanned(mappings, count: partitions, stop: stop) }
                    if !said.isEmpty { print(said.joined(separator: "\n")) }
                }
                if !stop.isStopRequested {
                    report = try await job.work(resolve: resolve, wait: !noWait, stop: stop, observer: Progress())
                }
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
