import CLMDB
import CZlib
import Foundation

/// A batch handed to a worker: its queue id and the documents as stored (concatenated BSON).
public struct QueueBatch: Sendable {
    public let id: UInt64
    public let documentCount: Int
    /// Empty for a batch whose documents stay in the source file (`isExternal`).
    public let payload: [UInt8]
    /// The queue keeps only where the documents are (the batch's extent in a plain source
    /// file), their count and checksum; the worker reads them from the file and checks them.
    public let isExternal: Bool

    public init(id: UInt64, documentCount: Int, payload: [UInt8], isExternal: Bool = false) {
        self.id = id
        self.documentCount = documentCount
        self.payload = payload
        self.isExternal = isExternal
    }
}

/// A document that did not fit the target, kept whole with the reason.
public struct SetAsideDocument: Sendable, Equatable {
    public let batch: UInt64
    public let documentId: String
    public let reason: String
    public let document: [UInt8]

    public init(batch: UInt64, documentId: String, reason: String, document: [UInt8]) {
        self.batch = batch
        self.documentId = documentId
        self.reason = reason
        self.document = document
    }
}

/// The outcome of a committed batch, recorded when it is marked done.
public struct BatchOutcome: Sendable, Equatable {
    public var documentsLoaded: Int
    public var rows: [String: Int64]
    public var setAside: [SetAsideDocument]

    public init(documentsLoaded: Int, rows: [String: Int64], setAside: [SetAsideDocument]) {
        self.documentsLoaded = documentsLoaded
        self.rows = rows
        self.setAside = setAside
    }
}

/// What the queue knows about a job, as `status` shows it.
public struct QueueStatus: Sendable, Codable, Equatable {
    public var jobId: String
    public var createdAt: Double
    public var sourceTotal: Int64?
    public var extracted: Int64
    public var extractionFinished: Bool
    public var batches: Int
    public var pending: Int
    public var inFlight: Int
    public var done: Int
    public var documentsLoaded: Int64
    public var documentsSetAside: Int64
    public var rows: [String: Int64]
    public var runStartedAt: Double?
    public var runStartLoaded: Int64
    public var finishedAt: Double?
    /// When the job puts its foreign keys in place (`after`, `during`); nil for a job of
    /// etl-job 0.2 or earlier, which kept them in place.
    public var foreignKeys: String?

    public var totalRows: Int64 { rows.values.reduce(0, +) }
    public var isComplete: Bool { extractionFinished && pending == 0 && inFlight == 0 }
}

/// The durable queue of one job, in an LMDB environment: the extracted batches as raw BSON,
/// the extract position, each batch's state, the set-aside documents and the counters.
/// Every state change is one LMDB transaction, so a crash leaves a consistent queue.
public final class DurableQueue: @unchecked Sendable {
    // Safe: `env` serializes all transactions; `changed` is a condition variable.
    private let env: LMDBEnvironment
    private let changed = NSCondition()
    public let directory: String

    private static let tables = ["meta", "batches", "payloads", "pending", "inflight", "setaside", "counters"]

