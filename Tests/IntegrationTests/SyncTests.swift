import Foundation
import Mongo
import Testing
import DurableETL
import TestSupport
import Users
import UsersFixtures

/// `etl-job sync`: the target kept equal to a live source through its change stream, the
/// stream's position committed with the rows, kill -9 anywhere.
@Suite(.serialized) struct SyncTests {
    /// `scripts/change-writer`, changing the collection at random until stopped.
    final class LiveWriter {
        let job: RunningJob

        init(kind: String, database: String, rate: Int, seed: Int, url: String = Services.mongoURL) throws {
            job = try RunningJob(
                executable: Services.packageRoot.appendingPathComponent("scripts/change-writer").path,
                arguments: ["--kind", kind, "--database", database, "--rate", String(rate), "--seed", String(seed), "--url", url],
                environment: [:])
        }

        /// Stops it and returns how many operations it made.
        func stop() throws -> Int {
            job.signal(SIGTERM)
            let result = try job.wait()
            let summary = try? JSON.object(result.stdout.split(separator: "\n").last.map(String.init) ?? "")
            #expect(summary != nil, "the writer ended with a summary: \(result.stdout) \(result.stderr)")
            return summary?["operations"] as? Int ?? 0
        }
    }

    /// Runs `start` (with `pipelines` too), then `resume`, until a run completes, killed at
    /// each of `kills` first.
    static func load(_ sandbox: Sandbox, _ arguments: [String], pipelines: [String] = [], kills: [String]) throws {
        var result = try sandbox.job("start", pipelines + arguments, environment: ["ETL_CRASH_AT": kills[0]])
        #expect(result.signaled, "the snapshot is killed: \(result.stderr)")
        var runs = 0
        for point in kills.dropFirst().map(Optional.some) + Array(repeating: nil, count: 3) where result.signaled || result.status != 0 {
            result = try sandbox.job("resume", arguments, environment: point.map { ["ETL_CRASH_AT": $0] } ?? [:])
            runs += 1
        }
        #expect(result.status == 0 && !result.signaled, "the snapshot completes after \(runs) resumes: \(result.stderr)")
    }

    /// `sync --follow` killed at random moments and at crash points, a SIGTERM (143), while
    /// the writer runs; then the writer stops and a `sync` catches up.
    static func followThroughKills(_ sandbox: Sandbox, _ arguments: [String], writer: LiveWriter, seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let points = ["committed:1", "copied:2", "enqueued:2", "acknowledged:1"]
        for round in 0..<6 {
            let point = round % 2 == 1 ? points[(round / 2) % points.count] : nil
            let follow = try sandbox.launch(["sync", "--follow"] + sandbox.connectionArguments + arguments,
                                            environment: point.map { ["ETL_CRASH_AT": $0] } ?? [:])
            if point == nil {
                Thread.sleep(forTimeInterval: 0.6 + Double(rng.next() % 1_500) / 1_000)
                follow.signal(SIGKILL)
            }
            let result = try follow.wait()
            #expect(result.signaled, "sync --follow is killed (round \(round), \(point ?? "at random")): \(result.status) \(result.stderr)")
        }
        let graceful = try sandbox.launch(["sync", "--follow"] + sandbox.connectionArguments + arguments)
        Thread.sleep(forTimeInterval: 1.5)
        graceful.signal(SIGTERM)
        let stopped = try graceful.wait()
        #expect(stopped.status == 143 && !stopped.signaled, "\(stopped.stderr)")
        #expect(try writer.stop() > 100, "the writer changed the source throughout")
        let caughtUp = try sandbox.job("sync", arguments)
        #expect(caughtUp.status == 0, "\(caughtUp.stderr)")
        #expect(caughtUp.stdout.contains("etl-job: changes applied"), "\(caughtUp.stdout)")
    }

