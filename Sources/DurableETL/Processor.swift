import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue
import Synchronization

/// Moves one pipeline's documents through its durable queue into its tables: extraction in
/// `_id` order into the queue here, transform and load in `BatchLoader`s.
final class PipelineProcessor: ETLProcessor, @unchecked Sendable {
    // Safe: all stored properties are immutable; `queue`, `clock` and `reread` are thread-safe.
    typealias Item = [UInt8]

    let mapping: any DocumentMapping
    let job: PipelineJob
    let source: SourceCollection
    let settings: JobSettings
    let target: Target
    let queue: DurableQueue
    let jobId: String
    let clock: StageClock
    let logger: Logger
    /// Workers of this pipeline (its share of the run's budget).
    let workers: Int
    /// The source is a plain mongodump file: batches stay there, the queue keeps their extent.
    let externalPayloads: Bool
    /// Batches read again from the source in this run (true once done): a second damage stops the job.
    private let reread = Mutex<[UInt64: Bool]>([:])

    var name: String { mapping.name }

    func weight(of item: [UInt8]) -> Int { item.count }

    init(_ pipeline: PipelineJob, queue: DurableQueue, jobId: String, workers: Int, clock: StageClock, logger: Logger) {
        mapping = pipeline.mapping
        job = pipeline
        externalPayloads = pipeline.sourceFile.map { BSONFileReader.isCompressed(path: $0) == false } ?? false
        source = pipeline.source
        settings = pipeline.settings
        target = pipeline.target
        self.queue = queue
        self.jobId = jobId
        self.workers = workers
        self.clock = clock
        self.logger = logger
    }

    /// Settles batches left in flight by a previous process: done if their checkpoint row is
    /// in PostgreSQL, pending again otherwise.
    func preProcess() throws {
        let inFlight = try queue.inFlight()
        guard !inFlight.isEmpty else { return }
        let db = try target.connect()
        var landed = 0
        for id in inFlight {
            let payload = try queue.batch(of: id).map { try documents(of: $0).payload } ?? []
            if let outcome = try Checkpoint.outcome(db, pipeline: name, job: jobId, batch: id, payload: payload) {
                try queue.complete(id, outcome: outcome)
                landed += 1
            } else {
                try queue.requeue(id)
            }
        }
        logger.info("recovered batches left in flight", metadata: [
            "pipeline": "\(name)", "committed": "\(landed)", "requeued": "\(inFlight.count - landed)",
        ])
    }

    /// The job decides whether the run succeeded (the set-aside limit) and marks it finished.
    func postProcess() throws {}

    // MARK: Extract

    func extract(_ emit: ([UInt8]) throws -> Void, stop: StopToken) throws -> Bool {
        if job.sourceFile != nil {
            let cursor = try job.openSource(nil, after: try queue.extractPosition)
            while !stop.isStopRequested {
                guard let doc = try clock.measure(.extract, { try cursor.next() }) else { return true }
                try emit(doc)
            }
            return false
        }
        let client = try MongoClient(url: settings.mongoURL)
        let collection = client.collection(database: source.database, name: source.collection)
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
                position = lastRead.flatMap { $0.withUnsafeBytes(BSONSequence.idElement) } ?? position
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

    func stage(_ batch: [[UInt8]], stop: StopToken) throws {
        guard let last = batch.last else { return }
        // Backpressure; a stopping run still stages what it read, so the position stays exact.
        try clock.measure(.waiting) {
            while !stop.isStopRequested, try queue.pendingCount() >= settings.bucket.maxPendingBatches {
                queue.waitForChange(timeout: 0.5)
            }
        }
        try clock.measure(.queueWrite) {
            let bytes = batch.reduce(0) { $0 + $1.count }
            // In a file, the position is the offset after the batch: its bytes follow the last position's.
            let position = job.sourceFile == nil ? last.withUnsafeBytes { BSONSequence.idElement($0) } ?? []
                : FilePosition.encode(try FilePosition.offset(try queue.extractPosition) + UInt64(bytes))
            if externalPayloads {
                try queue.enqueueExternal(documents: batch.count, checksum: BatchIntegrity.checksum(batch), position: position)
                return
            }
            var payload: [UInt8] = []
            payload.reserveCapacity(bytes)
            for doc in batch { payload += doc }
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
        let client = job.sourceFile == nil ? try MongoClient(url: settings.mongoURL) : nil
        let cursor = try job.openSource(client, after: extent.after, batchSize: Int32(min(extent.documents, 1_000)))
        var payload: [UInt8] = []
        var last: [UInt8]?
        for _ in 0..<extent.documents {
            guard let doc = try cursor.next() else { break }
            payload.append(contentsOf: doc)
            last = cursor.position(after: doc)
        }
        guard last == extent.last, BatchIntegrity.documentCount(payload) == extent.documents else {
            throw DamagedBatch(id: damaged.id, file: damaged.file,
                               problem: damaged.problem + ", and the source no longer holds the same documents to read it again")
        }
        try queue.replacePayload(damaged.id, with: payload)
        logger.warning("a queued batch was damaged; read its documents again from the source", metadata: [
            "pipeline": "\(name)", "batch": "\(damaged.id)", "problem": "\(damaged.problem)", "documents": "\(extent.documents)",
        ])
    }

    /// The batch with its documents: as claimed, or read from the plain source file for a
    /// batch the queue left there, checked against the count and checksum it recorded. Bytes
    /// that no longer match mean the file changed under the job: that stops it (exit 65),
    /// since reading it again would load the changed documents.
    func documents(of batch: QueueBatch) throws -> QueueBatch {
        guard batch.isExternal else { return batch }
        guard let path = job.sourceFile, let extent = try queue.extent(of: batch.id) else {
            throw JobError(.ioError, "batch \(batch.id) of the \(name) queue lost its place in the source file; \(JobError.untrustedState)")
        }
        let start = try FilePosition.offset(extent.after), end = try FilePosition.offset(extent.last)
        guard end > start else { throw JobError(.ioError, "batch \(batch.id) of the \(name) queue has an empty extent; \(JobError.untrustedState)") }
        let payload: [UInt8]
        do {
            payload = try clock.measure(.extract) { try FileRange.read(path, offset: start, count: Int(end - start)) }
            try queue.checkExternal(batch.id, payload: payload)
        } catch let error as BSONFileError {
            throw JobError(.dataError, "\(error); the job cannot finish from this file: start again with 'etl-job start --fresh'")
        } catch let damaged as DamagedBatch {
            throw JobError(.dataError, "the source file \(path) changed since the job read it: the documents of batch \(batch.id) "
                + "(offsets \(start) to \(end)) no longer match what was queued (\(damaged.problem)); start again with 'etl-job start --fresh'")
        }
        return QueueBatch(id: batch.id, documentCount: batch.documentCount, payload: payload)
    }

    func finishExtraction() throws {
        try queue.finishExtraction()
    }

    func makeWorker(index: Int) throws -> BatchLoader {
        BatchLoader(processor: self, index: index)
    }
}
