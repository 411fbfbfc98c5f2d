import Foundation
import Mongo
import Testing
import DurableETL
import TestSupport
import Users
import UsersFixtures

/// Jobs split into partitions (`start --partitions`), loaded by `etl-job worker` processes,
/// each with its own state directory, against one PostgreSQL: workers killed in the middle
/// of a partition and during the final step, the others finishing, the target equal, row by
/// row, to a single-process run.
@Suite(.serialized) struct PartitionTests {
    /// The job's partitions as `status --partitions --json` shows them.
    static func partitions(_ sandbox: Sandbox, schema: String) throws -> (job: [String: Any], parts: [[String: Any]]) {
        let result = try sandbox.run(["status", "--partitions", "--json", "--postgres-url", sandbox.postgresURL, "--target-schema", schema])
        #expect(result.status == 0, "\(result.stderr)")
        let document = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] ?? [:]
        let job = (document["jobs"] as? [[String: Any]])?.first ?? [:]
        return (job, job["partitions"] as? [[String: Any]] ?? [])
    }

    /// A worker of the sandbox's target: its own state directory, like a worker on another machine.
    static func worker(_ sandbox: Sandbox, _ name: String, schema: String, _ extra: [String] = [], crashAt: String? = nil) throws -> RunningJob {
        try sandbox.launch(["worker", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL, "--target-schema", schema,
                            "--state-dir", sandbox.stateDirectory + "-" + name] + extra,
                           environment: crashAt.map { ["ETL_CRASH_AT": $0] } ?? [:])
    }

    /// Plans, kills a worker mid-partition, then two workers killed in the final step, then
    /// one that finishes; the target must equal `reference` table by table.
    private func loadWithKilledWorkers(_ sandbox: Sandbox, plan: [String], schema: String, reference: [String: String], documents: Int,
                                       workerFlags: [String] = []) throws {
        defer { for name in ["a", "b", "c", "d"] { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-" + name) } }
        let planned = try sandbox.run(["start", "--postgres-url", sandbox.postgresURL, "--target-schema", schema, "--partitions", "3",
                                       "--batch-size", "100", "--state-dir", sandbox.stateDirectory + "-plan"] + plan)
        #expect(planned.status == 0, "\(planned.stderr)")
        #expect(planned.stdout.contains("etl-job worker"), "\(planned.stdout)")
        #expect(!planned.stdout.contains(":etl@"), "a credential in the plan's output: \(planned.stdout)")
        var (job, parts) = try Self.partitions(sandbox, schema: schema)
        #expect(parts.count == 3)
        #expect(job["documentsPlanned"] as? Int == documents, "\(job)")
        #expect(try sandbox.counts(schema: schema).values.allSatisfy { $0 == 0 }, "the plan loads nothing")

        // A worker dies in its first partition, two batches committed.
        let a = try Self.worker(sandbox, "a", schema: schema, workerFlags, crashAt: "committed:2").wait()
        #expect(a.signaled && a.status == 9, "\(a.stderr)")
        (job, parts) = try Self.partitions(sandbox, schema: schema)
        let abandoned = parts.filter { ($0["claims"] as? Int) == 1 }
        #expect(abandoned.count == 1 && abandoned.first?["state"] as? String == "pending", "the dead worker's claim is released: \(parts)")
        #expect((abandoned.first?["documents"] as? Int ?? 0) >= 200, "its committed batches stay: \(parts)")
        // Its machine's resume is not how a partition goes on: a worker is, here or anywhere.
        let resumed = try sandbox.run(["resume", "--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory + "-a"])
        #expect(resumed.status == 64 && resumed.stderr.contains("worker's state directory") && resumed.stderr.contains("run 'etl-job worker'"), "\(resumed.stderr)")

        // Two workers at once, each killed if it reaches the final step: one loads the
        // abandoned partition from what PostgreSQL holds; the final step runs once at a time.
        let b = try Self.worker(sandbox, "b", schema: schema, workerFlags, crashAt: "keys"), c = try Self.worker(sandbox, "c", schema: schema, workerFlags, crashAt: "keys")
        let (rb, rc) = (try b.wait(), try c.wait())
        #expect(rb.signaled || rc.signaled, "one of them ran the final step: \(rb.stdout) \(rb.stderr) \(rc.stdout) \(rc.stderr)")
        for r in [rb, rc] where !r.signaled { #expect(r.status == 0, "\(r.stderr)") }
        (job, parts) = try Self.partitions(sandbox, schema: schema)
        #expect(parts.allSatisfy { $0["state"] as? String == "done" }, "\(parts)")
        #expect(job["finished"] as? Bool == false, "killed in the final step: \(job)")
        #expect(try FileSourceTests.primaryKeysInPlace(sandbox, schema: schema) < 15, "some keys are still to build")

        // Another worker finishes the final step; a last one finds nothing to do.
        let d = try Self.worker(sandbox, "d", schema: schema, workerFlags).wait()
        #expect(d.status == 0, "\(d.stderr)")
        #expect(d.stdout.contains("finished the job of users"), "\(d.stdout)")
        let e = try Self.worker(sandbox, "e", schema: schema, workerFlags).wait()
        #expect(e.status == 0 && e.stdout.contains("loaded no partition"), "\(e.stdout) \(e.stderr)")
        (job, parts) = try Self.partitions(sandbox, schema: schema)
        #expect(job["finished"] as? Bool == true && job["etaSeconds"] as? Int == 0, "\(job)")
        #expect(parts.reduce(0) { $0 + ($1["documents"] as? Int ?? 0) } == documents)

        #expect(try sandbox.checksums(schema: schema) == reference, "the partitioned load equals the single-process one, table by table")
        // verify finds the job in the target (no state directory holds it) and agrees, set-aside documents known.
        let verified = try sandbox.run(["verify", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL, "--target-schema", schema,
                                        "--state-dir", sandbox.stateDirectory + "-none"])
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
        #expect(try FileSourceTests.primaryKeysInPlace(sandbox, schema: schema) == 15)
        let keys = (try FileSourceTests.foreignKeysInPlace(sandbox, schema: schema), try FileSourceTests.foreignKeysInPlace(sandbox, schema: "single"))
        #expect(keys.0 == FileSourceTests.keys && keys.1 == FileSourceTests.keys, "foreign keys in place: \(keys)")
        // Every batch's checkpoint once, under its partition's job id.
        let checkpoints = try sandbox.db().execute("""
            SELECT count(*), count(DISTINCT (job_id, batch_id)), sum(documents_loaded + jsonb_array_length(set_aside)) FROM \"\(schema)\".etl_checkpoints
            """).rows[0]
        #expect(checkpoints[0] == checkpoints[1] && checkpoints[2] == String(documents), "\(checkpoints)")
    }

    @Test func workersKilledMidPartitionAndInTheFinalStepLoadAFileExactlyOnce() throws {
        let sandbox = try Sandbox()
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-files") }
        // The bad-input corpus too: documents set aside by a dead worker's batches are reported once.
        let file = try FileSourceTests.dump(sandbox, users: 1_500, badInput: true)
        let single = try sandbox.run(["start", "--source-file", file, "--postgres-url", sandbox.postgresURL, "--target-schema", "single",
                                      "--state-dir", sandbox.stateDirectory + "-single", "--max-set-aside", "100"])
        #expect(single.status == 0, "\(single.stderr)")
        let documents = try Int(sandbox.db().execute("SELECT sum(documents_loaded + jsonb_array_length(set_aside)) FROM single.etl_checkpoints").rows[0][0]!)!
        try loadWithKilledWorkers(sandbox, plan: ["--source-file", file], schema: "parts", reference: try sandbox.checksums(schema: "single"), documents: documents,
                                  workerFlags: ["--max-set-aside", "100"])
        let setAside = try sandbox.db().execute("""
            SELECT (SELECT sum(jsonb_array_length(set_aside)) FROM parts.etl_checkpoints), (SELECT sum(jsonb_array_length(set_aside)) FROM single.etl_checkpoints)
            """).rows[0]
        #expect(setAside[0] == setAside[1] && setAside[0] != "0", "the same documents set aside: \(setAside)")

        // status lists them from the target: each _id with its partition, batch and reason.
        let listed = try sandbox.run(["status", "--partitions", "--rejected", "--json", "--postgres-url", sandbox.postgresURL, "--target-schema", "parts"])
        #expect(listed.status == 0, "\(listed.stderr)")
        let entries = try JSON.object(listed.stdout)["documents"] as? [[String: Any]] ?? []
        let reference = try sandbox.db().execute("SELECT e->>'id', e->>'reason' FROM single.etl_checkpoints, jsonb_array_elements(set_aside) e").rows
        #expect(Set(entries.compactMap { $0["_id"] as? String }) == Set(reference.map { $0[0]! }), "\(entries)")
        #expect(Set(entries.compactMap { $0["reason"] as? String }) == Set(reference.map { $0[1]! }))
        #expect(entries.allSatisfy { ($0["partition"] as? Int ?? 0) >= 1 && ($0["batch"] as? Int ?? 0) >= 1 && $0["pipeline"] as? String == "users" })
        let text = try sandbox.run(["status", "--partitions", "--rejected", "--postgres-url", sandbox.postgresURL, "--target-schema", "parts"])
        #expect(text.status == 0 && text.stdout.hasPrefix("\(reference.count) document(s) set aside\n") && text.stdout.contains("_id 71 (partition "), "\(text.stdout)")
        let withDocuments = try sandbox.run(["status", "--partitions", "--rejected", "--with-documents", "--postgres-url", sandbox.postgresURL, "--target-schema", "parts"])
        #expect(withDocuments.status == 64 && withDocuments.stderr.contains("--with-documents is not available with --partitions"), "\(withDocuments.stderr)")
    }

    @Test func workersKilledMidPartitionAndInTheFinalStepLoadACollectionExactlyOnce() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 900)
        let single = try sandbox.job("start", ["--target-schema", "single"])
        #expect(single.status == 0, "\(single.stderr)")
        try loadWithKilledWorkers(sandbox, plan: ["--mongodb-url", Services.mongoURL, "--database", sandbox.mongoDatabase], schema: "parts",
                                  reference: try sandbox.checksums(schema: "single"), documents: 900)
    }

    /// One worker loading every partition, against one process on the same source.
    private func loadByOneWorker(_ sandbox: Sandbox, plan: [String], partitions: Int) throws {
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-w") }
        let single = try sandbox.run(["start", "--postgres-url", sandbox.postgresURL, "--target-schema", "single", "--max-set-aside", "100",
                                      "--state-dir", sandbox.stateDirectory + "-single"] + plan)
        #expect(single.status == 0, "\(single.stderr)")
        let planned = try sandbox.run(["start", "--postgres-url", sandbox.postgresURL, "--target-schema", "parts", "--partitions", String(partitions),
                                       "--batch-size", "50", "--state-dir", sandbox.stateDirectory + "-plan"] + plan)
        #expect(planned.status == 0, "\(planned.stderr)")
        #expect(try Self.partitions(sandbox, schema: "parts").parts.count == partitions, "\(planned.stdout)")
        let worker = try Self.worker(sandbox, "w", schema: "parts", ["--max-set-aside", "100"]).wait()
        #expect(worker.status == 0, "\(worker.stderr)")
        // A partition is marked done in the transaction of its last batch (the same now()), unless
        // its last two batches committed at once (then just after): most are.
        let marked = try sandbox.db().execute("""
            SELECT count(*) FILTER (WHERE p.done_at = (SELECT max(committed_at) FROM parts.etl_checkpoints c WHERE c.job_id = p.job_id || '/' || p.partition)),
                   count(*) FILTER (WHERE p.documents_loaded + p.documents_set_aside = (SELECT sum(documents_loaded + jsonb_array_length(set_aside))
                                                                                     FROM parts.etl_checkpoints c WHERE c.job_id = p.job_id || '/' || p.partition))
            FROM parts.etl_partitions p
            """).rows[0]
        #expect(Int(marked[0]!)! >= (partitions + 1) / 2 && marked[1] == String(partitions), "\(marked)")
        #expect(try sandbox.checksums(schema: "parts") == sandbox.checksums(schema: "single"))
        // The documents set aside (not users: other _id types), each once, by _id.
        let setAside = try ["parts", "single"].map { schema in
            try sandbox.db().execute("SELECT e->>'id', e->>'reason' FROM \(schema).etl_checkpoints, jsonb_array_elements(set_aside) e ORDER BY 1, 2").rows
        }
        #expect(setAside[0] == setAside[1], "\(setAside)")
    }

    @Test func partitionsOfACollectionWithIdsOfSeveralTypesCoverEveryDocumentOnce() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 100)
        // _ids of other types sort after numbers (strings, then ObjectIds): the ranges must
        // take them in BSON order too (they are set aside by the users pipeline, once each).
        try sandbox.users.insertMany((0..<100).map { i in
            let document = BSONDocument()
            if i < 50 { document.writer.append("_id", "s\(i)") } else { document.writer.append("_id", objectId: (0..<12).map { UInt8(truncatingIfNeeded: $0 * 7 + i) }) }
            document.writer.append("name", "not a user \(i)")
            return document
        })
        // Five ranges of 40: they meet at numbers, at a string and at an ObjectId.
        try loadByOneWorker(sandbox, plan: ["--mongodb-url", Services.mongoURL, "--database", sandbox.mongoDatabase], partitions: 5)
        let parts = try Self.partitions(sandbox, schema: "parts").parts
        #expect(parts.map { $0["documents"] as? Int ?? 0 } == [40, 40, 40, 40, 40], "\(parts)")
        // The bench's measure of the split's cost to the source reads each document once too.
        let scanned = try sandbox.run(["scan", "--partitions", "5", "--mongodb-url", Services.mongoURL, "--database", sandbox.mongoDatabase])
        #expect(scanned.status == 0 && scanned.stdout.hasPrefix("scanned 200 documents") && scanned.stdout.contains("in 5 ranges at once"), "\(scanned.stdout) \(scanned.stderr)")
    }

    /// Ranges that meet at binary _ids of one length and several subtypes, which the bundled
    /// server orders otherwise than MongoDB: each document is loaded or set aside once.
    @Test func partitionsMeetingAtBinaryIdsCoverEveryDocumentOnce() throws {
        let sandbox = try Sandbox()
        let blobs = try BinaryIdTests.collection(sandbox)
        let generator = UserGenerator(seed: 42)
        try blobs.insertMany((1...40).map { generator.document(id: $0) })
        try loadByOneWorker(sandbox, plan: ["--mongodb-url", Services.mongoURL, "--database", sandbox.mongoDatabase, "--collection", "blobs"],
                            partitions: 6)
        let parts = try Self.partitions(sandbox, schema: "parts").parts
        #expect(parts.reduce(0) { $0 + ($1["documents"] as? Int ?? 0) } == 120, "\(parts)")
    }

    /// A worker whose state directory fills exits 74, saying to run the worker again (not
    /// `resume`, which has no partition to go on with); its partition goes back to the others,
    /// and a worker run again after space is freed finishes the job exactly.
    @Test func aWorkerWhoseDiskFillsExits74AndTheJobFinishesAfterSpaceIsFreed() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 2_000)
        let mountPoint = sandbox.stateDirectory + "-fs"
        let unmount = try mountTmpfs(at: mountPoint, size: "2m")
        defer { unmount() }
        let single = try sandbox.run(["start", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL, "--database", sandbox.mongoDatabase,
                                      "--target-schema", "single", "--state-dir", sandbox.stateDirectory + "-single"])
        #expect(single.status == 0, "\(single.stderr)")
        let planned = try sandbox.run(["start", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL, "--database", sandbox.mongoDatabase,
                                       "--partitions", "2", "--max-pending", "100", "--state-dir", sandbox.stateDirectory + "-plan"])
        #expect(planned.status == 0, "\(planned.stderr)")
        let worker = ["worker", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL, "--max-pending", "100", "--state-dir", mountPoint + "/state"]
        let full = try sandbox.run(worker)
        #expect(full.status == 74 && !full.signaled, "exit \(full.status): \(full.stderr)")
        #expect(full.stderr.contains("No space left on device") && full.stderr.contains("run 'etl-job worker' again")
                && !full.stderr.contains("etl-job resume"), "\(full.stderr)")
        #expect(try Self.partitions(sandbox, schema: "public").job["finished"] as? Bool == false)
        #expect(try shell("mount -o remount,size=64m \(mountPoint)") == 0)
        let again = try sandbox.run(worker)
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try sandbox.checksums() == sandbox.checksums(schema: "single"))
    }

    @Test func aCompressedFileIsSplitInItsContent() throws {
        let sandbox = try Sandbox()
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-files") }
        let file = try FileSourceTests.dump(sandbox, users: 400, name: "users.bson.gz")
        try loadByOneWorker(sandbox, plan: ["--source-file", file], partitions: 3)
    }

    /// PostgreSQL restarts under two workers: every session ends, the leases with them; each
    /// worker takes its lease again (or leaves the partition to the one that took it over
    /// meanwhile, and goes on), and both finish with exit 0 and the rows exactly once.
    @Test func workersRideOutARestartOfPostgreSQL() throws {
        let sandbox = try Sandbox()
        defer { for name in ["r1", "r2", "r3"] { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-" + name) } }
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-files") }
        let file = try FileSourceTests.dump(sandbox, users: 3_000)
        let single = try sandbox.run(["start", "--source-file", file, "--postgres-url", sandbox.postgresURL, "--target-schema", "single",
                                      "--state-dir", sandbox.stateDirectory + "-single"])
        #expect(single.status == 0, "\(single.stderr)")
        try sandbox.slowCommits(seconds: 0.05)
        let planned = try sandbox.run(["start", "--source-file", file, "--postgres-url", sandbox.postgresURL, "--partitions", "3", "--batch-size", "50",
                                       "--state-dir", sandbox.stateDirectory + "-plan"])
        #expect(planned.status == 0, "\(planned.stderr)")
        // A third waits for a plan: a session holds the schema's plan lock (as a planning worker
        // would) until the restart ends it; then it takes the lock, finds the job planned, and loads.
        let holder = try sandbox.db()
        try holder.execute("SELECT pg_advisory_lock(\(0x45_54_4C_50), hashtext('etl-job plan public'))")
        let waiting = try Self.worker(sandbox, "r3", schema: "public", ["--partitions", "3", "--source-file", file, "--batch-size", "50"])
        let workers = try ["r1", "r2"].map { try Self.worker(sandbox, $0, schema: "public") }
        Thread.sleep(forTimeInterval: 1.5)
        try Services.services("restart", "postgres")
        let planless = try waiting.wait()
        // (It finds the job planned, or, if the others were quicker, finished.)
        #expect(planless.status == 0 && planless.stderr.contains("waiting for its plan")
                && (planless.stdout.contains("is planned") || planless.stdout.contains("nothing to plan")), "\(planless.stdout) \(planless.stderr)")
        withExtendedLifetime(holder) {}
        let results = try workers.map { try $0.wait() }
        for result in results { #expect(result.status == 0 && !result.signaled, "\(result.stdout) \(result.stderr)") }
        // A worker whose partition another took over while it was cut off leaves it to that one
        // (which loads it), and goes on.
        let all = results + [planless]
        for (i, result) in all.enumerated() {
            for line in result.stdout.split(separator: "\n") where line.hasPrefix("left partition ") {
                let number = line.split(separator: " ")[2]
                let others = all.indices.filter { $0 != i }.map { all[$0].stdout }
                #expect(others.contains { $0.contains("loaded partition \(number) of users") }, "\(others)")
            }
        }
        #expect(try Self.partitions(sandbox, schema: "public").job["finished"] as? Bool == true)
        #expect(try sandbox.checksums() == sandbox.checksums(schema: "single"))
        #expect(try FileSourceTests.foreignKeysInPlace(sandbox) == FileSourceTests.keys)
    }

    /// A live writer changes the collection (inserts, updates pushing, popping and emptying
    /// arrays, replaces, deletes) from before the workers start until after they finish, one
    /// of them killed mid-partition; then `sync` from a new state directory takes the finished
    /// job as its snapshot and applies every change made since the plan, killed once and run
    /// again: the target equals a fresh snapshot of the final source.
    @Test func syncAfterAJobSplitIntoPartitionsAppliesEveryChangeSinceThePlan() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 600)
        let base = ["--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL]
        let planned = try sandbox.run(["start", "--partitions", "3", "--batch-size", "50", "--database", sandbox.mongoDatabase,
                                       "--state-dir", sandbox.stateDirectory + "-plan"] + base)
        #expect(planned.status == 0, "\(planned.stderr)")
        // A sync before the job is finished is refused, and writes no state.
        let early = try sandbox.run(["sync", "--state-dir", sandbox.stateDirectory + "-early"] + base)
        #expect(early.status == 75 && early.stderr.contains("is not finished"), "\(early.stderr)")
        #expect(!FileManager.default.fileExists(atPath: sandbox.stateDirectory + "-early/pipelines.json"))

        let writer = try SyncTests.LiveWriter(kind: "users", database: sandbox.mongoDatabase, rate: 150, seed: 23)
        Thread.sleep(forTimeInterval: 0.5)
        // (The writer's documents include some the users pipeline sets aside.)
        let limit = ["--max-set-aside", "100%"]
        let killed = try Self.worker(sandbox, "a", schema: "public", limit, crashAt: "committed:3").wait()
        #expect(killed.signaled, "\(killed.stderr)")
        let (b, c) = (try Self.worker(sandbox, "b", schema: "public", limit), try Self.worker(sandbox, "c", schema: "public", limit))
        for result in [try b.wait(), try c.wait()] { #expect(result.status == 0, "\(result.stderr)") }
        Thread.sleep(forTimeInterval: 0.5)
        #expect(try writer.stop() > 50, "the writer changed the source throughout")

        let state = sandbox.stateDirectory + "-sync"
        let first = try sandbox.run(["sync", "--state-dir", state, "--batch-size", "20"] + limit + base, environment: ["ETL_CRASH_AT": "committed:2"])
        #expect(first.signaled && first.stderr.contains("took job"), "\(first.stderr)")
        let synced = try sandbox.run(["sync", "--state-dir", state, "--batch-size", "20"] + limit + base)
        #expect(synced.status == 0 && !synced.stderr.contains("took job"), "\(synced.stderr)")
        #expect(synced.stdout.contains("etl-job: changes applied"), "\(synced.stdout)")

        try SyncTests.freshSnapshot(sandbox)
        #expect(try sandbox.checksums() == sandbox.checksums(schema: "fresh"), "the synced target equals a fresh snapshot of the final source, row for row")
        let status = try JSON.object(try sandbox.run(["status", "--json", "--state-dir", state]).stdout)
        let pipeline = (status["pipelines"] as? [[String: Any]])?.first ?? [:]
        let sync = pipeline["sync"] as? [String: Any] ?? [:]
        #expect((sync["eventsApplied"] as? Int ?? 0) > 0, "\(status)")
        // The snapshot's counts are the workers': every document of the plan loaded or set aside.
        let loaded = try Self.partitions(sandbox, schema: "public").job["documents"] as? Int
        #expect((pipeline["documentsLoaded"] as? Int ?? 0) + (pipeline["documentsSetAside"] as? Int ?? 0) == loaded && loaded ?? 0 >= 600, "\(pipeline)")
    }

    /// `worker --partitions N`: every worker runs the same command, the first plans. A planner
    /// killed after its preparations leaves no job; three workers started together, one of them
    /// killed mid-partition, plan once and load the file exactly as one process does; a worker
    /// that comes after finds nothing to plan and exits 0.
    @Test func workersThatPlanThemselvesPlanOnceAndLoadExactlyOnce() throws {
        let sandbox = try Sandbox()
        defer {
            for name in ["files", "a", "b", "c", "d", "e", "f", "g", "o"] { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-" + name) }
        }
        let file = try FileSourceTests.dump(sandbox, users: 1_200, badInput: true)
        let other = try FileSourceTests.dump(sandbox, users: 100, name: "other.bson")
        let single = try sandbox.run(["start", "--source-file", file, "--postgres-url", sandbox.postgresURL, "--target-schema", "single",
                                      "--state-dir", sandbox.stateDirectory + "-single", "--max-set-aside", "100"])
        #expect(single.status == 0, "\(single.stderr)")
        let plan = ["--partitions", "3", "--source-file", file, "--batch-size", "100", "--max-set-aside", "100"]
        let jobs = { try sandbox.db().execute("SELECT count(*) FROM parts.etl_partitioned_jobs").rows[0][0] }

        let a = try Self.worker(sandbox, "a", schema: "parts", plan, crashAt: "prepared").wait()
        #expect(a.signaled && a.status == 9, "\(a.stderr)")
        #expect(try jobs() == "0", "a plan killed before it recorded its job leaves none")

        // Each killed at its third commit. The bad input's large documents come last, so the byte
        // ranges hold 1,194, 1 and 6 documents: the large one's 12 batches outlast the three (at
        // most 3 commits each), and every worker dies in it, taking it over from the one before.
        let workers = try ["b", "c", "d"].map { try Self.worker(sandbox, $0, schema: "parts", plan, crashAt: "committed:3") }
        let results = try workers.map { try $0.wait() }
        #expect(results.allSatisfy { $0.signaled }, "\(results)")
        #expect(try jobs() == "1", "planned once")
        #expect(try Self.partitions(sandbox, schema: "parts").parts.contains { ($0["claims"] as? Int ?? 0) >= 2 }, "a dead worker's partition taken over")
        let last = try Self.worker(sandbox, "g", schema: "parts", plan).wait()
        #expect(last.status == 0 && last.stdout.contains("is planned"), "\(last.stdout) \(last.stderr)")
        let finished = try Self.partitions(sandbox, schema: "parts").job
        #expect(finished["finished"] as? Bool == true, "\(finished)")
        #expect(try sandbox.checksums(schema: "parts") == sandbox.checksums(schema: "single"), "equal, table by table, to one process's load")
        // The keys the killed plan dropped are built by the final step, all of them.
        #expect(try FileSourceTests.primaryKeysInPlace(sandbox, schema: "parts") == 15)
        #expect(try FileSourceTests.foreignKeysInPlace(sandbox, schema: "parts") == FileSourceTests.keys)
        let setAside = try ["parts", "single"].map { schema in
            try sandbox.db().execute("SELECT e->>'id', e->>'reason' FROM \(schema).etl_checkpoints, jsonb_array_elements(set_aside) e ORDER BY 1, 2").rows
        }
        #expect(setAside[0] == setAside[1] && !setAside[0].isEmpty, "\(setAside)")

        // One that comes after: nothing to plan, nothing to load, exit 0.
        let late = try Self.worker(sandbox, "e", schema: "parts", plan).wait()
        #expect(late.status == 0 && late.stdout.contains("was finished at") && late.stdout.contains("nothing to plan"), "\(late.stdout) \(late.stderr)")
        #expect(try jobs() == "1")
        // Another source into the loaded tables: refused as start refuses it.
        let otherSource = try Self.worker(sandbox, "f", schema: "parts", ["--partitions", "3", "--source-file", other]).wait()
        #expect(otherSource.status != 0 && otherSource.stderr.contains("holds rows"), "\(otherSource.stderr)")
        #expect(try jobs() == "1")
        // A table of the finished job dropped since: not "nothing to do", but start's refusal.
        try sandbox.db().execute("DROP TABLE parts.large_data")
        let changed = try Self.worker(sandbox, "f", schema: "parts", plan).wait()
        #expect(changed.status != 0 && changed.stderr.contains("holds rows") && !changed.stdout.contains("nothing to plan"), "\(changed.stdout) \(changed.stderr)")

        // An unfinished job of another source is not loaded with this worker's.
        let planned = try sandbox.run(["start", "--partitions", "2", "--source-file", other, "--postgres-url", sandbox.postgresURL,
                                       "--target-schema", "others", "--state-dir", sandbox.stateDirectory + "-o"])
        #expect(planned.status == 0, "\(planned.stderr)")
        let mismatch = try Self.worker(sandbox, "f", schema: "others", plan).wait()
        #expect(mismatch.status == 64 && mismatch.stderr.contains("reads another source") && mismatch.stderr.contains("start --partitions 3 --fresh"),
                "\(mismatch.stderr)")
        let noPlan = try sandbox.run(["worker", "--pipeline", "users", "--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory + "-f"])
        #expect(noPlan.status == 64 && noPlan.stderr.contains("--pipeline chooses what --partitions plans"), "\(noPlan.stderr)")
    }

    @Test func aPlannedJobIsRefusedToOtherJobsAndWorkersNeedOne() throws {
        let sandbox = try Sandbox()
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-files") }
        let file = try FileSourceTests.dump(sandbox, users: 300)
        let base = ["--source-file", file, "--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory]
        let none = try Self.worker(sandbox, "w", schema: "public").wait()
        #expect(none.status == 66 && none.stderr.contains("no job split into partitions"), "\(none.stderr)")
        #expect(try sandbox.run(["start", "--partitions", "0"] + base).status == 64)
        #expect(try sandbox.run(["start", "--partitions", "2"] + base).status == 0)
        // Another start of the same pipeline, split or not, is refused while the job is unfinished.
        for extra in [[], ["--partitions", "2"]] {
            let again = try sandbox.run(["start"] + base + extra)
            #expect(again.status == 75 && again.stderr.contains("split into partitions") && again.stderr.contains("etl-job worker"), "\(again.stderr)")
        }
        // With --fresh the plan is discarded with the tables' rows.
        let fresh = try sandbox.run(["start", "--fresh", "--yes"] + base)
        #expect(fresh.status == 0, "\(fresh.stderr)")
        #expect(try Self.partitions(sandbox, schema: "public").parts.isEmpty)
        #expect(try sandbox.counts()["users"] == 300)
        // A target with rows is refused as by start.
        let withRows = try sandbox.run(["start", "--partitions", "2", "--source-file", file, "--postgres-url", sandbox.postgresURL,
                                        "--state-dir", sandbox.stateDirectory + "-other"])
        #expect(withRows.status != 0 && withRows.stderr.contains("rows"), "\(withRows.stderr)")
    }
}
