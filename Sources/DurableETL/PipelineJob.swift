import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue

/// One pipeline of a run: its mapping, the collection and schema it uses (named on the
/// command line, else recorded by its job, else the mapping's), and its state directory.
/// Every check here reads only: refusals come before any write.
public struct PipelineJob: Sendable {
    public let mapping: any DocumentMapping
    public let settings: JobSettings
    public let source: SourceCollection
    /// A mongodump file read instead of the collection (`--source-file`, else the recorded one).
    public let sourceFile: String?
    public let target: Target

    public var name: String { mapping.name }
    /// The pipeline's queue: a subdirectory of the run's state directory.
    public var directory: String { RunManifest.queueDirectory(settings.stateDirectory, mapping.name) }

    /// `recorded`: what the pipeline's queue recorded; `planned`: what the run's manifest
    /// recorded for it (all a run killed before the queue recorded its job leaves).
    public init(mapping: any DocumentMapping, settings: JobSettings, recorded: JobIdentity? = nil, planned: RunManifest.Planned? = nil) {
        self.mapping = mapping
        self.settings = settings
        // --database/--collection name a code pipeline's source; a mapping file names its own.
        let named = mapping.definition == nil
        source = SourceCollection(
            database: (named ? settings.database : nil) ?? recorded?.database ?? planned?.database ?? mapping.source.database,
            collection: (named ? settings.collection : nil) ?? recorded?.collection ?? planned?.collection ?? mapping.source.collection)
        sourceFile = settings.sourceFile ?? recorded?.sourceFile?.path ?? planned?.sourceFile
        target = Target(
            url: settings.postgresURL,
            schema: settings.targetSchema ?? recorded?.targetSchema ?? planned?.targetSchema ?? JobSettings.defaultSchema)
    }

    /// What this pipeline moves from where to where, as the connections resolved it.
    /// `client` is nil for a pipeline that reads a file.
    public func identity(_ client: MongoClient?, _ db: PGConnection) throws -> JobIdentity {
        let server = db.server
        var identity = JobIdentity(
            pipeline: name, sourceServers: client?.servers ?? "", database: source.database, collection: source.collection,
            targetHost: server.host, targetPort: server.port, targetDatabase: server.database, targetSchema: target.schema)
        if let sourceFile {
            let file = try identifyFile(sourceFile)
            let compressed = BSONFileReader.isCompressed(path: sourceFile)
            identity.sourceFile = SourceFileIdentity(path: sourceFile, size: file.size, headDigest: file.headDigest, compressed: compressed)
        }
        return identity
    }

    private func identifyFile(_ path: String) throws -> (size: Int64, headDigest: String) {
        guard FileManager.default.fileExists(atPath: path) else {
            throw JobError(.noInput, "the source file \(path) does not exist")
        }
        do {
            return try BSONFileReader.identify(path: path)
        } catch {
            throw JobError(.noInput, "\(error)")
        }
    }

    /// Refuses (exit 64) a command whose source or target differs from the recorded job's.
    public func refuseMismatch(recorded: JobIdentity?, current: JobIdentity) throws {
        guard let recorded else { return }
        let differences = recorded.differences(from: current)
        guard !differences.isEmpty else { return }
        let list = differences.map { "\($0.field) is '\($0.given)' but the job was started on '\($0.recorded)'" }
        throw JobError(.usage, "the \(name) job in \(settings.stateDirectory) moves another collection or target: "
            + list.joined(separator: "; ") + "; use the same settings, or another --state-dir")
    }

    /// Checks that the source collection exists (exit 66, naming those that do) and, unless
    /// `allowEmpty`, that it holds documents. Returns its estimated size when known.
    public func checkSource(_ client: MongoClient?, allowEmpty: Bool) throws -> Int64? {
        guard let client else { return try checkSourceFile(allowEmpty: allowEmpty) }
        try checkSourceExists(client)
        let total = try? client.collection(database: source.database, name: source.collection).estimatedCount()
        if total == 0 && !allowEmpty {
            throw JobError(.noInput, "the collection \(source.database).\(source.collection) is empty; add --allow-empty to run on it anyway")
        }
        return total
    }

