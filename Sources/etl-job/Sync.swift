import ArgumentParser
import DurableETL
import ETLCore

/// Keeps the target equal to the source after the snapshot: applies its change stream.
struct Sync: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply the source's changes since the snapshot to the target, exactly once: catch up and exit, or --follow until stopped.",
        discussion: """
            Run after 'etl-job start' has completed (or, with a state directory that holds no job, after a job split into \
            partitions is finished: sync takes it as its snapshot). Each change replaces a document's rows (in every table of its pipeline) \
            with those of its current version, or removes them; the stream's position commits with the rows. Without --follow, \
            sync applies every change made before it began and exits 0 (a batch for cron); with --follow it goes on until \
            SIGINT/SIGTERM (130/143), and a later sync continues where it stopped. When the server no longer holds the job's \
            position, sync exits 65; with --on-history-lost resnapshot it loads a new snapshot into a shadow schema while the \
            tables stay readable, catches it up, swaps it in with one transaction and goes on (each step resumable; 'etl-job \
            status' shows which).
            """)

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup(title: "Job") var mapping: MappingOptions
    @OptionGroup(title: "Run") var bucket: BucketOptions

    @Flag(help: "Keep applying changes as they come, until SIGINT or SIGTERM.")
    var follow = false

    @Option(name: .customLong("on-history-lost"), help: ArgumentHelp(
        "When the server no longer holds the job's change-stream position: fail (exit 65, the default), or resnapshot "
            + "(take a new snapshot into a shadow schema while the tables stay readable, swap it in in one transaction, go on).",
        valueName: "action"))
    var onHistoryLost: OnHistoryLost = .fail

    @OptionGroup(title: "Output") var report: ReportOptions

    func run() async throws {
        try await reportingErrors {
            var settings = try connection.resolved(bucket)
            settings.bucket = bucket.config(flushTimeout: 0.5)
            try await OperationsServer.start(bucket.operations, readiness: ReadinessProbe(settings, maxLag: bucket.operations.maxLag))
            let resolve = Pipelines.resolver(given: try mapping.load())
            let job = DurableJob(settings: settings, logger: try connection.makeLogger())
            let (follow, onHistoryLost) = (follow, onHistoryLost)
            // A state directory without a job takes the target's finished job split into partitions.
            for line in try await Threads.blocking(name: "adopt", { try job.adoptPartitionedJobs(resolve: resolve) }) {
                Console.standardError.line(line)
            }
            // A re-snapshot stopped midway is finished by a sync that may re-snapshot.
            let next = onHistoryLost == .resnapshot ? "etl-job sync --on-history-lost resnapshot" : nil
            try await runInterruptibly(reportJSON: report.reportJSON, sync: true, next: next) { stop, progress in
                try await job.sync(resolve: resolve, follow: follow, onHistoryLost: onHistoryLost, stop: stop, observer: progress)
            }
        }
    }
}
