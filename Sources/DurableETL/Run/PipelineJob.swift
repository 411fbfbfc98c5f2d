import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue

/// One pipeline of a run: its mapping, the source and schema it uses (named on the command
/// line, else recorded by its job, else the mapping's), and its state directory.
/// Every check here reads only: refusals come before any write.
public struct PipelineJob: Sendable {
    /// The mapping in force: as given (with `--unmapped`'s policy), or as the target records
    /// it after it evolved (`inForce`).
    public private(set) var mapping: any DocumentMapping
    /// Which recorded version `mapping` is (0: as given).
    public private(set) var mappingVersion = 0
    /// The mapping as the command or the job gave it.
    public let given: any DocumentMapping
    public let settings: JobSettings
    public let source: any Source
    public let target: Target

    public var name: String { mapping.name }
    /// The pipeline's queue: a subdirectory of the run's state directory.
    public var directory: String { RunManifest.queueDirectory(settings.stateDirectory, mapping.name) }

    /// `recorded`: what the pipeline's queue recorded; `planned`: what the run's manifest
    /// recorded for it (all a run killed before the queue recorded its job leaves).
    public init(mapping: any DocumentMapping, settings: JobSettings, recorded: JobIdentity? = nil, planned: RunManifest.Planned? = nil) {
        // The command line refuses a policy a pipeline cannot follow, before any job is made.
        let mapping = settings.unmapped.flatMap { mapping.with(unmappedPolicy: $0) } ?? mapping
        self.mapping = mapping
        given = mapping
        self.settings = settings
        let request = settings.source
        // --database/--collection name a code pipeline's source; a mapping file names its own.
        let named = mapping.definition == nil
        let recordedNames = recorded?.source.names ?? planned.map { SourceCollection(database: $0.database, collection: $0.collection) }
        let names = SourceCollection(
            database: (named ? request.database : nil) ?? recordedNames?.database ?? mapping.source.database,
            collection: (named ? request.collection : nil) ?? recordedNames?.collection ?? mapping.source.collection)
        let recordedSource = recorded?.source ?? planned?.source
        source = request.choice?.source(settings, collection: names)
            ?? recordedSource?.reopen(settings, collection: names)
            ?? SourceKinds.source(settings, collection: names)
        target = Target(
            url: settings.postgresURL,
            schema: settings.targetSchema ?? recorded?.targetSchema ?? planned?.targetSchema ?? JobSettings.defaultSchema)
    }

    /// The same pipeline reading `source` instead (its changes, for a run that applies them).
    public func reading(_ source: any Source) -> PipelineJob {
        var copy = PipelineJob(mapping: given, settings: settings, source: source, target: target)
        (copy.mapping, copy.mappingVersion) = (mapping, mappingVersion)
        return copy
    }

    private init(mapping: any DocumentMapping, settings: JobSettings, source: any Source, target: Target) {
        self.mapping = mapping
        given = mapping
        self.settings = settings
        self.source = source
        self.target = target
    }

    /// Refuses (exit 64) `--unmapped` with a policy one of `mappings` cannot follow.
    public static func refuseUnfollowablePolicy(_ mappings: [any DocumentMapping], _ settings: JobSettings) throws {
        guard let policy = settings.unmapped else { return }
        for mapping in mappings where mapping.with(unmappedPolicy: policy) == nil {
            throw JobError(.usage, "the \(mapping.name) pipeline cannot follow the unmapped-field policy '\(policy.rawValue)': its tables are code, "
                + "so it can drop a field they do not name (the default) or set its document aside ('set-aside'); "
                + "for a pipeline that evolves, use a mapping file")
        }
    }