    /// Opens (creating when `readOnly` is false) the queue in `directory`.
    public init(directory: String, readOnly: Bool = false, initialMapSize: Int = 64 << 20) throws {
        self.directory = directory
        if !readOnly {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        env = try LMDBEnvironment(
            directory: directory, databases: Self.tables, initialMapSize: initialMapSize, readOnly: readOnly)
    }

    public static func exists(in directory: String) -> Bool {
        FileManager.default.fileExists(atPath: directory + "/data.mdb")
    }

    public var mapSize: Int { env.mapSize }

    // MARK: Job

    public var jobId: String? {
        get throws { try env.transaction(write: false) { try $0.get("meta", Key.jobId).map { String(decoding: $0, as: UTF8.self) } } }
    }

    /// Starts a job in an empty queue, recording what it moves from where to where.
    /// `foreignKeys`: when the job puts its tables' foreign keys in place (`after`, `during`).
    public func createJob(id: String, sourceTotal: Int64?, identity: JobIdentity, foreignKeys: String? = nil) throws {
        let encoded = try JSONEncoder().encode(identity)
        try env.transaction(write: true) { txn in
            guard try txn.get("meta", Key.jobId) == nil else { throw QueueError.jobExists }
            try txn.put("meta", Key.jobId, Array(id.utf8))
            try txn.put("meta", Key.createdAt, Codec.double(Date().timeIntervalSince1970))
            try txn.put("meta", Key.identity, Array(encoded))
            if let sourceTotal { try txn.put("meta", Key.sourceTotal, Codec.int(sourceTotal)) }
            if let foreignKeys { try txn.put("meta", Key.foreignKeys, Array(foreignKeys.utf8)) }
        }
    }

    /// What the job was started on; nil for a job recorded before identities were kept.
    public var identity: JobIdentity? {
        get throws {
            try env.transaction(write: false) { txn in
                try txn.get("meta", Key.identity).flatMap { try? JSONDecoder().decode(JobIdentity.self, from: Data($0)) }
            }
        }
    }

    /// Marks the start of a run (start or resume), for throughput and ETA.
    public func beginRun() throws {
        try env.transaction(write: true) { txn in
            try txn.put("meta", Key.runStartedAt, Codec.double(Date().timeIntervalSince1970))
            try txn.put("meta", Key.runStartLoaded, Codec.int(try txn.counter(Key.documentsLoaded)))
            try txn.delete("meta", Key.finishedAt)
        }
    }

    public func markFinished() throws {
        try env.transaction(write: true) { try $0.put("meta", Key.finishedAt, Codec.double(Date().timeIntervalSince1970)) }
    }

    // MARK: Extract side

    /// The `{"_id": value}` document of the last extracted document, or nil before the first batch.
    public var extractPosition: [UInt8]? {
        get throws { try env.transaction(write: false) { try $0.get("meta", Key.position).map { Array($0) } } }
    }

    public var extractionFinished: Bool {
        get throws { try env.transaction(write: false) { try $0.get("meta", Key.extractionFinished) != nil } }
    }

    /// Stores a batch as pending together with the extract position after it, atomically.
    /// The batch record also keeps the batch's extent in the source (the position before it and
    /// its last document's), so that a batch found damaged can be read again from the source.
    @discardableResult
    public func enqueue(payload: [UInt8], documents: Int, position: [UInt8]) throws -> UInt64 {
        try enqueue(stored: payload, checksum: Codec.crc32(payload), documents: documents, position: position)
    }

    /// The payload value of a batch whose documents stay in the source file: one byte, which
    /// no stored payload can be (a document is at least 5 bytes).
    static let externalMarker: [UInt8] = [0xFF]

    /// Like `enqueue`, for documents that stay in a plain source file between the positions
    /// before and after the batch: the queue records their count and checksum, not their bytes.
    @discardableResult
    public func enqueueExternal(documents: Int, checksum: UInt32, position: [UInt8]) throws -> UInt64 {
        try enqueue(stored: Self.externalMarker, checksum: checksum, documents: documents, position: position)
    }

    private func enqueue(stored: [UInt8], checksum: UInt32, documents: Int, position: [UInt8]) throws -> UInt64 {
        let id = try env.transaction(write: true) { txn -> UInt64 in
            let id = UInt64(try txn.counter(Key.nextBatch) + 1)
            try txn.setCounter(Key.nextBatch, Int64(id))
            let before = try txn.get("meta", Key.position).map { Array($0) } ?? []
            let extent = Codec.int32(UInt32(before.count)) + before + position
            let crc = withUnsafeBytes(of: checksum.littleEndian, Array.init)
            try txn.put("batches", Codec.key(id), [BatchState.pending.rawValue] + Codec.int(Int64(documents)) + crc + extent)
            try txn.put("payloads", Codec.key(id), stored)
            try txn.put("pending", Codec.key(id), [])
            try txn.put("meta", Key.position, position)
            try txn.addCounter(Key.extracted, Int64(documents))
            return id
        }
        notify()
        return id
    }

    /// Checks the documents of an external batch, read from the source file, against what the
    /// queue recorded (count and checksum); throws `DamagedBatch` when they differ.
    public func checkExternal(_ id: UInt64, payload: [UInt8]) throws {
        try env.transaction(write: false) { txn in
            try BatchIntegrity.check(id: id, record: try txn.get("batches", Codec.key(id)), payload: payload, directory: directory)
        }
    }

    public func finishExtraction() throws {
        try env.transaction(write: true) { try $0.put("meta", Key.extractionFinished, [1]) }
        notify()
    }

    // MARK: Worker side

    /// Moves the oldest pending batch to in flight and returns it; nil when none is pending.
    public func claim() throws -> QueueBatch? {
        let batch = try env.transaction(write: true) { txn -> QueueBatch? in
            guard let key = try txn.firstKey("pending") else { return nil }
            let id = Codec.id(key)
            let payload = try txn.get("payloads", key).map { Array($0) } ?? []
            let external = payload == Self.externalMarker
            // A damaged batch is never handed out, not even in part: the claim fails whole.
            // (An external batch is checked when its worker has read it from the file.)
            if !external {
                try BatchIntegrity.check(id: id, record: try txn.get("batches", key), payload: payload, directory: directory)
            }
            try txn.delete("pending", key)
            try txn.put("inflight", key, [])
            let documents = try txn.setState(id, .inFlight)
            return QueueBatch(id: id, documentCount: documents, payload: external ? [] : payload, isExternal: external)
        }
        if batch != nil { notify() }
        return batch
    }

    /// Where a batch came from: the extract position before it (nil for the first batch),
    /// its last document's `{"_id": …}` and its document count; nil for a batch recorded
    /// before extents were kept.
    public func extent(of id: UInt64) throws -> (after: [UInt8]?, last: [UInt8], documents: Int)? {
        try env.transaction(write: false) { txn in
            guard let record = try txn.get("batches", Codec.key(id)), record.count > 17 else { return nil }
            let documents = Int(Codec.int(UnsafeRawBufferPointer(rebasing: record[1..<9])))
            let length = Int(UInt32(bigEndian: record.loadUnaligned(fromByteOffset: 13, as: UInt32.self)))
            guard 17 + length <= record.count else { return nil }
            let after = Array(record[17..<(17 + length)])
            return (after.isEmpty ? nil : after, Array(record[(17 + length)...]), documents)
        }
    }

    /// Replaces the payload of a pending batch found damaged with the same documents read
    /// again from the source; its checksum is recomputed, its extent kept.
    public func replacePayload(_ id: UInt64, with payload: [UInt8]) throws {
        try env.transaction(write: true) { txn in
            let key = Codec.key(id)
            guard try txn.state(id) == .pending, let record = try txn.get("batches", key), record.count >= 13 else {
                throw QueueError.notPending(id)
            }
            var updated = Array(record)
            updated.replaceSubrange(9..<13, with: Codec.crc(payload))
            try txn.put("batches", key, updated)
            try txn.put("payloads", key, payload)
        }
        notify()
    }

    /// Marks an in-flight batch done, frees its payload, keeps its set-aside documents and
    /// adds its counts. Marking a batch done twice changes nothing.
    public func complete(_ id: UInt64, outcome: BatchOutcome) throws {
        try env.transaction(write: true) { txn in
            let key = Codec.key(id)
            guard try txn.state(id) != .done else { return }
            try txn.delete("inflight", key)
            try txn.delete("pending", key)
            try txn.delete("payloads", key)
            try txn.setState(id, .done)
            for (index, doc) in outcome.setAside.enumerated() {
                try txn.put("setaside", key + Codec.int32(UInt32(index)), Codec.setAside(doc))
            }
            try txn.addCounter(Key.batchesDone, 1)
            try txn.addCounter(Key.documentsLoaded, Int64(outcome.documentsLoaded))
            try txn.addCounter(Key.documentsSetAside, Int64(outcome.setAside.count))
            for (table, rows) in outcome.rows {
                try txn.addCounter(Key.rowsPrefix + table, rows)
            }
        }
        notify()
    }

    /// Returns an in-flight batch to pending (its transaction rolled back or never committed).
    public func requeue(_ id: UInt64) throws {
        try env.transaction(write: true) { txn in
            guard try txn.state(id) == .inFlight else { return }
            try txn.delete("inflight", Codec.key(id))
            try txn.put("pending", Codec.key(id), [])
            try txn.setState(id, .pending)
        }
        notify()
    }

    public func pendingCount() throws -> Int {
        try env.transaction(write: false) { try $0.count("pending") }
    }

    /// True when the source has been read to its end and no batch waits to be claimed.
    public func isDrained() throws -> Bool {
        try env.transaction(write: false) { txn in
            try txn.get("meta", Key.extractionFinished) != nil && txn.count("pending") == 0
        }
    }

    /// Ids of the batches in flight (after a crash: those whose outcome is unknown).
    public func inFlight() throws -> [UInt64] {
        try env.transaction(write: false) { txn in
            var ids: [UInt64] = []
            try txn.forEach("inflight") { key, _ in
                ids.append(Codec.id(Array(key)))
                return true
            }
            return ids
        }
    }

    /// The stored documents of a batch that is not yet done.
    /// A batch as a claim hands it out (an external one without its bytes), read without
    /// changing its state; nil when its payload is gone (done).
    public func batch(of id: UInt64) throws -> QueueBatch? {
        try env.transaction(write: false) { txn in
            guard let payload = try txn.get("payloads", Codec.key(id)).map({ Array($0) }) else { return nil }
            let external = payload == Self.externalMarker
            return QueueBatch(id: id, documentCount: 0, payload: external ? [] : payload, isExternal: external)
        }
    }

    public func payload(of id: UInt64) throws -> [UInt8]? {
        try env.transaction(write: false) { try $0.get("payloads", Codec.key(id)).map { Array($0) } }
    }

    /// Waits until the queue changes in this process or `timeout` passes.
    public func waitForChange(timeout: Double) {
        changed.lock()
        _ = changed.wait(until: Date(timeIntervalSinceNow: timeout))
        changed.unlock()
    }

    private func notify() {
        changed.lock()
        changed.broadcast()
        changed.unlock()
    }

    // MARK: Reading

    public func status() throws -> QueueStatus? {
        try env.transaction(write: false) { txn -> QueueStatus? in
            guard let job = try txn.get("meta", Key.jobId) else { return nil }
            var rows: [String: Int64] = [:]
            try txn.forEach("counters") { key, value in
                let name = String(decoding: key, as: UTF8.self)
                if name.hasPrefix(Key.rowsPrefix) { rows[String(name.dropFirst(Key.rowsPrefix.count))] = Codec.int(value) }
                return true
            }
            return QueueStatus(
                jobId: String(decoding: job, as: UTF8.self),
                createdAt: try txn.get("meta", Key.createdAt).map(Codec.double) ?? 0,
                sourceTotal: try txn.get("meta", Key.sourceTotal).map(Codec.int),
                extracted: try txn.counter(Key.extracted),
                extractionFinished: try txn.get("meta", Key.extractionFinished) != nil,
                batches: try txn.count("batches"),
                pending: try txn.count("pending"),
                inFlight: try txn.count("inflight"),
                done: Int(try txn.counter(Key.batchesDone)),
                documentsLoaded: try txn.counter(Key.documentsLoaded),
                documentsSetAside: try txn.counter(Key.documentsSetAside),
                rows: rows,
                runStartedAt: try txn.get("meta", Key.runStartedAt).map(Codec.double),
                runStartLoaded: try txn.get("meta", Key.runStartLoaded).map(Codec.int) ?? 0,
                finishedAt: try txn.get("meta", Key.finishedAt).map(Codec.double),
                foreignKeys: try txn.get("meta", Key.foreignKeys).map { String(decoding: $0, as: UTF8.self) })
        }
    }

    public func setAsideDocuments(limit: Int = .max) throws -> [SetAsideDocument] {
        try env.transaction(write: false) { txn in
            var docs: [SetAsideDocument] = []
            try txn.forEach("setaside") { key, value in
                docs.append(Codec.setAside(value, batch: Codec.id(Array(key.prefix(8)))))
                return docs.count < limit
            }
            return docs
        }
    }
}

/// What a job moves from where to where, recorded when it starts (never a credential), so
/// that a later command pointed elsewhere is refused instead of quietly mixing two jobs.
public struct JobIdentity: Codable, Sendable, Equatable {
    public var pipeline: String
    /// The source deployment's hosts, `host:port[,host:port]`.
    public var sourceServers: String
    public var database: String
    public var collection: String
    public var targetHost: String
    public var targetPort: String
    public var targetDatabase: String
    public var targetSchema: String
    /// For a job that reads a mongodump file instead of MongoDB: which file.
    public var sourceFile: SourceFileIdentity?

