import Foundation
import Mongo
import Postgres
import Testing
import DurableETL
import TestSupport
import Users
import UsersFixtures

/// Row counts DATA.md's rules give for the source documents, computed from the documents
/// with plain BSON reading (independently of the transform).
func expectedCounts(_ sandbox: Sandbox, excluding: Set<Int64> = []) throws -> [String: Int] {
    var counts = Dictionary(uniqueKeysWithValues: UsersMapping.tableNames.map { ($0, 0) })
    func length(_ doc: UnsafeRawBufferPointer, _ path: [StaticString]) -> Int {
        BSONIterator.element(in: doc, at: path)?.elementCount ?? 0
    }
    let cursor = try sandbox.users.scanById(afterIdElement: nil, batchSize: 500)
    while let doc = try cursor.next() {
        var id = BSONIterator(document: doc)!
        if id.find("_id"), let value = id.integer, excluding.contains(value) { continue }
        for table in ["users", "addresses", "profiles", "preferences", "social_media", "large_data"] { counts[table]! += 1 }
        counts["education"]! += length(doc, ["profile", "education"])
        counts["experience"]! += length(doc, ["profile", "experience"])
        counts["settings"]! += length(doc, ["preferences", "settings"])
        counts["activity_log"]! += length(doc, ["activityLog"])
        counts["transactions"]! += length(doc, ["transactions"])
        counts["messages"]! += length(doc, ["messages"])
        counts["posts"]! += length(doc, ["socialMedia", "posts"])
        counts["groups"]! += length(doc, ["socialMedia", "groups"])
        var messages = BSONIterator(document: doc)!
        _ = messages.find("messages")
        var m = messages.children!
        while m.next() {
            var message = m.children!
            _ = message.find("attachments")
            var a = message.children!
            while a.next() { counts["attachments"]! += 1 }
        }
    }
    return counts
}

/// The checksums of an uninterrupted run over `users` users, computed once per process.
enum Reference {
    static let users = Int(ProcessInfo.processInfo.environment["ETL_FAULT_USERS"] ?? "") ?? 2_000
    nonisolated(unsafe) private static var cached: (sums: [String: String], seconds: Double)?
    private static let lock = NSLock()

    static func checksums() throws -> [String: String] { try measured().sums }

    /// How long the uninterrupted run took (process start to exit), to spread kills over.
    static func seconds() throws -> Double { try measured().seconds }

    private static func measured() throws -> (sums: [String: String], seconds: Double) {
        lock.lock()
        defer { lock.unlock() }
        if let cached { return cached }
        let sandbox = try Sandbox()
        try sandbox.seed(users: users)
        let result = try sandbox.job("start", ["--batch-size", "100"])
        #expect(result.status == 0, "\(result.stderr)")
        let measured = (try sandbox.checksums(), result.seconds)
        cached = measured
        return measured
    }
}

