import ETLCore
import Foundation
import Logging
import Postgres
import Queue

/// What `status --partitions` shows of the target's jobs split into partitions, read from
/// the target alone: each partition pending, claimed by a live worker (host, pid, session)
/// or done, with its documents, rows and rate, and each job's ETA.
public struct PartitionedJobStatus: Sendable {
    public struct Partition: Sendable {
        public enum State: String, Sendable { case pending, claimed, done }
        public var number: Int
        public var state: State
        public var host: String?
        public var pid: Int?
        public var session: Int?
        /// When the current (or last) worker claimed it.
        public var claimedAt: Date?
        /// How many times a worker claimed it (more than one: a worker died or stopped).
        public var claims: Int
        public var documentsPlanned: Int64?
        /// Documents loaded or set aside so far (batches committed, whoever committed them).
        public var documents: Int64
        public var setAside: Int64
        public var rows: Int64
        /// Documents a second while its current worker held it (done: over its last claim).
        public var rate: Double?
    }

    public var job: String
    public var pipeline: String
    public var method: String
    public var plannedAt: Date?
    public var finishedAt: Date?
    public var finishedBy: String?
    public var partitions: [Partition]

    public var documents: Int64 { partitions.reduce(0) { $0 + $1.documents } }
    public var documentsPlanned: Int64? {
        partitions.allSatisfy { $0.documentsPlanned != nil } ? partitions.reduce(0) { $0 + $1.documentsPlanned! } : nil
    }
    /// Seconds left at the rate the job has loaded since its first claim; nil when unknown.
    public var etaSeconds: Double? {
        guard finishedAt == nil, let planned = documentsPlanned, let first = partitions.compactMap(\.claimedAt).min() else { return finishedAt == nil ? nil : 0 }
        let elapsed = Date().timeIntervalSince(first)
        guard elapsed > 0, documents > 0 else { return nil }
        return Double(max(0, planned - documents)) / (Double(documents) / elapsed)
    }

    /// Every job split into partitions in the schema of `db` (named `schema`), oldest first.
    public static func read(_ db: PGConnection, schema: String) throws -> [PartitionedJobStatus] {
        guard try PartitionTable.exists(db) else { return [] }
        let rows = try db.query("""
            WITH progress AS (
              SELECT job_id, sum(documents_loaded + jsonb_array_length(set_aside))::bigint AS documents, sum(jsonb_array_length(set_aside))::bigint AS set_aside,
                     sum((SELECT coalesce(sum(value::bigint), 0) FROM jsonb_each_text(rows)))::bigint AS rows
              FROM etl_checkpoints GROUP BY job_id)
            SELECT j.job_id, j.pipeline, j.method, extract(epoch FROM j.planned_at), extract(epoch FROM j.finished_at), j.finished_by,
                   p.partition, p.done_at IS NOT NULL, p.claimed_host, p.claimed_pid, p.claimed_session, extract(epoch FROM p.claimed_at), p.claims,
                   p.documents_planned, coalesce(pr.documents, 0), coalesce(pr.set_aside, 0), coalesce(pr.rows, 0),
                   extract(epoch FROM coalesce(p.done_at, now()) - p.claimed_at),
                   \(PartitionTable.leaseHeld(session: "p.claimed_session"))
            FROM etl_partitioned_jobs j JOIN etl_partitions p USING (job_id)
            LEFT JOIN progress pr ON pr.job_id = j.job_id || '/' || p.partition
            ORDER BY j.planned_at, j.job_id, p.partition
            """, [schema]).rows
        var jobs: [PartitionedJobStatus] = []
        func date(_ text: String?) -> Date? { text.flatMap(Double.init).map { Date(timeIntervalSince1970: $0) } }
        for row in rows {
            if jobs.last?.job != row[0] {
                jobs.append(PartitionedJobStatus(job: row[0]!, pipeline: row[1]!, method: row[2] ?? "", plannedAt: date(row[3]), finishedAt: date(row[4]),
                                                 finishedBy: row[5], partitions: []))
            }
            let done = row[7] == "t", live = row[18] == "t"
            let state: Partition.State = done ? .done : live ? .claimed : .pending
            let documents = Int64(row[14] ?? "0") ?? 0
            let seconds = row[17].flatMap(Double.init)
            jobs[jobs.count - 1].partitions.append(Partition(
                number: Int(row[6]!) ?? 0, state: state, host: row[8], pid: row[9].flatMap(Int.init), session: row[10].flatMap(Int.init),
                claimedAt: date(row[11]), claims: Int(row[12] ?? "0") ?? 0, documentsPlanned: row[13].flatMap(Int64.init),
                documents: documents, setAside: Int64(row[15] ?? "0") ?? 0, rows: Int64(row[16] ?? "0") ?? 0,
                rate: state == .pending ? nil : seconds.flatMap { $0 > 0 ? Double(documents) / $0 : nil }))
        }
        return jobs
    }
}

