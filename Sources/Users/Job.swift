import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue

/// A refusal or a failure the user can act on: printed as one line, never as a trace.
/// Each kind has its exit code (sysexits.h where one fits; see the README's table).
public struct JobError: Error, CustomStringConvertible {
    public enum Kind: Sendable {
        /// 64: a bad flag or URL, or a refusal that says what to run instead.
        case usage
        /// 65: the data did not allow the job to succeed (too many documents set aside; verify found differences).
        case dataError
        /// 66: the source collection does not exist or holds nothing.
        case noInput
        /// 69: a service cannot be reached, or the state directory cannot be used.
        case unavailable
        /// 74: the state files cannot be read or written (disk full, damaged files).
        case ioError
        /// 70: the target or the server refused the job itself (a changed table, an unexpected SQLSTATE).
        case software
        /// 75: another run holds the state directory or the target.
        case busy
        /// 1: anything else; the run stays resumable.
        case failed
    }

    public let kind: Kind
    public let description: String

    public init(_ kind: Kind, _ description: String) {
        self.kind = kind
        self.description = description
    }

    /// A queue that cannot be opened or read: damaged or unwritable state files are exit 74
    /// with what to do; anything else (permissions, a path under a file) is 69.
    public static func queue(_ error: any Error, _ directory: String) -> JobError {
        if let error = error as? LMDBError, error.isStorageFailure {
            return classify(error)
        }
        return JobError(.unavailable, "cannot use the queue in \(directory): \(error)")
    }

    static let untrustedState = "the state files cannot be trusted: move the state directory aside and run "
        + "'etl-job start --fresh' to load again (the target's etl_checkpoints table records what was committed)"

    /// Any error of a run as the user sees it: a `JobError` as it is; a PostgreSQL error the
    /// job cannot get past, or state files it cannot write or trust, with their own exit
    /// codes; anything else as a failure. Wrapped errors (a pipeline's, several workers')
    /// are opened, and the most serious kind decides the exit code.
    public static func classify(_ error: any Error) -> JobError {
        switch error {
        case let error as JobError:
            return error
        case let error as PipelineError:
            return classify(error.underlying)
        case let error as ETLErrors:
            let all = error.errors.map(classify)
            let worst = all.max { $0.kind.severity < $1.kind.severity }!
            var seen = Set<String>()
            let distinct = all.map(\.description).filter { seen.insert($0).inserted }
            return JobError(worst.kind, distinct.joined(separator: "; "))
        case let error as PGError where error.disposition == .fatal && error.kind == .server:
            return JobError(.software, "PostgreSQL refused the job: \(error)")
        case let error as LMDBError where error.isStorageFailure:
            if error.code == ENOSPC || error.code == EDQUOT {
                return JobError(.ioError, "\(error); the queue is unchanged since its last transaction: free space, then run 'etl-job resume'")
            }
            return JobError(.ioError, "\(error); \(untrustedState)")
        case let error as DamagedBatch:
            return JobError(.ioError, "\(error); \(untrustedState)")
        default:
            return JobError(.failed, "\(error)")
        }
    }
}

extension JobError.Kind {
    /// Which of several errors decides the exit code: what the user must fix before any retry
    /// (storage, the target) over what a resume may get past.
    var severity: Int {
        switch self {
        case .failed: 0
        case .dataError: 1
        case .unavailable: 2
        case .busy: 3
        case .noInput: 4
        case .usage: 5
        case .software: 6
        case .ioError: 7
        }
    }
}

/// At most how many documents a run may set aside before it fails: a count or a percentage
/// of the documents read. A run that loads nothing while setting documents aside always fails.
public enum SetAsideLimit: Sendable, Equatable, CustomStringConvertible {
    case count(Int64)
    case percent(Double)

    public static let `default` = SetAsideLimit.percent(1)

