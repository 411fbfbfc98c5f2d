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
    /// The mapping the batch being loaded is transformed and COPYed with.
    private var mapping: any DocumentMapping

    /// Attempts per batch when the connection to PostgreSQL breaks.
    static let maxAttempts = 6

    init(processor: PipelineProcessor, index: Int) {
        self.processor = processor
        self.index = index
        mapping = processor.mapping
    }

    /// The session goes to the run's next stage (the final step) rather than closing.
    func close() {
        if let connection { processor.target.release(connection) }
        connection = nil
    }

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
        processor.metrics.observe(queue)
        processor.logger.debug("claimed a batch", metadata: [
            "pipeline": "\(processor.name)", "batch": "\(batch.id)", "documents": "\(batch.documentCount)",
        ])
        defer { processor.metrics.observe(queue) }
        do {
            try load(try processor.documents(of: batch), stop: stop)
        } catch {
            try? queue.requeue(batch.id)
            throw error
        }
        return .worked
    }

    private func load(_ batch: QueueBatch, stop: StopToken) throws {
        // A full disk is not retried even at COMMIT: resume settles that batch by its checkpoint row.
        let retryable: (any Error) -> Bool = {
            $0 is TargetLock.Lost || (($0 as? PGError).map { !$0.isDiskFull && ($0.isTransient || $0.atCommit) } ?? false)
        }
        try Retry(retries: Self.maxAttempts - 1).run(stop: stop, clock: processor.clock, isRetryable: retryable) { attempt in
            connection = nil
            processor.metrics.retried(Self.cause(attempt.error))
            processor.logger.warning("batch failed; retrying it", metadata: [
                "pipeline": "\(processor.name)", "batch": "\(batch.id)", "attempt": "\(attempt.number)", "error": "\(attempt.error)",
            ])
        } body: { _ in
            try Liveness.during("loading batch \(batch.id) of \(processor.name)") { try attempt(batch, stop: stop) }
        }
    }

    /// Why a batch's attempt failed, as the retries metric counts it.
    private static func cause(_ error: any Error) -> EngineMetrics.RetryCause {
        if error is TargetLock.Lost { return .targetLock }
        return (error as? PGError)?.atCommit == true ? .targetCommit : .targetConnection
    }

    /// One attempt at a batch: settled by its checkpoint row, or loaded in one transaction.
    private func attempt(_ batch: QueueBatch, stop: StopToken) throws {
        // A lock lost with its session is taken again before anything is read or written;
        // when another run holds it or took it meanwhile, this run stops here.
        try processor.lock.regain()
        let db = try database()
        // A stop that outlasts its grace period cancels the statement running here.
        let cancel = db.canceller()
        let key = stop.onEscalation { cancel?.cancel() }
        defer { stop.remove(key) }
        // The batch may have committed already, its reply lost: after a broken connection,
        // or in an earlier run that requeued it. The checkpoint row says; one lookup per batch.
        if let outcome = try Checkpoint.outcome(db, pipeline: processor.name, job: processor.jobId, batch: batch.id, payload: batch.payload,
                                                changes: processor.appliesChanges, position: batch.position) {
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
    }

    private func database() throws -> PGConnection {
        if let connection, connection.isHealthy { return connection }
        let db = try processor.target.releasedOrConnect()
        connection = db
        return db
    }

    /// One transaction: remove the rows of the documents a batch of changes replaces or
    /// deletes, COPY the batch's rows, isolating documents PostgreSQL rejects, write the
    /// checkpoint row, COMMIT.
    private func loadOnce(_ batch: QueueBatch, into db: PGConnection) throws -> BatchOutcome {
        guard let documents = BatchDocuments(batch.payload, changes: processor.appliesChanges) else {
            throw DamagedBatch(id: batch.id, file: processor.queue.directory + "/data.mdb", problem: "its documents are not laid end to end")
        }
        var version = processor.inForce.current
        mapping = version.mapping
        var setAside: [Int: String] = [:]
        for (i, kind) in documents.kinds.enumerated() where kind == .invalid { setAside[i] = "not a change the engine can apply" }
        let keys = processor.appliesChanges ? documentKeys(batch.payload, documents, setAside: &setAside) : nil
        let copying = documents.copied
        let unchanged = setAside
        var unmapped: [Int: [UnmappedField]] = [:]
        var rows = processor.clock.measure(.transform) {
            transform(batch.payload, documents.ranges, indices: copying.filter { setAside[$0] == nil }, setAside: &setAside, unmapped: &unmapped)
        }

        let began = ContinuousClock.now
        do {
            try traced("BEGIN; the target lock's fence (pipelined)", batch: batch.id) { try processor.lock.beginFenced(db) }
            var evolution: Evolution?
            let noted = unmapped
            // Documents the first transform set aside count too: a field that changed type
            // (an object become a string) leaves the columns under it absent, which its
            // evolution makes nullable.
            if mapping.unmappedPolicy == .evolve, !unmapped.isEmpty {
                let held = unmapped.keys.sorted().map { Array(batch.payload[documents.ranges[$0]]) }
                (version, evolution) = try evolve(db, batch: batch.id, from: version, documents: held)
                mapping = version.mapping
                // Transformed again with the mapping that holds them; a field it still cannot hold sets its document aside.
                (setAside, unmapped) = (unchanged, [:])
                rows = processor.clock.measure(.transform) {
                    transform(batch.payload, documents.ranges, indices: copying.filter { setAside[$0] == nil }, setAside: &setAside, unmapped: &unmapped)
                }
                let unholdable = unmapped.filter { setAside[$0.key] == nil && !$0.value.isEmpty }
                for (i, fields) in unholdable {
                    setAside[i] = "\(RejectReason("is not in the mapping, and the mapping could not be changed to hold it", at: fields[0].path))"
                }
                // Their rows were transformed with the others': transformed again without them, so that none is COPYed.
                if !unholdable.isEmpty {
                    rows = processor.clock.measure(.transform) {
                        transform(batch.payload, documents.ranges, indices: copying.filter { setAside[$0] == nil }, setAside: &setAside)
                    }
                }
            }
            try tally(db, batch.payload, documents.ranges, noted, setAside: setAside, evolution: evolution)
            let good = copying.filter { setAside[$0] == nil }
            if let keys, keys.count > 0 {
                try processor.clock.measure(.removal) {
                    try traced("DELETE the rows of \(keys.count) documents") {
                        try processor.target.deleteDocuments(db, mapping, keys: keys.parameter)
                    }
                }
            }
            var displaced: [Displaced] = []
            let counts = try copyIsolating(db, batch.payload, documents.ranges, good, prebuilt: rows, setAside: &setAside, displaced: &displaced)
            let deleted = documents.kinds.indices.filter { documents.kinds[$0] == .write(.delete) && setAside[$0] == nil }.count
            // Net: a document of an earlier batch this one displaced is no longer loaded.
            let outcome = BatchOutcome(
                documentsLoaded: copying.filter { setAside[$0] == nil }.count - displaced.count,
                rows: Dictionary(uniqueKeysWithValues: zip(mapping.tables.map(\.name), counts.map(Int64.init))),
                setAside: setAside.keys.sorted().map { i in
                    batch.payload[documents.ranges[i]].withUnsafeBytes { doc in
                        SetAsideDocument(batch: batch.id, documentId: BSONSequence.displayId(doc), reason: setAside[i]!, document: Array(doc))
                    }
                } + displaced.map { SetAsideDocument(batch: batch.id, documentId: $0.documentId, reason: $0.reason, document: []) },
                documentsDeleted: deleted, touched: documents.touched(batch.payload), latestChange: documents.times.compactMap { $0 }.max())
            CrashPoint.copied.reach()
            if let (name, write) = processor.mode.inBatchTransaction(pipeline: processor.name, batch: batch.id, queue: processor.queue) {
                try traced(name, batch: batch.id) { try write(db) }
            }
            // The checkpoint row and COMMIT in one round trip.
            let insert = Checkpoint.insertStatement(pipeline: processor.name, job: processor.jobId, batch: batch.id, outcome: outcome,
                                                    indices: setAside.keys.sorted() + displaced.map { _ in -1 }, position: batch.position)
            let results: [Result<PGRows, PGError>]
            do {
                results = try processor.clock.measure(.commit) {
                    try traced("INSERT INTO etl_checkpoints; COMMIT (pipelined)", batch: batch.id) { try db.pipeline([insert, ("COMMIT", [])]) }
                }
            } catch let error as PGError {
                // The connection broke: whether COMMIT ran is unknown, as when its reply is lost.
                throw error.failingCommit()
            }
            if case .failure(let error) = results[0] { throw error }
            // A COMMIT the server refused rolled the transaction back: the batch can be retried.
            if case .failure(let error) = results[1] { throw error.failingCommit() }
            if let evolution {
                processor.inForce.adopt(version)
                processor.logger.notice("the mapping now holds fields it did not name", metadata: [
                    "pipeline": "\(processor.name)", "batch": "\(batch.id)", "version": "\(version.number)",
                    "changes": "\(evolution.changes.joined(separator: "; "))",
                ])
            } else if version.number > processor.inForce.current.number {
                processor.inForce.adopt(version)
            }
            processor.metrics.committed(
                batch: batch.id, outcome, changes: processor.appliesChanges, transaction: ContinuousClock.now - began,
                changeTimes: documents.times.compactMap { $0 }, unmappedFields: noted.values.reduce(0) { $0 + $1.count })
            // How far behind the source its changes were when they committed: from the oldest.
            if let oldest = documents.times.compactMap({ $0 }).min() { processor.lags.record(Date().timeIntervalSince1970 - oldest) }
            return outcome
        } catch {
            if db.isHealthy { _ = try? db.execute("ROLLBACK") }
            throw error
        }
    }

    /// The keys of the documents a batch of changes replaces or deletes, as one binary array
    /// parameter; a change whose key the mapping cannot tell is set aside (nothing of it is
    /// removed or written).
    private func documentKeys(_ payload: [UInt8], _ documents: BatchDocuments, setAside: inout [Int: String]) -> (parameter: [UInt8], count: Int)? {
        guard let type = processor.mapping.documentKeyType else {
            for i in documents.keyed where setAside[i] == nil { setAside[i] = "the \(processor.name) pipeline cannot tell a document's key from its _id" }
            return nil
        }
        var keys = BinaryCopyWriter(elements: documents.envelopes.count)
        var count = 0
        payload.withUnsafeBytes { raw in
            for i in documents.keyed where setAside[i] == nil {
                let envelope = documents.envelopes[i]
                let mark = keys.mark
                do throws(RejectReason) {
                    try processor.mapping.documentKey(UnsafeRawBufferPointer(rebasing: raw[envelope]), into: &keys)
                    count += 1
                } catch {
                    keys.rollback(to: mark)
                    setAside[i] = "\(error)"
                }
            }
        }
        return (keys.arrayParameter(elementOID: type, count: count), count)
    }

    /// Transforms the documents at `indices`; those that do not fit go to `setAside`, the
    /// fields the mapping does not name to `unmapped`, by document.
    private func transform(_ payload: [UInt8], _ ranges: [Range<Int>], indices: [Int], setAside: inout [Int: String]) -> MappedRows {
        var unmapped: [Int: [UnmappedField]] = [:]
        return transform(payload, ranges, indices: indices, setAside: &setAside, unmapped: &unmapped)
    }

    private func transform(_ payload: [UInt8], _ ranges: [Range<Int>], indices: [Int], setAside: inout [Int: String],
                           unmapped: inout [Int: [UnmappedField]]) -> MappedRows {
        var rows = MappedRows(mapping, expectedDocuments: indices.count, maxDocumentBytes: processor.settings.maxDocumentBytes)
        var fields: [UnmappedField] = []
        payload.withUnsafeBytes { raw in
            for i in indices {
                do {
                    try rows.add(document: UnsafeRawBufferPointer(rebasing: raw[ranges[i]]), unmapped: &fields)
                } catch {
                    setAside[i] = "\(error)"
                }
                if !fields.isEmpty {
                    unmapped[i] = fields
                    fields.removeAll(keepingCapacity: true)
                }
            }
        }
        return rows
    }

    /// Under the pipeline's evolution lock (taken until this batch's transaction ends, so
    /// that batches of any process meeting new fields take turns): the mapping in force now,
    /// which another batch may have evolved meanwhile, changed to hold what `documents`
    /// bring; its tables altered and the new version recorded in this transaction, so that a
    /// kill before COMMIT leaves neither the columns nor the rows.
    private func evolve(_ db: PGConnection, batch: UInt64, from version: MappingInForce.Version,
                        documents: [[UInt8]]) throws -> (MappingInForce.Version, Evolution?) {
        try MappingLedger.lock(db, pipeline: processor.name, schema: processor.target.schema)
        var current = version
        let recorded = try processor.job.inForce(db)
        if recorded.mappingVersion > current.number { current = MappingInForce.Version(number: recorded.mappingVersion, mapping: recorded.mapping) }
        // A new table never takes the name of one the schema holds already (another pipeline's, or one a job replaced by start --fresh added).
        let taken = Set(try db.query("SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace($1)", [quoteIdentifier(processor.target.schema)])
            .rows.compactMap { $0[0] }).subtracting(current.mapping.tables.map(\.name))
        guard let evolution = current.mapping.evolved(holding: documents, taken: taken), let definition = evolution.mapping.definition else { return (current, nil) }
        try processor.target.evolve(db, from: current.mapping, to: evolution.mapping)
        if current.number == 0, let given = current.mapping.definition {
            try MappingLedger.record(db, pipeline: processor.name, version: 1, definition: given, job: processor.jobId, batch: nil, changes: ["as given"])
        }
        let number = max(current.number, 1) + 1
        try MappingLedger.record(db, pipeline: processor.name, version: number, definition: definition, job: processor.jobId, batch: batch,
                                 changes: evolution.changes)
        CrashPoint.evolved.reach()
        return (MappingInForce.Version(number: number, mapping: evolution.mapping), evolution)
    }

    /// Adds what the batch's documents brought that the mapping does not name to
    /// `etl_unmapped`, in the batch's transaction (so that counts are exact across kills).
    private func tally(_ db: PGConnection, _ payload: [UInt8], _ ranges: [Range<Int>], _ unmapped: [Int: [UnmappedField]],
                       setAside: [Int: String], evolution: Evolution?) throws {
        guard !unmapped.isEmpty else { return }
        let policy = mapping.unmappedPolicy
        var tally = UnmappedTally()
        payload.withUnsafeBytes { raw in
            for (i, fields) in unmapped.sorted(by: { $0.key < $1.key }) {
                tally.add(fields, documentId: BSONSequence.displayId(UnsafeRawBufferPointer(rebasing: raw[ranges[i]]))) { field in
                    if setAside[i] != nil { return UnmappedPolicy.setAside.outcome }
                    return policy.outcome
                }
            }
        }
        if let evolution { tally.settle { path in evolution.destinations[path].map { "evolved into \($0)" } } }
        try traced("INSERT INTO etl_unmapped: \(tally.summaries.count) paths") {
            try MappingLedger.add(db, pipeline: processor.name, tally.summaries)
        }
    }

    /// COPYs the rows of `indices` under a savepoint. When PostgreSQL rejects the data, it
    /// rolls back to the savepoint and loads each half separately, down to single documents,
    /// which are set aside with the server's message (or, for a repeated value, weighed
    /// against the document holding it: `displacing`). Returns rows loaded per table, net of
    /// the rows of documents displaced.
    private func copyIsolating(
        _ db: PGConnection, _ payload: [UInt8], _ ranges: [Range<Int>], _ indices: [Int],
        prebuilt: MappedRows?, setAside: inout [Int: String], displaced: inout [Displaced]
    ) throws -> [Int] {
        let tables = mapping.tables
        guard !indices.isEmpty else { return Array(repeating: 0, count: tables.count) }
        let rows = prebuilt ?? transform(payload, ranges, indices: indices, setAside: &setAside)
        do {
            try copy(db, rows, between: ("SAVEPOINT isolate;", "RELEASE SAVEPOINT isolate;"))
            return rows.tables.map(\.rowCount)
        } catch let error as PGError where error.isDataError {
            try sql(db, "ROLLBACK TO SAVEPOINT isolate; RELEASE SAVEPOINT isolate")
            if indices.count == 1 {
                switch try displacing(db, payload, ranges[indices[0]], rows, error: error) {
                case .loaded(let counts, let others):
                    displaced += others
                    return counts
                case .setAside(let reason):
                    setAside[indices[0]] = reason
                    return Array(repeating: 0, count: tables.count)
                }
            }
            let half = indices.count / 2
            let first = try copyIsolating(db, payload, ranges, Array(indices[..<half]), prebuilt: nil, setAside: &setAside, displaced: &displaced)
            let second = try copyIsolating(db, payload, ranges, Array(indices[half...]), prebuilt: nil, setAside: &setAside, displaced: &displaced)
            return zip(first, second).map(+)
        }
    }

    /// COPYs prepared rows, every table in one query (one round trip a table), between
    /// `between`'s statements.
    private func copy(_ db: PGConnection, _ rows: MappedRows, between: (before: String, after: String) = ("", "")) throws {
        let tables = mapping.tables.indices.filter { !rows.tables[$0].isEmpty }
        let copies = tables.map { t in
            PGCopy(table: mapping.tables[t].quotedName, columns: mapping.tables[t].quotedColumns, parts: [rows.tables[t].bytes, BinaryCopyWriter.trailer])
        }
        try processor.clock.measure(.copy) {
            try traced(tables.map { "COPY \(mapping.tables[$0].quotedName) FROM STDIN (FORMAT binary): \(rows.tables[$0].rowCount) rows, \(rows.tables[$0].bytes.count) bytes" }
                .joined(separator: "; ") + " (one query\(between.before.isEmpty ? "" : ", after \(between.before) and before \(between.after)"))") {
                try db.copyIn(copies, before: between.before, after: between.after)
            }
        }
    }

    /// A document of an earlier batch that a document of this one displaced: set aside, its
    /// rows removed in this batch's transaction.
    struct Displaced {
        var documentId: String
        var reason: String
    }

    enum Weighed {
        /// The document loaded (rows per table, net of the displaced documents' rows).
        case loaded([Int], displaced: [Displaced])
        /// The document is set aside for this reason.
        case setAside(String)
    }

    /// A snapshot's document PostgreSQL rejected for a value (a unique or primary key) that
    /// an already loaded document holds: the document with the smaller `_id` keeps it,
    /// whichever loaded first, so that the rows do not depend on the order batches commit in
    /// (several loaders, several workers, a resume). When this one's `_id` is the smaller,
    /// the holder's rows are removed in this transaction and it is set aside with the
    /// reason; each value this document repeats is weighed so, and if any holder comes
    /// first, nothing is removed and this document is set aside. Changes (sync) keep the
    /// rule that the change is set aside; so does a repeated `_id` (one key), a key over
    /// several columns, and a pipeline that cannot tell a document's key.
    private func displacing(_ db: PGConnection, _ payload: [UInt8], _ range: Range<Int>, _ rows: MappedRows, error first: PGError) throws -> Weighed {
        let plain = "rejected by PostgreSQL: \(first)"
        guard !processor.appliesChanges, first.sqlState == "23505", let keyType = mapping.documentKeyType else { return .setAside(plain) }
        var writer = BinaryCopyWriter(elements: 1)
        let keyed = payload.withUnsafeBytes { raw -> Bool in
            do throws(RejectReason) {
                try mapping.documentKey(UnsafeRawBufferPointer(rebasing: raw[range]), into: &writer)
                return true
            } catch {
                return false
            }
        }
        guard keyed else { return .setAside(plain) }
        let key = writer.arrayParameter(elementOID: keyType, count: 1)
        let name = payload[range].withUnsafeBytes(BSONSequence.displayId)
        var error = first
        var reason = plain
        var displaced: [Displaced] = []
        var removed = Array(repeating: 0, count: mapping.tables.count)
        try sql(db, "SAVEPOINT displace")
        // Each round frees one value; a document repeats at most a few.
        for _ in 0..<8 {
            guard error.sqlState == "23505", let holder = try holder(db, error, key: key) else {
                reason = "rejected by PostgreSQL: \(error)"
                break
            }
            guard holder.outranked else {
                reason = Self.repeated(holder.value, by: holder.documentId)
                break
            }
            let gone = try processor.target.deleteDocuments(db, mapping, printedKeys: [holder.key])
            // Nothing removed: another batch displaced it meanwhile; the COPY says what holds the value now.
            if gone[0] > 0 {
                displaced.append(Displaced(documentId: holder.documentId, reason: Self.repeated(holder.value, by: name)))
                removed = zip(removed, gone).map(+)
            }
            try sql(db, "SAVEPOINT attempt")
            do {
                try copy(db, rows)
                try sql(db, "RELEASE SAVEPOINT attempt; RELEASE SAVEPOINT displace")
                return .loaded(zip(rows.tables.map(\.rowCount), removed).map(-), displaced: displaced)
            } catch let next as PGError where next.isDataError {
                try sql(db, "ROLLBACK TO SAVEPOINT attempt; RELEASE SAVEPOINT attempt")
                error = next
            }
        }
        try sql(db, "ROLLBACK TO SAVEPOINT displace; RELEASE SAVEPOINT displace")
        return .setAside(reason)
    }

    /// The document holding the value `error` names (not the document's own key repeated):
    /// the value as the server names it (`"users_email_key": Key (email)=(a@example.com)`),
    /// the holder's key as PostgreSQL prints it and its `_id` as `status` shows it, and
    /// whether its key is greater than `key` (that of the document repeating the value).
    private func holder(_ db: PGConnection, _ error: PGError, key: [UInt8]) throws -> (value: String, key: String, documentId: String, outranked: Bool)? {
        let tables = mapping.tables
        guard let constraint = error.constraint, let detail = error.detail, let t = tables.firstIndex(where: { $0.name == error.table }) else { return nil }
        let table = tables[t]
        let columns = try db.query("""
            SELECT a.attname FROM pg_constraint c CROSS JOIN LATERAL unnest(c.conkey) AS k(attnum)
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
            WHERE c.conrelid = $1::regclass AND c.conname = $2
            """, [table.quotedName, constraint]).rows.compactMap { $0[0] }
        let suffix = " already exists."
        // A repeated document key (the root's own key) has nothing to weigh.
        guard columns.count == 1, let column = columns.first, !(t == 0 && column == table.documentRows.column),
              let open = detail.range(of: ")=("), detail.hasSuffix(suffix) else { return nil }
        let value = String(detail[open.upperBound..<detail.index(detail.endIndex, offsetBy: -(suffix.count + 1))])
        let row = try db.query("""
            SELECT (\(table.documentKeyExpression))::text, \(table.documentKeyExpression) > ALL($2) FROM \(table.quotedName)
            WHERE \(quoteIdentifier(column)) = $1 LIMIT 1
            """, [value], binary: [key]).rows.first
        guard let row, let holder = row[0], let documentId = mapping.displayId(ofKey: holder) else { return nil }
        return ("\"\(constraint)\": \(detail.dropLast(suffix.count))", holder, documentId, row[1] == "t")
    }

    /// Why a document that repeats a value is set aside, whichever of the two loaded first.
    static func repeated(_ value: String, by holder: String) -> String {
        "rejected by PostgreSQL: duplicate key value violates unique constraint \(value), which _id \(holder) also has "
            + "and keeps (the smaller _id keeps a repeated value)"
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
