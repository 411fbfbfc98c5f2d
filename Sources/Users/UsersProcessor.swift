import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue
import Synchronization

/// Where the job reads, writes and keeps its state.
public struct JobSettings: Sendable {
    public var mongoURL: String
    public var postgresURL: String
    public var database: String
    public var collection: String
    public var stateDirectory: String
    public var bucket: BucketConfig
    public var cursorBatchSize: Int32
    public var maxDocumentBytes: Int
    public var queueMapBytes: Int
    /// False when `database` / `collection` are defaults, not named by the user: a resume
    /// then takes the recorded job's.
    public var databaseGiven = true
    public var collectionGiven = true
    public var maxSetAside = SetAsideLimit.default
    public var allowEmpty = false

    public init(
        mongoURL: String, postgresURL: String, database: String = "sample_db", collection: String = "users",
        stateDirectory: String, bucket: BucketConfig = BucketConfig(), cursorBatchSize: Int32 = 500,
        maxDocumentBytes: Int = UserRows.defaultMaxDocumentBytes, queueMapBytes: Int = 64 << 20
    ) {
        self.mongoURL = mongoURL
        self.postgresURL = postgresURL
        self.database = database
        self.collection = collection
        self.stateDirectory = stateDirectory
        self.bucket = bucket
        self.cursorBatchSize = cursorBatchSize
        self.maxDocumentBytes = maxDocumentBytes
        self.queueMapBytes = queueMapBytes
    }
}

/// Moves `users` documents through the durable queue into the 15 tables.
public final class UsersProcessor: ETLProcessor, @unchecked Sendable {
    // Safe: all stored properties are immutable; `queue` and `clock` are thread-safe.
    public typealias Item = [UInt8]

    let settings: JobSettings
    let queue: DurableQueue
    let jobId: String
    let clock: StageClock
    let logger: Logger
    /// Batches read again from the source in this run (true once done): a second damage stops the job.
    private let reread = Mutex<[UInt64: Bool]>([:])

    public var name: String { "users" }

    public func weight(of item: [UInt8]) -> Int { item.count }

    public init(settings: JobSettings, queue: DurableQueue, jobId: String, clock: StageClock, logger: Logger) {
        self.settings = settings
        self.queue = queue
        self.jobId = jobId
        self.clock = clock
        self.logger = logger
    }

    /// Settles batches left in flight by a previous process: done if their checkpoint row is
    /// in PostgreSQL, pending again otherwise.
    public func preProcess() async throws {
        let inFlight = try queue.inFlight()
        guard !inFlight.isEmpty else { return }
        let db = try PGConnection(url: settings.postgresURL)
        var landed = 0
        for id in inFlight {
            if let outcome = try Checkpoint.outcome(db, job: jobId, batch: id, payload: try queue.payload(of: id) ?? []) {
                try queue.complete(id, outcome: outcome)
                landed += 1
            } else {
                try queue.requeue(id)
            }
        }
        logger.info("recovered batches left in flight", metadata: [
            "committed": "\(landed)", "requeued": "\(inFlight.count - landed)",
        ])
    }

    /// The job decides whether the run succeeded (the set-aside limit) and marks it finished.
    public func postProcess() async throws {}

    // MARK: Extract

    public func extract(_ emit: ([UInt8]) throws -> Void, stop: StopToken) throws -> Bool {
        let client = try MongoClient(url: settings.mongoURL)
        let collection = client.collection(database: settings.database, name: settings.collection)
        var position = try queue.extractPosition
        var lastRead: [UInt8]?
        var failures = 0
        while !stop.isStopRequested {
            do {
                let cursor = try collection.scanById(afterIdElement: position, batchSize: settings.cursorBatchSize)
                while !stop.isStopRequested {
                    guard let doc = try clock.measure(.extract, { try cursor.next() }) else { return true }
                    let bytes = Array(doc)
                    try emit(bytes)
                    lastRead = bytes
                    failures = 0
                }
            } catch let error as MongoError {
                position = lastRead.flatMap { $0.withUnsafeBytes(idElement) } ?? position
                // The server went away mid-scan: reopen the cursor after the last document read.
                failures += 1
                guard failures <= 8 else { throw error }
                logger.warning("source scan failed; reopening after the last document read", metadata: [
                    "attempt": "\(failures)", "error": "\(error)",
                ])
                _ = clock.measure(.waiting) { Backoff.wait(attempt: failures, stop: stop, base: 0.25, cap: 8) }
            }
        }
        return false
    }

