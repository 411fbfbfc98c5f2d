import ETLCore
import Foundation
import Postgres
import Queue

/// What `sync` does when the source's server no longer holds the job's change-stream position.
public enum OnHistoryLost: String, CaseIterable, Sendable {
    /// Stop (exit 65), naming what was lost.
    case fail
    /// Take a new snapshot into a shadow schema while the tables stay readable, swap it in, go on.
    case resnapshot
}

/// A run mode: a re-snapshot into a shadow schema, swapped in atomically. When the change
/// stream's history is lost, the job's tables stay as they are (and readable) while:
///
/// 1. `snapshot`: `start`'s path loads a new snapshot into the shadow schema, with a state
///    directory of its own (`<state-dir>/resnapshot`); it records where the stream stands
///    before it reads the first document;
/// 2. `catch-up`: sync's path applies the changes made since to the shadow;
/// 3. `swap`: one transaction moves the live tables to the replaced schema and the shadow's
///    into the live one, with their bookkeeping rows (checkpoints, mappings in force, unmapped
///    fields) and the grants the old tables had; then the new queues replace the old ones in
///    the state directory, describing the live schema;
/// 4. `drop-old`: the replaced tables are dropped, the shadow's leftovers removed.
///
/// The step is recorded (`resnapshot.json`, written atomically) before it runs, and each step
/// can be run again after a kill: the nested runs resume as `resume` and `sync` do, the swap
/// finds whether it committed from where the tables are. The live target lock of each
/// pipeline is held throughout, so no other run writes the live tables meanwhile.
public enum Resnapshot {
    public enum Step: String, Codable, Sendable {
        case snapshot
        case catchUp = "catch-up"
        case swap
        case dropOld = "drop-old"

        /// What the step does, for `status`.
        public var description: String {
            switch self {
            case .snapshot: "loading a new snapshot into the shadow schema"
            case .catchUp: "applying the changes made since to the shadow schema"
            case .swap: "swapping the shadow schema's tables in"
            case .dropOld: "dropping the replaced tables"
            }
        }
    }

    /// The recovery in progress, as its state directory records it.
    public struct Record: Codable, Sendable {
        public var step: Step
        public var liveSchema: String
        public var shadowSchema: String
        public var replacedSchema: String
        /// When it began (seconds since 1970).
        public var began: Double

        init(liveSchema: String) {
            step = .snapshot
            self.liveSchema = liveSchema
            shadowSchema = Self.name("etl_resnapshot_", liveSchema)
            replacedSchema = Self.name("etl_replaced_", liveSchema)
            began = Date().timeIntervalSince1970
        }

        /// `prefix` + `schema`, within PostgreSQL's 63 bytes: a longer one keeps what fits of
        /// the schema's name (cut at a character) and a digest of the whole, so that two long
        /// names sharing their start stay apart and PostgreSQL never cuts it to another name.
        public static func name(_ prefix: String, _ schema: String) -> String {
            let whole = prefix + schema
            guard whole.utf8.count > 63 else { return whole }
            var digest: UInt32 = 2_166_136_261  // FNV-1a
            for byte in schema.utf8 { digest = (digest ^ UInt32(byte)) &* 16_777_619 }
            let tail = "_" + String(digest, radix: 16)
            var kept = ""
            for character in schema {
                guard prefix.utf8.count + kept.utf8.count + character.utf8.count + tail.utf8.count <= 63 else { break }
                kept.append(character)
            }
            return prefix + kept + tail
        }
    }

    static let file = "resnapshot.json"

    /// How many times the shadow is loaded when the source outruns it, before giving up (exit 65).
    static let attempts = 3

    /// How long the swap waits for a lock on a live table before it gives way and tries again.
    static let lockTimeout = "2s"

    /// The state directory of the shadow's snapshot and its changes.
    public static func shadowDirectory(_ directory: String) -> String { directory + "/resnapshot" }

    /// Where the replaced job's queues wait until the old tables are dropped.
    static func replacedDirectory(_ directory: String) -> String { directory + "/resnapshot-replaced" }

    /// The recovery the state directory holds, if one is in progress.
    public static func read(_ directory: String) throws -> Record? {
        guard let data = FileManager.default.contents(atPath: directory + "/" + file) else { return nil }
        do {
            return try JSONDecoder().decode(Record.self, from: data)
        } catch {
            throw JobError(.ioError, "the re-snapshot record \(directory)/\(file) is damaged; \(JobError.untrustedState)")
        }
    }