    /// The same pipeline with the mapping in force in the target: the latest version
    /// `etl_mappings` records once batches evolved it, else the one given. Every command that
    /// reads or writes the tables (resume, sync, worker, verify, the final step) uses it.
    public func inForce(_ db: PGConnection) throws -> PipelineJob {
        guard let latest = try MappingLedger.latest(db, pipeline: name) else { return self }
        guard latest.version != mappingVersion else { return self }
        var restored: any DocumentMapping
        do {
            restored = try given.inForce(definition: latest.definition)
        } catch {
            throw JobError(.software, "the mapping in force for the \(name) pipeline (version \(latest.version) in etl_mappings) cannot be read: \(error)")
        }
        if let policy = settings.unmapped { restored = restored.with(unmappedPolicy: policy) ?? restored }
        var copy = self
        (copy.mapping, copy.mappingVersion) = (restored, latest.version)
        return copy
    }

    /// The same pipeline with the mapping it was given (after `start --fresh` forgot the versions).
    func asGiven() -> PipelineJob {
        var copy = self
        (copy.mapping, copy.mappingVersion) = (given, 0)
        return copy
    }

    /// The queue of the changes applied after the snapshot: a subdirectory of the pipeline's.
    public var changesDirectory: String { directory + "/changes" }

    /// What this pipeline moves from where to where, as the source and the target connection
    /// resolved it.
    public func identity(_ db: PGConnection) throws -> JobIdentity {
        let server = db.server
        return JobIdentity(pipeline: name, source: try source.identity(), targetHost: server.host, targetPort: server.port,
                           targetDatabase: server.database, targetSchema: target.schema)
    }

    /// Refuses (exit 64) a command whose source or target differs from the recorded job's.
    /// `sourceLocationNamed`: whether the command named where the source is.
    public func refuseMismatch(recorded: JobIdentity?, current: JobIdentity, sourceLocationNamed: Bool = true) throws {
        guard let recorded else { return }
        let differences = recorded.differences(from: current, sourceLocationNamed: sourceLocationNamed)
        if let refusal = JobPlan.mismatch(pipeline: name, stateDirectory: settings.stateDirectory, differences) { throw refusal }
    }

    /// Refuses (exit 70) a target whose tables no longer match what the pipeline writes, say
    /// a column altered between runs: loading into it would set every document aside.
    public func checkTarget(_ db: PGConnection) throws {
        let differences = try target.differences(db, mapping)
        guard !differences.isEmpty else { return }
        throw JobError(.software, "the target tables differ from what the \(name) pipeline writes: "
            + differences.prefix(5).joined(separator: "; ") + (differences.count > 5 ? "; and \(differences.count - 5) more" : "")
            + "; restore them (or start again with a fresh target) and run the job again")
    }

    /// Takes the target's lock for this pipeline and schema, held by its own connection for
    /// the whole run, so that two jobs (say, with different state directories) never load
    /// the same tables at once. Waits up to `wait` seconds for a run that is ending, then
    /// refuses (exit 75) naming the session that holds it.
    public func lockTarget(wait: Double = 2) throws -> TargetLock {
        let lock = try TargetLock(connection: releasedOrConnect(), pipeline: name, schema: target.schema, reconnect: { try self.connectPostgres() })
        if try lock.acquire(within: wait) {
            // Others wait while it is held: a run whose machine vanished lets go within a minute.
            try lock.keepAlive()
            return lock
        }
        let holder = (try? lock.holder()) ?? "another session"
        // The session holds nothing: a worker that looks again while another finishes the job takes it.
        lock.handBack(to: target)
        throw JobError(.busy, "another etl-job run is loading the \(name) pipeline into schema \(target.schema) of this target (\(holder)); wait for it to finish or stop it")
    }

    func openQueue(_ directory: String? = nil) throws -> DurableQueue {
        let directory = directory ?? self.directory
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            return try DurableQueue(directory: directory, initialMapSize: settings.queueMapBytes, framing: .bson)
        } catch {
            throw JobError.queue(error, directory)
        }
    }

    /// A session another stage released, or a new one (`connectPostgres`).
    func releasedOrConnect(logger: Logger? = nil) throws -> PGConnection {
        try target.takeReleased() ?? connectPostgres(logger: logger)
    }

    /// A connection to the target schema (`Target.connectWaiting`).
    public func connectPostgres(startupWait: Double = 60, logger: Logger? = nil) throws -> PGConnection {
        try target.connectWaiting(startupWait: startupWait, logger: logger, pipeline: name)
    }
}

