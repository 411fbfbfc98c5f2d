import Foundation
import Mongo
import Postgres
import Synchronization
import Testing
import TestSupport
import UsersFixtures

/// `etl-job sync --on-history-lost resnapshot`: a lost change stream recovered by a new
/// snapshot loaded into a shadow schema and swapped in, while the tables stay readable.
@Suite(.serialized) struct ResnapshotTests {
    /// A job snapshotted from 60 users on a server of its own that keeps 20 oplog entries;
    /// then 5 users deleted, one updated and 101 inserted, and the server's history pruned:
    /// the job's position is gone. The source then holds 156 users.
    final class LostHistory {
        let sandbox: Sandbox
        let server: PrivateMongo
        let users: MongoCollection
        let client: MongoClient
        let arguments: [String]
        static let usersBefore = 60
        static let usersAfter = 156

        init() throws {
            sandbox = try Sandbox()
            server = try PrivateMongo(flags: ["--oplog-max-entries", "20"])
            client = try Services.mongo(server.url)
            users = client.collection(database: "app", name: "users")
            try users.insertMany((1...60).map { UserGenerator(seed: 1).document(id: $0) })
            arguments = ["--postgres-url", sandbox.postgresURL, "--mongodb-url", server.url, "--database", "app", "--state-dir", sandbox.stateDirectory]
            #expect(try sandbox.run(["start"] + arguments).status == 0)
            try delete(ids: 1...5)
            let update = BSONDocument()
            update.writer.append("update", "users")
            update.writer.appendArray("updates") { updates in
                updates.appendDocument("0") { one in
                    one.appendDocument("q") { $0.append("_id", Int64(6)) }
                    one.appendDocument("u") { u in u.appendDocument("$set") { $0.append("firstName", "Changed") } }
                }
            }
            try client.runCommand(update, database: "app")
            try users.insertMany((1_000...1_100).map { UserGenerator(seed: 2).document(id: $0) })
            let prune = BSONDocument()
            prune.writer.append("secantusAdmin.pruneOplog", Int32(1))
            try client.runCommand(prune, database: "admin")
        }

        func delete(ids: ClosedRange<Int>) throws {
            let command = BSONDocument()
            command.writer.append("delete", "users")
            command.writer.appendArray("deletes") { deletes in
                for (i, id) in ids.enumerated() {
                    deletes.appendDocument(String(i)) { one in
                        one.appendDocument("q") { $0.append("_id", Int64(id)) }
                        one.append("limit", Int32(1))
                    }
                }
            }
            try client.runCommand(command, database: "app")
        }

        func sync(_ extra: [String] = [], environment: [String: String] = [:]) throws -> JobResult {
            try sandbox.run(["sync"] + arguments + extra, environment: environment)
        }

        func count(_ table: String, schema: String = "public") throws -> Int? {
            let db = try sandbox.db()
            guard try db.execute("SELECT to_regclass('\(schema).\(table)') IS NOT NULL").rows[0][0] == "t" else { return nil }
            return Int(try db.execute("SELECT count(*) FROM \(schema).\(table)").rows[0][0]!)
        }

        func schemaExists(_ name: String) throws -> Bool {
            try sandbox.db().execute("SELECT to_regnamespace('\(name)') IS NOT NULL").rows[0][0] == "t"
        }

        /// The job is exact and holds no trace of the recovery; a later plain sync applies new changes.
        func expectRecoveredAndFollowing(_ context: String) throws {
            #expect(try count("users") == Self.usersAfter, "\(context)")
            #expect(try sandbox.duplicateKeys(tables: ["users", "addresses", "profiles"]) == 0, "\(context)")
            #expect(try !schemaExists("etl_resnapshot_public") && !schemaExists("etl_replaced_public"), "\(context): shadow and replaced schemas dropped")
            #expect(!FileManager.default.fileExists(atPath: sandbox.stateDirectory + "/resnapshot.json"), "\(context)")
            #expect(!FileManager.default.fileExists(atPath: sandbox.stateDirectory + "/resnapshot"), "\(context)")
            let verify = try sandbox.run(["verify"] + arguments)
            #expect(verify.status == 0, "\(context): \(verify.stdout)\(verify.stderr)")
            try users.insertMany((2_000...2_002).map { UserGenerator(seed: 4).document(id: $0) })
            let later = try sync()
            #expect(later.status == 0, "\(context): \(later.stderr)")
            #expect(try count("users") == Self.usersAfter + 3, "\(context): the new job follows the stream from the new snapshot's position")
            let status = try sandbox.run(["status", "--json", "--state-dir", sandbox.stateDirectory])
            let document = try JSON.object(status.stdout)
            #expect(document["resnapshot"] is NSNull, "\(context): \(status.stdout)")
        }
    }

