import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue
import Synchronization

/// Moves one pipeline's documents through its durable queue into its tables: extraction in
/// source order into the queue here, transform and load in `BatchLoader`s.
final class PipelineProcessor: ETLProcessor, @unchecked Sendable {
    // Safe: all stored properties are immutable; `queue`, `clock`, `source`, `inForce` and `reread` are thread-safe.
    typealias Item = [UInt8]

    /// The mapping batches use: it changes when a batch evolves it.
    let inForce: MappingInForce
    var mapping: any DocumentMapping { inForce.current.mapping }
    let job: PipelineJob
    let source: any Source
    let settings: JobSettings
    let target: Target
    let queue: DurableQueue
    let jobId: String
    /// The run's lock on this pipeline's target, which fences every write.
    let lock: TargetLock
    let clock: StageClock
    let logger: Logger
    /// Workers of this pipeline (its share of the run's budget).
    let workers: Int
    /// What the run does with its batches.
    let mode: RunMode
    /// The queue holds changes (`Change` envelopes: replace or delete) rather than documents to append.
    var appliesChanges: Bool { mode.appliesChanges }
    /// How far behind the source each batch of changes was when it committed.
    let lags = LagRecorder()
    /// What this pipeline does, for whatever metrics backend the executable chose.
    let metrics: EngineMetrics
    /// Batches read again from the source in this run (true once done): a second damage stops the job.
    private let reread = Mutex<[UInt64: Bool]>([:])

    var name: String { job.name }

    func weight(of item: [UInt8]) -> Int { item.count }

    init(_ pipeline: PipelineJob, queue: DurableQueue, jobId: String, lock: TargetLock, workers: Int, clock: StageClock, logger: Logger,
         mode: RunMode = .snapshot) {
        self.lock = lock
        self.mode = mode
        inForce = MappingInForce(pipeline.mapping, version: pipeline.mappingVersion)
        job = pipeline
        source = pipeline.source
        settings = pipeline.settings
        target = pipeline.target
        self.queue = queue
        self.jobId = jobId
        self.workers = workers
        self.clock = clock
        // Every line this pipeline logs names it and its job.
        var logger = logger
        logger[metadataKey: "pipeline"] = "\(pipeline.name)"
        logger[metadataKey: "job"] = "\(jobId)"
        self.logger = logger
        metrics = EngineMetrics(pipeline: pipeline.name, tables: pipeline.mapping.tables.map(\.name))
    }

    /// Settles batches left in flight by a previous process: done if their checkpoint row is
    /// in PostgreSQL, pending again otherwise.
    func preProcess() throws {
        let inFlight = try queue.inFlight()
        guard !inFlight.isEmpty else { return }
        let db = try target.connect()
        var landed = 0
        for id in inFlight {
            let batch = try queue.batch(of: id)
            let payload = try batch.map { try documents(of: $0).payload } ?? []
            if let outcome = try Checkpoint.outcome(db, pipeline: name, job: jobId, batch: id, payload: payload, changes: appliesChanges, position: batch?.position) {
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

    /// The source in order after the queue's position. When the source goes away mid-scan
    /// (an error it calls transient), it is reopened after the last document read.
    func extract(_ emit: ([UInt8]) throws -> Void, stop: StopToken) throws -> Bool {
        var position = try queue.extractPosition
        let retry = Retry(retries: 8, base: 0.25, cap: 8)
        return try retry.run(stop: stop, clock: clock, isRetryable: source.isTransient) { attempt in
            logger.warning("source scan failed; reopening after the last document read", metadata: [
                "attempt": "\(attempt.number)", "error": "\(attempt.error)",
            ])
            metrics.retried(.source)
        } body: { progressed in
            let reading = "reading the source of \(name)"
            let cursor = try Liveness.during(reading) { try source.open(after: position, batchSize: settings.cursorBatchSize) }
            defer { position = cursor.position ?? position }
            while !stop.isStopRequested {
                guard let doc = try Liveness.during(reading, { try clock.measure(.extract, { try cursor.next() }) }) else { return true }
                try emit(doc)
                progressed()
            }
            return false
        }
    }

    func stage(_ batch: [[UInt8]], stop: StopToken) throws {
        guard !batch.isEmpty else { return }
        // Backpressure; a stopping run still stages what it read, so the position stays exact.
        try clock.measure(.waiting) {
            while !stop.isStopRequested, try queue.pendingCount() >= settings.bucket.maxPendingBatches {
                queue.waitForChange(timeout: 0.5)
            }
        }
        try clock.measure(.queueWrite) {
            let position = try source.position(after: batch, previous: try queue.extractPosition)
            // Of several changes to one document in a batch, the last decides its rows.
            let batch = appliesChanges ? Change.latestPerDocument(batch) : batch
            if source.keepsDocuments && !appliesChanges {
                try queue.enqueueExternal(documents: batch.count, checksum: BatchIntegrity.checksum(batch), position: position)
                return
            }
            var payload: [UInt8] = []
            payload.reserveCapacity(batch.reduce(0) { $0 + $1.count })
            for doc in batch { payload += doc }
            let id = try queue.enqueue(payload: payload, documents: batch.count, position: position)
            if appliesChanges { metrics.staged(batch: id, oldestChange: Self.oldestTime(batch)) }
        }
        metrics.observe(queue)
        CrashPoint.enqueued.reach()
    }

    /// The oldest time on the source's clock of a batch of change envelopes.
    private static func oldestTime(_ changes: [[UInt8]]) -> Double? {
        changes.compactMap { envelope in envelope.withUnsafeBytes { Change.parse($0)?.time } }.min()
    }

    /// Reads a batch found damaged in the queue again from the source, once: the documents
    /// after its recorded start position, as many as it held, ending at the same position.
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
        let cursor = try source.open(after: extent.after, batchSize: Int32(min(extent.documents, 1_000)))
        var payload: [UInt8] = []
        var read = 0
        while read < extent.documents, let doc = try cursor.next() {
            payload += doc
            read += 1
        }
        guard read == extent.documents, cursor.position == extent.last, BSONSequence.ranges(payload)?.count == extent.documents else {
            throw DamagedBatch(id: damaged.id, file: damaged.file,
                               problem: damaged.problem + ", and the source no longer holds the same documents to read it again")
        }
        try queue.replacePayload(damaged.id, with: payload)
        logger.warning("a queued batch was damaged; read its documents again from the source", metadata: [
            "pipeline": "\(name)", "batch": "\(damaged.id)", "problem": "\(damaged.problem)", "documents": "\(extent.documents)",
        ])
    }

    /// The batch with its documents: as claimed, or read from the source for a batch the
    /// queue left there, checked against the count and checksum it recorded. Bytes that no
    /// longer match mean the source changed under the job: that stops it (exit 65), since
    /// reading it again would load the changed documents.
    func documents(of batch: QueueBatch) throws -> QueueBatch {
        guard batch.isExternal else { return batch }
        guard let extent = try queue.extent(of: batch.id) else {
            throw JobError(.ioError, "batch \(batch.id) of the \(name) queue lost its place in \(source.description); \(JobError.untrustedState)")
        }
        let payload = try clock.measure(.extract) {
            try source.documents(from: extent.after, to: extent.last, batch: batch.id) { try queue.checkExternal(batch.id, payload: $0) }
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

/// Lags of the batches of changes a run committed, in seconds.
final class LagRecorder: Sendable {
    private let lags = Mutex<[Double]>([])

    func record(_ lag: Double) { lags.withLock { $0.append(max(0, lag)) } }
    var all: [Double] { lags.withLock { $0 } }
}