    /// The source as it finally is, loaded afresh into schema `fresh`.
    static func freshSnapshot(_ sandbox: Sandbox, _ extra: [String] = []) throws {
        let state = sandbox.stateDirectory + "-fresh"
        defer { try? FileManager.default.removeItem(atPath: state) }
        let fresh = try sandbox.run(["start", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL, "--database",
                                     sandbox.mongoDatabase, "--state-dir", state, "--target-schema", "fresh", "--max-set-aside", "100%"] + extra)
        #expect(fresh.status == 0, "\(fresh.stderr)")
    }

    @Test func usersStayEqualToALiveSourceThroughKillsDuringTheSnapshotAndTheSync() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 400)
        let writer = try LiveWriter(kind: "users", database: sandbox.mongoDatabase, rate: 120, seed: 5)
        let arguments = ["--batch-size", "40", "--max-set-aside", "100%"]
        // Changes made while the snapshot runs (and while it is killed) are applied by sync.
        try Self.load(sandbox, arguments, kills: ["committed:2", "copied:1", "acknowledged:2"])
        try Self.followThroughKills(sandbox, ["--batch-size", "20", "--flush-timeout", "0.3", "--max-set-aside", "100%"], writer: writer, seed: 41)

        try Self.freshSnapshot(sandbox)
        #expect(try sandbox.checksums() == sandbox.checksums(schema: "fresh"), "the synced target equals a fresh snapshot of the final source, row for row")
        #expect(try sandbox.duplicateKeys() == 0)
        let verify = try sandbox.job("verify")
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        let status = try sandbox.status()
        let sync = try #require(status["sync"] as? [String: Any], "\(status)")
        #expect((sync["eventsApplied"] as? Int ?? 0) > 0 && sync["pending"] as? Int == 0, "\(sync)")
        // A tampered row is still found.
        try sandbox.db().execute("UPDATE activity_log SET value = 'tampered' WHERE id = (SELECT min(id) FROM activity_log)")
        #expect(try sandbox.job("verify").status == 65)
    }

    /// Two pipelines in one job, each from its own collection with its own writer: users, and
    /// a mapped collection with two levels of child tables.
    @Test func aMappedCollectionWithTwoLevelsOfChildTablesStaysEqualToALiveSource() throws {
        let sandbox = try Sandbox()
        try Orders.seed(sandbox, count: 300)
        try sandbox.seed(users: 150)
        let file = sandbox.stateDirectory + "-orders.json"
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try sandbox.job("init", ["--collection", "orders", "--output", file]).status == 0)
        let writer = try LiveWriter(kind: "orders", database: sandbox.mongoDatabase, rate: 100, seed: 9)
        let users = try LiveWriter(kind: "users", database: sandbox.mongoDatabase, rate: 40, seed: 10)
        let pipelines = ["--pipeline", "users", "--mapping", file]
        try Self.load(sandbox, ["--batch-size", "30", "--max-set-aside", "100%"], pipelines: pipelines, kills: ["committed:2", "enqueued:3", "copied:2"])
        try Self.followThroughKills(sandbox, ["--batch-size", "15", "--flush-timeout", "0.3", "--max-set-aside", "100%"], writer: writer, seed: 43)
        #expect(try users.stop() > 100)
        #expect(try sandbox.job("sync", ["--max-set-aside", "100%"]).status == 0)

        try Self.freshSnapshot(sandbox, pipelines)
        #expect(try sandbox.checksums(tables: MappingTests.tables) == sandbox.checksums(tables: MappingTests.tables, schema: "fresh"))
        #expect(try sandbox.checksums() == sandbox.checksums(schema: "fresh"), "the users pipeline of the same job too")
        let parts = try sandbox.counts(tables: MappingTests.tables)["orders_items_parts"] ?? 0
        #expect(parts > 0, "the second level of child tables holds rows")
        let verify = try sandbox.job("verify")
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }

    @Test func syncIsRefusedWithoutACompletedSnapshotOrAChangeStream() throws {
        let sandbox = try Sandbox()
        let none = try sandbox.job("sync")
        #expect(none.status == 64 && none.stderr.contains("there is no job to sync"), "\(none.stderr)")

        try sandbox.seed(users: 120)
        let killed = try sandbox.job("start", ["--batch-size", "20"], environment: ["ETL_CRASH_AT": "committed:2"])
        #expect(killed.signaled)
        let early = try sandbox.job("sync")
        #expect(early.status == 64 && early.stderr.contains("has not finished its snapshot"), "\(early.stderr)")
        #expect(try sandbox.job("resume").status == 0)
        #expect(try sandbox.job("sync").status == 0, "nothing changed: a sync applies nothing and succeeds")
        // A dropped collection ends the stream: nothing left to follow, never a silent success.
        try Services.mongo().collection(database: sandbox.mongoDatabase, name: "users").drop()
        let dropped = try sandbox.job("sync")
        #expect(dropped.status == 66 && dropped.stderr.contains("was dropped or renamed"), "\(dropped.stderr)")
        #expect(dropped.stderr.split(separator: "\n").count == 1)

        let file = try FileSourceTests.dump(sandbox, users: 50)
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-files") }
        let fileState = ["--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory + "-file", "--target-schema", "from_file"]
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-file") }
        #expect(try sandbox.run(["start", "--source-file", file] + fileState).status == 0)
        let fromFile = try sandbox.run(["sync"] + fileState)
        #expect(fromFile.status == 64 && fromFile.stderr.contains("has no change stream"), "\(fromFile.stderr)")

        let standalone = try PrivateMongo(flags: ["--standalone"])
        let client = try Services.mongo(standalone.url)
        try client.collection(database: "app", name: "users").insertMany((1...30).map { UserGenerator(seed: 1).document(id: $0) })
        let alone = ["--postgres-url", sandbox.postgresURL, "--mongodb-url", standalone.url, "--database", "app",
                     "--state-dir", sandbox.stateDirectory + "-alone", "--target-schema", "alone"]
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-alone") }
        #expect(try sandbox.run(["start"] + alone).status == 0, "start works as ever on a server without change streams")
        let refused = try sandbox.run(["sync"] + alone)
        #expect(refused.status == 64 && refused.stderr.contains("not a replica set member"), "\(refused.stderr)")
        #expect(refused.stderr.split(separator: "\n").count == 1)
    }

    /// The source server restarted under `sync --follow`: it retries, resumes the stream from
    /// its position and goes on, and the target ends equal to the source. (The writer is
    /// paused across the restart: the bundled server may lose the writes it was making as it
    /// stops, which no reader of its stream can know; see docs/design/sync.md.)
    @Test func syncFollowRidesOutARestartOfTheSourceServer() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 150)
        #expect(try sandbox.job("start").status == 0)
        let arguments = ["--batch-size", "20", "--max-set-aside", "100%"]
        let follow = try sandbox.launch(["sync", "--follow"] + sandbox.connectionArguments + arguments)
        let before = try LiveWriter(kind: "users", database: sandbox.mongoDatabase, rate: 60, seed: 21)
        Thread.sleep(forTimeInterval: 3)
        #expect(try before.stop() > 50)
        Thread.sleep(forTimeInterval: 1.5)
        try Services.services("restart", "mongo")
        let after = try LiveWriter(kind: "users", database: sandbox.mongoDatabase, rate: 60, seed: 22)
        Thread.sleep(forTimeInterval: 3)
        #expect(try after.stop() > 50)
        Thread.sleep(forTimeInterval: 3)
        #expect(follow.isRunning, "sync --follow is still running after the restart")
        follow.signal(SIGTERM)
        let stopped = try follow.wait()
        #expect(stopped.status == 143 && !stopped.signaled, "\(stopped.stderr)")
        #expect(try sandbox.job("sync", arguments).status == 0)
        try Self.freshSnapshot(sandbox)
        #expect(try sandbox.checksums() == sandbox.checksums(schema: "fresh"), "the synced target equals a fresh snapshot of the final source")
    }

    /// Sets `field` of user `id` to `value` in the sandbox's collection.
    static func set(_ sandbox: Sandbox, user id: Int64, _ field: String, _ value: String) throws {
        let command = BSONDocument()
        command.writer.append("update", "users")
        command.writer.appendArray("updates") { updates in
            updates.appendDocument("0") { update in
                update.appendDocument("q") { $0.append("_id", id) }
                update.appendDocument("u") { u in u.appendDocument("$set") { $0.append(field, value) } }
            }
        }
        try Services.mongo().runCommand(command, database: sandbox.mongoDatabase)
    }

    /// A change whose new rows collide with another document's: set aside with PostgreSQL's
    /// reason, its old rows gone, every other document untouched; the source's fix loads it.
    @Test func aChangeCollidingWithAnotherDocumentIsSetAsideAndItsFixLoadsIt() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 60)
        #expect(try sandbox.job("start").status == 0)
        let db = try sandbox.db()
        let owners = try db.execute("SELECT user_id, min(id) FROM messages GROUP BY user_id ORDER BY user_id LIMIT 2").rows
        try #require(owners.count == 2)
        let (moved, taken) = (Int64(owners[0][0]!)!, owners[1][1]!)
        try Self.set(sandbox, user: moved, "messages.0.id", taken)

        let collided = try sandbox.job("sync")
        #expect(collided.status == 65, "one change of one set aside is over the default limit: \(collided.stderr)")
        #expect(collided.stderr.contains("etl-job status --rejected"), "\(collided.stderr)")
        let listed = try JSON.object(try sandbox.job("status", ["--rejected", "--json"]).stdout)
        let documents = try #require(listed["documents"] as? [[String: Any]])
        #expect(documents.count == 1 && documents.first?["_id"] as? String == String(moved), "\(documents)")
        #expect((documents.first?["reason"] as? String)?.contains("messages_pkey") == true, "\(documents)")
        #expect(try db.execute("SELECT count(*) FROM users WHERE id = \(moved)").rows[0][0] == "0", "its old rows are gone")
        #expect(try db.execute("SELECT count(*) FROM messages WHERE id = '\(taken)'").rows[0][0] == "1", "the other document keeps its row")

        try Self.set(sandbox, user: moved, "messages.0.id", "fixed-\(taken)")
        #expect(try sandbox.job("sync").status == 0)
        let cleared = try JSON.object(try sandbox.job("status", ["--rejected", "--json"]).stdout)
        #expect((cleared["documents"] as? [Any])?.isEmpty == true, "\(cleared)")
        #expect(try db.execute("SELECT count(*) FROM messages WHERE id = 'fixed-\(taken)' AND user_id = \(moved)").rows[0][0] == "1")
        let verify = try sandbox.job("verify")
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }

    /// The server's history no longer reaches the job's position: never a silent skip.
    @Test func aPositionTheServerNoLongerHoldsStopsSyncNamingWhatToDo() throws {
        let sandbox = try Sandbox()
        let server = try PrivateMongo(flags: ["--oplog-max-entries", "20"])
        let client = try Services.mongo(server.url)
        let users = client.collection(database: "app", name: "users")
        try users.insertMany((1...60).map { UserGenerator(seed: 1).document(id: $0) })
        let arguments = ["--postgres-url", sandbox.postgresURL, "--mongodb-url", server.url, "--database", "app", "--state-dir", sandbox.stateDirectory]
        #expect(try sandbox.run(["start"] + arguments).status == 0)
        // Far more changes than the server keeps, and its history pruned to them.
        try users.insertMany((1_000...1_100).map { UserGenerator(seed: 2).document(id: $0) })
        let prune = BSONDocument()
        prune.writer.append("secantusAdmin.pruneOplog", Int32(1))
        try client.runCommand(prune, database: "admin")
        let lost = try sandbox.run(["sync"] + arguments)
        #expect(lost.status == 65, "\(lost.stderr)")
        #expect(lost.stderr.contains("no longer holds the job's position") && lost.stderr.contains("etl-job start --fresh"), "\(lost.stderr)")
    }
}
