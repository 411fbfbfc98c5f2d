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
    public let mapping: any DocumentMapping
    public let settings: JobSettings
    public let source: any Source
    public let target: Target

    public var name: String { mapping.name }
    /// The pipeline's queue: a subdirectory of the run's state directory.
    public var directory: String { RunManifest.queueDirectory(settings.stateDirectory, mapping.name) }

    /// `recorded`: what the pipeline's queue recorded; `planned`: what the run's manifest
    /// recorded for it (all a run killed before the queue recorded its job leaves).
    public init(mapping: any DocumentMapping, settings: JobSettings, recorded: JobIdentity? = nil, planned: RunManifest.Planned? = nil) {
        self.mapping = mapping
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
        PipelineJob(mapping: mapping, settings: settings, source: source, target: target)
    }

    private init(mapping: any DocumentMapping, settings: JobSettings, source: any Source, target: Target) {
        self.mapping = mapping
        self.settings = settings
        self.source = source
        self.target = target
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
        let lock = try TargetLock(connection: connectPostgres(), name: "etl-job \(name) \(target.schema)")
        let deadline = Date(timeIntervalSinceNow: wait)
        while true {
            if try lock.tryAcquire() { return lock }
            if Date() >= deadline { break }
            Thread.sleep(forTimeInterval: 0.25)
        }
        let holder = (try? lock.holder()) ?? "another session"
        throw JobError(.busy, "another etl-job run is loading the \(name) pipeline into schema \(target.schema) of this target (\(holder)); wait for it to finish or stop it")
    }

    func openQueue(_ directory: String? = nil) throws -> DurableQueue {
        let directory = directory ?? self.directory
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            return try DurableQueue(directory: directory, initialMapSize: settings.queueMapBytes)
        } catch {
            throw JobError.queue(error, directory)
        }
    }

    /// A connection to the target schema; a malformed URL is a usage error.
    public func connectPostgres() throws -> PGConnection {
        do {
            return try target.connect()
        } catch let error as PGError where error.kind == .malformedURL {
            throw JobError(.usage, error.message)
        } catch {
            throw JobError(.unavailable, "\(error)")
        }
    }
}

/// A session-level advisory lock on the target, keyed by a name (pipeline and schema), held
/// as long as its connection lives. The two-key form keeps it apart from the migration lock.
public final class TargetLock: @unchecked Sendable {
    // Safe: used by one thread at a time (taken while a run prepares, released when it ends).
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