    public init(
        pipeline: String, sourceServers: String, database: String, collection: String,
        targetHost: String, targetPort: String, targetDatabase: String, targetSchema: String
    ) {
        self.pipeline = pipeline
        self.sourceServers = sourceServers
        self.database = database
        self.collection = collection
        self.targetHost = targetHost
        self.targetPort = targetPort
        self.targetDatabase = targetDatabase
        self.targetSchema = targetSchema
        sourceFile = nil
    }

    /// Each field where `other` differs: (what, recorded value, other value).
    /// A source file is the same file when its size and head are (it may have moved); a file
    /// is never the same source as a MongoDB collection.
    public func differences(from other: JobIdentity) -> [(field: String, recorded: String, given: String)] {
        func compare(_ fields: [(String, KeyPath<JobIdentity, String>)]) -> [(field: String, recorded: String, given: String)] {
            fields.compactMap { name, path in
                self[keyPath: path] == other[keyPath: path] ? nil : (name, self[keyPath: path], other[keyPath: path])
            }
        }
        var found = compare([("pipeline", \.pipeline)])
        switch (sourceFile, other.sourceFile) {
        case (nil, nil):
            found += compare([("source server", \.sourceServers), ("database", \.database), ("collection", \.collection)])
        case let (recorded?, given?):
            // A file's database and collection only label it, but a command naming others is told.
            found += compare([("database", \.database), ("collection", \.collection)])
            if recorded.size != given.size {
                found.append(("source file size", "\(recorded.size) bytes (\(recorded.path))", "\(given.size) bytes (\(given.path))"))
            } else if recorded.headDigest != given.headDigest {
                found.append(("source file's first MiB (SHA-256)", "\(recorded.headDigest) (\(recorded.path))", "\(given.headDigest) (\(given.path))"))
            }
        case let (recorded, given):
            found.append(("source", recorded.map { "file \($0.path)" } ?? "MongoDB \(sourceServers)",
                          given.map { "file \($0.path)" } ?? "MongoDB \(other.sourceServers)"))
        }
        return found + compare([
            ("target host", \.targetHost), ("target port", \.targetPort), ("target database", \.targetDatabase),
            ("target schema", \.targetSchema),
        ])
    }
}

/// A mongodump file a job reads: where it was, its size and the SHA-256 of its first MiB.
public struct SourceFileIdentity: Codable, Sendable, Equatable {
    public var path: String
    public var size: Int64
    public var headDigest: String
    /// gzip-compressed: offsets in its content do not compare with its size.
    public var compressed: Bool?