    @Test func aLostStreamIsRecoveredByASnapshotSwappedInAndSyncGoesOn() throws {
        let job = try LostHistory()
        let old = try job.count("users")
        #expect(old == LostHistory.usersBefore)
        // The application's role reads the tables: it still does after the swap.
        let reader = job.sandbox.name + "_reader"
        let db = try job.sandbox.db()
        try db.execute("CREATE ROLE \(reader); GRANT SELECT ON users, addresses TO \(reader)")
        defer {
            _ = try? db.execute("DROP OWNED BY \(reader)")
            _ = try? db.execute("DROP ROLE \(reader)")
        }
        let recovered = try job.sync(["--on-history-lost", "resnapshot"])
        #expect(recovered.status == 0, "\(recovered.stderr)")
        #expect(try db.execute("SELECT has_table_privilege('\(reader)', 'public.users', 'SELECT'), has_table_privilege('\(reader)', 'public.addresses', 'SELECT'), "
            + "has_table_privilege('\(reader)', 'public.profiles', 'SELECT')").rows[0] == ["t", "t", "f"], "the grants of the old tables, and only those")
        #expect(try job.count("users", schema: "public") == LostHistory.usersAfter)
        #expect(try job.sandbox.db().execute("SELECT count(*) FROM users WHERE id BETWEEN 1 AND 5").rows[0][0] == "0", "deleted while the stream was lost")
        #expect(try job.sandbox.db().execute("SELECT first_name FROM users WHERE id = 6").rows.first?[0] == "Changed", "updated while the stream was lost")
        try job.expectRecoveredAndFollowing("after the recovery")
    }

    @Test func syncFollowRecoversALostStreamThenFollowsTheNewPosition() throws {
        let job = try LostHistory()
        let following = try job.sandbox.launch(["sync", "--follow", "--on-history-lost", "resnapshot"] + job.arguments)
        #expect(try eventually(60) { try job.count("users") == LostHistory.usersAfter && !FileManager.default.fileExists(atPath: job.sandbox.stateDirectory + "/resnapshot.json") })
        try job.users.insertMany((3_000...3_002).map { UserGenerator(seed: 5).document(id: $0) })
        #expect(try eventually(30) { try job.count("users") == LostHistory.usersAfter + 3 }, "changes after the swap are applied as they come")
        following.signal(SIGTERM)
        let ended = try following.wait()
        #expect(ended.status == 143, "\(ended.stderr)")
        let verify = try job.sandbox.run(["verify"] + job.arguments)
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }

    /// The source outruns the new snapshot's own position before the shadow catches up: the
    /// shadow is loaded again, the live tables untouched meanwhile.
    @Test func aShadowWhoseOwnPositionIsLostIsLoadedAgain() throws {
        let job = try LostHistory()
        let killed = try job.sync(["--on-history-lost", "resnapshot"], environment: ["ETL_CRASH_AT": "shadowLoaded"])
        #expect(killed.signaled && killed.status == SIGKILL, "\(killed)")
        try job.users.insertMany((4_000...4_040).map { UserGenerator(seed: 6).document(id: $0) })
        let prune = BSONDocument()
        prune.writer.append("secantusAdmin.pruneOplog", Int32(1))
        try job.client.runCommand(prune, database: "admin")
        #expect(try job.count("users") == LostHistory.usersBefore)
        let resumed = try job.sync(["--on-history-lost", "resnapshot"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stderr.contains("loading the shadow again"), "\(resumed.stderr)")
        #expect(try job.count("users") == LostHistory.usersAfter + 41)
        let verify = try job.sandbox.run(["verify"] + job.arguments)
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }

    /// A recovery given up for `start --fresh` leaves nothing that stops a later sync or recovery.
    @Test func startFreshDiscardsARecoveryInProgress() throws {
        let job = try LostHistory()
        let killed = try job.sync(["--on-history-lost", "resnapshot"], environment: ["ETL_CRASH_AT": "swapCommitted"])
        #expect(killed.signaled && killed.status == SIGKILL, "\(killed)")
        let fresh = try job.sandbox.run(["start", "--fresh", "--yes"] + job.arguments)
        #expect(fresh.status == 0, "\(fresh.stdout) \(fresh.stderr)")
        #expect(!FileManager.default.fileExists(atPath: job.sandbox.stateDirectory + "/resnapshot.json"))
        let plain = try job.sync()
        #expect(plain.status == 0, "\(plain.stderr)")
        try job.delete(ids: 1_000...1_030)
        let prune = BSONDocument()
        prune.writer.append("secantusAdmin.pruneOplog", Int32(1))
        try job.client.runCommand(prune, database: "admin")
        let recovered = try job.sync(["--on-history-lost", "resnapshot"])
        #expect(recovered.status == 0, "a new recovery clears what the discarded one left in the target: \(recovered.stderr)")
        #expect(try job.count("users") == LostHistory.usersAfter - 31)
        let verify = try job.sandbox.run(["verify"] + job.arguments)
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }

    @Test func withoutTheFlagALostStreamStillExits65NamingStartFresh() throws {
        let job = try LostHistory()
        let lost = try job.sync()
        #expect(lost.status == 65, "\(lost.stderr)")
        #expect(lost.stderr.contains("no longer holds the job's position") && lost.stderr.contains("etl-job start --fresh"), "\(lost.stderr)")
        #expect(try !job.schemaExists("etl_resnapshot_public"), "nothing of a recovery is begun")
        #expect(try job.count("users") == LostHistory.usersBefore)
    }

    @Test func aBadOnHistoryLostValueIsOneLineAndExit64() throws {
        let sandbox = try Sandbox()
        let result = try sandbox.run(["sync", "--on-history-lost", "sometimes", "--state-dir", sandbox.stateDirectory])
        #expect(result.status == 64, "\(result.stderr)")
        #expect(result.stderr.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "\n").count <= 2, "\(result.stderr)")
        #expect(result.stderr.contains("sometimes") && result.stderr.contains("--on-history-lost"), "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: sandbox.stateDirectory), "no state directory made")
    }

    /// What a reader of the live tables saw while the recovery ran.
    final class Reader: Sendable {
        struct Seen: Sendable {
            var statements = 0
            var transactions = 0
            var failures: [String] = []
            var pairs: [String: Int] = [:]
        }
        let seen = Mutex(Seen())
        let stopping = Atomic(false)
        let done = Atomic(false)

        init(url: String) {
            Thread.detachNewThread { [self] in
                defer { done.store(true, ordering: .sequentiallyConsistent) }
                guard let db = try? Services.postgres(url) else {
                    seen.withLock { $0.failures.append("cannot connect") }
                    return
                }
                while !stopping.load(ordering: .sequentiallyConsistent) {
                    do {
                        for table in ["users", "addresses"] {
                            let n = Int(try db.execute("SELECT count(*) FROM \(table)").rows[0][0]!) ?? 0
                            seen.withLock { seen in
                                seen.statements += 1
                                if n == 0 { seen.failures.append("\(table) was empty") }
                            }
                        }
                        try db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                        let users = try db.execute("SELECT count(*) FROM users").rows[0][0]!
                        let addresses = try db.execute("SELECT count(*) FROM addresses").rows[0][0]!
                        try db.execute("COMMIT")
                        seen.withLock { seen in
                            seen.transactions += 1
                            seen.pairs["\(users)/\(addresses)", default: 0] += 1
                        }
                    } catch {
                        _ = try? db.execute("ROLLBACK")
                        seen.withLock { $0.failures.append("\(error)") }
                    }
                }
            }
        }

        func stop() -> Seen {
            stopping.store(true, ordering: .sequentiallyConsistent)
            _ = eventually(10) { done.load(ordering: .sequentiallyConsistent) }
            return seen.withLock { $0 }
        }
    }

    @Test func theLiveTablesStayReadableAndWholeThroughoutTheRecovery() throws {
        let job = try LostHistory()
        let db = try job.sandbox.db()
        func pair() throws -> String {
            let row = try db.execute("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM addresses)").rows[0]
            return "\(row[0]!)/\(row[1]!)"
        }
        let old = try pair()
        let reader = Reader(url: job.sandbox.postgresURL)
        Thread.sleep(forTimeInterval: 0.3)
        let recovered = try job.sync(["--on-history-lost", "resnapshot"])
        Thread.sleep(forTimeInterval: 0.3)
        let seen = reader.stop()
        #expect(recovered.status == 0, "\(recovered.stderr)")
        let new = try pair()
        #expect(old != new)
        #expect(seen.failures.isEmpty, "never an empty or missing table, never an error: \(seen.failures.prefix(5))")
        #expect(Set(seen.pairs.keys).isSubset(of: [old, new]), "each transaction saw the old tables or the new, never a mix: \(seen.pairs), old \(old), new \(new)")
        #expect(seen.pairs[old] ?? 0 > 0 && seen.pairs[new] ?? 0 > 0, "the reader ran before and after the swap: \(seen.pairs)")
        #expect(seen.statements > 20, "\(seen.statements) statements")
    }

    /// An application transaction that holds a live table delays the swap, but the swap gives
    /// way after its lock timeout, so other readers never queue behind it for long.
    @Test func aLongReaderDelaysTheSwapWithoutQueueingOthersBehindIt() throws {
        let job = try LostHistory()
        let caughtUp = try job.sync(["--on-history-lost", "resnapshot"], environment: ["ETL_CRASH_AT": "shadowCaughtUp"])
        #expect(caughtUp.signaled && caughtUp.status == SIGKILL, "\(caughtUp)")
        let holder = try job.sandbox.db()
        try holder.execute("BEGIN")
        _ = try holder.execute("SELECT count(*) FROM users")
        let recovery = try job.sandbox.launch(["sync", "--on-history-lost", "resnapshot"] + job.arguments)
        let reader = try job.sandbox.db()
        var slowest = 0.0
        let until = Date().addingTimeInterval(8)
        while Date() < until {
            let began = Date()
            _ = try reader.execute("SELECT count(*) FROM users")
            slowest = max(slowest, Date().timeIntervalSince(began))
            Thread.sleep(forTimeInterval: 0.05)
        }
        #expect(try job.count("users") == LostHistory.usersBefore, "the swap waits for the long transaction")
        try holder.execute("COMMIT")
        let ended = try recovery.wait()
        #expect(ended.status == 0, "\(ended.stderr)")
        #expect(ended.stderr.contains("the swap failed; trying again"), "\(ended.stderr)")
        #expect(slowest < 3.5, "a reader waited \(slowest) s behind the swap")
        try job.expectRecoveredAndFollowing("after a long reader")
    }

    /// The crash points of the recovery, the step `status` shows after each, and whether the
    /// swap had committed (the live tables new, the old ones kept until dropped).
    static let kills: [(point: String, step: String?, swapped: Bool, oldKept: Bool)] = [
        ("resnapshotBegan", "snapshot", false, false),
        ("committed:1", "snapshot", false, false),
        ("shadowLoaded", "snapshot", false, false),
        ("shadowCaughtUp", "catch-up", false, false),
        ("swapCommitted", "swap", true, true),
        ("stateSwitched", "drop-old", true, true),
        ("oldDropped", "drop-old", true, false),
    ]

    @Test func aKillAtEachStepOfTheRecoveryResumesToAnExactTarget() throws {
        for kill in Self.kills {
            let job = try LostHistory()
            let killed = try job.sync(["--on-history-lost", "resnapshot"], environment: ["ETL_CRASH_AT": kill.point])
            #expect(killed.signaled && killed.status == SIGKILL, "\(kill.point): \(killed)")
            #expect(try job.count("users") == (kill.swapped ? LostHistory.usersAfter : LostHistory.usersBefore),
                    "\(kill.point): the live tables are the old ones until the swap, the new ones after")
            #expect(try (job.count("users", schema: "etl_replaced_public") != nil) == kill.oldKept, "\(kill.point): the old tables dropped only after the swap")
            let status = try JSON.object(try job.sandbox.run(["status", "--json", "--state-dir", job.sandbox.stateDirectory]).stdout)
            let recovery = status["resnapshot"] as? [String: Any]
            #expect(recovery?["step"] as? String == kill.step, "\(kill.point): \(status)")
            let text = try job.sandbox.run(["status", "--state-dir", job.sandbox.stateDirectory])
            #expect(text.status == 0 && text.stdout.contains("re-snapshot") && text.stdout.contains("step \(kill.step ?? "")"), "\(kill.point): \(text.stdout)\(text.stderr)")
            let plain = try job.sync()
            #expect(plain.status == 64 && plain.stderr.contains("--on-history-lost resnapshot"), "\(kill.point): a plain sync leaves the recovery alone: \(plain.stderr)")
            let resumed = try job.sync(["--on-history-lost", "resnapshot"])
            #expect(resumed.status == 0, "\(kill.point): \(resumed.stderr)")
            try job.expectRecoveredAndFollowing(kill.point)
        }
    }
}