extension PartitionedJobStatus {
    /// A document a job split into partitions set aside, as its checkpoint row records it
    /// (the target holds its `_id` and reason; the document itself is in the source).
    public struct SetAside: Sendable {
        public var partition: Int
        public var batch: Int64
        public var documentId: String
        public var reason: String
    }

    /// The documents this job's batches set aside, partition by partition, in batch order.
    public func setAside(_ db: PGConnection) throws -> [SetAside] {
        try db.query("""
            SELECT split_part(c.job_id, '/', 2)::int, c.batch_id, e.value->>'id', e.value->>'reason'
            FROM etl_checkpoints c CROSS JOIN LATERAL jsonb_array_elements(c.set_aside) WITH ORDINALITY AS e(value, n)
            WHERE c.pipeline = $1 AND c.job_id LIKE $2 || '/%'
            ORDER BY 1, 2, e.n
            """, [pipeline, job]).rows.map {
            SetAside(partition: Int($0[0] ?? "0") ?? 0, batch: Int64($0[1] ?? "0") ?? 0, documentId: $0[2] ?? "?", reason: $0[3] ?? "?")
        }
    }
}

/// What `verify` needs of a job split into partitions (it has no state directory): the
/// latest job of each pipeline in the schema, its recorded source and mapping, the documents
/// its batches set aside (by `_id`, from their checkpoint rows) and whether its keys are still
/// to be built.
public struct RecordedPartitionedJob: Sendable {
    public var pipeline: String
    public var definition: String?
    public var identity: JobIdentity
    public var setAside: [String: Int]
    public var keysPending: Bool

    public static func latest(_ settings: JobSettings) throws -> [RecordedPartitionedJob] {
        let target = Target(url: settings.postgresURL, schema: settings.targetSchema ?? JobSettings.defaultSchema)
        let db: PGConnection
        do { db = try target.connect() } catch { throw JobError.connecting(error) }
        guard try PartitionTable.exists(db) else { return [] }
        let rows = try db.execute("""
            SELECT DISTINCT ON (pipeline) \(PartitionedJob.columns), finished_at IS NULL FROM etl_partitioned_jobs ORDER BY pipeline, planned_at DESC
            """).rows
        return try rows.map { row in
            guard let job = PartitionedJob(row) else { throw JobPlan.damagedPartitionedJob(row[0], unreadable: false) }
            let ids = try db.query("""
                SELECT e->>'id' FROM etl_checkpoints, jsonb_array_elements(set_aside) e WHERE pipeline = $1 AND job_id LIKE $2 || '/%'
                """, [job.pipeline, job.id]).rows.compactMap { $0[0] }
            return RecordedPartitionedJob(pipeline: job.pipeline, definition: job.definition, identity: job.identity,
                                          setAside: ids.reduce(into: [:]) { $0[$1, default: 0] += 1 },
                                          keysPending: row[7] == "t" && job.keyMode.foreignKeysAfter)
        }
    }
}
