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
    public func start(_ mappings: [any DocumentMapping], fresh: Bool, stop: StopToken, observer: RunObserver? = nil) async throws -> RunReport {
        let prepared = try await Threads.blocking(name: "prepare") { try prepareStart(mappings, fresh: fresh) }
        return try await run(prepared, stop: stop, observer: observer)
    }

    /// Continues the run in the state directory where it stopped, each pipeline on the source
    /// and target it was started on. `resolve` gives the mapping of a recorded pipeline name
    /// (and recorded definition, for one defined by data), or throws why it will not.
    public func resume(resolve: @escaping @Sendable (String, String?) throws -> (any DocumentMapping)?, stop: StopToken, observer: RunObserver? = nil) async throws -> RunReport {
        let prepared = try await Threads.blocking(name: "prepare") { try prepareResume(resolve: resolve) }
        if prepared.pipelines.isEmpty { return prepared.finishedReport }
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
    }

    private func prepareStart(_ mappings: [any DocumentMapping], fresh: Bool) throws -> Prepared {
        try refuseIfBusy()
        let manifest = try RunManifest.read(settings.stateDirectory, discardingLegacy: fresh)
        if !fresh, let manifest {
            let finished = try manifest.pipelines.allSatisfy { name in
                try RunManifest.recordedStatus(settings.stateDirectory, name)?.finishedAt != nil
            }
            throw JobError(.usage, finished
                ? "the job in \(settings.stateDirectory) already finished; use 'etl-job start --fresh' to run again from scratch"
                : "the state directory \(settings.stateDirectory) holds an unfinished job; run 'etl-job resume' (or 'etl-job start --fresh' to discard it)")
        }
        if settings.sourceFile != nil, mappings.count > 1 {
            throw JobError(.usage, "--source-file names the source of one pipeline; this run has \(mappings.count)")
        }
        let jobs = mappings.map { PipelineJob(mapping: $0, settings: settings) }
        let client = try jobs.first { $0.sourceFile == nil }?.connectMongo()
        var checked: [(job: PipelineJob, db: PGConnection, total: Int64?)] = []
        for job in jobs {
            let db = try job.connectPostgres()
            let total = try job.checkSource(job.sourceFile == nil ? client : nil, allowEmpty: settings.allowEmpty)
            if !fresh, let table = try job.target.firstNonEmptyTable(db, job.mapping) {
                throw JobError(.usage, "the target table \(table) already holds rows; use 'etl-job start --fresh' to empty the \(job.name) pipeline's tables first")
            }
            checked.append((job, db, total))
        }
        var prepared = Prepared()
        let locks = try jobs.map { try $0.lockTarget() }
        prepared.lock = try takeLock()
        try migrate(checked[0].db, mappings)
        for (job, db, _) in checked { try job.checkTarget(db) }
        if fresh {
            try discardState(manifest)
            for (job, db, _) in checked { try job.target.truncate(db, job.mapping) }
            logger.info("discarded the previous job and emptied the target tables", metadata: ["pipelines": "\(mappings.map(\.name).joined(separator: ","))"])
        }
        // The tables are empty here (a start refuses rows unless --fresh emptied them): their
        // foreign keys go before the load, or come after it.
        var foreignKeys: [String: ForeignKeyMode] = [:]
        for (job, db, _) in checked {
            let mode = try foreignKeyMode(job, db)
            try prepareForeignKeys(job, db, mode)
            foreignKeys[job.name] = mode
        }
        // A queue without a manifest is what a start --fresh killed while discarding left.
        for job in jobs where FileManager.default.fileExists(atPath: job.directory) {
            try FileManager.default.removeItem(atPath: job.directory)
        }
        // The manifest first: a run killed before every queue exists is completed by resume.
        try RunManifest(jobs, foreignKeys: foreignKeys).write(settings.stateDirectory)
        CrashPoint.planned.reach()
        for ((job, db, total), lock) in zip(checked, locks) {
            let queue = try job.openQueue()
            try queue.createJob(id: UUID().uuidString.lowercased(), sourceTotal: total, identity: job.identity(job.sourceFile == nil ? client : nil, db),
                                foreignKeys: foreignKeys[job.name]?.rawValue)
            logger.info("started a new job", metadata: ["pipeline": "\(job.name)", "documents": "\(total.map(String.init) ?? "unknown")"])
            prepared.pipelines.append((job, queue, lock))
        }
        return prepared
    }

    private func prepareResume(resolve: (String, String?) throws -> (any DocumentMapping)?) throws -> Prepared {
        try refuseIfBusy()
        guard let manifest = try RunManifest.read(settings.stateDirectory) else {
            throw JobError(.usage, "there is no job to resume in \(settings.stateDirectory); run 'etl-job start'")
        }
        var prepared = Prepared()
        prepared.lock = try takeLock()
        var mappings: [any DocumentMapping] = []
        for name in manifest.pipelines {
            guard let mapping = try resolve(name, manifest.planned[name]?.definition) else {
                throw JobError(.usage, "the job in \(settings.stateDirectory) runs the pipeline '\(name)', which this etl-job does not know")
            }
            mappings.append(mapping)
        }
        if settings.database != nil || settings.collection != nil, mappings.filter({ $0.definition == nil }).count > 1 {
            throw JobError(.usage, "--database and --collection name the source of one built-in pipeline; this job runs several")
        }
        if settings.sourceFile != nil, mappings.count > 1 {
            throw JobError(.usage, "--source-file names the source of one pipeline; this job runs \(mappings.count)")
        }
        var unfinished: [(job: PipelineJob, queue: DurableQueue, client: MongoClient?, db: PGConnection)] = []
        for mapping in mappings {
            let probe = PipelineJob(mapping: mapping, settings: settings)
            let queue = try probe.openQueue()
            let recordedIdentity = try queue.identity
            let job = PipelineJob(mapping: mapping, settings: settings, recorded: recordedIdentity, planned: manifest.planned[mapping.name])
            let client = try job.connectSource()
            let db = try job.connectPostgres()
            try job.refuseMismatch(recorded: recordedIdentity, current: job.identity(client, db))
            guard let status = try queue.status() else {
                // Killed after the manifest, before this queue recorded its job: start it now,
                // on a target the same checks as start's allow (no job of this run loaded rows).
                try job.checkSource(client, allowEmpty: settings.allowEmpty)
                if let table = try job.target.firstNonEmptyTable(db, mapping) {
                    throw JobError(.usage, "the \(job.name) job never started, and the target table \(table) already holds rows; "
                        + "use 'etl-job start --fresh' to empty the pipeline's tables first")
                }
                let foreignKeys = manifest.planned[mapping.name]?.foreignKeys ?? .during
                try prepareForeignKeys(job, db, foreignKeys)
                try queue.createJob(id: UUID().uuidString.lowercased(), sourceTotal: nil, identity: job.identity(client, db),
                                    foreignKeys: foreignKeys.rawValue)
                unfinished.append((job, queue, client, db))
                continue
            }
            if status.finishedAt != nil {
                prepared.finishedReport.pipelines.append(PipelineReport(name: job.name, tables: mapping.tables.map(\.name), status: status, alreadyFinished: true))
                continue
            }
            try job.checkSourceExists(client)
            unfinished.append((job, queue, client, db))
        }
        guard !unfinished.isEmpty else { return prepared }
        let locks = try unfinished.map { try $0.job.lockTarget() }
        try migrate(unfinished[0].db, unfinished.map(\.job.mapping))
        for entry in unfinished {
            try entry.job.checkTarget(entry.db)
            // A job that keeps its keys in place during the load finds them there (a job of
            // etl-job 0.2 created its tables with them).
            if try entry.queue.status()?.foreignKeys.flatMap(ForeignKeyMode.init) ?? .during == .during {
                try addForeignKeys(entry.job, entry.db)
            }
        }
        prepared.pipelines = zip(unfinished, locks).map { ($0.job, $0.queue, $1) }
        return prepared
    }

    /// A new job's foreign-key mode: as asked, else `after` when this role may drop and add
    /// the keys (it owns the tables, or they have none yet), else `during`.
    private func foreignKeyMode(_ job: PipelineJob, _ db: PGConnection) throws -> ForeignKeyMode {
        if settings.foreignKeys == .during { return .during }
        let declared = job.mapping.tables.reduce(0) { $0 + $1.foreignKeys.count }
        guard declared > 0, try job.target.missingForeignKeys(db, job.mapping).count < declared else { return .after }
        if try job.target.ownsTables(db, job.mapping) { return .after }
        if settings.foreignKeys == .after {
            throw JobError(.usage, "--foreign-keys after drops the tables' foreign keys and adds them after the load, which needs a role that owns "
                + "the \(job.name) pipeline's tables; use --foreign-keys during, or run as their owner")
        }
        logger.info("this role does not own the tables: their foreign keys stay in place during the load", metadata: ["pipeline": "\(job.name)"])
        return .during
    }

    /// Puts a new job's empty tables in the state its foreign-key mode loads them in.
    private func prepareForeignKeys(_ job: PipelineJob, _ db: PGConnection, _ mode: ForeignKeyMode) throws {
        switch mode {
        case .after: try job.target.dropForeignKeys(db, job.mapping)
        case .during: try addForeignKeys(job, db)
        }
    }

    /// Adds the missing foreign keys of a pipeline's tables, in one transaction. Rows without
    /// their parent fail it (exit 65) naming the key; the job stays resumable.
    private func addForeignKeys(_ job: PipelineJob, _ db: PGConnection) throws {
        do {
            let added = try job.target.addForeignKeys(db, job.mapping) { CrashPoint.keys.reach() }
            if added > 0 {
                logger.info("added the foreign keys", metadata: ["pipeline": "\(job.name)", "keys": "\(added)"])
            }
        } catch let error as PGError where error.sqlState == "23503" {
            throw JobError(.dataError, "cannot add the foreign keys of the \(job.name) pipeline: \(error); "
                + "the target holds rows without their parent (written by something other than this job); remove them, then run 'etl-job resume'")
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
            throw JobError(.failed, "cannot migrate the schema: \(error)")
        }
    }

    /// Another process holds the state directory: refuse at once, before touching anything.
    private func refuseIfBusy() throws {
        if JobLock.isHeld(directory: settings.stateDirectory) {
            throw JobError(.busy, JobLock.Busy(directory: settings.stateDirectory, pid: JobLock.holder(directory: settings.stateDirectory)).description)
        }
    }

    private func takeLock() throws -> JobLock {
        do {
            return try JobLock(directory: settings.stateDirectory)
        } catch let busy as JobLock.Busy {
            throw JobError(.busy, busy.description)
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
        for file in RunManifest.legacyQueueFiles {
            let path = settings.stateDirectory + "/" + file
            if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
        }
        for name in manifest?.pipelines ?? [] {
            let directory = RunManifest.queueDirectory(settings.stateDirectory, name)
            if FileManager.default.fileExists(atPath: directory) { try FileManager.default.removeItem(atPath: directory) }
        }
    }

    // MARK: Running

    private func run(_ prepared: Prepared, stop: StopToken, observer: RunObserver?) async throws -> RunReport {
        let started = ContinuousClock.now
        let clock = StageClock()
        let shares = Self.share(workers: settings.bucket.workers, among: prepared.pipelines.count)
        var runners: [any Pipeline] = []
        var running: [RunningPipeline] = []
        for ((job, queue, _), workers) in zip(prepared.pipelines, shares) {
            let (jobId, extractionFinished) = try await Threads.blocking(name: "prepare") {
                guard let id = try queue.jobId else { throw JobError(.failed, "the queue of \(job.name) holds no job id") }
                try queue.beginRun()
                return (id, try queue.extractionFinished)
            }
            let processor = PipelineProcessor(job, queue: queue, jobId: jobId, workers: workers, clock: clock, logger: logger)
            var config = settings.bucket
            config.workers = workers
            runners.append(ETLRunner(processor: processor, config: config, extractSource: !extractionFinished))
            running.append(RunningPipeline(name: job.name, jobId: jobId, queue: queue))
        }
        observer?.runStarted(running)
        defer { observer?.runEnded() }
        try await Manager(workers: runners.count).runAll(runners, stop: stop)
        var reports = prepared.finishedReport.pipelines
        for (job, queue, _) in prepared.pipelines {
            reports.append(try await Threads.blocking(name: "finish") { try finish(job, queue, stopped: stop.isStopRequested) })
        }
        withExtendedLifetime(prepared) {}
        return RunReport(
            pipelines: reports, seconds: (ContinuousClock.now - started).seconds, usage: .current(),
            stages: Stage.allCases.map { ($0, clock.seconds($0)) })
    }

    /// Marks a pipeline's job finished when everything is loaded and the set-aside limit holds.
    private func finish(_ job: PipelineJob, _ queue: DurableQueue, stopped: Bool) throws -> PipelineReport {
        guard var status = try queue.status() else { throw JobError(.failed, "the queue of \(job.name) lost its job") }
        var failure: String?
        if status.isComplete && !stopped {
            failure = settings.maxSetAside.failure(loaded: status.documentsLoaded, setAside: status.documentsSetAside)
            if failure == nil {
                // The final step of a job that adds its keys after the load: in one transaction,
                // so that a kill leaves none of them, and resume (which comes back here) adds them.
                if status.foreignKeys.flatMap(ForeignKeyMode.init) == .after {
                    try addForeignKeys(job, try job.connectPostgres())
                    CrashPoint.keysCommitted.reach()
                }
                try queue.markFinished()
                status = try queue.status() ?? status
            }
        }
        return PipelineReport(name: job.name, tables: job.mapping.tables.map(\.name), status: status, failure: failure)
    }

    /// The run's workers shared out among `count` pipelines, each getting at least one.
    static func share(workers: Int, among count: Int) -> [Int] {
        (0..<count).map { i in max(1, workers / count + (i < workers % count ? 1 : 0)) }
    }
}

