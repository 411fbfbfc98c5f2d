import ArgumentParser
import ETLCore
import Foundation
import DurableETL
import Mappings

struct Start: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a new run: migrate the schema, extract, transform and load.")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup(title: "Job") var pipelines: PipelineOptions
    @OptionGroup(title: "Run") var bucket: BucketOptions

    @Flag(help: "Discard the job in the state directory and empty the pipelines' target tables first.")
    var fresh = false

    @Flag(help: "Do not ask before --fresh truncates the target tables.")
    var yes = false

    @Flag(name: .customLong("all-collections"), help: "Run every collection of --database as a pipeline: its mapping from --mapping/--mappings when one names it, else inferred from a sample (implied by --source-dump).")
    var allCollections = false

    @Option(help: ArgumentHelp("Documents sampled to infer the mapping of a collection no mapping file names (whole database).", valueName: "n"))
    var sample = 1_000

    @Option(help: ArgumentHelp(
        "Split each pipeline's source into at most n ranges recorded in the target, for 'etl-job worker' processes on any machines to load; loads nothing itself.",
        valueName: "n"))
    var partitions: Int?

    @Flag(name: .customLong("dry-run"), help: "Check the settings, the source, the mappings and the target, and print what the run would create, empty and load; write nothing.")
    var dryRun = false

    @Option(name: .customLong("foreign-keys"), help: ArgumentHelp(
        "When the tables' foreign keys are put in place: after (load without them, then add them in one final step; default) or during (in place while loading).",
        valueName: "after|during"))
    var foreignKeys: String?

    @Option(help: ArgumentHelp(
        "When the primary keys that follow from each document's key (child tables') are built: after (load without them, build them in the final step, before the foreign keys; default) or during (in place while loading; implied by --foreign-keys during).",
        valueName: "after|during"))
    var keys: String?

    /// The key mode asked for: nil for the default (keys after, where the role may).
    var requestedKeyMode: ForeignKeyMode? {
        switch (keys, foreignKeys) {
        case (_, "during"?): .during
        case ("during"?, _): .after
        case ("after"?, _), (nil, "after"?): .keysAfter
        default: nil
        }
    }

    func validate() throws {
        guard sample > 0 else { throw ValidationError("--sample must be at least 1") }
        if let partitions, !(1...10_000).contains(partitions) { throw ValidationError("--partitions must be between 1 and 10000") }
        if partitions != nil && dryRun { throw ValidationError("--dry-run does not plan partitions; drop one of them") }
        if allCollections, connection.source.database == nil, connection.source.sourceDump == nil {
            throw ValidationError("--all-collections runs every collection of --database; name the database")
        }
        if allCollections, connection.source.sourceFile != nil {
            throw ValidationError("--all-collections runs a whole database; --source-file names one collection's file (use --source-dump for a dump directory)")
        }
        if let keys, !["after", "during"].contains(keys) {
            throw ValidationError("--keys '\(keys)' is not a mode; valid modes: after, during")
        }
        if keys == "after" && foreignKeys == "during" {
            throw ValidationError("--keys after builds the primary keys the foreign keys reference after the load, so the foreign keys cannot be in place during it; drop --foreign-keys during, or use --keys during")
        }
        if let foreignKeys, !["after", "during"].contains(foreignKeys) {
            throw ValidationError("--foreign-keys '\(foreignKeys)' is not a mode; valid modes: after, during")
        }
    }

    @OptionGroup(title: "Output") var report: ReportOptions
    var reportJSON: String? { report.reportJSON }

    func run() async throws {
        try await reportingErrors {
            var settings = try connection.resolved(bucket)
            settings.foreignKeys = requestedKeyMode
            let whole = allCollections || connection.source.sourceDump != nil
            var mappings = try pipelines.mappings(defaultUsers: !whole)
            if whole { mappings += try await inferMissing(settings, mappings) }
            try settings.source.refuse(for: mappings, ofJob: false)
            if dryRun {
                let job = DurableJob(settings: settings, logger: try connection.makeLogger())
                print(try job.dryRunStart(mappings, fresh: fresh).joined(separator: "\n"))
                return
            }
            if fresh && !yes { try confirmTruncation(settings, mappings) }
            try await OperationsServer.start(bucket.operations, readiness: ReadinessProbe(settings, maxLag: bucket.operations.maxLag))
            let job = DurableJob(settings: settings, logger: try connection.makeLogger())
            if let partitions {
                let all = mappings
                let planned = try await Threads.blocking(name: "plan") { try job.planPartitions(all, fresh: fresh, count: partitions) }
                print(planned.joined(separator: "\n"))
                print(try workerCommand(settings))
                return
            }
            try await runInterruptibly(reportJSON: reportJSON) { stop, progress in
                let age = ProcessAge.seconds
                var report = try await job.start(mappings, fresh: fresh, stop: stop, observer: progress)
                report.include(start: age)
                return report
            }
        }
    }

    /// The mappings of the whole database's collections that no given mapping names,
    /// inferred from a sample as `init` would write them (the job records each one).
    private func inferMissing(_ settings: JobSettings, _ given: [any DocumentMapping]) async throws -> [any DocumentMapping] {
        let (database, collection, sample) = (connection.source.database, connection.source.collection, sample)
        let dump = connection.source.sourceDump != nil
        let inferred = try await Threads.blocking(name: "init") { () throws -> [(names: SourceCollection, data: Data, mapping: FileMapping)] in
            let all = try Proposal.collections(settings, database: database, only: collection)
            if let dump = (settings.source.choice as? BSONDumpDirectory.Choice)?.dump, collection == nil {
                for mapping in given where !all.contains(where: { $0.collection == mapping.source.collection }) {
                    throw JobError(.noInput, "the dump \(dump.databaseDirectory) holds no collection \(mapping.source.collection), which the pipeline \(mapping.name) reads; "
                        + "its collections: \(all.map(\.collection).joined(separator: ", "))")
                }
            }
            // In a dump a mapping names its collection's file; its database is the dump's.
            let missing = all.filter { c in !given.contains { $0.source.collection == c.collection && (dump || $0.source.database == c.database) } }
            return try Proposal.proposeAll(settings, missing, sample: sample, taken: Set(given.flatMap { $0.tables.map(\.name) }))
        }
        for proposal in inferred {
            Console.standardError.line("etl-job: no mapping names \(proposal.names.database).\(proposal.names.collection): inferred one from a sample "
                + "(pipeline \(proposal.mapping.name), \(proposal.mapping.tables.count) tables); 'etl-job init' writes it to a file to review")
        }
        let added: [any DocumentMapping] = inferred.map(\.mapping)
        try Pipelines.refuseOverlaps(given + added)
        guard !(given + added).isEmpty else { throw JobError(.noInput, "every collection of the source is empty; there is nothing to load") }
        return added
    }

    /// The command a worker runs, on any machine that reaches the source and the target
    /// (URLs as given here, their credentials hidden).
    private func workerCommand(_ settings: JobSettings) throws -> String {
        let urls = try connection.urlsGiven()
        var target: [String] = []
        if urls.postgres { target += ["--postgres-url", "'\(Redact.url(settings.postgresURL))'"] }
        if let schema = settings.targetSchema { target += ["--target-schema", schema] }
        var worker = ["etl-job", "worker"] + target
        if urls.mongo && settings.source.choice == nil { worker += ["--mongodb-url", "'\(Redact.url(settings.mongoURL))'"] }
        worker += ["--state-dir", "DIR"]
        return "nothing is loaded yet: run workers (any number, on any machines that reach the source and the target, each with its own state directory):\n  "
            + worker.joined(separator: " ") + "\nand follow them with:\n  " + (["etl-job", "status", "--partitions"] + target).joined(separator: " ")
    }

    private func confirmTruncation(_ settings: JobSettings, _ mappings: [any DocumentMapping]) throws {
        let tables = mappings.reduce(0) { $0 + $1.tables.count }
        let names = mappings.map(\.name).joined(separator: ", ")
        guard isatty(0) == 1 else {
            throw JobError(.usage, "--fresh truncates the \(tables) target tables of \(names); add --yes to confirm when not running interactively")
        }
        FileHandle.standardError.write(Data("This discards the job in \(settings.stateDirectory) and truncates the \(tables) target tables of \(names) at \(Redact.url(settings.postgresURL)). Continue? [y/N] ".utf8))
        guard let answer = readLine(), ["y", "yes"].contains(answer.lowercased()) else {
            throw JobError(.usage, "not confirmed; nothing was changed")
        }
    }
}

