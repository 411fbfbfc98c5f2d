import ETLCore
import Foundation
import Logging
import Postgres
import Queue

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
                throw JobPlan.noPartitionedJob(schema: target.schema)
            }
            return ControlConnection(db: db, target: target)
        }
        var report = WorkerReport()
        var machine = JobPlan.Worker(waits: wait)
        var action = machine.start()
        var claimed: ClaimedPartition?
        var jobs: [PartitionedJob] = []
        work: while true {
            switch action {
            case .claim:
                guard !stop.isStopRequested else {
                    action = machine.stopped()
                    continue
                }
                claimed = try await Threads.blocking(name: "worker") { try control.run { try self.claim($0, target) } }
                action = machine.claimed(claimed != nil)
            case .load:
                let claimed = claimed!
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
                action = machine.loaded()
            case .readJobs:
                jobs = try await Threads.blocking(name: "worker") { try control.run { try PartitionedJob.unfinished($0) } }
                action = machine.read(unfinishedJobs: jobs.count)
            case .finishJobs:
                var waiting: [String] = []
                for job in jobs {
                    let outcome = try await Threads.blocking(name: "finish") { try control.run { try self.finishIfDone(job, $0, resolve: resolve) } }
                    switch outcome {
                    case .finished: report.finished.append(job.pipeline)
                    case .running: waiting.append(job.pipeline)
                    }
                }
                action = machine.finished(waiting: waiting)
            case .wait(let announce):
                if let announce {
                    logger.info("waiting while other workers load the remaining partitions", metadata: ["pipelines": "\(announce.joined(separator: ", "))"])
                }
                // Another look when a worker marks a partition done or finishes a job (its NOTIFY), and
                // at least every fifth of a second (two indexed queries): a worker that died says
                // nothing, and the one waiting takes its partition over at most that long after it could.
                control.waitForOthers(seconds: 0.2, stop: stop)
                action = machine.waited()
            case .exit(let unfinished):
                report.unfinished = unfinished
                break work
            }
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
            try Retry(retries: 40, base: 0.25, cap: 2).run(stop: nil, isRetryable: { error in
                error is TargetLock.Lost || !db.isHealthy || (error as? PGError)?.isTransient == true
            }, onRetry: { _ in
                if !db.isHealthy, let fresh = try? target.connect() { db = fresh }
            }, body: { _ in try step(db) })
        }
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
                throw JobPlan.unknownPipeline(job.pipeline, of: .partitionedJob(job.id))
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
            throw JobPlan.partitionStopped(claimed.number, pipeline: job.pipeline)
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
            throw JobPlan.unknownPipeline(job.pipeline, of: .partitionedJob(job.id))
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
        if let refusal = JobPlan.partitionedSetAside(settings.maxSetAside, pipeline: job.pipeline, loaded: loaded, setAside: setAside) { throw refusal }
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
