import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue

/// One worker: claims a batch, transforms it and loads it with COPY in one transaction that
/// also writes the batch's checkpoint row; only after COMMIT is the batch marked done.
final class BatchLoader: ETLWorker {
    private let processor: PipelineProcessor
    private let index: Int
    private var connection: PGConnection?

    /// Attempts per batch when the connection to PostgreSQL breaks.
    static let maxAttempts = 6

    init(processor: PipelineProcessor, index: Int) {
        self.processor = processor
        self.index = index
    }

    func close() { connection = nil }

    func step(stop: StopToken) throws -> WorkerStep {
        let queue = processor.queue
        let claimed: QueueBatch?
        do {
            claimed = try queue.claim()
        } catch let damaged as DamagedBatch {
            try processor.reread(damaged)
            return .worked
        }
        guard let batch = claimed else {
            if try queue.isDrained() { return .drained }
            processor.clock.measure(.waiting) { queue.waitForChange(timeout: 0.5) }
            return .idle
        }
        processor.logger.debug("claimed a batch", metadata: [
            "pipeline": "\(processor.name)", "batch": "\(batch.id)", "documents": "\(batch.documentCount)",
        ])
        do {
            try load(try processor.documents(of: batch), stop: stop)
        } catch {
            try? queue.requeue(batch.id)
            throw error
        }
        return .worked
    }

    private func load(_ batch: QueueBatch, stop: StopToken) throws {
        var attempt = 0
        while true {
            attempt += 1
            do {
                let db = try database()
                // A stop that outlasts its grace period cancels the statement running here.
                let cancel = db.canceller()
                let key = stop.onEscalation { cancel?.cancel() }
                defer { stop.remove(key) }
                // The batch may have committed already, its reply lost: after a broken connection,
                // or in an earlier run that requeued it. The checkpoint row says; one lookup per batch.
                if let outcome = try Checkpoint.outcome(db, pipeline: processor.name, job: processor.jobId, batch: batch.id, payload: batch.payload) {
                    try processor.queue.complete(batch.id, outcome: outcome)
                    return
                }
                let started = ContinuousClock.now
                let outcome = try loadOnce(batch, into: db)
                CrashPoint.committed.reach()
                try processor.queue.complete(batch.id, outcome: outcome)
                CrashPoint.acknowledged.reach()
                processor.logger.debug("committed a batch", metadata: [
                    "pipeline": "\(processor.name)", "batch": "\(batch.id)", "loaded": "\(outcome.documentsLoaded)",
                    "setAside": "\(outcome.setAside.count)", "rows": "\(outcome.rows.values.reduce(0, +))",
                    "ms": "\(Int((ContinuousClock.now - started).seconds * 1000))",
                ])
                return
            } catch let error as PGError where (error.isTransient || error.atCommit) && attempt < Self.maxAttempts {
                connection = nil
                if stop.isStopRequested { throw error }
                processor.logger.warning("batch failed; retrying it", metadata: [
                    "pipeline": "\(processor.name)", "batch": "\(batch.id)", "attempt": "\(attempt)", "error": "\(error)",
                ])
                let waited = processor.clock.measure(.waiting) { Backoff.wait(attempt: attempt, stop: stop) }
                if !waited { throw error }
            }
        }
    }

    private func database() throws -> PGConnection {
        if let connection, connection.isHealthy { return connection }
        let db = try processor.target.connect()
        connection = db
        return db
    }

    /// One transaction: COPY the batch's rows, isolating documents PostgreSQL rejects, write
    /// the checkpoint row, COMMIT.
    private func loadOnce(_ batch: QueueBatch, into db: PGConnection) throws -> BatchOutcome {
        let ranges = BSONSequence.ranges(batch.payload)
        var setAside: [Int: String] = [:]
        let rows = processor.clock.measure(.transform) { transform(batch.payload, ranges, indices: Array(ranges.indices), setAside: &setAside) }
        let good = ranges.indices.filter { setAside[$0] == nil }

        try sql(db, "BEGIN", batch: batch.id)
        do {
            let counts = try copyIsolating(db, batch.payload, ranges, good, prebuilt: rows, setAside: &setAside)
            let outcome = BatchOutcome(
                documentsLoaded: ranges.count - setAside.count,
                rows: Dictionary(uniqueKeysWithValues: zip(processor.mapping.tables.map(\.name), counts.map(Int64.init))),
                setAside: setAside.keys.sorted().map { i in
                    batch.payload[ranges[i]].withUnsafeBytes { doc in
                        SetAsideDocument(batch: batch.id, documentId: BSONSequence.displayId(doc), reason: setAside[i]!, document: Array(doc))
                    }
                })
            CrashPoint.copied.reach()
            try traced("INSERT INTO etl_checkpoints", batch: batch.id) {
                try Checkpoint.insert(db, pipeline: processor.name, job: processor.jobId, batch: batch.id, outcome: outcome, indices: setAside.keys.sorted())
            }
            do {
                try processor.clock.measure(.commit) { try sql(db, "COMMIT", batch: batch.id) }
            } catch let error as PGError {
                // A COMMIT the server refused rolled the transaction back: the batch can be retried.
                throw error.failingCommit()
            }
            return outcome
        } catch {
            if db.isHealthy { _ = try? db.execute("ROLLBACK") }
            throw error
        }
    }