/// Runs a start or resume: SIGINT/SIGTERM stop it gracefully (exit 130/143, resumable),
/// progress goes to stderr (live on a terminal, a plain line every --progress-interval
/// otherwise), the report to stdout and, with `--report-json`, to a file whatever the outcome.
/// `sync`: the run applies changes, for which a stop is how `--follow` ends: the report is
/// printed then too, and `etl-job sync` is what continues.
func runInterruptibly(
    reportJSON: String?, sync: Bool = false, next: String? = nil, _ body: @escaping (StopToken, RunObserver?) async throws -> RunReport
) async throws {
    let next = next ?? (sync ? "etl-job sync" : "etl-job resume")
    let stop = StopToken()
    let trap = SignalTrap(stop: stop) { signal in
        Console.standardError.line("etl-job: stopping (signal \(signal)): finishing batches in flight; run '\(next)' to continue")
    }
    var report: RunReport?
    var failure: JobError?
    do {
        report = try await body(stop, Progress())
    } catch {
        failure = JobError.classify(error)
    }
    withExtendedLifetime(trap) {}
    let outcome = RunOutcome(stop: stop.reason, failure: failure ?? report?.failure, ran: report != nil)
    if let reportJSON {
        try ReportJSON.write(report, outcome: outcome, to: reportJSON)
    }
    if case .signal(let number) = stop.reason {
        if sync, let report { print(report.render()) }
        Console.standardError.line(sync ? "etl-job: stopped; '\(next)' continues where it stopped" : "etl-job: stopped; the run is resumable with '\(next)'")
        throw ExitCode(128 + number)
    }
    if let report { print(report.render()) }
    if let failure = outcome.failure { throw failure }
}

/// How a run ended, for its exit code and `--report-json`.
struct RunOutcome {
    let exitCode: Int32
    /// finished, set-aside-limit, interrupted or error.
    let reason: String
    let failure: JobError?

    init(stop: StopToken.Reason?, failure: JobError?, ran: Bool) {
        if case .signal(let number)? = stop {
            (exitCode, reason, self.failure) = (128 + number, "interrupted", nil)
        } else if let failure {
            (exitCode, reason, self.failure) = (failure.kind.exitCode, ran && failure.kind == .dataError ? "set-aside-limit" : "error", failure)
        } else {
            (exitCode, reason, self.failure) = (0, "finished", nil)
        }
    }
}