    public init(path: String, size: Int64, headDigest: String, compressed: Bool? = nil) {
        self.path = path
        self.size = size
        self.headDigest = headDigest
        self.compressed = compressed
    }

    /// How much of a plain file the job has read, from the queue's position (an offset).
    public func fractionRead(offset: UInt64?) -> Double? {
        guard compressed == false, size > 0, let offset else { return nil }
        return min(1, Double(offset) / Double(size))
    }
}

public enum QueueError: Error, CustomStringConvertible {
    case jobExists
    case notPending(UInt64)

    public var description: String {
        switch self {
        case .jobExists: "the queue already holds a job"
        case .notPending(let id): "batch \(id) is not pending"
        }
    }
}

/// A queued batch whose payload does not match its record: never handed out, not even in part.
public struct DamagedBatch: Error, CustomStringConvertible, Sendable {
    public let id: UInt64
    public let file: String
    public let problem: String

    public init(id: UInt64, file: String, problem: String) {
        self.id = id
        self.file = file
        self.problem = problem
    }

    public var description: String { "batch \(id) in the queue \(file) is damaged: \(problem)" }
}

public enum BatchState: UInt8, Sendable {
    case pending = 0, inFlight = 1, done = 2
}

private enum Key {
    static let jobId = Array("job_id".utf8)
    static let createdAt = Array("created_at".utf8)
    static let identity = Array("identity".utf8)
    static let sourceTotal = Array("source_total".utf8)
    static let position = Array("extract_position".utf8)
    static let extractionFinished = Array("extraction_finished".utf8)
    static let runStartedAt = Array("run_started_at".utf8)
    static let runStartLoaded = Array("run_start_loaded".utf8)
    static let finishedAt = Array("finished_at".utf8)
    static let foreignKeys = Array("foreign_keys".utf8)
    static let nextBatch = "next_batch"
    static let extracted = "extracted"
    static let batchesDone = "batches_done"
    static let documentsLoaded = "documents_loaded"
    static let documentsSetAside = "documents_set_aside"
    static let rowsPrefix = "rows."
}

extension LMDBTransaction {
    func counter(_ name: String) throws -> Int64 {
        try get("counters", Array(name.utf8)).map(Codec.int) ?? 0
    }