    /// Checks that the source file exists, is readable and, unless `allowEmpty`, holds a
    /// document (exit 66). Its document count is not known before it is read.
    private func checkSourceFile(allowEmpty: Bool) throws -> Int64? {
        guard let sourceFile else { return nil }
        let size = try identifyFile(sourceFile).size
        let first: [UInt8]?
        do {
            first = try BSONFileReader(path: sourceFile).next()
        } catch {
            throw JobError(.dataError, "\(error)")
        }
        if first == nil && !allowEmpty {
            throw JobError(.noInput, "the source file \(sourceFile) holds no document (\(size) bytes); add --allow-empty to run on it anyway")
        }
        return first == nil ? 0 : nil
    }

    /// A connection to the source, or nil for a pipeline that reads a file.
    public func connectSource() throws -> MongoClient? {
        sourceFile == nil ? try connectMongo() : nil
    }

    /// Checks that the source collection (or file) exists (exit 66, naming those that do).
    public func checkSourceExists(_ client: MongoClient?) throws {
        guard let client else {
            if let sourceFile { _ = try identifyFile(sourceFile) }
            return
        }
        let names: [String]
        do {
            names = try client.collectionNames(database: source.database)
        } catch {
            throw JobError(.unavailable, "cannot list the collections of \(source.database) at \(client.redactedURL): \(error)")
        }
        guard names.contains(source.collection) else {
            let existing = names.filter { !$0.hasPrefix("system.") }
            let shown = existing.prefix(10).joined(separator: ", ")
            let more = existing.count > 10 ? " and \(existing.count - 10) more" : ""
            throw JobError(.noInput, "the collection \(source.database).\(source.collection) does not exist; "
                + (existing.isEmpty ? "the database \(source.database) holds no collection"
                   : "collections in \(source.database): \(shown)\(more)"))
        }
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

    func openQueue() throws -> DurableQueue {
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

/// A pipeline's documents in source order: `_id` order from a collection, file order from a
/// mongodump file. Positions are opaque to the queue: `{"_id": value}` after a collection's
/// document, `{"offset": n}` (the byte after it) in a file.
public final class SourceCursor {
    private let mongo: MongoCursor?
    private let file: BSONFileReader?

    init(mongo: MongoCursor) {
        self.mongo = mongo
        file = nil
    }

    init(file: BSONFileReader) {
        self.file = file
        mongo = nil
    }

    public func next() throws -> [UInt8]? {
        if let file { return try file.next() }
        return try mongo!.next().map { Array($0) }
    }

    /// The position after `document`, the last one read.
    func position(after document: [UInt8]) -> [UInt8] {
        if let file { return FilePosition.encode(file.offset) }
        return document.withUnsafeBytes { BSONSequence.idElement($0) } ?? []
    }
}

extension DurableQueue {
    /// How much of its source file the job has read (nil for a collection or a .gz).
    public func sourceFileRead() throws -> Double? {
        guard let file = try identity?.sourceFile else { return nil }
        return file.fractionRead(offset: try extractPosition.flatMap { try? FilePosition.offset($0) })
    }
}

/// A position in a mongodump file, as the queue keeps it: the BSON document `{"offset": n}`.
enum FilePosition {
    static func encode(_ offset: UInt64) -> [UInt8] {
        var bytes: [UInt8] = [21, 0, 0, 0, 0x12] + Array("offset".utf8) + [0]
        withUnsafeBytes(of: Int64(offset).littleEndian) { bytes += $0 }
        return bytes + [0]
    }

    /// The offset a position holds; 0 for none (the file's start).
    static func offset(_ position: [UInt8]?) throws -> UInt64 {
        guard let position else { return 0 }
        guard position.count == 21, position[4] == 0x12 else {
            throw JobError(.ioError, "the queue's position is not a file offset; \(JobError.untrustedState)")
        }
        return UInt64(position.withUnsafeBytes { Int64(littleEndian: $0.loadUnaligned(fromByteOffset: 12, as: Int64.self)) })
    }
}

extension PipelineJob {
    /// The source's documents after `position` (from the start when nil). `client` is nil for
    /// a pipeline that reads a file.
    public func openSource(_ client: MongoClient?, after position: [UInt8]?, batchSize: Int32 = 1_000) throws -> SourceCursor {
        if let sourceFile {
            do {
                return SourceCursor(file: try BSONFileReader(path: sourceFile, offset: try FilePosition.offset(position)))
            } catch let error as BSONFileError {
                throw JobError(.dataError, "\(error)")
            }
        }
        guard let client else { throw JobError(.failed, "no connection to MongoDB for the \(name) pipeline") }
        return SourceCursor(mongo: try client.collection(database: source.database, name: source.collection)
            .scanById(afterIdElement: position, batchSize: batchSize))
    }
}
