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
                throw JobError(.software, "the row of job \(row[0] ?? "?") in etl_partitioned_jobs is damaged (its identity or settings cannot be read)")
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

/// What a worker did: the partitions it loaded, and the jobs it finished.
public struct WorkerReport: Sendable {
    public struct Loaded: Sendable {
        public var pipeline: String
        public var partition: Int
        public var documents: Int64
        public var setAside: Int64
        public var rows: Int64
        public var seconds: Double
    }

    public var loaded: [Loaded] = []
    /// Partitions another worker took over while this one was cut off from PostgreSQL.
    public var handedOver: [Int] = []
    /// The jobs whose final step (keys, finished) this worker ran.
    public var finished: [String] = []
    /// Jobs still unfinished when the worker stopped looking (`--no-wait`), by pipeline.
    public var unfinished: [String] = []
    public var seconds = 0.0

    public func render() -> String {
        var lines: [String] = []
        for part in loaded {
            lines.append("loaded partition \(part.partition) of \(part.pipeline): \(part.documents.formatted(.number.grouping(.automatic))) documents, "
                + "\(part.rows.formatted(.number.grouping(.automatic))) rows, \(part.setAside) set aside in \(String(format: "%.2f", part.seconds)) s")
        }
        for part in handedOver { lines.append("left partition \(part) to the worker that took it over while this one was cut off from PostgreSQL") }
        if loaded.isEmpty { lines.append("loaded no partition (the others' workers held or had done them all)") }
        for pipeline in finished { lines.append("finished the job of \(pipeline): its keys are in place") }
        for pipeline in unfinished { lines.append("the job of \(pipeline) is not finished: other workers hold its partitions") }
        lines.append("worker ran \(String(format: "%.2f", seconds)) s")
        return lines.joined(separator: "\n")
    }
}

extension DurableJob {
    // MARK: Planning

    /// `start --partitions N`: every refusal and preparation of `start` (the target locked,
    /// migrated, checked, emptied with `fresh`, its keys dropped for the load), then each
    /// pipeline's source split into at most `count` ranges, recorded with the job in the
    /// target schema. Loads nothing; returns what it planned, in words.
    public func planPartitions(_ mappings: [any DocumentMapping], fresh: Bool, count: Int) throws -> [String] {
        var (steps, run) = try planStart(mappings, fresh: fresh)
        var modes: [String: ForeignKeyMode] = [:]
        for case .createJob(let name, let mode) in steps { modes[name] = mode }
        // Everything but what makes a job of this machine's state directory.
        steps.removeAll { step in
            switch step {
            case .createJob, .writeManifest, .openChanges: true
            default: false
            }
        }
        // The ranges before anything is written: a source that cannot be split is refused first.
        var ranges: [String: (ranges: [SourcePartition], method: String)] = [:]
        for job in run.jobs {
            let split = try job.source.partitions(count)
            guard !split.ranges.isEmpty else { throw JobError(.noInput, "\(job.source.description) holds no document to split into partitions") }
            ranges[job.name] = split
        }
        try execute(steps, &run)
        CrashPoint.prepared.reach()
        var lines: [String] = []
        for job in run.jobs {
            let db = run.db(job.name)
            let id = UUID().uuidString.lowercased()
            let (split, method) = ranges[job.name]!
            let mode = modes[job.name] ?? .keysAfter
            // Before any worker reads a document: where a later sync starts (as `start` records it).
            let start = Self.changeStreamStart(job, when: "was planned")
            try db.withTransaction {
                try run.locks[job.name]?.fence(db)
                try db.query("""
                    INSERT INTO etl_partitioned_jobs (job_id, pipeline, definition, identity, key_mode, batch_size, max_batch_bytes, method, change_stream_start)
                    VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9)
                    """, [id, job.name, job.mapping.definition, String(decoding: try job.identity(db).encoded(), as: UTF8.self), mode.rawValue,
                          String(settings.bucket.batchSize), String(settings.bucket.maxBatchBytes), method,
                          String(decoding: try JSONEncoder().encode(start), as: UTF8.self)])
                for (i, range) in split.enumerated() {
                    try db.query("INSERT INTO etl_partitions (job_id, partition, lower, upper, documents_planned) VALUES ($1, $2, decode($3, 'hex'), decode($4, 'hex'), $5)",
                                 [id, String(i + 1), range.lower.map(Self.hex), range.upper.map(Self.hex), range.documents.map(String.init)])
                }
            }
            let counts = split.map { $0.documents.map { $0.formatted(.number.grouping(.automatic)) } ?? "?" }
            lines.append("etl-job: planned job \(id) of the \(job.name) pipeline: \(split.count) partitions of \(job.source.description) "
                + "(\(method)), documents \(counts.joined(separator: ", ")); keys: \(Self.describe(mode, job.mapping))")
            logger.info("planned a job split into partitions", metadata: ["pipeline": "\(job.name)", "job": "\(id)", "partitions": "\(split.count)"])
        }
        // For a worker that planned (`worker --partitions`), its first sessions.
        run.releaseConnections()
        for job in run.jobs { run.locks[job.name]?.handBack(to: job.target) }
        return lines
    }