    /// Forgets the recovery: its record first (a kill halfway leaves no record naming files
    /// that are gone), then the shadow's state and the replaced queues. `start --fresh` too.
    static func discard(_ directory: String) throws {
        try StateFiles.remove(directory + "/" + file)
        try StateFiles.remove(shadowDirectory(directory))
        try StateFiles.remove(replacedDirectory(directory))
    }

    static func write(_ record: Record, _ directory: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        do {
            try AtomicFile.write(try encoder.encode(record), to: directory + "/" + file)
        } catch {
            throw JobError.queue(error, directory)
        }
    }

    /// The lost history a run failed with (in any of its pipelines), if that is why it failed.
    static func historyLost(_ error: any Error) -> ChangeStreamHistoryLost? {
        switch error {
        case let error as ChangeStreamHistoryLost: error
        case let error as PipelineError: historyLost(error.underlying)
        case let error as ETLErrors: error.errors.lazy.compactMap(historyLost).first
        default: nil
        }
    }

    /// What a re-snapshot holds while it runs: the state directory's lock and the live target
    /// locks, with the job they belong to.
    final class Held: @unchecked Sendable {
        // Safe: made on one thread, then only read; the locks are released when it is freed,
        // after the re-snapshot's last step.
        let stateLock: JobLock
        let targetLocks: [TargetLock]
        let manifest: RunManifest
        let mappings: [any DocumentMapping]
        let live: [PipelineJob]

        init(stateLock: JobLock, targetLocks: [TargetLock], manifest: RunManifest, mappings: [any DocumentMapping], live: [PipelineJob]) {
            (self.stateLock, self.targetLocks, self.manifest, self.mappings, self.live) = (stateLock, targetLocks, manifest, mappings, live)
        }

        func handBack() {
            for (lock, job) in zip(targetLocks, live) { lock.handBack(to: job.target) }
        }
    }
}

extension DurableJob {
    /// `sync`: applies the changes, and when the server no longer holds the job's position,
    /// fails (`fail`) or re-snapshots and goes on (`resnapshot`). A re-snapshot in progress is
    /// finished first.
    public func sync(
        resolve: @escaping @Sendable (String, String?) throws -> (any DocumentMapping)?, follow: Bool, onHistoryLost: OnHistoryLost,
        stop: StopToken, observer: RunObserver? = nil
    ) async throws -> RunReport {
        if let record = try Resnapshot.read(settings.stateDirectory) {
            guard onHistoryLost == .resnapshot else {
                throw JobError(.usage, "the job in \(settings.stateDirectory) is re-taking its snapshot (step \(record.step.rawValue): \(record.step.description)); "
                    + "run 'etl-job sync --on-history-lost resnapshot' to finish it")
            }
            if let ended = try await resnapshot(resolve: resolve, stop: stop, observer: observer) { return ended }
        }
        while true {
            // A failed run stops its token: each run gets one of its own, which a signal stops too.
            let attempt = stop.child()
            defer { stop.release(attempt) }
            do {
                return try await applyChanges(resolve: resolve, follow: follow, stop: attempt, observer: observer)
            } catch where onHistoryLost == .resnapshot && !stop.isStopRequested {
                guard let lost = Resnapshot.historyLost(error) else { throw error }
                logger.notice("\(lost.lost); taking a new snapshot into a shadow schema while the tables stay readable")
                if let ended = try await resnapshot(resolve: resolve, stop: stop, observer: observer) { return ended }
            }
        }
    }

