import ETLCore
import Foundation
import Logging
import Postgres
import Queue

/// One partition of a job split into partitions.
public struct PartitionRef: Sendable, Equatable {
    public var job: String
    public var number: Int
}

/// A job split into partitions (`start --partitions N`), recorded in the target schema, where
/// workers on any machine claim its partitions one at a time (`etl-job worker`).
///
/// A claim is a row lock (`FOR UPDATE SKIP LOCKED`, so two workers never weigh the same
/// partition at once) turned into a lease: a session-level advisory lock on the partition,
/// held by the worker's own PostgreSQL session for as long as it loads it. A worker that
/// dies (kill -9, its machine gone) loses its session and with it the lease, and the next
/// worker that looks claims the partition. Every batch of a partition commits fenced by that
/// lease (`TargetLock`), with its checkpoint row, under the partition's own job id: batches
/// are cut by count alone, so whoever reads the partition again cuts the same batches, skips
/// those whose checkpoint row is in PostgreSQL, and loads the rest once.
public enum PartitionTable {
    /// Marks a partition done with what its batches' checkpoint rows sum to (documents
    /// loaded, set aside, rows); returns those. Run again, it keeps the first time.
    @discardableResult
    static func markDone(_ db: PGConnection, _ partition: PartitionRef, pipeline: String) throws -> (loaded: Int64, setAside: Int64, rows: Int64) {
        let row = try db.query("""
            WITH sums AS (
              SELECT coalesce(sum(documents_loaded), 0) AS loaded, coalesce(sum(jsonb_array_length(set_aside)), 0) AS set_aside,
                     coalesce(sum((SELECT sum(value::bigint) FROM jsonb_each_text(rows))), 0) AS rows
              FROM etl_checkpoints WHERE pipeline = $3 AND job_id = $4)
            UPDATE etl_partitions SET done_at = coalesce(done_at, now()), documents_loaded = sums.loaded, documents_set_aside = sums.set_aside, rows = sums.rows
            FROM sums WHERE job_id = $1 AND partition = $2 RETURNING sums.loaded, sums.set_aside, sums.rows
            """, [partition.job, String(partition.number), pipeline, partitionJob(partition.job, partition.number)]).rows[0]
        try notifyWaitingWorkers(db)
        return (Int64(row[0]!) ?? 0, Int64(row[1]!) ?? 0, Int64(row[2]!) ?? 0)
    }

    /// Where workers waiting for others hear that a partition is done or a job finished.
    static let channel = "etl_partitions"

    /// Wakes the workers waiting on `channel` when the current transaction commits (at once
    /// outside one), so that the last of them exits, or runs the final step, without waiting
    /// out its next look.
    static func notifyWaitingWorkers(_ db: PGConnection) throws {
        try db.execute("NOTIFY \(channel)")
    }

    /// Inside the transaction of batch `batch` of a partition's run, before it commits: marks
    /// the partition done there when this batch is its last, that is when the source is read
    /// to its end, nothing is pending, and every other batch in flight has committed. (When two
    /// last batches commit at once, neither may see the other's commit; the worker marks the
    /// partition done after its run then.)
    static func markDoneIfLast(_ db: PGConnection, _ partition: PartitionRef, pipeline: String, batch: UInt64, queue: DurableQueue) throws {
        guard let last = try queue.lastBatches(), last.contains(batch) else { return }
        let others = last.filter { $0 != batch }
        if !others.isEmpty {
            let committed = try db.query("SELECT count(*) FROM etl_checkpoints WHERE pipeline = $1 AND job_id = $2 AND batch_id = ANY($3::bigint[])",
                                         [pipeline, partitionJob(partition.job, partition.number), postgresArray(others.map(String.init))]).rows[0][0]
            guard committed == String(others.count) else { return }
        }
        try markDone(db, partition, pipeline: pipeline)
    }

    static let statements = [
        """
        CREATE TABLE etl_partitioned_jobs (
            job_id text PRIMARY KEY,
            pipeline text NOT NULL,
            definition text,
            identity jsonb NOT NULL,
            key_mode text NOT NULL,
            batch_size integer NOT NULL,
            max_batch_bytes integer NOT NULL,
            method text NOT NULL,
            planned_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            finished_by text
        )
        """,
        "CREATE UNIQUE INDEX etl_partitioned_jobs_unfinished ON etl_partitioned_jobs (pipeline) WHERE finished_at IS NULL",
        """
        CREATE TABLE etl_partitions (
            job_id text NOT NULL REFERENCES etl_partitioned_jobs ON DELETE CASCADE,
            partition integer NOT NULL,
            lower bytea,
            upper bytea,
            documents_planned bigint,
            claimed_host text,
            claimed_pid integer,
            claimed_session integer,
            claimed_at timestamptz,
            claims integer NOT NULL DEFAULT 0,
            done_at timestamptz,
            documents_loaded bigint,
            documents_set_aside bigint,
            rows bigint,
            PRIMARY KEY (job_id, partition)
        )
        """,
    ]