    /// `sync` with a state directory that holds no job: when the target's latest job split
    /// into partitions of each pipeline is finished, this directory takes it as its snapshot
    /// (a manifest, and a queue per pipeline recording the job, its identity and where the
    /// change stream stood when it was planned), so that the changes made since the plan are
    /// applied as after `start`. Returns what it adopted, in words (nothing: not such a target).
    public func adoptPartitionedJobs(resolve: (String, String?) throws -> (any DocumentMapping)?) throws -> [String] {
        guard try RunManifest.read(settings.stateDirectory) == nil else { return [] }
        let target = Target(url: settings.postgresURL, schema: settings.targetSchema ?? JobSettings.defaultSchema)
        // A target that cannot be reached holds nothing to adopt here: the sync's own checks say why.
        guard let db = try? target.connect(), try PartitionTable.exists(db) else { return [] }
        let rows = try db.execute("""
            SELECT DISTINCT ON (pipeline) job_id, pipeline, definition, identity::text, key_mode, change_stream_start, finished_at IS NOT NULL
            FROM etl_partitioned_jobs ORDER BY pipeline, planned_at DESC
            """).rows
        guard !rows.isEmpty else { return [] }
        let stateLock = try takeLock()
        defer { withExtendedLifetime(stateLock) {} }
        var jobs: [PipelineJob] = []
        var modes: [String: ForeignKeyMode] = [:]
        var lines: [String] = []
        for row in rows {
            let (id, pipeline) = (row[0]!, row[1]!)
            guard row[6] == "t" else {
                throw JobError(.busy, "job \(id) of the \(pipeline) pipeline, split into partitions, is not finished; run 'etl-job worker' until it is "
                    + "(etl-job status --partitions shows it), then sync")
            }
            guard let mapping = try resolve(pipeline, row[2]) else {
                throw JobError(.usage, "job \(id) loads the \(pipeline) pipeline, which this etl-job does not know; name its mapping with --mapping")
            }
            let identity = JobIdentity.decode(Array(row[3]!.utf8))
            try PipelineJob.refuseUnfollowablePolicy([mapping], settings)
            let job = PipelineJob(mapping: mapping, settings: settings, recorded: identity)
            let mode = ForeignKeyMode(rawValue: row[4] ?? "") ?? .keysAfter
            let start = row[5].flatMap { try? JSONDecoder().decode(ChangeStreamStart.self, from: Data($0.utf8)) }
                ?? .unavailable("job \(id) was planned by an etl-job that did not record where the change stream stood; load it again with 'etl-job start --fresh'")
            let queue = try job.openQueue()
            try queue.createJob(id: id, sourceTotal: nil, identity: Array(row[3]!.utf8), foreignKeys: mode.rawValue)
            try recordChangeStreamStart(job, queue, start: start)
            // What the workers loaded, for `status` of this directory.
            let totals = try db.query("SELECT coalesce(sum(documents_loaded), 0), coalesce(sum(documents_set_aside), 0) FROM etl_partitions WHERE job_id = $1",
                                      [id]).rows[0]
            let rows = try db.query("""
                SELECT r.key, sum(r.value::bigint) FROM etl_checkpoints c CROSS JOIN LATERAL jsonb_each_text(c.rows) AS r
                WHERE c.pipeline = $1 AND c.job_id LIKE $2 || '/%' GROUP BY r.key
                """, [pipeline, id]).rows
            try queue.countLoadedElsewhere(documents: Int64(totals[0] ?? "0") ?? 0, setAside: Int64(totals[1] ?? "0") ?? 0,
                                           rows: Dictionary(uniqueKeysWithValues: rows.map { ($0[0]!, Int64($0[1] ?? "0") ?? 0) }))
            try queue.finishExtraction()
            try queue.markFinished()
            jobs.append(job)
            modes[pipeline] = mode
            lines.append("etl-job: took job \(id) of the \(pipeline) pipeline, split into partitions and finished, as this state directory's snapshot")
        }
        try RunManifest(jobs, foreignKeys: modes).write(settings.stateDirectory)
        return lines
    }

