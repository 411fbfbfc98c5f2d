import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue

/// The checkpoint row: written in the batch's own transaction, so it exists exactly when the
/// batch's rows do. It carries the outcome, so a batch can be marked done from it alone.
enum Checkpoint {
    /// The batch's row: the statement and its parameters (pipelined with COMMIT).
    static func insertStatement(pipeline: String, job: String, batch: UInt64, outcome: BatchOutcome, indices: [Int],
                                position: [UInt8]?) -> (sql: String, parameters: [String?]) {
        let setAside = zip(indices, outcome.setAside).map { ["index": $0.0, "id": $0.1.documentId, "reason": $0.1.reason] as [String: Any] }
        return ("""
            INSERT INTO etl_checkpoints (pipeline, job_id, batch_id, documents_loaded, rows, set_aside, documents_deleted, position)
            VALUES ($1, $2, $3, $4, $5, $6, $7, decode($8, 'hex'))
            """,
            [pipeline, job, String(batch), String(outcome.documentsLoaded), json(outcome.rows), json(setAside), String(outcome.documentsDeleted),
             position.map { $0.map { String(format: "%02x", $0) }.joined() }])
    }

    /// The outcome recorded for a batch, or nil when it never committed. `documents`: the
    /// batch's documents, for those it set aside.
    /// `position`: where the batch being settled ends in the source; a checkpoint that
    /// recorded another end is another batch (a partition read again after its source
    /// changed), which stops the job rather than take one for the other.
    static func outcome(_ db: PGConnection, pipeline: String, job: String, batch: UInt64, payload: [UInt8], changes: Bool,
                        position: [UInt8]? = nil) throws -> BatchOutcome? {
        let result = try db.query(
            "SELECT documents_loaded, rows, set_aside, documents_deleted, encode(position, 'hex') FROM etl_checkpoints WHERE pipeline = $1 AND job_id = $2 AND batch_id = $3",
            [pipeline, job, String(batch)])
        guard let row = result.rows.first else { return nil }
        if let position, let recorded = row[4], recorded != position.map({ String(format: "%02x", $0) }).joined() {
            throw JobError(.dataError, "batch \(batch) of job \(job) (pipeline \(pipeline)) committed ending elsewhere in the source than where it ends "
                + "when read again: the source changed since that batch was loaded, and its documents are no longer the ones loaded; "
                + "load it again with 'etl-job start --fresh'")
        }
        let rows = (parse(row[1]) as? [String: Any] ?? [:]).compactMapValues { ($0 as? NSNumber)?.int64Value }
        let documents = BatchDocuments(payload, changes: changes)
        let ranges = documents?.ranges ?? []
        let setAside = (parse(row[2]) as? [[String: Any]] ?? []).map { entry -> SetAsideDocument in
            let index = (entry["index"] as? NSNumber)?.intValue ?? -1
            let document = ranges.indices.contains(index) ? Array(payload[ranges[index]]) : []
            return SetAsideDocument(
                batch: batch, documentId: entry["id"] as? String ?? "?", reason: entry["reason"] as? String ?? "?",
                document: document)
        }
        return BatchOutcome(documentsLoaded: Int(row[0] ?? "0") ?? 0, rows: rows, setAside: setAside, documentsDeleted: Int(row[3] ?? "0") ?? 0,
                            touched: documents?.touched(payload) ?? [])
    }

    private static func json(_ value: Any) -> String {
        String(decoding: try! JSONSerialization.data(withJSONObject: value, options: [.sortedKeys]), as: UTF8.self)
    }

    private static func parse(_ text: String?) -> Any? {
        text.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) }
    }
}