/// A session-level advisory lock on the target, keyed by a name (pipeline and schema), held
/// as long as its connection lives. The two-key form keeps it apart from the migration lock.
///
/// A lock held by a session dies with it, when PostgreSQL restarts or ends that session, and
/// another run could then take it while this run's workers reconnect. So every write is
/// fenced: a batch's transaction first takes the fence key shared and checks that this run's
/// lock session still holds the lock (`fence`), and writes nothing otherwise. A run that takes
/// the lock takes the fence key exclusively once (`claim`), which waits for every transaction
/// that passed the fence before, then records itself in `etl_writers`. A run that lost its
/// lock takes it again (`regain`) only when no other run holds it and none took it since;
/// otherwise it stops (exit 75). So two runs never write the same pipeline's tables at once.
public final class TargetLock: @unchecked Sendable {
    // Safe: `connection`, `backend` and `lost` are guarded by `mutex`; `fence` reads `backend` under it.
    static let namespace: Int32 = 0x45_54_4C_4A  // "ETLJ"
    static let fenceNamespace: Int32 = 0x45_54_4C_46  // "ETLF"
    private var connection: PGConnection
    private let name: String
    private let pipeline: String
    private let schema: String
    private let reconnect: () throws -> PGConnection
    /// This run, as `etl_writers` records it.
    let run = UUID().uuidString.lowercased()
    private var backend = ""
    private var lost = false
    private var keptAlive = false
    private let mutex = NSLock()

    init(connection: PGConnection, pipeline: String, schema: String, reconnect: @escaping () throws -> PGConnection) throws {
        self.connection = connection
        self.pipeline = pipeline
        self.schema = schema
        self.name = LockName.writer(.value(pipeline), schema: .value(schema)).string
        self.reconnect = reconnect
    }

    /// The PostgreSQL session (backend pid) that holds the lock, once taken.
    var session: String { mutex.withLock { backend } }

    var schemaName: String { schema }

    /// TCP keepalives on a session whose lock others wait for: PostgreSQL notices a machine
    /// that vanished (no FIN) within about a minute, not hours, and the lock goes with it.
    static let keepAliveOn = "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3"
    static let keepAliveOff = "RESET tcp_keepalives_idle; RESET tcp_keepalives_interval; RESET tcp_keepalives_count"

    /// A worker's lease on a partition, or the final step's lock, dies with its session
    /// (`keepAliveOn`).
    func keepAlive() throws {
        try mutex.withLock {
            _ = try connection.execute(Self.keepAliveOn)
            keptAlive = true
        }
    }

    /// Takes the lock, trying again about every quarter second for up to `seconds`; false when
    /// another session still holds it then.
    func acquire(within seconds: Double) throws -> Bool {
        struct Held: Error {}
        do {
            try Retry.within(seconds, every: 0.25).run(stop: nil, isRetryable: { $0 is Held }, onRetry: { _ in }) { _ in
                guard try tryAcquire() else { throw Held() }
            }
            return true
        } catch is Held {
            return false
        }
    }

    func tryAcquire() throws -> Bool {
        guard try connection.query("SELECT pg_try_advisory_lock($1, hashtext($2))", [String(Self.namespace), name]).rows[0][0] == "t" else { return false }
        backend = try connection.execute("SELECT pg_backend_pid()").rows[0][0] ?? ""
        return true
    }

    /// Makes this run the pipeline's writer, once its tables exist: waits for any transaction
    /// that passed the fence under an earlier holder, then records this run.
    func claim() throws {
        try mutex.withLock { try record(expecting: nil) }
    }

    /// Inside a batch's transaction, before it writes: takes the fence key shared and checks
    /// that this run's lock session still holds the lock. Throws `Lost` (the transaction must
    /// roll back, and `regain` run before the next attempt) when it does not.
    func fence(_ db: PGConnection) throws {
        try fence(db, beginning: false)
    }

    /// BEGIN, then the fence, in one round trip (pipelined).
    func beginFenced(_ db: PGConnection) throws {
        try fence(db, beginning: true)
    }