    static func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    static func unhex(_ text: String?) -> [UInt8]? {
        guard let text else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count / 2)
        var index = text.startIndex
        while index < text.endIndex {
            let next = text.index(index, offsetBy: 2)
            bytes.append(UInt8(text[index..<next], radix: 16) ?? 0)
            index = next
        }
        return bytes
    }

    static func unfinishedRefusal(_ pipeline: String, _ held: (job: String, done: Int, partitions: Int)) -> JobError {
        JobError(.busy, "the target holds job \(held.job) of the \(pipeline) pipeline, split into partitions (\(held.done) of \(held.partitions) done); "
            + "run 'etl-job worker' to finish it, or 'etl-job start --fresh' to discard it and empty its tables")
    }

    // MARK: Working

    /// `etl-job worker`: claims a pending partition of an unfinished job in the target
    /// schema, loads it, marks it done, and again, until none is left; the worker that finds
    /// every partition of a job done runs its final step (keys, finished) under the
    /// pipeline's lock, once. With `wait`, it waits while other workers hold partitions (one
    /// of them may die and leave its partition to claim) until the jobs are finished.
    /// `resolve` gives the mapping of a recorded pipeline name and definition.
    public func work(resolve: @escaping @Sendable (String, String?) throws -> (any DocumentMapping)?, wait: Bool, stop: StopToken,
                     observer: RunObserver? = nil) async throws -> WorkerReport {
        let began = ContinuousClock.now
        let stateLock = try takeLock()
        let target = Target(url: settings.postgresURL, schema: settings.targetSchema ?? JobSettings.defaultSchema)
        let control = try await Threads.blocking(name: "worker") { () throws -> ControlConnection in
            // The sessions a claim goes on to need (its lease; the partition's checks, which a
            // loader takes after) opened beside this one rather than one after another: each costs
            // an authentication (7 ms here with SCRAM) and, across a network, round trips. A
            // worker that planned, or waited for another's plan, has them already.
            let spares = target.openAside(upTo: 2)
            defer { _ = spares.wait() }
            let db = try target.takeReleased() ?? target.connectWaiting(logger: logger)
            guard try PartitionTable.exists(db), try db.execute("SELECT 1 FROM etl_partitioned_jobs LIMIT 1").rows.count > 0 else {
                throw JobError(.noInput, "schema \(target.schema) of the target holds no job split into partitions; plan one with 'etl-job start --partitions N'")
            }
            return ControlConnection(db: db, target: target)
        }
        var report = WorkerReport()
        var said = false
        while !stop.isStopRequested {
            let claimed = try await Threads.blocking(name: "worker") { try control.run { try self.claim($0, target) } }
            if let claimed {
                said = false
                do {
                    report.loaded.append(try await load(claimed, resolve: resolve, control: control, stop: stop, observer: observer))
                } catch {
                    // The lease lost with its session (PostgreSQL restarted) and another
                    // worker claimed the partition meanwhile: that one loads it (this one's
                    // writes are fenced off, whatever stopped them); this one goes on.
                    let takenOver = try? await Threads.blocking(name: "worker") { try control.run { try Self.takenOver(claimed, $0) } }
                    guard takenOver == true, !stop.isStopRequested else { throw error }
                    logger.info("another worker took the partition over while this one was cut off from PostgreSQL; it loads the rest",
                                metadata: ["pipeline": "\(claimed.job.pipeline)", "partition": "\(claimed.number)"])
                    report.handedOver.append(claimed.number)
                }
                continue
            }
            let jobs = try await Threads.blocking(name: "worker") { try control.run { try PartitionedJob.unfinished($0) } }
            if jobs.isEmpty { break }
            var waiting: [String] = []
            for job in jobs {
                let outcome = try await Threads.blocking(name: "finish") { try control.run { try self.finishIfDone(job, $0, resolve: resolve) } }
                switch outcome {
                case .finished: report.finished.append(job.pipeline)
                case .running: waiting.append(job.pipeline)
                }
            }
            if waiting.isEmpty { continue }
            guard wait else {
                report.unfinished = waiting
                break
            }
            if !said {
                logger.info("waiting while other workers load the remaining partitions", metadata: ["pipelines": "\(waiting.joined(separator: ", "))"])
                said = true
            }
            // Another look when a worker marks a partition done or finishes a job (its NOTIFY), and
            // at least every fifth of a second (two indexed queries): a worker that died says
            // nothing, and the one waiting takes its partition over at most that long after it could.
            control.waitForOthers(seconds: 0.2, stop: stop)
        }
        withExtendedLifetime(stateLock) {}
        report.seconds = (ContinuousClock.now - began).seconds
        return report
    }

    /// Where a worker keeps its partitions' queues in its state directory.
    static func partitionsDirectory(_ stateDirectory: String) -> String { stateDirectory + "/partitions" }

    /// Whether `stateDirectory` is a worker's (it holds partitions' queues).
    public static func holdsPartitions(_ stateDirectory: String) -> Bool {
        FileManager.default.fileExists(atPath: partitionsDirectory(stateDirectory))
    }

    /// The worker's own session for claims and bookkeeping.
    final class ControlConnection: @unchecked Sendable {
        // Safe: used by one worker thread at a time (each step runs to its end before the next).
        private var db: PGConnection
        private let target: Target

        /// The session that LISTENs on `PartitionTable.channel` (a new session must LISTEN again).
        private var listening: ObjectIdentifier?

        init(db: PGConnection, target: Target) { (self.db, self.target) = (db, target) }

        /// Returns when another worker marks a partition done or finishes a job, when
        /// `seconds` have passed, or when a stop is requested (looked at every 50 ms).
        func waitForOthers(seconds: Double, stop: StopToken) {
            if listening != ObjectIdentifier(db) {
                guard (try? db.execute("LISTEN \(PartitionTable.channel)")) != nil else {
                    _ = stop.sleep(seconds)
                    return
                }
                listening = ObjectIdentifier(db)
            }
            let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
            while !stop.isStopRequested, ContinuousClock.now < deadline {
                if db.waitForNotification(seconds: min(0.05, (deadline - ContinuousClock.now).seconds)) { return }
                // A broken session (the next step connects again) would answer at once, forever.
                guard db.isHealthy else {
                    _ = stop.sleep((deadline - ContinuousClock.now).seconds)
                    return
                }
            }
        }

        /// Runs one step (a claim, a look, the partition marked done, the final step) on the
        /// worker's session. When PostgreSQL restarts or ends that session, or a lease's session
        /// with it, the step runs again on a new session, for up to about a minute: every step
        /// is safe to repeat (a lease taken meanwhile by another worker stops it, exit 75).
        func run<T>(_ step: (PGConnection) throws -> T) throws -> T {
            // A stop does not cut a step short: it is repeated until done or the minute is up.
            try Retry(retries: 40, base: 0.25, cap: 2).run(stop: Self.steps, isRetryable: { error in
                error is TargetLock.Lost || !db.isHealthy || (error as? PGError)?.isTransient == true
            }, onRetry: { _ in
                if !db.isHealthy, let fresh = try? target.connect() { db = fresh }
            }, body: { _ in try step(db) })
        }

        /// The steps' stop token, which nothing stops.
        private static let steps = StopToken()
    }

    /// Claims the first pending partition of the oldest unfinished job that no live worker
    /// holds, or nil when there is none.
    private func claim(_ db: PGConnection, _ target: Target) throws -> ClaimedPartition? {
        let jobs = Dictionary(uniqueKeysWithValues: try PartitionedJob.unfinished(db).map { ($0.id, $0) })
        guard !jobs.isEmpty else { return nil }
        return try db.withTransaction {
            // Row locks, so that two workers never weigh one partition at once; the lease is
            // the advisory lock, which outlives this transaction with its session.
            // Partitions whose lease a live worker holds are left out here (without connecting to
            // try each); the lock taken below is what decides.
            // One row at a time (LIMIT 1): a worker claiming locks only the partition it weighs,
            // so that workers starting together each find one at once.
            var tried: [String] = []
            while let row = try db.query("""
                SELECT p.job_id, p.partition, encode(p.lower, 'hex'), encode(p.upper, 'hex'), p.documents_planned
                FROM etl_partitions p JOIN etl_partitioned_jobs j USING (job_id)
                WHERE j.finished_at IS NULL AND p.done_at IS NULL AND NOT \(PartitionTable.leaseHeld())
                  AND NOT (p.job_id || '/' || p.partition) = ANY($2::text[])
                ORDER BY j.planned_at, p.job_id, p.partition LIMIT 1 FOR UPDATE OF p SKIP LOCKED
                """, [target.schema, postgresArray(tried)]).rows.first {
                tried.append(row[0]! + "/" + row[1]!)
                guard let job = jobs[row[0]!], let number = row[1].flatMap(Int.init) else { continue }
                let name = PartitionTable.leaseName(job.pipeline, job.id, number)
                let lease = try TargetLock(connection: try target.releasedOrConnect(), pipeline: name, schema: target.schema, reconnect: { try target.connect() })
                guard try lease.tryAcquire() else { continue }
                try lease.keepAlive()
                try db.query("""
                    UPDATE etl_partitions SET claimed_host = $3, claimed_pid = $4, claimed_session = $5, claimed_at = now(), claims = claims + 1
                    WHERE job_id = $1 AND partition = $2
                    """, [job.id, String(number), ProcessInfo.processInfo.hostName, String(getpid()), lease.session])
                let range = SourcePartition(lower: Self.unhex(row[2]), upper: Self.unhex(row[3]), documents: row[4].flatMap(Int64.init))
                return ClaimedPartition(job: job, number: number, range: range, lease: lease, session: lease.session)
            }
            return nil
        }
    }

    /// Whether another worker claimed (or finished) the partition since this one claimed it.
    static func takenOver(_ claimed: ClaimedPartition, _ db: PGConnection) throws -> Bool {
        try db.query("SELECT claimed_session::text IS DISTINCT FROM $3 FROM etl_partitions WHERE job_id = $1 AND partition = $2",
                     [claimed.job.id, String(claimed.number), claimed.session]).rows.first?[0] == "t"
    }

    /// Loads a claimed partition with the whole durable machinery (a queue of its own in this
    /// worker's state directory, read again from the partition's start: what PostgreSQL holds
    /// is skipped), then marks it done, fenced by its lease.
    private func load(_ claimed: ClaimedPartition, resolve: @escaping @Sendable (String, String?) throws -> (any DocumentMapping)?,
                      control: ControlConnection, stop: StopToken, observer: RunObserver?) async throws -> WorkerReport.Loaded {
        let started = ContinuousClock.now
        let job = claimed.job
        let settings = {
            var settings = self.settings
            settings.bucket.batchSize = job.batchSize
            settings.bucket.maxBatchBytes = job.maxBatchBytes
            return settings
        }()
        let partitionJob = PartitionTable.partitionJob(job.id, claimed.number)
        let prepared = try await Threads.blocking(name: "prepare") { () throws -> Prepared in
            guard let mapping = try resolve(job.pipeline, job.definition) else {
                throw JobError(.usage, "job \(job.id) loads the \(job.pipeline) pipeline, which this etl-job does not know; name its mapping with --mapping")
            }
            let whole = PipelineJob(mapping: mapping, settings: settings, recorded: job.identity)
            let db = try whole.releasedOrConnect(logger: logger)
            let identity = try whole.identity(db)
            try whole.refuseMismatch(recorded: job.identity, current: identity, sourceLocationNamed: settings.source.choice != nil)
            try whole.checkTarget(db)
            let pipeline = whole.reading(try whole.source.restricted(to: claimed.range))
            let directory = Self.partitionsDirectory(settings.stateDirectory) + "/" + job.pipeline + "/" + String(claimed.number)
            // What a queue of this machine holds of the partition is not needed: PostgreSQL
            // holds what was loaded, whoever loaded it.
            try StateFiles.remove(directory)
            let queue = try pipeline.openQueue(directory)
            try queue.createJob(id: partitionJob, sourceTotal: claimed.range.documents, identity: try identity.encoded())
            try claimed.lease.claim()
            // The partition's checks' session, for a loader to take (`reading` keeps the target).
            pipeline.target.release(db)
            var prepared = Prepared()
            prepared.pipelines = [(pipeline, queue, claimed.lease)]
            prepared.mode = .partition(PartitionRef(job: job.id, number: claimed.number))
            return prepared
        }
        logger.info("claimed a partition", metadata: ["pipeline": "\(job.pipeline)", "partition": "\(claimed.number)", "job": "\(job.id)"])
        // Run with the partition's settings and mode (its batches' cut, no set-aside limit of its own),
        // under a stop of its own: a failure ends this partition's run, not the worker.
        let partitionStop = stop.child()
        defer { stop.release(partitionStop) }
        let ran = try await DurableJob(settings: settings, logger: logger).run(prepared, stop: partitionStop, observer: observer)
        guard let pipeline = ran.pipelines.first, pipeline.status.finishedAt != nil, !stop.isStopRequested else {
            throw JobError(.failed, "stopped before partition \(claimed.number) of \(job.pipeline) was loaded; another worker (or this one, run again) loads the rest")
        }
        let totals = try await Threads.blocking(name: "finish") { () throws -> (Int64, Int64, Int64) in
            try control.run { db in try db.withTransaction {
                // A lease lost with its session (a PostgreSQL restart) is taken again, unless
                // another worker took the partition meanwhile.
                try claimed.lease.regain()
                try claimed.lease.fence(db)
                // Usually done already, in the transaction of its last batch.
                return try PartitionTable.markDone(db, PartitionRef(job: job.id, number: claimed.number), pipeline: job.pipeline)
            } }
        }
        CrashPoint.partitionDone.reach()
        logger.info("loaded a partition", metadata: ["pipeline": "\(job.pipeline)", "partition": "\(claimed.number)", "documents": "\(totals.0)"])
        // Done: its lease's session goes on to the next claim or the final step.
        claimed.lease.handBack(to: Target(url: settings.postgresURL, schema: claimed.lease.schemaName))
        return .init(pipeline: job.pipeline, partition: claimed.number, documents: totals.0, setAside: totals.1, rows: totals.2,
                     seconds: (ContinuousClock.now - started).seconds)
    }

    enum FinalOutcome { case finished, running }

    /// The final step of a job whose partitions are all done: under the pipeline's lock (one
    /// worker at a time; the others see it running), the set-aside limit over the whole job,
    /// the keys built after the load, then the job marked finished, fenced by that lock.
    private func finishIfDone(_ job: PartitionedJob, _ db: PGConnection, resolve: (String, String?) throws -> (any DocumentMapping)?) throws -> FinalOutcome {
        let pending = try db.query("SELECT count(*) FROM etl_partitions WHERE job_id = $1 AND done_at IS NULL", [job.id]).rows[0][0]
        guard pending == "0" else { return .running }
        guard let mapping = try resolve(job.pipeline, job.definition) else {
            throw JobError(.usage, "job \(job.id) loads the \(job.pipeline) pipeline, which this etl-job does not know; name its mapping with --mapping")
        }
        let pipeline = PipelineJob(mapping: mapping, settings: settings, recorded: job.identity)
        // The step's sessions (its lock's, the keys') opened side by side, not one after another.
        _ = pipeline.target.openAside(upTo: 1 + (job.keyMode.foreignKeysAfter ? settings.keyBuild.connections : 0)).wait()
        // The keys' first session before the lock's: the last released (the loader's), whose
        // backend has the tables' pages mapped already, builds rather than holds the lock.
        let keys = job.keyMode.foreignKeysAfter ? try pipeline.releasedOrConnect() : nil
        let lock: TargetLock
        do {
            lock = try pipeline.lockTarget(wait: 0)
        } catch let error as JobError where error.kind == .busy {
            keys.map(pipeline.target.release)
            return .running
        }
        try lock.claim()
        // Another worker may have finished it while this one took the lock.
        guard try db.query("SELECT finished_at IS NULL FROM etl_partitioned_jobs WHERE job_id = $1", [job.id]).rows.first?[0] == "t" else {
            keys.map(pipeline.target.release)
            return .finished
        }
        let row = try db.query("SELECT sum(documents_loaded), sum(documents_set_aside) FROM etl_partitions WHERE job_id = $1", [job.id]).rows[0]
        let (loaded, setAside) = (Int64(row[0] ?? "0") ?? 0, Int64(row[1] ?? "0") ?? 0)
        if let failure = settings.maxSetAside.failure(loaded: loaded, setAside: setAside, list: "etl-job status --partitions --rejected",
                                                      accept: "etl-job worker --max-set-aside N") {
            throw JobError(.dataError, "the job of \(job.pipeline) is loaded but not finished: \(failure)")
        }
        if job.keyMode.foreignKeysAfter {
            try addKeysAfterLoad(pipeline, keys ?? pipeline.releasedOrConnect(), job.keyMode, fence: lock.fence)
        }
        try db.withTransaction {
            try lock.fence(db)
            try db.query("UPDATE etl_partitioned_jobs SET finished_at = now(), finished_by = $2 WHERE job_id = $1",
                         [job.id, "\(ProcessInfo.processInfo.hostName) pid \(getpid())"])
            try PartitionTable.notifyWaitingWorkers(db)
        }
        logger.info("finished a job split into partitions", metadata: ["pipeline": "\(job.pipeline)", "job": "\(job.id)"])
        return .finished
    }
}

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
            guard let job = PartitionedJob(row) else { throw JobError(.software, "the row of job \(row[0] ?? "?") in etl_partitioned_jobs is damaged") }
            let ids = try db.query("""
                SELECT e->>'id' FROM etl_checkpoints, jsonb_array_elements(set_aside) e WHERE pipeline = $1 AND job_id LIKE $2 || '/%'
                """, [job.pipeline, job.id]).rows.compactMap { $0[0] }
            return RecordedPartitionedJob(pipeline: job.pipeline, definition: job.definition, identity: job.identity,
                                          setAside: ids.reduce(into: [:]) { $0[$1, default: 0] += 1 },
                                          keysPending: row[7] == "t" && job.keyMode.foreignKeysAfter)
        }
    }
}