    /// The job id of one partition's batches (their checkpoint rows).
    static func partitionJob(_ job: String, _ partition: Int) -> String { "\(job)/\(partition)" }

    /// The name of a partition's lease (and of its writer in `etl_writers`).
    static func leaseName(_ pipeline: String, _ job: String, _ partition: Int) -> String {
        LockName.lease(pipeline: .value(pipeline), partition: .value(String(partition)), job: .value(String(job.prefix(8)))).string
    }

    /// SQL: a session holds the lease of partition `p` of job `j` (the advisory lock of
    /// `leaseName`, as `TargetLock` names it, in the schema given as `$1`), by any session
    /// (`session` nil) or by the one that claimed it.
    static func leaseHeld(session: String? = nil) -> String {
        let lease = LockName.lease(pipeline: .value("j.pipeline"), partition: .value("p.partition"), job: .value("left(j.job_id, 8)"))
        return """
        EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2\(session.map { " AND l.pid = \($0)" } ?? "")
                AND l.classid = (\(TargetLock.namespace)::int4)::oid
                AND l.objid = (hashtext(\(LockName.writer(lease, schema: .value("$1")).sql)))::oid
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
        """
    }

    /// Whether the schema holds the partition tables (a target migrated by this version).
    static func exists(_ db: PGConnection) throws -> Bool {
        try db.execute("SELECT to_regclass('etl_partitioned_jobs') IS NOT NULL").rows[0][0] == "t"
    }

    /// The unfinished job split into partitions that writes `pipeline`, with its partitions
    /// done and planned, if there is one.
    static func unfinished(_ db: PGConnection, pipeline: String) throws -> (job: String, done: Int, partitions: Int)? {
        guard try exists(db) else { return nil }
        let row = try db.query("""
            SELECT j.job_id, count(p.done_at), count(p.partition) FROM etl_partitioned_jobs j LEFT JOIN etl_partitions p USING (job_id)
            WHERE j.pipeline = $1 AND j.finished_at IS NULL GROUP BY j.job_id
            """, [pipeline]).rows.first
        guard let row else { return nil }
        return (row[0]!, Int(row[1]!) ?? 0, Int(row[2]!) ?? 0)
    }
}

/// A job split into partitions, as its row records it.
struct PartitionedJob: Sendable {
    var id: String
    var pipeline: String
    var definition: String?
    var identity: JobIdentity
    var keyMode: ForeignKeyMode
    var batchSize: Int
    var maxBatchBytes: Int

    static let columns = "job_id, pipeline, definition, identity::text, key_mode, batch_size, max_batch_bytes"

    init?(_ row: [String?]) {
        guard let id = row[0], let pipeline = row[1], let identity = JobIdentity.decode(row[3].map { Array($0.utf8) }),
              let mode = row[4].flatMap(ForeignKeyMode.init), let size = row[5].flatMap(Int.init), let bytes = row[6].flatMap(Int.init) else { return nil }
        (self.id, self.pipeline, definition, self.identity, keyMode, batchSize, maxBatchBytes) = (id, pipeline, row[2], identity, mode, size, bytes)
    }

    /// Every unfinished job of the schema, oldest first.
    static func unfinished(_ db: PGConnection) throws -> [PartitionedJob] {
        try db.execute("SELECT \(columns) FROM etl_partitioned_jobs WHERE finished_at IS NULL ORDER BY planned_at, job_id").rows.map { row in
            guard let job = PartitionedJob(row) else {
                throw JobPlan.damagedPartitionedJob(row[0])
            }
            return job
        }
    }
}

/// One partition a worker holds: its range, and the lease that fences its writes.
struct ClaimedPartition: Sendable {
    var job: PartitionedJob
    var number: Int
    var range: SourcePartition
    var lease: TargetLock
    /// The PostgreSQL session that holds the lease, as the claim recorded it.
    var session: String
}
