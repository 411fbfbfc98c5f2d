import ETLCore
import Foundation
import Postgres

extension DurableJob {
    /// `worker --partitions N`: the plan of `start --partitions N`, made by whichever worker
    /// comes first, so that every worker runs one command and none waits for a plan made
    /// elsewhere. Workers started together take turns at a session lock of the target schema's
    /// (the one holding it plans; the others wait, woken when it lets go), and under it each
    /// pipeline is planned unless the target holds its job already:
    /// - an unfinished job of the pipeline is loaded as it is (refused, exit 64, when it reads
    ///   another source or was planned for another target);
    /// - a finished job of the same source and target, whose tables hold rows, leaves nothing
    ///   to plan (a worker that comes after the others finished exits 0);
    /// - otherwise the pipeline is planned, with every refusal of `start` (another job's lock,
    ///   a target with rows, …).
    /// Returns what it found and planned, in words; nothing when a stop came while waiting.
    public func planUnlessPlanned(_ mappings: [any DocumentMapping], count: Int, stop: StopToken) throws -> [String] {
        let target = Target(url: settings.postgresURL, schema: settings.targetSchema ?? JobSettings.defaultSchema)
        var spares: Threads.Started?
        defer { _ = spares?.wait() }
        guard let db = try takePlanLock(target, stop: stop, whileWaiting: {
            // The sessions it loads with (its lease's, its checks') opened while it waits, each an
            // authentication, rather than after. A worker that plans has the plan's.
            spares = target.openAside(upTo: 2)
        }) else { return [] }
        var lines: [String] = []
        do {
            var unplanned: [any DocumentMapping] = []
            for mapping in mappings {
                if let said = try planned(mapping, db, count: count) { lines.append(said) } else { unplanned.append(mapping) }
            }
            if !unplanned.isEmpty { lines += try planPartitions(unplanned, fresh: false, count: count) }
        } catch {
            releasePlanLock(db, schema: target.schema, target: target)
            throw error
        }
        releasePlanLock(db, schema: target.schema, target: target)
        return lines
    }

    /// What the target holds of `mapping`'s job split into partitions, in words, when it holds
    /// one this worker loads as it is; nil when the pipeline is to be planned.
    private func planned(_ mapping: any DocumentMapping, _ db: PGConnection, count: Int) throws -> String? {
        guard try PartitionTable.exists(db) else { return nil }
        let row = try db.query("""
            SELECT \(PartitionedJob.columns), to_char(finished_at, 'YYYY-MM-DD HH24:MI:SS TZ'),
                   (SELECT count(done_at) FROM etl_partitions p WHERE p.job_id = j.job_id), (SELECT count(*) FROM etl_partitions p WHERE p.job_id = j.job_id)
            FROM etl_partitioned_jobs j WHERE pipeline = $1 ORDER BY planned_at DESC LIMIT 1
            """, [mapping.name]).rows.first
        guard let row else { return nil }
        guard let recorded = PartitionedJob(row) else {
            throw JobPlan.damagedPartitionedJob(row[0])
        }
        let job = PipelineJob(mapping: mapping, settings: settings)
        let differences = recorded.identity.differences(from: try job.identity(db))
        let finishedAt = row[7]
        if finishedAt == nil {
            guard differences.isEmpty else {
                throw JobPlan.partitionedJobMismatch(recorded.id, pipeline: mapping.name, count: count, differences)
            }
            return "etl-job: job \(recorded.id) of the \(mapping.name) pipeline is planned (\(row[8] ?? "?") of \(row[9] ?? "?") partitions done): loading its partitions"
        }
        // A finished job of another source, or whose rows or tables are gone, is planned again
        // (with the refusals of `start`: a target that holds rows is not loaded over).
        let tables = mapping.tables.map { quoteIdentifier(job.target.schema) + "." + $0.quotedName }
        let missing = try db.query("SELECT count(*) FROM unnest($1::text[]) n WHERE to_regclass(n) IS NULL", [postgresArray(tables)]).rows[0][0]
        guard differences.isEmpty, missing == "0", try job.target.firstNonEmptyTable(db, mapping) != nil else { return nil }
        return "etl-job: job \(recorded.id) of the \(mapping.name) pipeline, from the same source into the same target, was finished at \(finishedAt!); "
            + "nothing to plan ('etl-job sync' applies the changes made since, 'etl-job start --partitions \(count) --fresh' loads it all again)"
    }

    private static let planLockNamespace: Int32 = 0x45_54_4C_50  // "ETLP"

    /// Takes the schema's plan lock on a session of its own, waiting while another worker
    /// plans (woken by its NOTIFY when it lets go, and looking again at least every quarter of a
    /// second); returns that session, or nil when a stop came first. A session PostgreSQL ends
    /// meanwhile (a restart) is opened again, for up to a minute, as a worker's steps are.
    private func takePlanLock(_ target: Target, stop: StopToken, whileWaiting: () -> Void) throws -> PGConnection? {
        var db = try target.connectWaiting(logger: logger)
        var listening = false
        var said = false
        var lostSince: ContinuousClock.Instant?
        while true {
            do {
                if !listening {
                    try db.execute("LISTEN \(PartitionTable.channel)")
                    listening = true
                }
                if try db.query("SELECT pg_try_advisory_lock($1, hashtext($2))", [String(Self.planLockNamespace), Self.planLockName(target.schema)]).rows[0][0] == "t" {
                    // The others wait while it plans: a planner whose machine vanished lets go within a minute.
                    try db.execute(TargetLock.keepAliveOn)
                    return db
                }
                lostSince = nil
            } catch {
                guard !db.isHealthy else { throw error }
                let since = lostSince ?? ContinuousClock.now
                lostSince = since
                guard ContinuousClock.now - since < .seconds(60) else { throw error }
                if !stop.sleep(0.25) { return nil }
                if let fresh = try? target.connectWaiting(logger: logger) { (db, listening) = (fresh, false) }
                continue
            }
            if !said {
                logger.info("another worker is planning the job: waiting for its plan", metadata: ["schema": "\(target.schema)"])
                said = true
                whileWaiting()
            }
            let deadline = ContinuousClock.now + .milliseconds(250)
            while ContinuousClock.now < deadline {
                if stop.isStopRequested { return nil }
                if db.waitForNotification(seconds: 0.05) || !db.isHealthy { break }
            }
        }
    }

    private static func planLockName(_ schema: String) -> String { "etl-job plan \(schema)" }

    /// Lets go of the plan lock and wakes the workers waiting for it; the session goes back to
    /// the process's idle ones (a broken one is dropped: its lock went with it).
    private func releasePlanLock(_ db: PGConnection, schema: String, target: Target) {
        guard (try? db.query("SELECT pg_advisory_unlock($1, hashtext($2))", [String(Self.planLockNamespace), Self.planLockName(schema)])) != nil,
              (try? db.execute("UNLISTEN *; " + TargetLock.keepAliveOff)) != nil else { return }
        try? PartitionTable.notifyWaitingWorkers(db)
        target.release(db)
    }
}