@Suite(.serialized) struct PipelineTests {
    @Test func startLoadsEveryRowOfTwoThousandUsersExactly() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 2_000, seed: 3)
        let result = try sandbox.job("start", ["--batch-size", "300"])
        #expect(result.status == 0, "\(result.stderr)")
        let expected = try expectedCounts(sandbox)
        #expect(try sandbox.counts() == expected)
        #expect(result.stdout.contains("documents loaded  2,000"))
        #expect(!result.stdout.contains("this run"), "a first run's report has no share to tell apart")
        #expect(result.stdout.contains("rows              \(expected.values.reduce(0, +).formatted(.number.grouping(.automatic)))"))

        let status = try sandbox.status()
        #expect(status["complete"] as? Bool == true)
        #expect(status["pending"] as? Int == 0)
        #expect(status["inFlight"] as? Int == 0)
        #expect(status["documentsLoaded"] as? Int == 2_000)
        #expect((status["rows"] as? [String: Int]) == expected)
        #expect(try sandbox.db().execute("SELECT count(*), sum(documents_loaded) FROM etl_checkpoints").rows[0] == ["7", "2000"])
    }

    @Test(arguments: [Int64(1), 777, 2_000])
    func aLoadedUserMatchesItsDocumentFieldByField(id: Int64) throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 2_000, seed: 3)
        #expect(try sandbox.job("start").status == 0)
        let doc = UserGenerator(seed: 3).document(id: id)
        let db = try sandbox.db()
        try doc.withUnsafeBytes { raw in
            func field(_ path: StaticString...) -> BSONIterator { BSONIterator.element(in: raw, at: path)! }
            func text(_ it: BSONIterator) -> String { String(decoding: it.utf8!, as: UTF8.self) }
            let user = try db.query("""
                SELECT username, email, first_name, last_name, age::text,
                       (extract(epoch FROM created_at) * 1000)::bigint::text, (extract(epoch FROM updated_at) * 1000)::bigint::text
                FROM users WHERE id = $1
                """, [String(id)]).rows
            #expect(user == [[text(field("username")), text(field("email")), text(field("firstName")), text(field("lastName")),
                              String(field("age").integer!), String(field("createdAt").dateTimeMillis!), String(field("updatedAt").dateTimeMillis!)]])
            let address = try db.query("""
                SELECT street, city, state, zip_code, country, (coordinates->>'lat')::float8::text, (coordinates->>'lng')::float8::text
                FROM addresses WHERE id = $1 AND user_id = $1
                """, [String(id)]).rows
            #expect(address == [[text(field("address", "street")), text(field("address", "city")), text(field("address", "state")),
                                 text(field("address", "zipCode")), text(field("address", "country")),
                                 String(field("address", "coordinates", "lat").number!), String(field("address", "coordinates", "lng").number!)]])
            // jsonb compared by value, not text.
            let interests = try db.query("SELECT interests = $2::jsonb, skills = $3::jsonb FROM profiles WHERE id = $1",
                                         [String(id), jsonArray(field("profile", "interests")), jsonArray(field("profile", "skills"))]).rows
            #expect(interests == [["t", "t"]])
            var activity = field("activityLog").children!
            var index: Int64 = 0
            let rows = try db.query("""
                SELECT id::text, user_id::text, key, value, (extract(epoch FROM timestamp) * 1000)::bigint::text, metadata
                FROM activity_log WHERE user_id = $1 ORDER BY id
                """, [String(id)]).rows
            var expected: [[String?]] = []
            while activity.next() {
                var e = activity.children!
                var values: [String: String] = [:]
                while e.next() { values[e.key] = e.type == .dateTime ? String(e.dateTimeMillis!) : text(e) }
                expected.append([String(id * 10_000 + index), String(id), values["key"], values["value"], values["timestamp"], values["metadata"]])
                index += 1
            }
            #expect(rows == expected)
        }
    }

    private func jsonArray(_ it: BSONIterator) -> String {
        var child = it.children!
        var items: [String] = []
        while child.next() { items.append(String(decoding: child.utf8!, as: UTF8.self)) }
        return String(decoding: try! JSONSerialization.data(withJSONObject: items), as: UTF8.self)
    }

    @Test func startRefusesAStateDirectoryWithAJobAndATargetWithRows() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 50)
        #expect(try sandbox.job("start").status == 0)
        let again = try sandbox.job("start")
        #expect(again.status == 64)
        #expect(again.stderr.contains("already finished"), "\(again.stderr)")
        try FileManager.default.removeItem(atPath: sandbox.stateDirectory)
        let target = try sandbox.job("start")
        #expect(target.status == 64)
        #expect(target.stderr.contains("already holds rows"), "\(target.stderr)")
        let noTty = try sandbox.job("start", ["--fresh"])
        #expect(noTty.status == 64, "--fresh without --yes and without a terminal must not truncate")
        let fresh = try sandbox.job("start", ["--fresh", "--yes"])
        #expect(fresh.status == 0, "\(fresh.stderr)")
        #expect(try sandbox.counts()["users"] == 50)
    }

    /// `--fresh` empties tables that hold rows (TRUNCATE gives them new files) and leaves
    /// tables that are all empty as they are, files and all: the same rows either way.
    @Test func freshTruncatesATargetWithRowsAndLeavesAnEmptyOneAsItIs() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 50)
        #expect(try sandbox.job("start").status == 0)
        func fileOfUsers() throws -> String? { try sandbox.db().execute("SELECT relfilenode FROM pg_class WHERE oid = 'users'::regclass").rows[0][0] }
        let loaded = try fileOfUsers()
        let again = try sandbox.job("start", ["--fresh", "--yes"])
        #expect(again.status == 0, "\(again.stderr)")
        let truncated = try fileOfUsers()
        #expect(truncated != loaded, "a target with rows is truncated")
        #expect(try sandbox.counts() == (try expectedCounts(sandbox)))
        try sandbox.db().execute("DELETE FROM users")  // cascades to every child table: all empty, same files
        let emptied = try fileOfUsers()
        let onEmpty = try sandbox.job("start", ["--fresh", "--yes"])
        #expect(onEmpty.status == 0, "\(onEmpty.stderr)")
        #expect(try fileOfUsers() == emptied, "tables that are all empty are not truncated")
        #expect(try sandbox.counts() == (try expectedCounts(sandbox)))
        #expect(try sandbox.duplicateKeys() == 0)
    }

    @Test func verifyAgreesAfterARunAndNamesEveryDamagedRow() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 300)
        #expect(try sandbox.job("start").status == 0)
        let ok = try sandbox.job("verify")
        #expect(ok.status == 0, "\(ok.stdout)\(ok.stderr)")
        #expect(ok.stdout.contains("OK: source and target agree"))
        try sandbox.db().execute("""
            DELETE FROM activity_log WHERE id = 1000002;
            UPDATE users SET email = 'changed@example.com' WHERE id = 7;
            UPDATE profiles SET skills = '["COBOL"]' WHERE id = 8;
            INSERT INTO posts VALUES (999999999, 1, 'k', 'v', now(), '{}');
            """)
        let bad = try sandbox.job("verify", ["--json"])
        #expect(bad.status == 65, "verify exits 65 when source and target differ")
        let document = try #require(try JSONSerialization.jsonObject(with: Data(bad.stdout.utf8)) as? [String: Any])
        #expect(document["agrees"] as? Bool == false && document["schemaVersion"] as? Int == 2)
        let report = try #require((document["pipelines"] as? [[String: Any]])?.first)
        #expect(report["pipeline"] as? String == "users" && report["agrees"] as? Bool == false)
        let tables = Dictionary(uniqueKeysWithValues: (report["tables"] as! [[String: Any]]).map { ($0["table"] as! String, $0) })
        #expect(tables["activity_log"]?["firstMissing"] as? [String] == ["1000002"])
        #expect(tables["users"]?["firstDiffering"] as? [String] == ["7"])
        #expect(tables["profiles"]?["firstDiffering"] as? [String] == ["8"])
        #expect(tables["posts"]?["firstUnexpected"] as? [String] == ["999999999"])
        #expect(tables["addresses"]?["differing"] as? Int == 0)
    }

    @Test func resumeWithoutAJobSaysSo() throws {
        let sandbox = try Sandbox()
        let result = try sandbox.job("resume")
        #expect(result.status == 64)
        #expect(result.stderr.contains("there is no job to resume"))
    }

    @Test func aSecondRunOnTheSameStateIsRefusedWhileOneHoldsIt() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 20)
        let lock = try JobLockHolder(directory: sandbox.stateDirectory)
        for command in ["start", "resume"] {
            let result = try sandbox.job(command)
            #expect(result.status == 75)
            #expect(result.stderr.contains("another etl-job run is active on \(sandbox.stateDirectory) (pid \(getpid()))"), "\(result.stderr)")
        }
        withExtendedLifetime(lock) {}
    }

    @Test func statusDuringARunNeverRunsAheadOfTheTarget() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 2_000)
        let job = try sandbox.launch(["start"] + sandbox.connectionArguments + ["--batch-size", "100", "--workers", "1"])
        var snapshots = 0
        var sawActive = false
        while job.process.isRunning {
            let status = try sandbox.status()
            if let loaded = status["documentsLoaded"] as? Int {
                snapshots += 1
                sawActive = sawActive || status["active"] as? Bool == true
                let committed = Int(try sandbox.db().execute("SELECT coalesce(sum(documents_loaded), 0) FROM etl_checkpoints").rows[0][0]!)!
                #expect(loaded <= committed, "the queue marks a batch done only after its COMMIT")
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
        #expect(try job.wait().status == 0)
        #expect(snapshots > 2)
        #expect(sawActive)
        let status = try sandbox.status()
        #expect(status["active"] as? Bool == false)
        #expect(status["documentsLoaded"] as? Int == 2_000)
        #expect((status["rows"] as? [String: Int]) == (try sandbox.counts()))
    }
}