    /// Runs the re-snapshot's steps from the one recorded. Returns the report of a nested run
    /// that did not let it go on (stopped, or over the set-aside limit), nil when it is done.
    func resnapshot(resolve: @escaping @Sendable (String, String?) throws -> (any DocumentMapping)?, stop: StopToken, observer: RunObserver?) async throws -> RunReport? {
        let directory = settings.stateDirectory
        let held = try await Threads.blocking(name: "prepare") { try holdForResnapshot(resolve: resolve) }
        defer { held.handBack() }
        var record: Resnapshot.Record
        if let recorded = try Resnapshot.read(directory) {
            record = recorded
        } else {
            record = Resnapshot.Record(liveSchema: held.live[0].target.schema)
            // What a recovery no record names left (one a 'start --fresh' discarded) goes first.
            let fresh = record
            try await Threads.blocking(name: "prepare") {
                try dropSchemas(fresh, held)
                try Resnapshot.discard(directory)
            }
            try Resnapshot.write(record, directory)
            logger.notice("re-snapshot: loading a new snapshot into schema \(record.shadowSchema); the tables in \(record.liveSchema) stay as they are")
            CrashPoint.resnapshotBegan.reach()
        }
        let shadow = shadowJob(record)
        var lostAgain = 0
        while true {
            switch record.step {
            case .snapshot:
                let report = try await FileManager.default.fileExists(atPath: Resnapshot.shadowDirectory(directory) + "/" + RunManifest.file)
                    ? shadow.resume(resolve: resolve, stop: stop, observer: observer)
                    : shadow.start(held.mappings, fresh: true, planned: held.manifest.planned, stop: stop, observer: observer)
                let finished = try held.manifest.pipelines.allSatisfy { try RunManifest.recordedStatus(shadow.settings.stateDirectory, $0)?.finishedAt != nil }
                guard !stop.isStopRequested, report.failure == nil, finished else { return advisingResnapshot(report, shadow) }
                CrashPoint.shadowLoaded.reach()
                record.step = .catchUp
            case .catchUp:
                logger.notice("re-snapshot: applying the changes made since the new snapshot began to schema \(record.shadowSchema)")
                let attempt = stop.child()
                defer { stop.release(attempt) }
                do {
                    let report = try await shadow.applyChanges(resolve: resolve, follow: false, stop: attempt, observer: observer)
                    guard !stop.isStopRequested, report.failure == nil else { return report }
                    CrashPoint.shadowCaughtUp.reach()
                    record.step = .swap
                } catch where Resnapshot.historyLost(error) != nil && !stop.isStopRequested && lostAgain < Resnapshot.attempts - 1 {
                    // The source outran the new snapshot's position too (a load longer than the
                    // oplog's window): the shadow starts again; the live tables are still untouched.
                    lostAgain += 1
                    logger.warning("re-snapshot: the change stream's history no longer holds the new snapshot's position either; loading the shadow again",
                                   metadata: ["attempt": "\(lostAgain + 1) of \(Resnapshot.attempts)"])
                    try StateFiles.remove(shadow.settings.stateDirectory)
                    record.step = .snapshot
                }
            case .swap:
                let current = record
                try await Threads.blocking(name: "swap") { try swapIn(current, held, shadow: shadow, stop: stop) }
                record.step = .dropOld
                try Resnapshot.write(record, directory)
                CrashPoint.stateSwitched.reach()
                logger.notice("re-snapshot: the new tables are in schema \(record.liveSchema); dropping the replaced ones")
                continue
            case .dropOld:
                let current = record
                try await Threads.blocking(name: "drop") { try dropReplaced(current, held) }
                return nil
            }
            try Resnapshot.write(record, directory)
        }
    }

    /// A nested run's report over the set-aside limit, its advice worded for the re-snapshot:
    /// its documents are listed from the shadow's state directory, and accepted by this sync.
    private func advisingResnapshot(_ report: RunReport, _ shadow: DurableJob) -> RunReport {
        var report = report
        for i in report.pipelines.indices where report.pipelines[i].failure != nil {
            let status = report.pipelines[i].status
            let reason = settings.maxSetAside.failure(
                loaded: status.documentsLoaded, setAside: status.documentsSetAside,
                list: "etl-job status --rejected --state-dir \(shadow.settings.stateDirectory)",
                accept: "etl-job sync --on-history-lost resnapshot --max-set-aside N")
            report.pipelines[i].failure = "the re-snapshot into schema \(shadow.settings.targetSchema ?? "?"): "
                + (reason ?? report.pipelines[i].failure ?? "") + "; the tables in use are unchanged"
        }
        return report
    }

