import CLMDB
import Foundation

/// The durable queue of one job, in an LMDB environment: the extracted batches as opaque bytes,
/// the extract position, each batch's state, the set-aside documents and the counters.
/// Every state change is one LMDB transaction, so a crash leaves a consistent queue.
public final class DurableQueue: @unchecked Sendable {
    // Safe: `env` serializes all transactions; `changed` is a condition variable.
    private let env: LMDBEnvironment
    private let changed = NSCondition()
    private let framing: Framing?
    public let directory: String

    private static let tables = ["meta", "batches", "payloads", "pending", "inflight", "setaside", "counters"]

    /// Opens (creating when `readOnly` is false) the queue in `directory`. `framing`: how the
    /// payloads' documents are laid out, which the queue checks before it hands a batch out
    /// (nil for a queue that is only read, or whose batches are checked by their checksum alone).
    public init(directory: String, readOnly: Bool = false, initialMapSize: Int = 64 << 20, framing: Framing? = nil) throws {
        self.directory = directory
        self.framing = framing
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

    /// Closes the queue now rather than when its last reference goes; any later use fails.
    public func close() { env.close() }

    // MARK: Job

    public var jobId: String? {
        get throws { try env.transaction(write: false) { try $0.get("meta", Key.jobId).map { String(decoding: $0, as: UTF8.self) } } }
    }

    /// Starts a job in an empty queue, recording what it moves from where to where
    /// (`identity`: the engine's record, opaque here). `foreignKeys`: when the job puts its
    /// tables' foreign keys in place (`after`, `during`).
    public func createJob(id: String, sourceTotal: Int64?, identity: [UInt8], foreignKeys: String? = nil) throws {
        try env.transaction(write: true) { txn in
            guard try txn.get("meta", Key.jobId) == nil else { throw QueueError.jobExists }
            try txn.put("meta", Key.jobId, Array(id.utf8))
            try txn.put("meta", Key.createdAt, Codec.double(Date().timeIntervalSince1970))
            try txn.put("meta", Key.identity, identity)
            if let sourceTotal { try txn.put("meta", Key.sourceTotal, Codec.int(sourceTotal)) }
            if let foreignKeys { try txn.put("meta", Key.foreignKeys, Array(foreignKeys.utf8)) }
        }
    }

    /// What the job recorded of its source and target; nil for a job recorded before
    /// identities were kept.
    public var identity: [UInt8]? {
        get throws { try env.transaction(write: false) { try $0.get("meta", Key.identity).map { Array($0) } } }
    }

    /// Replaces what the job recorded of its source and target: for a job whose tables moved
    /// to another schema (a re-snapshot swapped in), so that it describes where they are now.
    public func replaceIdentity(_ identity: [UInt8]) throws {
        try env.transaction(write: true) { txn in
            guard try txn.get("meta", Key.jobId) != nil else { throw QueueError.noJob }
            try txn.put("meta", Key.identity, identity)
        }
    }

    /// Keeps `value` with the job under `name`: something the engine must find again, opaque
    /// here (such as where the source's change stream stood when the job started).
    public func record(_ name: String, _ value: [UInt8]) throws {
        try env.transaction(write: true) { try $0.put("meta", Array(("record." + name).utf8), value) }
    }

    public func recorded(_ name: String) throws -> [UInt8]? {
        try env.transaction(write: false) { try $0.get("meta", Array(("record." + name).utf8)).map { Array($0) } }
    }

    /// Marks the start of a run (start or resume), for throughput and ETA.
    public func beginRun() throws {
        try env.transaction(write: true) { txn in
            try txn.put("meta", Key.runStartedAt, Codec.double(Date().timeIntervalSince1970))
            try txn.put("meta", Key.runStartLoaded, Codec.int(try txn.counter(Key.documentsLoaded)))
            let handled = try txn.counter(Key.documentsLoaded) + txn.counter(Key.documentsDeleted) + txn.counter(Key.documentsSetAside)
            try txn.put("meta", Key.runStartHandled, Codec.int(handled))
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
            let record = BatchRecord(state: .pending, documents: documents, checksum: checksum, before: before, last: position)
            try txn.put("batches", Codec.key(id), record.encoded)
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
            try BatchIntegrity.check(id: id, record: try txn.get("batches", Codec.key(id)), payload: payload, framing: framing, directory: directory)
        }
    }

    /// Lets extraction go on after it had reached the end of its source (a change stream,
    /// which a later run reads further).
    public func resumeExtraction() throws {
        try env.transaction(write: true) { try $0.delete("meta", Key.extractionFinished) }
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
                try BatchIntegrity.check(id: id, record: try txn.get("batches", key), payload: payload, framing: framing, directory: directory)
            }
            try txn.delete("pending", key)
            try txn.put("inflight", key, [])
            let record = try txn.setState(id, .inFlight)
            return QueueBatch(id: id, documentCount: record.documents, payload: external ? [] : payload, isExternal: external, position: record.last)
        }
        if batch != nil { notify() }
        return batch
    }

    /// Where a batch came from: the extract position before it (nil for the first batch),
    /// the position after its last document and its document count; nil for a batch
    /// recorded before extents were kept.
    public func extent(of id: UInt64) throws -> (after: [UInt8]?, last: [UInt8], documents: Int)? {
        try env.transaction(write: false) { txn in
            guard let record = try txn.record(id), let before = record.before, let last = record.last else { return nil }
            return (before.isEmpty ? nil : before, last, record.documents)
        }
    }

    /// Replaces the payload of a pending batch found damaged with the same documents read
    /// again from the source; its checksum is recomputed, its extent kept.
    public func replacePayload(_ id: UInt64, with payload: [UInt8]) throws {
        try env.transaction(write: true) { txn in
            let key = Codec.key(id)
            guard var record = try txn.record(id), record.state == .pending, record.checksum != nil else {
                throw QueueError.notPending(id)
            }
            record.checksum = Codec.crc32(payload)
            try txn.put("batches", key, record.encoded)
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
            // A snapshot's batch keeps the documents it set aside. A batch of changes keeps
            // none of its own: it decides each document it touched, below, and the latest
            // decision replaces the earlier (one record per document set aside now, not one per
            // change ever set aside: a sync that runs for months with a steady share of bad
            // changes would otherwise grow its queue without bound).
            if outcome.touched.isEmpty {
                for (index, doc) in outcome.setAside.enumerated() {
                    try txn.put("setaside", key + Codec.int32(UInt32(index)), Codec.setAside(doc))
                }
            }
            // A batch of changes decides each document it touched: no longer set aside, or
            // set aside now (the latest change wins over the snapshot's and earlier changes').
            if let latest = outcome.latestChange, latest > (try txn.get("meta", Key.appliedChange).map(Codec.double) ?? 0) {
                try txn.put("meta", Key.appliedChange, Codec.double(latest))
            }
            if !outcome.touched.isEmpty {
                for id in outcome.touched { try txn.put("meta", Key.current(id), [0]) }
                for doc in outcome.setAside { try txn.put("meta", Key.current(doc.documentId), [1] + key + Codec.setAside(doc)) }
            }
            try txn.addCounter(Key.batchesDone, 1)
            try txn.addCounter(Key.documentsLoaded, Int64(outcome.documentsLoaded))
            try txn.addCounter(Key.documentsSetAside, Int64(outcome.setAside.count))
            if outcome.documentsDeleted > 0 { try txn.addCounter(Key.documentsDeleted, Int64(outcome.documentsDeleted)) }
            for (table, rows) in outcome.rows {
                try txn.addCounter(Key.rowsPrefix + table, rows)
            }
        }
        notify()
    }

    /// Counts documents loaded and set aside, and rows, that another queue's batches
    /// committed (a job loaded elsewhere that this queue stands for, as a snapshot).
    public func countLoadedElsewhere(documents: Int64, setAside: Int64, rows: [String: Int64]) throws {
        try env.transaction(write: true) { txn in
            try txn.addCounter(Key.extracted, documents + setAside)
            try txn.addCounter(Key.documentsLoaded, documents)
            try txn.addCounter(Key.documentsSetAside, setAside)
            for (table, count) in rows { try txn.addCounter(Key.rowsPrefix + table, count) }
        }
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

    /// Whether the source is read to its end and nothing is pending: the batches in flight
    /// then are the last ones (their ids), or nil.
    public func lastBatches() throws -> [UInt64]? {
        try env.transaction(write: false) { txn in
            guard try txn.get("meta", Key.extractionFinished) != nil, try txn.count("pending") == 0 else { return nil }
            return try txn.inFlightIds()
        }
    }

    /// Ids of the batches in flight (after a crash: those whose outcome is unknown).
    public func inFlight() throws -> [UInt64] {
        try env.transaction(write: false) { try $0.inFlightIds() }
    }

    /// The stored documents of a batch that is not yet done.
    /// A batch as a claim hands it out (an external one without its bytes), read without
    /// changing its state; nil when its payload is gone (done).
    public func batch(of id: UInt64) throws -> QueueBatch? {
        try env.transaction(write: false) { txn in
            guard let payload = try txn.get("payloads", Codec.key(id)).map({ Array($0) }) else { return nil }
            let external = payload == Self.externalMarker
            let record = try txn.record(id)
            return QueueBatch(id: id, documentCount: record?.documents ?? 0, payload: external ? [] : payload, isExternal: external,
                              position: record?.last)
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
                documentsDeleted: try txn.counter(Key.documentsDeleted),
                rows: rows,
                runStartedAt: try txn.get("meta", Key.runStartedAt).map(Codec.double),
                runStartLoaded: try txn.get("meta", Key.runStartLoaded).map(Codec.int) ?? 0,
                runStartHandled: try txn.get("meta", Key.runStartHandled).map(Codec.int) ?? 0,
                finishedAt: try txn.get("meta", Key.finishedAt).map(Codec.double),
                appliedChange: try txn.get("meta", Key.appliedChange).map(Codec.double),
                foreignKeys: try txn.get("meta", Key.foreignKeys).map { String(decoding: $0, as: UTF8.self) })
        }
    }

    /// What the batches of changes decided, per document they touched: the documents set
    /// aside now (with the batch that did), and those no longer set aside.
    public func currentDocuments() throws -> (setAside: [SetAsideDocument], cleared: Set<String>) {
        try env.transaction(write: false) { txn in
            var setAside: [SetAsideDocument] = []
            var cleared = Set<String>()
            try txn.forEach("meta") { key, value in
                guard key.starts(with: Key.currentPrefix) else { return true }
                let id = String(decoding: key.dropFirst(Key.currentPrefix.count), as: UTF8.self)
                if value.first == 1, value.count >= 9 {
                    let batch = Codec.id(Array(value[1..<9]))
                    setAside.append(Codec.setAside(UnsafeRawBufferPointer(rebasing: value[9...]), batch: batch))
                } else {
                    cleared.insert(id)
                }
                return true
            }
            return (setAside, cleared)
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

public enum QueueError: Error, CustomStringConvertible {
    case jobExists
    case noJob
    case notPending(UInt64)

    public var description: String {
        switch self {
        case .jobExists: "the queue already holds a job"
        case .noJob: "the queue holds no job"
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
    static let runStartHandled = Array("run_start_handled".utf8)
    static let finishedAt = Array("finished_at".utf8)
    static let foreignKeys = Array("foreign_keys".utf8)
    static let appliedChange = Array("applied_change".utf8)
    static let currentPrefix = Array("current.".utf8)
    static func current(_ id: String) -> [UInt8] { currentPrefix + Array(id.utf8) }
    static let nextBatch = "next_batch"
    static let extracted = "extracted"
    static let batchesDone = "batches_done"
    static let documentsLoaded = "documents_loaded"
    static let documentsSetAside = "documents_set_aside"
    static let documentsDeleted = "documents_deleted"
    static let rowsPrefix = "rows."
}

extension LMDBTransaction {
    func inFlightIds() throws -> [UInt64] {
        var ids: [UInt64] = []
        try forEach("inflight") { key, _ in
            ids.append(Codec.id(Array(key)))
            return true
        }
        return ids
    }

    func counter(_ name: String) throws -> Int64 {
        try get("counters", Array(name.utf8)).map(Codec.int) ?? 0
    }

    func setCounter(_ name: String, _ value: Int64) throws {
        try put("counters", Array(name.utf8), Codec.int(value))
    }

    func addCounter(_ name: String, _ delta: Int64) throws {
        try setCounter(name, try counter(name) + delta)
    }

    func record(_ id: UInt64) throws -> BatchRecord? {
        try get("batches", Codec.key(id)).flatMap(BatchRecord.init)
    }

    func state(_ id: UInt64) throws -> BatchState? {
        try record(id)?.state
    }

    /// Sets a batch's state and returns its record.
    @discardableResult
    func setState(_ id: UInt64, _ state: BatchState) throws -> BatchRecord {
        guard var record = try record(id) else {
            throw LMDBError(code: -30798, context: "batch \(id) is not in the queue")
        }
        record.state = state
        try put("batches", Codec.key(id), record.encoded)
        return record
    }
}