@Suite(.serialized) struct SetAsideTests {
    @Test func badDocumentsAreSetAsideWithTheirReasonAndEveryOtherDocumentLoads() throws {
        let sandbox = try Sandbox()
        let generator = UserGenerator(seed: 42)
        let bad: Set<Int64> = [50, 120, 250]
        // A user before 50 with a message, whose message id user 50 will repeat.
        let owner = try #require((1..<50).first { generator.document(id: $0).withUnsafeBytes { raw in
            var it = BSONIterator(document: raw)!
            _ = it.find("messages")
            var m = it.children!
            return m.next()
        } })
        try sandbox.users.insertMany((1...300).filter { !bad.contains($0) }.map { generator.document(id: $0) })
        try sandbox.users.insertMany([
            generator.document(id: 50, without: "messages") { w in
                w.appendArray("messages") { a in
                    a.appendDocument("0") { d in
                        d.append("id", "msg\(owner)_0"); d.append("from", "a@b.c"); d.append("to", "d@e.f"); d.append("subject", "s")
                        d.append("body", "b"); d.append("timestamp", dateTimeMillis: 0); d.append("read", false)
                        d.appendArray("attachments") { _ in }
                    }
                }
            },
            generator.document(id: 120, without: "age"),
            generator.document(id: 250, without: "address") { $0.append("address", "12 Main St") },
        ])
        let result = try sandbox.job("start", ["--batch-size", "100"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try sandbox.counts() == (try expectedCounts(sandbox, excluding: bad)))
        #expect(result.stdout.contains("set aside         3"))
        let status = try sandbox.status()
        #expect(status["documentsSetAside"] as? Int == 3)
        #expect(status["documentsLoaded"] as? Int == 297)

        let listed = try sandbox.run(["status", "--rejected", "--json", "--with-documents", "--state-dir", sandbox.stateDirectory])
        let listing = try #require(try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [String: Any])
        let entries = try #require(listing["documents"] as? [[String: Any]])
        let reasons = Dictionary(uniqueKeysWithValues: entries.map { ($0["_id"] as! String, $0["reason"] as! String) })
        #expect(reasons.keys.sorted() == ["120", "250", "50"])
        #expect(reasons["120"] == "field 'age' is missing")
        #expect(reasons["250"] == "field 'address' is a string, expected an object")
        #expect(reasons["50"]?.hasPrefix("rejected by PostgreSQL: duplicate key value violates unique constraint \"messages_pkey\"") == true, "\(reasons["50"] ?? "")")
        #expect(entries.allSatisfy { ($0["document"] as? String)?.contains("\"username\"") == true }, "the whole document is kept")
        let text = try sandbox.run(["status", "--rejected", "--state-dir", sandbox.stateDirectory])
        #expect(text.stdout.contains("_id 120 (batch 2): field 'age' is missing"))
    }
}