    /// `N` or `N%`.
    public init?(_ text: String) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.hasSuffix("%") {
            guard let p = Double(trimmed.dropLast()), p >= 0, p <= 100 else { return nil }
            self = .percent(p)
        } else {
            guard let n = Int64(trimmed), n >= 0 else { return nil }
            self = .count(n)
        }
    }

    /// The largest number of documents allowed out of `read`.
    public func allowed(of read: Int64) -> Int64 {
        switch self {
        case .count(let n): n
        case .percent(let p): Int64((Double(read) * p / 100).rounded(.down))
        }
    }

    public var description: String {
        switch self {
        case .count(let n): "\(n)"
        case .percent(let p): p == p.rounded() ? "\(Int(p))%" : "\(p)%"
        }
    }

    /// Why a run that loaded `loaded` and set aside `setAside` documents failed, or nil.
    public func failure(loaded: Int64, setAside: Int64) -> String? {
        guard setAside > 0 else { return nil }
        if loaded == 0 {
            return "every document read (\(setAside)) was set aside and none was loaded; list them with 'etl-job status --rejected'"
        }
        let allowed = allowed(of: loaded + setAside)
        guard setAside > allowed else { return nil }
        let limit = if case .percent = self { "\(allowed) (\(self) of \(loaded + setAside) documents read)" } else { "\(allowed)" }
        return "\(setAside) documents were set aside, more than the limit of \(limit); list them with "
            + "'etl-job status --rejected'. Everything else is loaded; to accept them, run 'etl-job resume --max-set-aside N'"
    }
}

/// What a run did, printed at its end.
public struct RunReport: Sendable {
    public var status: QueueStatus
    public var seconds: Double
    public var usage: ProcessUsage
    public var stages: [(Stage, Double)]
    /// Set when the run went through but the job did not succeed (too many documents set aside).
    public var failure: JobError?
    /// A resume found the job already finished: nothing ran.
    public var alreadyFinished = false

    public var users: Int64 { status.documentsLoaded }

    public func render() -> String {
        if alreadyFinished {
            return "etl-job: the job \(status.jobId) already finished (\(status.documentsLoaded) documents loaded, "
                + "\(status.documentsSetAside) set aside); nothing to resume"
        }
        func n(_ v: Int64) -> String { v.formatted(.number.grouping(.automatic)) }
        func rate(_ v: Int64) -> String { seconds > 0 ? n(Int64(Double(v) / seconds)) : "-" }
        var lines = [
            "etl-job: run complete",
            "  users loaded      \(n(status.documentsLoaded))",
            "  documents set aside \(n(status.documentsSetAside))" + (status.documentsSetAside > 0 ? "  (etl-job status --rejected)" : ""),
            "  rows              \(n(status.totalRows))",
        ]
        for table in Schema.tableNames {
            lines.append("    \(table.padding(toLength: 16, withPad: " ", startingAt: 0)) \(n(status.rows[table] ?? 0))")
        }
        lines += [
            "  duration          \(String(format: "%.2f s", seconds))",
            "  users/s           \(rate(status.documentsLoaded))",
            "  rows/s            \(rate(status.totalRows))",
            "  peak memory       \(String(format: "%.1f MB", Double(usage.peakResidentBytes) / 1_048_576))",
            "  CPU time          \(String(format: "%.2f s", usage.cpuSeconds))",
            "  time per stage (summed over threads)",
        ]
        for (stage, s) in stages {
            lines.append("    \(stage.label.padding(toLength: 16, withPad: " ", startingAt: 0)) \(String(format: "%.2f s", s))")
        }
        return lines.joined(separator: "\n")
    }
}

/// Follows a run once its queue is open (the progress display): it reads through the run's
/// own queue, since LMDB forbids a second environment on the same files in one process.
public protocol RunObserver: AnyObject, Sendable {
    func runStarted(jobId: String, queue: DurableQueue)
    func runEnded()
}

/// `start` and `resume` of the users job.
///
/// Every refusal (a job already in the state directory, another run holding it, a missing or
/// empty collection, a target with rows, a resume pointed at another source or target) comes
/// before the first write: a refused command creates no directory, runs no DDL, writes no file.
public struct UsersJob {
    public static let pipeline = "users"
    public static let targetSchema = "public"

    public let settings: JobSettings
    public let logger: Logger

