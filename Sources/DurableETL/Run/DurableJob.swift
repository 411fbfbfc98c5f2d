import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue

/// `start` and `resume` of a run of one or more pipelines into one target.
///
/// The state directory holds a manifest naming the run's pipelines and one queue per
/// pipeline. Every refusal (a job already there, another run holding it, a missing or empty
/// collection, a target with rows, a resume pointed at another source or target) comes
/// before the first write: a refused command creates no directory, runs no DDL, writes no
/// file. All blocking work (libpq, libmongoc, LMDB) runs on threads of its own.
public struct DurableJob: Sendable {
    public let settings: JobSettings
    public let logger: Logger

    public init(settings: JobSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    /// A new run of `mappings`. Refuses when the state directory holds a job or a target table
    /// holds rows, unless `fresh`, which discards the job and empties the pipelines' tables.
    /// `planned`: per pipeline, the source a recorded job read (a re-snapshot reads it again).
    public func start(_ mappings: [any DocumentMapping], fresh: Bool, planned: [String: RunManifest.Planned] = [:],
                      stop: StopToken, observer: RunObserver? = nil) async throws -> RunReport {
        let began = ContinuousClock.now
        var prepared = try await Threads.blocking(name: "prepare") { try prepareStart(mappings, fresh: fresh, planned: planned) }
        prepared.prepareSeconds = (ContinuousClock.now - began).seconds
        return try await run(prepared, stop: stop, observer: observer)
    }

    /// Continues the run in the state directory where it stopped, each pipeline on the source
    /// and target it was started on. `resolve` gives the mapping of a recorded pipeline name
    /// (and recorded definition, for one defined by data), or throws why it will not.
    public func resume(resolve: @escaping @Sendable (String, String?) throws -> (any DocumentMapping)?, stop: StopToken, observer: RunObserver? = nil) async throws -> RunReport {
        let began = ContinuousClock.now
        var prepared = try await Threads.blocking(name: "prepare") { try prepareResume(resolve: resolve) }
        if prepared.pipelines.isEmpty { return prepared.finishedReport }
        prepared.prepareSeconds = (ContinuousClock.now - began).seconds
        return try await run(prepared, stop: stop, observer: observer)
    }

    // MARK: Preparing

    /// What a run holds while it goes: its locks and, per pipeline, the job and its open queue.
    struct Prepared: @unchecked Sendable {
        // Safe: built on one thread, then handed over whole; the queues are thread-safe and the
        // locks are only released (by deinit) when the run ends.
        var lock: JobLock?
        var pipelines: [(job: PipelineJob, queue: DurableQueue, lock: TargetLock)] = []
        var finishedReport = RunReport(pipelines: [], seconds: 0, usage: .current(), stages: [])
        /// How long preparing took (connecting, checking, migrating, emptying, opening the queues).
        var prepareSeconds = 0.0
        /// What the run does with its pipelines.
        var mode = RunMode.snapshot
    }

    /// Gathers what `start` must know (reading only), plans, and runs the plan.
    private func prepareStart(_ mappings: [any DocumentMapping], fresh: Bool, planned: [String: RunManifest.Planned]) throws -> Prepared {
        var (steps, run) = try planStart(mappings, fresh: fresh, planned: planned)
        try execute(steps, &run)
        run.releaseConnections()
        return run.prepared
    }

    /// What `start` would do, step by step, without doing any of it: it connects and reads
    /// (the state directory, the target's tables and migrations, the source's count) and
    /// writes nothing. Throws the refusal `start` would give.
    public func dryRunStart(_ mappings: [any DocumentMapping], fresh: Bool) throws -> [String] {
        let (steps, run) = try planStart(mappings, fresh: fresh)
        func tables(_ name: String) -> String { "\(run.job(name).mapping.tables.count) tables of \(name)" }
        var lines = ["etl-job: dry run of start; nothing was written"]
        for step in steps {
            switch step {
            case .lockTargets(let names):
                lines.append("  lock        " + names.map { "the \($0) pipeline in schema \(run.job($0).target.schema)" }.joined(separator: ", ")
                    + " (refused, exit 75, while another run holds one)")
            case .lockStateDirectory:
                lines.append("  lock        the state directory \(settings.stateDirectory)")
            case .migrate(let names):
                let pending = try run.job(names[0]).target.pendingMigrations(run.db(names[0]), names.map { run.job($0).mapping })
                lines.append("  migrate     " + (pending.isEmpty ? "nothing: the schema is up to date" : pending.joined(separator: "; ")))
            case .checkTargets(let names):
                for name in names {
                    let differences = try run.job(name).target.differences(run.db(name), run.job(name).mapping)
                    let missing = differences.filter { $0.hasPrefix("table ") && $0.hasSuffix(" is missing") }
                    if differences.isEmpty {
                        lines.append("  check       the \(tables(name)): in place and as the pipeline writes them")
                    } else if missing.count == differences.count {
                        lines.append("  check       the \(tables(name)): " + (missing.count == run.job(name).mapping.tables.count
                            ? "none exists yet; the migration creates them" : "\(missing.count) missing; the migration creates them"))
                    } else {
                        try run.job(name).checkTarget(run.db(name))
                    }
                }
            case .discardPreviousJob:
                lines.append("  discard     the job in \(settings.stateDirectory)" + (run.previous.map { " (pipelines \($0.pipelines.joined(separator: ", ")))" } ?? ""))
            case .truncate(let name):
                lines.append("  empty       the \(tables(name)) and its checkpoints")
            case .prepareForeignKeys(let name, let mode):
                lines.append("  keys        \(name): " + Self.describe(mode, run.job(name).mapping))
            case .createJob(let name, _):
                let total = run.totals[name] ?? nil
                let count = total.map { $0.formatted(.number.grouping(.automatic)) + " documents" } ?? (run.job(name).source.sizeDescription.map { "documents (\($0))" } ?? "documents")
                lines.append("  load        \(count) from \(run.job(name).source.description) into schema \(run.job(name).target.schema)")
            case .removeOrphanQueues, .writeManifest, .addForeignKeys, .createDocumentIndexes, .openChanges:
                continue
            }
        }
        return lines
    }

    /// `start`'s facts gathered (reading only) and its plan, with the connections it opened.
    func planStart(_ mappings: [any DocumentMapping], fresh: Bool, planned: [String: RunManifest.Planned] = [:],
                   recordedIn: JobPlan.JobRecord = .stateDirectory) throws -> (steps: [JobPlan.Step], run: Execution) {
        let directory = settings.stateDirectory
        try PipelineJob.refuseUnfollowablePolicy(mappings, settings)
        let jobs = mappings.map { PipelineJob(mapping: $0, settings: settings, planned: planned[$0.name]) }
        var facts = JobPlan.StartFacts(
            stateDirectory: directory, busy: busy(), fresh: fresh, request: settings.source.planRequest,
            targets: jobs.map { JobPlan.Target(name: $0.name, builtIn: $0.mapping.definition == nil) }, requestedForeignKeys: settings.foreignKeys)
        facts.recordedIn = recordedIn
        var previous: RunManifest?
        if facts.busy == nil, let manifest = try RunManifest.read(directory, discardingLegacy: fresh) {
            facts.existingJobFinished = try manifest.pipelines.allSatisfy { try RunManifest.recordedStatus(directory, $0)?.finishedAt != nil }
            previous = manifest
        }
        // Refusals that need no connection come before any.
        _ = try JobPlan.start(facts)
        var run = Execution(jobs: jobs)
        // The target first: a wrong URL or password is told before anything about the source.
        facts.targets = []
        for job in jobs {
            let db = try job.connectPostgres(logger: logger)
            run.connections[job.name] = db
            facts.targets.append(try target(job, db))
            // A job split into partitions that workers have not finished owns these tables.
            if !fresh, let held = try PartitionTable.unfinished(db, pipeline: job.name) { throw JobPlan.partitionedJobHeld(job.name, held) }
        }
        for job in jobs { run.totals[job.name] = try job.source.check(allowEmpty: settings.allowEmpty) }
        run.previous = previous
        let steps = try JobPlan.start(facts)
        for target in facts.targets where settings.foreignKeys == nil && steps.contains(.prepareForeignKeys(target.name, .during)) {
            logger.info("this role does not own the tables: their foreign keys stay in place during the load", metadata: ["pipeline": "\(target.name)"])
        }
        return (steps, run)
    }

    /// What a plan knows of a pipeline's target, read through `db`.
    private func target(_ job: PipelineJob, _ db: PGConnection) throws -> JobPlan.Target {
        let declared = job.mapping.tables.reduce(0) { $0 + $1.foreignKeys.count }
        return JobPlan.Target(
            name: job.name, builtIn: job.mapping.definition == nil, nonEmptyTable: try job.target.firstNonEmptyTable(db, job.mapping),
            declaredKeys: declared, missingKeys: declared == 0 ? 0 : try job.target.missingForeignKeys(db, job.mapping).count,
            ownsTables: declared == 0 ? true : try job.target.ownsTables(db, job.mapping))
    }

    /// The job the state directory holds, read under its lock, with each pipeline's mapping;
    /// `refuse` decides from what is known so far (another run holds it, there is none, a
    /// pipeline this etl-job does not know). Nil when there is no job and `refuse` let it be.
    func recordedJob(resolve: (String, String?) throws -> (any DocumentMapping)?, _ refuse: (JobPlan.RecordedJob) throws -> Void) throws
        -> (manifest: RunManifest, mappings: [any DocumentMapping], lock: JobLock)? {
        let directory = settings.stateDirectory
        var job = JobPlan.RecordedJob(stateDirectory: directory, busy: busy(), hasJob: true)
        let manifest = job.busy == nil ? try RunManifest.read(directory) : nil
        job.hasJob = job.busy != nil || manifest != nil
        job.ofWorker = Self.holdsPartitions(directory)
        try refuse(job)
        guard let manifest else { return nil }
        let lock = try takeLock()
        var mappings: [any DocumentMapping] = []
        for name in manifest.pipelines {
            guard let mapping = try resolve(name, manifest.planned[name]?.definition) else {
                job.unknownPipeline = name
                try refuse(job)
                return nil
            }
            mappings.append(mapping)
        }
        return (manifest, mappings, lock)
    }

    /// Gathers what `resume` must know (reading only, under the state directory's lock),
    /// plans, and runs the plan.
    private func prepareResume(resolve: (String, String?) throws -> (any DocumentMapping)?) throws -> Prepared {
        var facts = JobPlan.ResumeFacts(job: .init(stateDirectory: settings.stateDirectory, hasJob: true), request: settings.source.planRequest)
        guard let (manifest, mappings, lock) = try recordedJob(resolve: resolve, { job in
            facts.job = job
            _ = try JobPlan.resume(facts)
        }) else { return Prepared() }
        var run = Execution(jobs: [])
        run.prepared.lock = lock
        // The pipelines as named, for the refusals that need no connection.
        facts.pipelines = mappings.map { JobPlan.ResumePipeline(target: JobPlan.Target(name: $0.name, builtIn: $0.definition == nil), state: .finished) }
        _ = try JobPlan.resume(facts)
        facts.pipelines = []
        try PipelineJob.refuseUnfollowablePolicy(mappings, settings)
        for mapping in mappings {
            let queue = try PipelineJob(mapping: mapping, settings: settings).openQueue()
            let recorded = JobIdentity.decode(try queue.identity)
            let job = PipelineJob(mapping: mapping, settings: settings, recorded: recorded, planned: manifest.planned[mapping.name])
            let db = try job.connectPostgres(logger: logger)
            var pipeline = JobPlan.ResumePipeline(
                target: try target(job, db), state: .finished, differences: recorded?.differences(from: try job.identity(db)) ?? [])
            if let status = try queue.status() {
                if status.finishedAt == nil {
                    pipeline.state = .unfinished(status.foreignKeys.flatMap(ForeignKeyMode.init))
                } else {
                    run.prepared.finishedReport.pipelines.append(
                        PipelineReport(name: job.name, tables: mapping.tables.map(\.name), status: status, alreadyFinished: true))
                }
            } else {
                pipeline.state = .neverStarted(planned: manifest.planned[mapping.name]?.foreignKeys)
            }
            facts.pipelines.append(pipeline)
            guard pipeline.state != .finished else { continue }
            // Each pipeline's refusals before its source is checked; that source must still be
            // there, and one that never started must be loadable as for a start.
            _ = try JobPlan.resume(facts)
            if case .neverStarted = pipeline.state {
                run.totals[job.name] = try job.source.check(allowEmpty: settings.allowEmpty)
            } else {
                try job.source.checkExists()
            }
            run.jobs.append(job)
            run.connections[job.name] = db
            run.queues[job.name] = queue
        }
        try execute(try JobPlan.resume(facts), &run)
        run.releaseConnections()
        return run.prepared
    }

    /// A plan being run: its pipelines with their connections, known counts and queues, and
    /// what the run will hold (locks, open queues).
    struct Execution {
        var jobs: [PipelineJob]
        var connections: [String: PGConnection] = [:]
        var totals: [String: Int64?] = [:]
        var queues: [String: DurableQueue] = [:]
        var locks: [String: TargetLock] = [:]
        var previous: RunManifest?
        /// For a run of changes: the snapshot's job id and identity record, per pipeline.
        var snapshotJobs: [String: String] = [:]
        var identities: [String: [UInt8]] = [:]
        var prepared = Prepared()

        func job(_ name: String) -> PipelineJob { jobs.first { $0.name == name }! }
        func db(_ name: String) -> PGConnection { connections[name]! }

        /// The plan's sessions, for the loaders to take.
        func releaseConnections() {
            for job in jobs { connections[job.name].map(job.target.release) }
        }
    }

    func execute(_ steps: [JobPlan.Step], _ run: inout Execution) throws {
        for step in steps {
            switch step {
            case .lockStateDirectory:
                run.prepared.lock = try takeLock()
            case .lockTargets(let names):
                for name in names { run.locks[name] = try run.job(name).lockTarget() }
            case .migrate(let names):
                try migrate(run.db(names[0]), names.map { run.job($0).mapping })
                // From here on each pipeline uses the mapping in force in the target.
                for i in run.jobs.indices where names.contains(run.jobs[i].name) {
                    run.jobs[i] = try run.jobs[i].inForce(run.db(run.jobs[i].name))
                }
            case .checkTargets(let names):
                for name in names {
                    try run.job(name).checkTarget(run.db(name))
                    // Before anything is written: this run becomes the pipeline's writer.
                    try run.locks[name]?.claim()
                }
            case .discardPreviousJob:
                try discardState(run.previous)
            case .truncate(let name):
                // Every table of the mapping in force (an evolved one's too); the one given is in force again.
                try run.job(name).target.truncate(run.db(name), run.job(name).mapping, given: run.job(name).given)
                if let i = run.jobs.firstIndex(where: { $0.name == name }) { run.jobs[i] = run.jobs[i].asGiven() }
                logger.info("discarded the previous job and emptied the target tables", metadata: ["pipeline": "\(name)", "schema": "\(run.job(name).target.schema)"])
            case .prepareForeignKeys(let name, let mode):
                try prepareForeignKeys(run.job(name), run.db(name), mode)
            case .addForeignKeys(let name):
                try addForeignKeys(run.job(name), run.db(name))
            case .removeOrphanQueues(let names):
                // A queue without a manifest is what a start --fresh killed while discarding left.
                for name in names { try StateFiles.remove(run.job(name).directory) }
            case .writeManifest(let modes):
                try RunManifest(run.jobs, foreignKeys: modes).write(settings.stateDirectory)
                CrashPoint.planned.reach()
            case .createJob(let name, let mode):
                let job = run.job(name)
                let queue = try run.queues[name] ?? job.openQueue()
                run.queues[name] = queue
                let total = run.totals[name] ?? nil
                try queue.createJob(id: UUID().uuidString.lowercased(), sourceTotal: total, identity: try job.identity(run.db(name)).encoded(),
                                    foreignKeys: mode.rawValue)
                // Before the first document is read: where a later sync starts, so that no
                // change made while the snapshot runs is missed.
                try recordChangeStreamStart(job, queue)
                logger.info("started a new job", metadata: ["pipeline": "\(name)", "documents": "\(total.map(String.init) ?? job.source.sizeDescription ?? "unknown")"])
            case .createDocumentIndexes(let name):
                let created = try run.job(name).target.createDocumentIndexes(run.db(name), run.job(name).mapping)
                if created > 0 { logger.info("created the indexes that find a document's rows", metadata: ["pipeline": "\(name)", "indexes": "\(created)"]) }
            case .openChanges(let name):
                try openChanges(&run, name)
            }
        }
        run.prepared.pipelines = try run.jobs.compactMap { job in
            guard let queue = run.queues[job.name] else { return nil }
            guard let lock = run.locks[job.name] else { throw JobError(.failed, "the plan for \(job.name) took no target lock") }
            return (job, queue, lock)
        }
    }

    /// When a mode puts a pipeline's keys in place, in words (dry run).
    static func describe(_ mode: ForeignKeyMode, _ mapping: any DocumentMapping) -> String {
        switch mode {
        case .keysAfter: "the primary keys of \(mapping.keysBuiltAfter.count) tables built and the foreign keys added in one step after the load"
        case .after: "foreign keys added in one step after the load"
        case .during: "foreign keys in place during the load"
        }
    }

    /// Puts a new job's empty tables in the state its key mode loads them in.
    private func prepareForeignKeys(_ job: PipelineJob, _ db: PGConnection, _ mode: ForeignKeyMode) throws {
        switch mode {
        case .keysAfter, .after: try job.target.dropKeys(db, job.mapping, primaryKeys: mode == .keysAfter)
        case .during: try addForeignKeys(job, db)
        }
    }

    /// Builds the missing primary keys (`primaryKeys`) and adds the missing foreign keys of a
    /// pipeline's tables (`Target.addKeys`: each key committed on its own). Rows without their
    /// parent fail it (exit 65) naming the key, two rows with one key too (exit 70); the job
    /// stays resumable.
    func addForeignKeys(_ job: PipelineJob, _ db: PGConnection, primaryKeys: Bool = false,
                                fence: @escaping @Sendable (PGConnection) throws -> Void = { _ in }) throws {
        do {
            // The tables as they are now: batches may have evolved the mapping since the run began.
            let job = try job.inForce(db)
            let started = ContinuousClock.now
            let added = try job.target.addKeys(db, job.mapping, primaryKeys: primaryKeys, build: settings.keyBuild, fence: fence) { CrashPoint.keys.reach() }
            if added.primary + added.foreign > 0 {
                logger.info("built the primary keys and added the foreign keys", metadata: [
                    "pipeline": "\(job.name)", "primaryKeys": "\(added.primary)", "foreignKeys": "\(added.foreign)",
                    "seconds": "\(String(format: "%.2f", (ContinuousClock.now - started).seconds))",
                    "sessions": "\(settings.keyBuild.connections)"])
            }
        } catch let error as PGError where error.sqlState == "23503" {
            throw JobError(.dataError, "cannot add the foreign keys of the \(job.name) pipeline: \(error); "
                + "the target holds rows without their parent (written by something other than this job); remove them, then \(GoOn.advice)")
        } catch let error as PGError where error.sqlState == "23505" {
            throw JobError(.software, "cannot build the primary keys of the \(job.name) pipeline after the load: \(error); two rows hold one key, "
                + "which the pipeline's keys promise cannot happen (a bug in its mapping, or rows written by something other than this job); "
                + "remove them, then \(GoOn.advice), or load with --keys during")
        }
    }

    /// Applies pending migrations; a failure names what it was doing.
    @discardableResult
    public func migrate(_ db: PGConnection, _ mappings: [any DocumentMapping]) throws -> Int {
        let target = PipelineJob(mapping: mappings[0], settings: settings).target
        do {
            return try target.migrate(db, mappings)
        } catch let error as JobError {
            throw error
        } catch {
            // Classified as everywhere else (a read-only target is the target refusing: 70),
            // and said to be the migration.
            let classified = JobError.classify(error)
            throw JobError(classified.kind, "cannot migrate the schema: \(classified.description)")
        }
    }

    /// Another process holding the state directory, found before touching anything.
    private func busy() -> JobLock.Busy? {
        JobLock.isHeld(directory: settings.stateDirectory)
            ? JobLock.Busy(directory: settings.stateDirectory, pid: JobLock.holder(directory: settings.stateDirectory)) : nil
    }

    func takeLock() throws -> JobLock {
        do {
            return try JobLock(directory: settings.stateDirectory)
        } catch let busy as JobLock.Busy {
            throw JobPlan.busy(busy)
        } catch {
            throw JobError(.unavailable, "cannot use the state directory \(settings.stateDirectory): \(error.localizedDescription)")
        }
    }

    /// Removes the previous run's queues and manifest, and a queue of etl-job 0.1 (the lock
    /// file stays: this process holds it).
    private func discardState(_ manifest: RunManifest?) throws {
        // The manifest first: a run killed halfway through must not leave a manifest whose
        // queues are gone, which resume would take for a run that never started.
        try RunManifest.remove(settings.stateDirectory)
        for file in RunManifest.legacyQueueFiles { try StateFiles.remove(settings.stateDirectory + "/" + file) }
        for name in manifest?.pipelines ?? [] { try StateFiles.remove(RunManifest.queueDirectory(settings.stateDirectory, name)) }
        try Resnapshot.discard(settings.stateDirectory)
    }

    // MARK: Running

    /// Runs the prepared pipelines in the prepared run's mode.
    func run(_ prepared: Prepared, stop: StopToken, observer: RunObserver?) async throws -> RunReport {
        let mode = prepared.mode
        let changes = mode.appliesChanges
        let started = ContinuousClock.now
        let clock = StageClock()
        let shares = Self.share(workers: settings.bucket.workers, among: prepared.pipelines.count)
        var runners: [any Pipeline] = []
        var running: [RunningPipeline] = []
        var processors: [PipelineProcessor] = []
        var before: [String: QueueStatus] = [:]
        for ((job, queue, lock), share) in zip(prepared.pipelines, shares) {
            before[job.name] = try await Threads.blocking(name: "prepare") { try queue.status() }
            let (jobId, extractionFinished) = try await Threads.blocking(name: "prepare") {
                guard let id = try queue.jobId else { throw JobError(.failed, "the queue of \(job.name) holds no job id") }
                try queue.beginRun()
                // A change stream has no end: each run reads it further.
                if changes { try queue.resumeExtraction() }
                return (id, try queue.extractionFinished)
            }
            let workers = mode.workers(share: share)
            let processor = PipelineProcessor(job, queue: queue, jobId: jobId, lock: lock, workers: workers, clock: clock, logger: logger, mode: mode)
            runners.append(ETLRunner(processor: processor, config: mode.bucket(settings.bucket, workers: workers), extractSource: !extractionFinished))
            processors.append(processor)
            running.append(RunningPipeline(name: job.name, jobId: jobId, queue: queue, changes: changes))
        }
        observer?.runStarted(running)
        // Ended threads may keep their references a moment longer: the run closes its queues,
        // so that this process may open them again at once.
        defer {
            observer?.runEnded()
            for (_, queue, _) in prepared.pipelines { queue.close() }
        }
        try await Manager(workers: runners.count).runAll(runners, stop: stop)
        let loaded = ContinuousClock.now
        var reports = prepared.finishedReport.pipelines
        for (job, queue, lock) in prepared.pipelines {
            let start = before[job.name]
            var pipeline = try await Threads.blocking(name: "finish") {
                try end(mode, job, queue, lock, before: start, stopped: stop.isStopRequested)
            }
            pipeline.before = before[job.name]
            reports.append(pipeline)
        }
        withExtendedLifetime(prepared) {}
        let (load, keys) = ((loaded - started).seconds, (ContinuousClock.now - loaded).seconds)
        var ran = RunReport(
            pipelines: reports, seconds: prepared.prepareSeconds + load + keys, usage: .current(),
            stages: Stage.allCases.map { ($0, clock.seconds($0)) })
        ran.phases = [(.prepare, prepared.prepareSeconds), (.load, load), (.finish, keys)]
        if changes { ran.lags = processors.flatMap(\.lags.all) }
        return ran
    }

    /// A pipeline's report with its tables as they are now (batches may have evolved its
    /// mapping) and the fields its mapping did not name, from the target; as it was when the
    /// target cannot be read (the run's outcome does not depend on it).
    func withMappingInForce(_ report: PipelineReport, _ job: PipelineJob) -> PipelineReport {
        guard let db = try? job.releasedOrConnect() else { return report }
        defer { job.target.release(db) }
        var report = report
        if let current = try? job.inForce(db) { report.tables = current.mapping.tables.map(\.name) }
        report.unmapped = (try? MappingLedger.summaries(db, pipeline: job.name)) ?? []
        return report
    }

    /// The run's workers shared out among `count` pipelines, each getting at least one.
    static func share(workers: Int, among count: Int) -> [Int] {
        (0..<count).map { i in max(1, workers / count + (i < workers % count ? 1 : 0)) }
    }
}