@Suite(.serialized) struct CrashTests {
    /// SIGKILL at exact moments: during extraction, mid-COPY, right after a COMMIT (before
    /// the queue knows), right after the queue knows. `resume` must end with exactly the rows
    /// of an uninterrupted run.
    @Test(arguments: ["enqueued:2", "copied:1", "copied:3", "committed:1", "committed:3", "acknowledged:2"])
    func resumeAfterKillLoadsEveryRowOnce(crashAt: String) throws {
        let reference = try Reference.checksums()
        let sandbox = try Sandbox()
        try sandbox.seed(users: Reference.users)
        let crashed = try sandbox.job("start", ["--batch-size", "250"], environment: ["ETL_CRASH_AT": crashAt])
        #expect(crashed.signaled && crashed.status == SIGKILL, "the run was to die at \(crashAt): \(crashed.stderr)")
        let status = try sandbox.status()
        #expect(status["complete"] as? Bool == false)
        let resumed = try sandbox.job("resume")
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try sandbox.checksums() == reference)
        #expect(try sandbox.duplicateKeys() == 0)
        let after = try sandbox.status()
        #expect(after["complete"] as? Bool == true)
        #expect(after["documentsLoaded"] as? Int == Reference.users)
        #expect((after["rows"] as? [String: Int]) == (try sandbox.counts()), "queue counters agree with the target")
    }

    @Test func repeatedKillsAtRandomMomentsStillEndExact() throws {
        let reference = try Reference.checksums()
        var rng = SplitMix64(seed: 2026)
        var kills = 0
        // A run killed at random moments may finish before it is killed three times (a resume has
        // less left to do, and this machine's speed varies): each such round ends exact, and another
        // round on a fresh target follows until three kills have been survived.
        for _ in 0..<6 where kills < 3 {
            let sandbox = try Sandbox()
            try sandbox.seed(users: Reference.users)
            var command = "start"
            var roundKills = 0
            while true {
                let job = try sandbox.launch([command] + sandbox.connectionArguments + ["--batch-size", "100"])
                // A run needs about half a second before its first batch is queued (process start,
                // connections, the source server's first reply): kill between 0.2 s and a third of
                // an uninterrupted run's length past that (at least 1 s).
                let window = UInt64(max(1_000, try Reference.seconds() * 1000 / 3))
                Thread.sleep(forTimeInterval: Double(200 + rng.next() % window) / 1000)
                if !job.process.isRunning {
                    let result = try job.wait()
                    #expect(result.status == 0, "\(command) after \(roundKills) kills: \(result.stderr)")
                    break
                }
                job.signal(SIGKILL)
                _ = try job.wait()
                roundKills += 1
                command = try sandbox.status()["pipeline"] != nil ? "resume" : "start"
                #expect(roundKills < 60, "the run makes progress between kills")
                if roundKills >= 60 { return }
            }
            kills += roundKills
            #expect(try sandbox.checksums() == reference, "after \(roundKills) kills")
            #expect(try sandbox.duplicateKeys() == 0)
        }
        #expect(kills >= 3)
    }

    @Test func sigintStopsWithin5SecondsExit130AndResumeFinishesExactly() throws {
        let reference = try Reference.checksums()
        let sandbox = try Sandbox()
        try sandbox.seed(users: Reference.users)
        let job = try sandbox.launch(["start"] + sandbox.connectionArguments + ["--batch-size", "100", "--workers", "1"])
        #expect(try eventually(30) { (try? sandbox.status()["done"] as? Int).flatMap { $0 } ?? 0 >= 2 })
        let signalled = Date()
        job.signal(SIGINT)
        let result = try job.wait()
        #expect(result.status == 130)
        #expect(Date().timeIntervalSince(signalled) < 5)
        #expect(result.stderr.contains("etl-job resume"))
        let status = try sandbox.status()
        #expect(status["complete"] as? Bool == false)
        #expect(status["inFlight"] as? Int == 0, "in-flight batches finish or roll back")
        let loadedBefore = status["documentsLoaded"] as? Int ?? 0
        let resumed = try sandbox.job("resume")
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try sandbox.checksums() == reference)
        // The report tells this run's share from the job's totals, and its rate is this run's.
        let thisRun = resumed.stdout.split(separator: "\n").first { $0.contains("this run ") }.map(String.init) ?? ""
        let expected = (Reference.users - loadedBefore).formatted(.number.grouping(.automatic))
        #expect(loadedBefore > 0 && thisRun.contains("this run          \(expected) documents loaded"), "\(resumed.stdout)")
        #expect(resumed.stdout.contains("documents loaded  \(Reference.users.formatted(.number.grouping(.automatic)))"), "\(resumed.stdout)")
    }
}