    public init(settings: JobSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    /// A new run. Refuses when the state directory holds a job or the target holds rows,
    /// unless `fresh`, which discards both.
    public func start(fresh: Bool, stop: StopToken, observer: RunObserver? = nil) async throws -> RunReport {
        try refuseIfBusy()
        if !fresh, let status = try recordedStatus() {
            throw JobError(.usage, status.isComplete && status.finishedAt != nil
                ? "the job in \(settings.stateDirectory) already finished; use 'etl-job start --fresh' to run again from scratch"
                : "the state directory \(settings.stateDirectory) holds an unfinished job; run 'etl-job resume' (or 'etl-job start --fresh' to discard it)")
        }
        let db = try connectPostgres()
        let client = try connectMongo()
        let total = try checkSource(client, allowEmpty: settings.allowEmpty)
        if !fresh, let table = try firstNonEmptyTable(db) {
            throw JobError(.usage, "the target table \(table) already holds rows; use 'etl-job start --fresh' to truncate the target tables first")
        }
        let targetLock = try lockTarget()
        let lock = try takeLock()
        try migrate(db)
        try checkTarget(db)
        if fresh {
            try discardState()
            try Schema.truncate(db)
            logger.info("discarded the previous job and truncated the target tables")
        }
        let queue = try openQueue()
        try queue.createJob(id: UUID().uuidString.lowercased(), sourceTotal: total, identity: identity(client, db))
        logger.info("started a new job", metadata: ["documents": "\(total.map(String.init) ?? "unknown")"])
        return try await run(queue: queue, locks: (lock, targetLock), stop: stop, observer: observer)
    }

    /// Continues the job in the state directory where it stopped, on the source and target it
    /// was started on.
    public func resume(stop: StopToken, observer: RunObserver? = nil) async throws -> RunReport {
        try refuseIfBusy()
        guard DurableQueue.exists(in: settings.stateDirectory) else {
            throw JobError(.usage, "there is no job to resume in \(settings.stateDirectory); run 'etl-job start'")
        }
        let lock = try takeLock()
        let queue = try openQueue()
        guard let recorded = try queue.status() else {
            throw JobError(.usage, "there is no job to resume in \(settings.stateDirectory); run 'etl-job start'")
        }
        if recorded.finishedAt != nil {
            return RunReport(status: recorded, seconds: 0, usage: .current(), stages: [], alreadyFinished: true)
        }
        let job = self.matching(try queue.identity)
        let db = try job.connectPostgres()
        let client = try job.connectMongo()
        try job.refuseMismatch(recorded: try queue.identity, current: job.identity(client, db))
        try job.checkSourceExists(client)
        let targetLock = try job.lockTarget()
        try job.migrate(db)
        try job.checkTarget(db)
        return try await job.run(queue: queue, locks: (lock, targetLock), stop: stop, observer: observer)
    }

    /// These settings with the source database and collection the job recorded, where the
    /// command did not name them.
    public func matching(_ recorded: JobIdentity?) -> UsersJob {
        guard let recorded else { return self }
        var settings = settings
        if !settings.databaseGiven { settings.database = recorded.database }
        if !settings.collectionGiven { settings.collection = recorded.collection }
        return UsersJob(settings: settings, logger: logger)
    }

    /// What this job moves from where to where, as the connections resolved it.
    public func identity(_ client: MongoClient, _ db: PGConnection) -> JobIdentity {
        let server = db.server
        return JobIdentity(
            pipeline: Self.pipeline, sourceServers: client.servers, database: settings.database,
            collection: settings.collection, targetHost: server.host, targetPort: server.port,
            targetDatabase: server.database, targetSchema: Self.targetSchema)
    }

    /// Refuses (exit 64) a command whose source or target differs from the recorded job's.
    public func refuseMismatch(recorded: JobIdentity?, current: JobIdentity) throws {
        guard let recorded else { return }
        let differences = recorded.differences(from: current)
        guard !differences.isEmpty else { return }
        let list = differences.map { "\($0.field) is '\($0.given)' but the job was started on '\($0.recorded)'" }
        throw JobError(.usage, "the job in \(settings.stateDirectory) moves another collection or target: "
            + list.joined(separator: "; ") + "; use the same settings, or another --state-dir")
    }

    /// Checks that the source collection exists (exit 66, naming those that do) and, unless
    /// `allowEmpty`, that it holds documents. Returns its estimated size when known.
    public func checkSource(_ client: MongoClient, allowEmpty: Bool) throws -> Int64? {
        try checkSourceExists(client)
        let total = try? client.collection(database: settings.database, name: settings.collection).estimatedCount()
        if total == 0 && !allowEmpty {
            throw JobError(.noInput, "the collection \(settings.database).\(settings.collection) is empty; add --allow-empty to run on it anyway")
        }
        return total
    }

    /// Checks that the source collection exists (exit 66, naming those that do).
    public func checkSourceExists(_ client: MongoClient) throws {
        let names: [String]
        do {
            names = try client.collectionNames(database: settings.database)
        } catch {
            throw JobError(.unavailable, "cannot list the collections of \(settings.database) at \(client.redactedURL): \(error)")
        }
        guard names.contains(settings.collection) else {
            let existing = names.filter { !$0.hasPrefix("system.") }
            let shown = existing.prefix(10).joined(separator: ", ")
            let more = existing.count > 10 ? " and \(existing.count - 10) more" : ""
            throw JobError(.noInput, "the collection \(settings.database).\(settings.collection) does not exist; "
                + (existing.isEmpty ? "the database \(settings.database) holds no collection"
                   : "collections in \(settings.database): \(shown)\(more)"))
        }
    }

    private func run(queue: DurableQueue, locks: (JobLock, TargetLock), stop: StopToken, observer: RunObserver?) async throws -> RunReport {
        let started = ContinuousClock.now
        let clock = StageClock()
        guard let jobId = try queue.jobId else { throw JobError(.failed, "the queue holds no job id") }
        try queue.beginRun()
        observer?.runStarted(jobId: jobId, queue: queue)
        defer { observer?.runEnded() }
        let processor = UsersProcessor(settings: settings, queue: queue, jobId: jobId, clock: clock, logger: logger)
        let runner = ETLRunner(processor: processor, config: settings.bucket, extractSource: !(try queue.extractionFinished))
        try await Manager(workers: settings.bucket.managerWorkers).runAll([runner], stop: stop)
        withExtendedLifetime(locks) {}
        guard var status = try queue.status() else { throw JobError(.failed, "the queue lost its job") }
        var failure: JobError?
        if status.isComplete && !stop.isStopRequested {
            if let reason = settings.maxSetAside.failure(loaded: status.documentsLoaded, setAside: status.documentsSetAside) {
                failure = JobError(.dataError, reason)
            } else {
                try queue.markFinished()
                status = try queue.status() ?? status
            }
        }
        return RunReport(
            status: status, seconds: (ContinuousClock.now - started).seconds, usage: .current(),
            stages: Stage.allCases.map { ($0, clock.seconds($0)) }, failure: failure)
    }

    /// Applies pending migrations; a failure names what it was doing.
    @discardableResult
    public func migrate(_ db: PGConnection) throws -> Int {
        do {
            return try Schema.migrate(db)
        } catch {
            throw JobError(.failed, "cannot migrate the schema: \(error)")
        }
    }

    /// Refuses (exit 70) a target whose tables no longer match what the job writes, say a
    /// column altered between runs: loading into it would set every document aside.
    public func checkTarget(_ db: PGConnection) throws {
        let differences = try Schema.differences(db)
        guard !differences.isEmpty else { return }
        throw JobError(.software, "the target tables differ from what the \(Self.pipeline) pipeline writes: "
            + differences.prefix(5).joined(separator: "; ") + (differences.count > 5 ? "; and \(differences.count - 5) more" : "")
            + "; restore them (or start again with a fresh target) and run the job again")
    }

    /// Takes the target's lock for this pipeline and schema, held by its own connection for
    /// the whole run, so that two jobs (say, with different state directories) never load
    /// the same tables at once. Waits up to `wait` seconds for a run that is ending, then
    /// refuses (exit 75) naming the session that holds it.
    public func lockTarget(wait: Double = 2) throws -> TargetLock {
        let lock = try TargetLock(connection: connectPostgres(), name: "etl-job \(Self.pipeline) \(Self.targetSchema)")
        let deadline = Date(timeIntervalSinceNow: wait)
        while true {
            if try lock.tryAcquire() { return lock }
            if Date() >= deadline { break }
            Thread.sleep(forTimeInterval: 0.25)
        }
        let holder = (try? lock.holder()) ?? "another session"
        throw JobError(.busy, "another etl-job run is loading the \(Self.pipeline) pipeline into schema \(Self.targetSchema) of this target (\(holder)); wait for it to finish or stop it")
    }

    /// Another process holds the state directory: refuse at once, before touching anything.
    private func refuseIfBusy() throws {
        if JobLock.isHeld(directory: settings.stateDirectory) {
            throw JobError(.busy, JobLock.Busy(directory: settings.stateDirectory, pid: JobLock.holder(directory: settings.stateDirectory)).description)
        }
    }

    /// The status of the job recorded in the state directory, read without creating anything.
    private func recordedStatus() throws -> QueueStatus? {
        guard DurableQueue.exists(in: settings.stateDirectory) else { return nil }
        do {
            return try DurableQueue(directory: settings.stateDirectory, readOnly: true).status()
        } catch {
            throw JobError.queue(error, settings.stateDirectory)
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

    private func openQueue() throws -> DurableQueue {
        do {
            return try DurableQueue(directory: settings.stateDirectory, initialMapSize: settings.queueMapBytes)
        } catch {
            throw JobError.queue(error, settings.stateDirectory)
        }
    }

    /// Removes the queue's files (the lock file stays: this process holds it).
    private func discardState() throws {
        for file in ["data.mdb", "lock.mdb"] {
            let path = settings.stateDirectory + "/" + file
            if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
        }
    }

    public func connectPostgres() throws -> PGConnection {
        do {
            return try PGConnection(url: settings.postgresURL)
        } catch let error as PGError where error.kind == .malformedURL {
            throw JobError(.usage, error.message)
        } catch {
            throw JobError(.unavailable, "\(error)")
        }
    }

    public func connectMongo() throws -> MongoClient {
        do {
            let client = try MongoClient(url: settings.mongoURL)
            try client.ping()
            return client
        } catch let error as MongoError where error.message.hasPrefix("malformed") {
            throw JobError(.usage, error.message)
        } catch {
            throw JobError(.unavailable, "cannot reach MongoDB at \(Redact.url(settings.mongoURL)): \(error)")
        }
    }

    /// The first of the 15 tables that holds a row; tables that do not exist yet hold none.
    private func firstNonEmptyTable(_ db: PGConnection) throws -> String? {
        for table in Schema.tables {
            let exists = try db.query("SELECT to_regclass($1) IS NOT NULL", [table.quotedName]).rows[0][0] == "t"
            if exists, try db.execute("SELECT 1 FROM \(table.quotedName) LIMIT 1").rows.count > 0 { return table.name }
        }
        return nil
    }
}

/// A session-level advisory lock on the target, keyed by a name (pipeline and schema), held
/// as long as its connection lives. The two-key form keeps it apart from the migration lock.
public final class TargetLock {
    static let namespace: Int32 = 0x45_54_4C_4A  // "ETLJ"
    private let connection: PGConnection
    private let name: String

    init(connection: PGConnection, name: String) throws {
        self.connection = connection
        self.name = name
        let host = ProcessInfo.processInfo.hostName
        try connection.query("SELECT set_config('application_name', $1, false)", ["etl-job pid \(getpid()) on \(host)"])
    }

    func tryAcquire() throws -> Bool {
        try connection.query("SELECT pg_try_advisory_lock($1, hashtext($2))", [String(Self.namespace), name]).rows[0][0] == "t"
    }

    /// Who holds the lock, from pg_locks and pg_stat_activity.
    func holder() throws -> String? {
        let row = try connection.query("""
            SELECT a.pid, a.application_name, coalesce(host(a.client_addr), 'local socket'), to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ')
            FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
              AND l.classid = ($1::int4)::oid AND l.objid = (hashtext($2))::oid AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """, [String(Self.namespace), name]).rows.first
        guard let row else { return nil }
        return "PostgreSQL session \(row[0] ?? "?"), application '\(row[1] ?? "")', client \(row[2] ?? "?"), connected since \(row[3] ?? "?")"
    }
}