    public func stage(_ batch: [[UInt8]], stop: StopToken) throws {
        guard let last = batch.last else { return }
        // Backpressure; a stopping run still stages what it read, so the position stays exact.
        try clock.measure(.waiting) {
            while !stop.isStopRequested, try queue.pendingCount() >= settings.bucket.maxPendingBatches {
                queue.waitForChange(timeout: 0.5)
            }
        }
        var payload: [UInt8] = []
        payload.reserveCapacity(batch.reduce(0) { $0 + $1.count })
        for doc in batch { payload += doc }
        let position = last.withUnsafeBytes { idElement($0) } ?? []
        try clock.measure(.queueWrite) {
            try queue.enqueue(payload: payload, documents: batch.count, position: position)
        }
        CrashPoint.enqueued.reach()
    }

    /// Reads a batch found damaged in the queue again from the source, once: the documents
    /// after its recorded start position, as many as it held, ending with the same `_id`.
    /// When the source cannot give exactly that (it changed, or the extent was lost too),
    /// the damage stands and stops the job.
    func reread(_ damaged: DamagedBatch) throws {
        // Several workers meet the same damaged batch: one reads it again, the others wait.
        let state = reread.withLock { started -> Bool? in
            if let done = started[damaged.id] { return done }
            started[damaged.id] = false
            return nil
        }
        switch state {
        case false?:
            queue.waitForChange(timeout: 0.2)
            return
        case true?:
            throw damaged  // damaged again after it was read again: the queue cannot hold it
        case nil:
            break
        }
        defer { reread.withLock { $0[damaged.id] = true } }
        guard let extent = try queue.extent(of: damaged.id), extent.documents > 0 else { throw damaged }
        let client = try MongoClient(url: settings.mongoURL)
        let cursor = try client.collection(database: settings.database, name: settings.collection)
            .scanById(afterIdElement: extent.after, batchSize: Int32(min(extent.documents, 1_000)))
        var payload: [UInt8] = []
        var last: [UInt8]?
        for _ in 0..<extent.documents {
            guard let doc = try cursor.next() else { break }
            payload.append(contentsOf: doc)
            last = idElement(doc)
        }
        guard last == extent.last, BatchIntegrity.documentCount(payload) == extent.documents else {
            throw DamagedBatch(id: damaged.id, file: damaged.file,
                               problem: damaged.problem + ", and the source no longer holds the same documents to read it again")
        }
        try queue.replacePayload(damaged.id, with: payload)
        logger.warning("a queued batch was damaged; read its documents again from the source", metadata: [
            "batch": "\(damaged.id)", "problem": "\(damaged.problem)", "documents": "\(extent.documents)",
        ])
    }

    public func finishExtraction() throws {
        try queue.finishExtraction()
    }

    public func makeWorker(index: Int) throws -> BatchLoader {
        BatchLoader(processor: self, index: index)
    }
}

/// `{"_id": value}` of a document, the form the queue stores as the extract position.
func idElement(_ document: UnsafeRawBufferPointer) -> [UInt8]? {
    guard var it = BSONIterator(document: document), it.find("_id") else { return nil }
    let element = BSONDocument()
    it.append(to: element.writer, as: "_id")
    return element.bytes
}

/// A readable `_id` of a document, for set-aside records.
func displayId(_ document: UnsafeRawBufferPointer) -> String {
    guard var it = BSONIterator(document: document) else { return "<unreadable>" }
    return it.find("_id") ? it.displayValue : "<no _id>"
}

/// The documents of a queued batch: byte ranges into its payload.
func documentRanges(_ payload: [UInt8]) -> [Range<Int>] {
    var ranges: [Range<Int>] = []
    var offset = 0
    payload.withUnsafeBytes { raw in
        while offset + 4 <= raw.count {
            let length = Int(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: Int32.self)))
            guard length >= 5, offset + length <= raw.count else { break }
            ranges.append(offset..<offset + length)
            offset += length
        }
    }
    return ranges
}