    func setCounter(_ name: String, _ value: Int64) throws {
        try put("counters", Array(name.utf8), Codec.int(value))
    }

    func addCounter(_ name: String, _ delta: Int64) throws {
        try setCounter(name, try counter(name) + delta)
    }

    func state(_ id: UInt64) throws -> BatchState? {
        try get("batches", Codec.key(id)).flatMap { BatchState(rawValue: $0[0]) }
    }

    /// Sets a batch's state and returns its document count.
    @discardableResult
    func setState(_ id: UInt64, _ state: BatchState) throws -> Int {
        guard let record = try get("batches", Codec.key(id)) else {
            throw LMDBError(code: -30798, context: "batch \(id) is not in the queue")
        }
        var updated = Array(record)
        updated[0] = state.rawValue
        try put("batches", Codec.key(id), updated)
        return Int(Codec.int(UnsafeRawBufferPointer(rebasing: record[1...])))
    }
}

/// What a batch record promises about its payload: the number of BSON documents, laid end to
/// end to the last byte, and the payload's CRC-32 (zlib). A changed byte, a damaged length or
/// a zeroed page breaks one of the three.
public enum BatchIntegrity {
    static func check(id: UInt64, record: UnsafeRawBufferPointer?, payload: [UInt8], directory: String) throws {
        guard let record, record.count >= 9 else {
            throw damaged(id, directory, "its record is missing or short")
        }
        let documents = Int(Codec.int(UnsafeRawBufferPointer(rebasing: record[1..<9])))
        if record.count >= 13 {
            let stored = UInt32(littleEndian: record.loadUnaligned(fromByteOffset: 9, as: UInt32.self))
            guard Codec.crc32(payload) == stored else { throw damaged(id, directory, "its checksum does not match") }
        }
        guard let framed = documentCount(payload), framed == documents else {
            throw damaged(id, directory, "it should hold \(documents) documents laid end to end")
        }
    }