    /// Takes the state directory's lock and each pipeline's live target lock, after the
    /// refusals `sync` gives (none when it re-snapshots after a failed run of its own).
    private func holdForResnapshot(resolve: (String, String?) throws -> (any DocumentMapping)?) throws -> Resnapshot.Held {
        guard let (manifest, mappings, stateLock) = try recordedJob(resolve: resolve, { job in
            if let refusal = JobPlan.refusal(of: job, noJob: "sync") { throw refusal }
        }) else { throw JobPlan.noJob("sync", in: settings.stateDirectory) }
        var live: [PipelineJob] = []
        for mapping in mappings {
            let queue = try PipelineJob(mapping: mapping, settings: settings).openQueue()
            let recorded = JobIdentity.decode(try queue.identity)
            queue.close()
            live.append(PipelineJob(mapping: mapping, settings: settings, recorded: recorded, planned: manifest.planned[mapping.name]))
        }
        guard Set(live.map(\.target.schema)).count == 1 else {
            throw JobError(.usage, "a re-snapshot swaps one schema, and the job in \(settings.stateDirectory) loads into several ("
                + Set(live.map(\.target.schema)).sorted().joined(separator: ", ") + "); re-run its snapshot with 'etl-job start --fresh'")
        }
        var locks: [TargetLock] = []
        for job in live {
            let lock = try job.lockTarget()
            try lock.claim()
            locks.append(lock)
        }
        return Resnapshot.Held(stateLock: stateLock, targetLocks: locks, manifest: manifest, mappings: mappings, live: live)
    }

    /// The job that loads the shadow schema, from a state directory of its own, reading the
    /// sources the job recorded (an empty one is a snapshot too).
    private func shadowJob(_ record: Resnapshot.Record) -> DurableJob {
        var shadow = settings
        shadow.stateDirectory = Resnapshot.shadowDirectory(settings.stateDirectory)
        shadow.targetSchema = record.shadowSchema
        shadow.source = SourceRequest()
        shadow.allowEmpty = true
        return DurableJob(settings: shadow, logger: logger)
    }

    /// The swap: the new queues describe the live schema; in one transaction the tables change
    /// places with their bookkeeping; then the new queues replace the old. Each part finds
    /// whether it was done (a kill between them), so running it again is safe.
    private func swapIn(_ record: Resnapshot.Record, _ held: Resnapshot.Held, shadow: DurableJob, stop: StopToken) throws {
        let directory = settings.stateDirectory
        for job in held.live {
            let queueDirectory = RunManifest.queueDirectory(shadow.settings.stateDirectory, job.name)
            for path in [queueDirectory, queueDirectory + "/changes"] where DurableQueue.exists(in: path) {
                let queue = try job.openQueue(path)
                defer { queue.close() }
                if var identity = JobIdentity.decode(try queue.identity), identity.targetSchema != record.liveSchema {
                    identity.targetSchema = record.liveSchema
                    try queue.replaceIdentity(try identity.encoded())
                }
            }
        }
        // A lock the swap could not get in time (55P03) is tried again, as transient errors are.
        let retryable = { (error: any Error) in (error as? PGError).map { $0.isTransient || $0.atCommit || $0.sqlState == "55P03" } ?? false }
        try Retry(retries: 30, base: 0.5, cap: 5).run(stop: stop, isRetryable: retryable, onRetry: { attempt in
            logger.warning("re-snapshot: the swap failed; trying again", metadata: ["attempt": "\(attempt.number)", "error": "\(attempt.error)"])
        }) { _ in try swapTables(record, held, shadow: shadow) }
        for job in held.live {
            let fresh = RunManifest.queueDirectory(shadow.settings.stateDirectory, job.name)
            guard FileManager.default.fileExists(atPath: fresh) else { continue }
            let live = RunManifest.queueDirectory(directory, job.name)
            let aside = Resnapshot.replacedDirectory(directory) + "/" + job.name
            do {
                if FileManager.default.fileExists(atPath: live) {
                    try StateFiles.remove(aside)
                    try FileManager.default.createDirectory(atPath: Resnapshot.replacedDirectory(directory), withIntermediateDirectories: true)
                    guard rename(live, aside) == 0 else { throw StateFileError("move aside", live) }
                }
                guard rename(fresh, live) == 0 else { throw StateFileError("move into place", fresh) }
            } catch {
                throw JobError.queue(error, live)
            }
        }
    }