    private func fence(_ db: PGConnection, beginning: Bool) throws {
        let backend = mutex.withLock { lost ? "" : self.backend }
        guard !backend.isEmpty else { throw Lost() }
        // One round trip: the materialized CTE takes the fence key before the check reads pg_locks.
        let check = ("""
            WITH fence AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($4::int4, hashtext($2)))
            SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND pid = $3::int
              AND classid = ($1::int4)::oid AND objid = (hashtext($2))::oid AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))
            FROM fence
            """, [String(Self.namespace), name, backend, String(Self.fenceNamespace)] as [String?])
        let results = try db.pipeline((beginning ? [("BEGIN", [])] : []) + [check]).map { try $0.get() }
        let held = results.last?.rows.first?[0] == "t"
        guard held else {
            mutex.withLock { lost = true }
            throw Lost()
        }
    }

    /// After `fence` found the lock gone: takes it again on a new session, if no other run
    /// holds it or took it meanwhile; otherwise this run must stop.
    func regain() throws {
        try mutex.withLock {
            guard lost else { return }
            connection = try reconnect()
            if keptAlive { _ = try connection.execute(Self.keepAliveOn) }
            guard try acquire(within: 2) else {
                let holder = (try? holder()) ?? "another session"
                throw JobError(.busy, "this run lost its lock on the target (PostgreSQL restarted or ended its session), and another etl-job run "
                    + "now loads the \(pipeline) pipeline into schema \(schema) (\(holder)); this run stops without writing more: let that run finish")
            }
            try record(expecting: run)
            lost = false
        }
    }

    /// The fence's barrier, then this run in `etl_writers`; when `expecting` names a run,
    /// refuses if another run was recorded since.
    private func record(expecting: String?) throws {
        try connection.query("SELECT pg_advisory_lock($1, hashtext($2))", [String(Self.fenceNamespace), name])
        defer { _ = try? connection.query("SELECT pg_advisory_unlock($1, hashtext($2))", [String(Self.fenceNamespace), name]) }
        if let expecting, let row = try connection.query("SELECT run_id, host, pid, to_char(since, 'YYYY-MM-DD HH24:MI:SS TZ') FROM etl_writers WHERE pipeline = $1",
                                                         [pipeline]).rows.first, row[0] != expecting {
            throw JobError(.busy, "this run lost its lock on the target (PostgreSQL restarted or ended its session), and another etl-job run "
                + "(pid \(row[2] ?? "?") on \(row[1] ?? "?"), since \(row[3] ?? "?")) loaded the \(pipeline) pipeline into schema \(schema) meanwhile; "
                + "this run stops without writing more: check the target with 'etl-job verify'")
        }
        try connection.query("""
            INSERT INTO etl_writers (pipeline, run_id, host, pid, since) VALUES ($1, $2, $3, $4, now())
            ON CONFLICT (pipeline) DO UPDATE SET run_id = EXCLUDED.run_id, host = EXCLUDED.host, pid = EXCLUDED.pid, since = EXCLUDED.since
            """, [pipeline, run, ProcessInfo.processInfo.hostName, String(getpid())])
    }

    /// Thrown by `fence` when this run's lock session no longer holds the lock.
    struct Lost: Error, CustomStringConvertible {
        var description: String { "this run's lock on the target is gone (its session ended); taking it again before writing" }
    }

    /// Lets go of the lock, if this run took it, and gives its session, as `connect` made it,
    /// to the next stage of `target` (the lock must not be used after). A session that cannot
    /// let go (it broke) is not handed on: the lock ends with it.
    func handBack(to target: Target) {
        mutex.withLock {
            if !backend.isEmpty {
                guard (try? connection.query("SELECT pg_advisory_unlock($1, hashtext($2))", [String(Self.namespace), name]))?.rows.first?[0] == "t" else { return }
                (backend, lost) = ("", true)
            }
            if keptAlive {
                guard (try? connection.execute(Self.keepAliveOff)) != nil else { return }
                keptAlive = false
            }
            target.release(connection)
        }
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