    /// The checksum the queue records for documents laid end to end.
    public static func checksum(_ documents: [[UInt8]]) -> UInt32 {
        documents.reduce(0) { crc, document in
            document.withUnsafeBytes { UInt32(CZlib.crc32_z(UInt(crc), $0.baseAddress?.assumingMemoryBound(to: UInt8.self), $0.count)) }
        }
    }

    /// How many BSON documents `payload` holds end to end, or nil when a length breaks the chain.
    public static func documentCount(_ payload: [UInt8]) -> Int? {
        payload.withUnsafeBytes { raw in
            var offset = 0
            var count = 0
            while offset < raw.count {
                guard offset + 5 <= raw.count else { return nil }
                let length = Int(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: Int32.self)))
                guard length >= 5, offset + length <= raw.count, raw[offset + length - 1] == 0 else { return nil }
                offset += length
                count += 1
            }
            return count
        }
    }

    private static func damaged(_ id: UInt64, _ directory: String, _ what: String) -> DamagedBatch {
        DamagedBatch(id: id, file: directory + "/data.mdb", problem: what)
    }
}

/// Byte layouts of keys and values. Keys are big-endian so LMDB's order is numeric order.
enum Codec {
    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { raw in
            UInt32(CZlib.crc32_z(0, raw.baseAddress?.assumingMemoryBound(to: UInt8.self), raw.count))
        }
    }

    static func crc(_ bytes: [UInt8]) -> [UInt8] { withUnsafeBytes(of: crc32(bytes).littleEndian, Array.init) }

    static func key(_ id: UInt64) -> [UInt8] { withUnsafeBytes(of: id.bigEndian, Array.init) }
    static func id(_ key: [UInt8]) -> UInt64 { key.withUnsafeBytes { UInt64(bigEndian: $0.loadUnaligned(as: UInt64.self)) } }
    static func int32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.bigEndian, Array.init) }
    static func int(_ v: Int64) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
    static func int(_ raw: UnsafeRawBufferPointer) -> Int64 { Int64(littleEndian: raw.loadUnaligned(as: Int64.self)) }
    static func double(_ v: Double) -> [UInt8] { int(Int64(bitPattern: v.bitPattern)) }
    static func double(_ raw: UnsafeRawBufferPointer) -> Double { Double(bitPattern: UInt64(bitPattern: int(raw))) }

    static func setAside(_ doc: SetAsideDocument) -> [UInt8] {
        var out: [UInt8] = []
        for field in [Array(doc.documentId.utf8), Array(doc.reason.utf8)] {
            out += withUnsafeBytes(of: UInt32(field.count).littleEndian, Array.init) + field
        }
        return out + doc.document
    }

    static func setAside(_ raw: UnsafeRawBufferPointer, batch: UInt64) -> SetAsideDocument {
        var offset = 0
        func field() -> String {
            let n = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
            defer { offset += 4 + n }
            return String(decoding: raw[(offset + 4)..<(offset + 4 + n)], as: UTF8.self)
        }
        let id = field()
        let reason = field()
        return SetAsideDocument(batch: batch, documentId: id, reason: reason, document: Array(raw[offset...]))
    }
}