    /// The one transaction of the swap, unless it committed already (the shadow's tables gone).
    private func swapTables(_ record: Resnapshot.Record, _ held: Resnapshot.Held, shadow: DurableJob) throws {
        let target = held.live[0].target
        let db = try target.connectWaiting(logger: logger)
        let (live, shadowSchema, replaced) = (quoteIdentifier(record.liveSchema), quoteIdentifier(record.shadowSchema), quoteIdentifier(record.replacedSchema))
        func exists(_ schema: String, _ table: TableSpec) throws -> Bool {
            try db.query("SELECT to_regclass($1) IS NOT NULL", [schema + "." + table.quotedName]).rows[0][0] == "t"
        }
        // The mappings in force on each side (a load may have evolved them differently).
        let shadowDb = try Target(url: target.url, schema: record.shadowSchema).connectWaiting(logger: logger)
        let incoming = try held.live.map { job in
            try PipelineJob(mapping: job.given, settings: shadow.settings, planned: held.manifest.planned[job.name]).inForce(shadowDb).mapping
        }
        guard try exists(shadowSchema, incoming[0].tables[0]) else { return }
        let outgoing = try held.live.map { try $0.inForce(db).mapping }
        try db.withTransaction {
            // A long transaction of the application on an old table must not make every reader
            // queue behind the swap's lock: the swap gives way and tries again.
            try db.execute("SET LOCAL lock_timeout = '\(Resnapshot.lockTimeout)'")
            for lock in held.targetLocks { try lock.fence(db) }
            if try db.query("SELECT to_regnamespace($1) IS NULL", [replaced]).rows[0][0] == "t" { try db.execute("CREATE SCHEMA \(replaced)") }
            for (old, new) in zip(outgoing, incoming) {
                for table in old.tables where try exists(live, table) {
                    try db.execute("ALTER TABLE \(live).\(table.quotedName) SET SCHEMA \(replaced)")
                }
                for table in new.tables {
                    try db.execute("ALTER TABLE \(shadowSchema).\(table.quotedName) SET SCHEMA \(live)")
                    try grant(db, from: replaced + "." + table.quotedName, to: live + "." + table.quotedName)
                }
                for table in ["etl_checkpoints", "etl_mappings", "etl_unmapped"] {
                    try copyRows(db, table, pipeline: new.name, from: shadowSchema, to: live)
                }
                try db.query("DELETE FROM \(live).etl_partitioned_jobs WHERE pipeline = $1", [new.name])
            }
        }
        CrashPoint.swapCommitted.reach()
    }

    /// Gives the new table the privileges others had on the old one (the application's role
    /// reads on); its owner's are its own.
    private func grant(_ db: PGConnection, from old: String, to new: String) throws {
        let grants = try db.query("""
            SELECT format('GRANT %s ON %s TO %s%s', a.privilege_type, $2::text,
                          CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
                          CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
            FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = to_regclass($1) AND a.grantee <> c.relowner
            """, [old, new]).rows
        for row in grants { try db.execute(row[0]!) }
    }

    /// Replaces a pipeline's rows of one bookkeeping table with the shadow's (the columns named,
    /// as the live table has them).
    private func copyRows(_ db: PGConnection, _ table: String, pipeline: String, from shadow: String, to live: String) throws {
        let columns = try db.query("""
            SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
            WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
            """, [live + "." + table]).rows[0][0] ?? ""
        try db.query("DELETE FROM \(live).\(table) WHERE pipeline = $1", [pipeline])
        try db.query("INSERT INTO \(live).\(table) (\(columns)) SELECT \(columns) FROM \(shadow).\(table) WHERE pipeline = $1", [pipeline])
    }

    /// After the swap committed: the replaced tables dropped (without CASCADE: a view of the
    /// application on them stops it, never dropped behind its back), the shadow's bookkeeping
    /// and the nested state removed, and the record last.
    private func dropReplaced(_ record: Resnapshot.Record, _ held: Resnapshot.Held) throws {
        try dropSchemas(record, held)
        CrashPoint.oldDropped.reach()
        try Resnapshot.discard(settings.stateDirectory)
        logger.notice("re-snapshot: done; the job follows the change stream from the new snapshot's position")
    }

    /// Drops the replaced tables (without CASCADE: a view of the application on them stops
    /// it, never dropped behind its back) and the shadow schema, which holds only what the
    /// re-snapshot made.
    private func dropSchemas(_ record: Resnapshot.Record, _ held: Resnapshot.Held) throws {
        let target = held.live[0].target
        let db = try target.connectWaiting(logger: logger)
        let replaced = quoteIdentifier(record.replacedSchema)
        try db.withTransaction {
            let tables = try db.query("SELECT c.oid::regclass::text FROM pg_class c WHERE c.relnamespace = to_regnamespace($1) AND c.relkind IN ('r', 'p')",
                                      [replaced]).rows.compactMap { $0[0] }
            if !tables.isEmpty { try db.execute("DROP TABLE \(tables.joined(separator: ", "))") }
            try db.execute("DROP SCHEMA IF EXISTS \(replaced)")
            try db.execute("DROP SCHEMA IF EXISTS \(quoteIdentifier(record.shadowSchema)) CASCADE")
        }
    }
}