    /// Transforms the documents at `indices`; those that do not fit go to `setAside`.
    private func transform(_ payload: [UInt8], _ ranges: [Range<Int>], indices: [Int], setAside: inout [Int: String]) -> MappedRows {
        var rows = MappedRows(processor.mapping, expectedDocuments: indices.count, maxDocumentBytes: processor.settings.maxDocumentBytes)
        payload.withUnsafeBytes { raw in
            for i in indices {
                do {
                    try rows.add(document: UnsafeRawBufferPointer(rebasing: raw[ranges[i]]))
                } catch {
                    setAside[i] = "\(error)"
                }
            }
        }
        return rows
    }

    /// COPYs the rows of `indices` under a savepoint. When PostgreSQL rejects the data, it
    /// rolls back to the savepoint and loads each half separately, down to single documents,
    /// which are set aside with the server's message. Returns rows loaded per table.
    private func copyIsolating(
        _ db: PGConnection, _ payload: [UInt8], _ ranges: [Range<Int>], _ indices: [Int],
        prebuilt: MappedRows?, setAside: inout [Int: String]
    ) throws -> [Int] {
        let tables = processor.mapping.tables
        guard !indices.isEmpty else { return Array(repeating: 0, count: tables.count) }
        let rows = prebuilt ?? transform(payload, ranges, indices: indices, setAside: &setAside)
        try sql(db, "SAVEPOINT isolate")
        do {
            try processor.clock.measure(.copy) {
                for (t, table) in tables.enumerated() where !rows.tables[t].isEmpty {
                    try traced("COPY \(table.quotedName) FROM STDIN (FORMAT binary): \(rows.tables[t].rowCount) rows, \(rows.tables[t].bytes.count) bytes") {
                        try db.copyIn(table.quotedName, columns: table.quotedColumns, binary: rows.tables[t].bytes, BinaryCopyWriter.trailer)
                    }
                }
            }
            try sql(db, "RELEASE SAVEPOINT isolate")
            return rows.tables.map(\.rowCount)
        } catch let error as PGError where error.isDataError {
            try sql(db, "ROLLBACK TO SAVEPOINT isolate; RELEASE SAVEPOINT isolate")
            if indices.count == 1 {
                setAside[indices[0]] = "rejected by PostgreSQL: \(error)"
                return Array(repeating: 0, count: tables.count)
            }
            let half = indices.count / 2
            let first = try copyIsolating(db, payload, ranges, Array(indices[..<half]), prebuilt: nil, setAside: &setAside)
            let second = try copyIsolating(db, payload, ranges, Array(indices[half...]), prebuilt: nil, setAside: &setAside)
            return zip(first, second).map(+)
        }
    }
}

extension BatchLoader {
    /// Runs a statement, logged with its time at trace level.
    private func sql(_ db: PGConnection, _ statement: String, batch: UInt64? = nil) throws {
        try traced(statement, batch: batch) { _ = try db.execute(statement) }
    }

    /// Runs `body`; at trace level, logs `what` with how long it took.
    private func traced<T>(_ what: @autoclosure () -> String, batch: UInt64? = nil, _ body: () throws -> T) rethrows -> T {
        guard processor.logger.logLevel <= .trace else { return try body() }
        let started = ContinuousClock.now
        let value = try body()
        var metadata: Logger.Metadata = ["pipeline": "\(processor.name)", "ms": "\(String(format: "%.1f", (ContinuousClock.now - started).seconds * 1000))"]
        if let batch { metadata["batch"] = "\(batch)" }
        processor.logger.trace("SQL \(what())", metadata: metadata)
        return value
    }
}

/// The checkpoint row: written in the batch's own transaction, so it exists exactly when the
/// batch's rows do. It carries the outcome, so a batch can be marked done from it alone.
enum Checkpoint {
    static func insert(_ db: PGConnection, pipeline: String, job: String, batch: UInt64, outcome: BatchOutcome, indices: [Int]) throws {
        let setAside = zip(indices, outcome.setAside).map { ["index": $0.0, "id": $0.1.documentId, "reason": $0.1.reason] as [String: Any] }
        try db.query(
            "INSERT INTO etl_checkpoints (pipeline, job_id, batch_id, documents_loaded, rows, set_aside) VALUES ($1, $2, $3, $4, $5, $6)",
            [pipeline, job, String(batch), String(outcome.documentsLoaded), json(outcome.rows), json(setAside)])
    }

    /// The outcome recorded for a batch, or nil when it never committed.
    static func outcome(_ db: PGConnection, pipeline: String, job: String, batch: UInt64, payload: [UInt8]) throws -> BatchOutcome? {
        let result = try db.query(
            "SELECT documents_loaded, rows, set_aside FROM etl_checkpoints WHERE pipeline = $1 AND job_id = $2 AND batch_id = $3",
            [pipeline, job, String(batch)])
        guard let row = result.rows.first else { return nil }
        let rows = (parse(row[1]) as? [String: Any] ?? [:]).compactMapValues { ($0 as? NSNumber)?.int64Value }
        let ranges = BSONSequence.ranges(payload)
        let setAside = (parse(row[2]) as? [[String: Any]] ?? []).map { entry -> SetAsideDocument in
            let index = (entry["index"] as? NSNumber)?.intValue ?? -1
            let document = ranges.indices.contains(index) ? Array(payload[ranges[index]]) : []
            return SetAsideDocument(
                batch: batch, documentId: entry["id"] as? String ?? "?", reason: entry["reason"] as? String ?? "?",
                document: document)
        }
        return BatchOutcome(documentsLoaded: Int(row[0] ?? "0") ?? 0, rows: rows, setAside: setAside)
    }

    private static func json(_ value: Any) -> String {
        String(decoding: try! JSONSerialization.data(withJSONObject: value, options: [.sortedKeys]), as: UTF8.self)
    }

    private static func parse(_ text: String?) -> Any? {
        text.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) }
    }
}