/// The pipelines a state directory's run holds, written before their queues.
public struct RunManifest: Codable, Sendable, Equatable {
    public var formatVersion = 1
    public var pipelines: [String]
    /// Per pipeline, the source and schema the run was started with.
    public var planned: [String: Planned]

    public struct Planned: Codable, Sendable, Equatable {
        public var database: String
        public var collection: String
        public var targetSchema: String
        /// The mapping's `definition`, for a pipeline defined by data.
        public var definition: String?
        /// The mongodump file read instead of MongoDB, if any.
        public var sourceFile: String?
        /// When the job puts its foreign keys in place.
        public var foreignKeys: ForeignKeyMode?
    }

    public init(_ jobs: [PipelineJob], foreignKeys: [String: ForeignKeyMode]) {
        pipelines = jobs.map(\.name)
        planned = Dictionary(uniqueKeysWithValues: jobs.map { job in
            (job.name, Planned(
                database: job.source.database, collection: job.source.collection, targetSchema: job.target.schema,
                definition: job.mapping.definition, sourceFile: job.sourceFile, foreignKeys: foreignKeys[job.name]))
        })
    }

    static let file = "pipelines.json"
    /// The queue of etl-job 0.1, at the top of the state directory.
    static let legacyQueueFiles = ["data.mdb", "lock.mdb"]

    /// The manifest, or nil when the directory holds no run. A queue of the one-pipeline
    /// layout of etl-job 0.1 (`data.mdb` at the top) is refused, never reinterpreted, unless
    /// it is about to be discarded (`start --fresh`).
    public static func read(_ directory: String, discardingLegacy: Bool = false) throws -> RunManifest? {
        if !discardingLegacy, FileManager.default.fileExists(atPath: directory + "/" + legacyQueueFiles[0]) {
            throw JobError(.usage, "the state directory \(directory) holds a queue of etl-job 0.1; finish that job with etl-job 0.1, "
                + "or discard it with 'etl-job start --fresh'")
        }
        guard let data = FileManager.default.contents(atPath: directory + "/" + file) else { return nil }
        do {
            let manifest = try JSONDecoder().decode(RunManifest.self, from: data)
            guard manifest.formatVersion == 1, !manifest.pipelines.isEmpty else { throw CocoaError(.fileReadCorruptFile) }
            return manifest
        } catch {
            throw JobError(.ioError, "the run manifest \(directory)/\(file) is damaged; \(JobError.untrustedState)")
        }
    }

    /// Writes the manifest atomically (a temporary file renamed, then the directory synced).
    func write(_ directory: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try AtomicFile.write(try encoder.encode(self), to: directory + "/" + Self.file)
        } catch {
            throw JobError.queue(error, directory)
        }
    }

    /// Where the queue of `pipeline` lives in a state directory.
    public static func queueDirectory(_ directory: String, _ pipeline: String) -> String {
        directory + "/" + pipeline
    }

    /// The status recorded by `pipeline`'s queue, read without creating anything.
    public static func recordedStatus(_ directory: String, _ pipeline: String) throws -> QueueStatus? {
        let queueDirectory = queueDirectory(directory, pipeline)
        guard DurableQueue.exists(in: queueDirectory) else { return nil }
        do {
            return try DurableQueue(directory: queueDirectory, readOnly: true).status()
        } catch {
            throw JobError.queue(error, queueDirectory)
        }
    }

    static func remove(_ directory: String) throws {
        let path = directory + "/" + file
        if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
    }
}
