import Foundation
import Mongo
import Postgres
import Queue
import Testing
import DurableETL
import TestSupport
import Users
import UsersFixtures

/// Breaks things on purpose while a run goes, then checks the target row by row.
/// `scripts/faults` runs the long form (more kills, more users); CI runs this bounded form.
@Suite(.serialized) struct FaultTests {
    static let env = ProcessInfo.processInfo.environment
    static let kills = Int(env["ETL_FAULT_KILLS"] ?? "") ?? 20
    static let fileKills = Int(env["ETL_FAULT_FILE_KILLS"] ?? "") ?? max(1, kills / 2)
    static let seed = UInt64(env["ETL_FAULT_SEED"] ?? "") ?? 20_261_124
    static let workerKills = Int(env["ETL_FAULT_WORKER_KILLS"] ?? "") ?? max(1, kills / 2)

    /// After a fault: exactly the uninterrupted rows, no duplicate, and `verify` agrees.
    private func expectExact(_ sandbox: Sandbox, _ context: String) throws {
        #expect(try sandbox.checksums() == (try Reference.checksums()), "\(context)")
        #expect(try sandbox.duplicateKeys() == 0, "\(context)")
        let verify = try sandbox.job("verify")
        #expect(verify.status == 0, "\(context): \(verify.stdout)")
        let status = try sandbox.status()
        #expect(status["complete"] as? Bool == true, "\(context)")
        #expect((status["rows"] as? [String: Int]) == (try sandbox.counts()), "\(context): queue counters agree with the target")
    }

    /// A sandbox holding the reference dataset (whose uninterrupted checksums are computed first).
    private func seededSandbox() throws -> Sandbox {
        _ = try Reference.checksums()
        let sandbox = try Sandbox()
        try sandbox.seed(users: Reference.users)
        return sandbox
    }

    /// Finishes a job that a fault may have stopped: a clear one-line error, then resume.
    private func finish(_ sandbox: Sandbox, after result: JobResult) throws {
        guard result.status != 0 else { return }
        #expect(result.stderr.hasPrefix("etl-job: error: ") || result.stderr.contains("retrying"), "\(result.stderr)")
        let resumed = try sandbox.job("resume")
        #expect(resumed.status == 0, "\(resumed.stderr)")
    }

    /// Runs `statement` while the first `times` batch transactions COMMIT: a deferred trigger
    /// on the checkpoint row fires inside COMMIT itself.
    private func sabotageCommits(_ sandbox: Sandbox, times: Int, with statement: String) throws {
        #expect(try sandbox.job("migrate").status == 0)
        try sandbox.db().execute("""
            CREATE SEQUENCE sabotaged_commits;
            CREATE FUNCTION sabotage_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('sabotaged_commits') <= \(times) THEN \(statement); END IF;
                RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER sabotage_commit AFTER INSERT ON etl_checkpoints
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION sabotage_commit();
            """)
    }

    /// Kills until `kills` have landed: each run is killed at a random moment (one kill in four
    /// during start-up, the others shortly after the run made progress: a batch queued or
    /// committed, so kills fall in every stage), resumed, and so on until it completes; then
    /// the tables must equal the uninterrupted run, and the next round starts afresh.
    @Test func randomKillCampaignEndsExactly() throws {
        try campaign(kills: Self.kills, source: [])
    }

    /// The same campaign reading a mongodump file of the same documents (half the kills, unless
    /// `ETL_FAULT_FILE_KILLS` says how many).
    @Test func randomKillCampaignFromAFileEndsExactly() throws {
        let directory = NSTemporaryDirectory() + "etl-fault-file-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/users.bson"
        let written = try Sandbox.runBinary(["seed", "--users", String(Reference.users), "--output", file])
        #expect(written.status == 0, "\(written.stderr)")
        try campaign(kills: Self.fileKills, source: ["--source-file", file])
    }

    /// Jobs split into four partitions, loaded by three `etl-job worker` processes at once
    /// (the bundled MongoDB, and a file on every other round), one of them killed with
    /// SIGKILL (or, one time in four, stopped with SIGTERM) at a random moment every so often
    /// (mid-partition, while claiming, in the final step) and started again, on its old state directory or a new one (a machine that came
    /// back, or another), until the job is finished; then the tables must equal the
    /// uninterrupted run, and the next round plans afresh, until the kills have landed.
    @Test func randomWorkerKillCampaignEndsExactly() throws {
        let sandbox = try seededSandbox()
        let reference = try Reference.checksums()
        let directory = sandbox.stateDirectory + "-files"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/users.bson"
        #expect(try Sandbox.runBinary(["seed", "--users", String(Reference.users), "--output", file]).status == 0)
        var rng = SplitMix64(seed: Self.seed ^ 0x5EED)
        let base = ["--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL]
        var kills = 0, launches = 0, rounds = 0
        let began = Date()
        while kills < Self.workerKills || rounds < 2 {
            rounds += 1
            let source = rounds % 2 == 1 ? ["--database", sandbox.mongoDatabase] : ["--source-file", file]
            // Every other pair of rounds the workers plan it themselves (`worker --partitions 4`,
            // the first plans): kills land in the plan too.
            let selfPlanned = (rounds / 2) % 2 == 1
            var workerFlags = base
            let jobsBefore = selfPlanned ? Int(try sandbox.db().execute("SELECT count(*) FROM etl_partitioned_jobs").rows[0][0]!)! : 0
            if selfPlanned {
                try sandbox.db().execute("TRUNCATE etl_checkpoints, " + UsersMapping.tableNames.map { "\"\($0)\"" }.joined(separator: ", "))
                workerFlags += ["--partitions", "4", "--batch-size", "100"] + source
            } else {
                let planned = try sandbox.run(["start", "--partitions", "4", "--batch-size", "100", "--state-dir", directory + "/plan\(rounds)"]
                                              + (rounds > 1 ? ["--fresh", "--yes"] : []) + source + base)
                #expect(planned.status == 0, "seed \(Self.seed), round \(rounds): \(planned.stderr)")
            }
            var running: [Int: RunningJob] = [:]
            var launched: [Int: Date] = [:]
            var generation = 0
            func launch(_ slot: Int) throws {
                // The old state directory (a machine that came back) or a new one (another machine).
                if rng.next() % 2 == 0 { generation += 1 }
                running[slot] = try sandbox.launch(["worker", "--state-dir", directory + "/w\(slot)-\(generation)"] + workerFlags)
                launched[slot] = Date()
                launches += 1
            }
            for slot in 0..<3 { try launch(slot) }
            while !running.isEmpty {
                guard Date().timeIntervalSince(began) < 600 else {
                    Issue.record("seed \(Self.seed): the worker campaign made no end in 10 minutes (round \(rounds), \(kills) kills)")
                    running.values.forEach { $0.signal(SIGKILL) }
                    return
                }
                Thread.sleep(forTimeInterval: 0.05 + Double(rng.next() % 400) / 1000)
                for (slot, job) in running where !job.process.isRunning {
                    let result = try job.wait()
                    #expect(result.status == 0 && !result.signaled, "seed \(Self.seed), round \(rounds): \(result.stderr)")
                    running[slot] = nil
                }
                let alive = running.keys.sorted()
                // About one look in three kills: rounds last long enough for workers to finish partitions.
                guard kills < Self.workerKills, !alive.isEmpty, rng.next() % 3 == 0 else { continue }
                let slot = alive[Int(rng.next() % UInt64(alive.count))]
                guard let job = running[slot], job.process.isRunning else { continue }
                // One stop in four is SIGTERM: the worker stops at a safe point, exit 143, its
                // partition going back to the others (0 if it had just finished).
                // (Not in a process's first moments, before its code runs: the signal's default ends it then.)
                let graceful = rng.next() % 4 == 0 && Date().timeIntervalSince(launched[slot] ?? Date()) > 0.3
                job.signal(graceful ? SIGTERM : SIGKILL)
                let stopped = try job.wait()
                if graceful {
                    #expect(!stopped.signaled && [0, 143].contains(stopped.status), "seed \(Self.seed), round \(rounds): \(stopped.stderr)")
                }
                kills += 1
                try launch(slot)
            }
            let finished = try sandbox.run(["status", "--partitions", "--json", "--postgres-url", sandbox.postgresURL])
            let jobs = try JSON.object(finished.stdout)["jobs"] as? [[String: Any]] ?? []
            let job = jobs.last ?? [:]
            #expect(job["finished"] as? Bool == true, "seed \(Self.seed), round \(rounds): \(finished.stdout)")
            #expect(jobs.count == jobsBefore + 1, "planned once a round: \(finished.stdout)")
            #expect(try sandbox.checksums() == reference, "seed \(Self.seed), round \(rounds), \(kills) kills")
            #expect(try sandbox.duplicateKeys() == 0)
        }
        let verified = try sandbox.run(["verify", "--state-dir", directory + "/none"] + base)
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
        print("worker kill campaign: \(kills) kills of worker processes at random moments in \(rounds) jobs of 4 partitions (\(launches) launches), "
            + "\(Reference.users) users, seed \(Self.seed), " + String(format: "%.1f minutes", Date().timeIntervalSince(began) / 60))
    }

    private func campaign(kills wanted: Int, source: [String]) throws {
        let sandbox = try seededSandbox()
        let reference = try Reference.checksums()
        let expected = reference.values.reduce(0) { $0 + Int($1.split(separator: " ")[0])! }
        var rng = SplitMix64(seed: Self.seed)
        var kills = 0, launches = 0, rounds = 0, rowsCompared = 0, lost = 0, duplicated = 0
        var finishedJob: String?
        let began = Date()
        while kills < wanted {
            rounds += 1
            let start = (rounds == 1 ? ["start"] : ["start", "--fresh", "--yes"]) + source
            var roundLaunches = 0
            while true {
                // Resume this round's job (one the run named in its manifest, even before its queue
                // recorded it); a kill before the manifest leaves nothing to resume: start again.
                let recorded = try recordedJob(sandbox)
                let command = recorded.planned && (recorded.job == nil || recorded.job != finishedJob) ? ["resume"] : start
                let before = progress(sandbox)
                let job = try sandbox.launch(command + sandbox.connectionArguments + ["--batch-size", "100"])
                launches += 1
                roundLaunches += 1
                if kills < wanted, try killAtARandomMoment(job, sandbox, after: before, &rng) {
                    kills += 1
                    #expect(!JobLock.isHeld(directory: sandbox.stateDirectory), "a killed run leaves no lock behind")
                    // Each resume keeps what the killed run committed: a round that needs this
                    // many launches is not getting anywhere.
                    guard roundLaunches < 60 else {
                        Issue.record("seed \(Self.seed): round \(rounds) made no progress in \(roundLaunches) launches")
                        return
                    }
                    continue
                }
                let result = try job.wait()
                #expect(result.status == 0, "seed \(Self.seed), after \(kills) kills: \(result.stderr)")
                break
            }
            finishedJob = try recordedJob(sandbox).job
            let sums = try sandbox.checksums()
            #expect(sums == reference, "seed \(Self.seed), round \(rounds), \(kills) kills")
            let rows = sums.values.reduce(0) { $0 + Int($1.split(separator: " ")[0])! }
            rowsCompared += rows
            lost += max(0, expected - rows)
            duplicated += try sandbox.duplicateKeys()
        }
        try expectExact(sandbox, "seed \(Self.seed), \(kills) kills")
        let minutes = Date().timeIntervalSince(began) / 60
        print("fault campaign\(source.isEmpty ? "" : " (from a file)"): \(kills) kills at random moments in \(rounds) runs to completion (\(launches) launches), "
            + "\(Reference.users) users, seed \(Self.seed): \(rowsCompared) rows compared, \(lost) lost, \(duplicated) duplicated, "
            + String(format: "%.1f minutes", minutes))
    }

    /// Whether the state directory names a run (its manifest), and the job its queue recorded:
    /// read in this process (a status process per launch and per poll would cost more than the
    /// runs killed, and compete with them for the two cores).
    private func recordedJob(_ sandbox: Sandbox) throws -> (planned: Bool, job: String?) {
        guard let manifest = try RunManifest.read(sandbox.stateDirectory) else { return (false, nil) }
        return (true, try manifest.pipelines.first.flatMap { try RunManifest.recordedStatus(sandbox.stateDirectory, $0)?.jobId })
    }

    /// Batches queued and committed so far (zero before the first run, or while a starting
    /// run is still creating its queue and it cannot be read yet).
    private func progress(_ sandbox: Sandbox) -> Int {
        guard let status = try? RunManifest.recordedStatus(sandbox.stateDirectory, "users") else { return 0 }
        return status.batches + status.done
    }

    /// Kills `job` at a random moment; false when it ended first.
    private func killAtARandomMoment(_ job: RunningJob, _ sandbox: Sandbox, after before: Int, _ rng: inout SplitMix64) throws -> Bool {
        if rng.next() % 4 == 0 {
            Thread.sleep(forTimeInterval: 0.05 + Double(rng.next() % 300) / 1000)
        } else {
            _ = eventually(60) { !job.process.isRunning || progress(sandbox) > before }
            Thread.sleep(forTimeInterval: Double(rng.next() % 400) / 1000)
        }
        guard job.process.isRunning else { return false }
        job.signal(SIGKILL)
        _ = try job.wait()
        return true
    }

    @Test func terminatingTheWorkersBackendMidCopyIsRetried() throws {
        let sandbox = try seededSandbox()
        let job = try sandbox.launch(["start"] + sandbox.connectionArguments + ["--batch-size", "100", "--workers", "2"])
        let admin = try Services.postgres()
        var terminated = 0
        while job.process.isRunning && terminated < 4 {
            let rows = try admin.query("""
                SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                WHERE datname = $1 AND state = 'active' AND query LIKE '%COPY %FROM STDIN%'
                """, [sandbox.name]).rows
            terminated += rows.filter { $0[0] == "t" }.count
            Thread.sleep(forTimeInterval: 0.02)
        }
        let result = try job.wait()
        #expect(terminated > 0, "a COPY was caught in flight")
        try finish(sandbox, after: result)
        try expectExact(sandbox, "\(terminated) backends terminated")
    }

    @Test func restartingPostgreSQLMidRunIsSurvived() throws {
        let sandbox = try seededSandbox()
        let job = try sandbox.launch(["start"] + sandbox.connectionArguments + ["--batch-size", "100", "--workers", "1"])
        #expect(try eventually(60) { (try? sandbox.status()["done"] as? Int).flatMap { $0 } ?? 0 >= 2 })
        try Services.services("restart", "postgres")
        let result = try job.wait()
        try finish(sandbox, after: result)
        try expectExact(sandbox, "PostgreSQL restarted")
    }

    /// The target lock lives in a PostgreSQL session, so a restart ends it. A job killed, its
    /// state directory copied, the original resumed, PostgreSQL restarted, and the copy
    /// resumed while the original reconnects: one of them loads, the other is refused or
    /// stops (75) naming the other; after the restart only one process ever writes.
    @Test func aSecondRunWhilePostgreSQLRestartsNeverWritesBesideTheFirst() throws {
        let sandbox = try seededSandbox()
        let arguments = ["--batch-size", "50", "--workers", "2"]
        let killed = try sandbox.job("start", arguments, environment: ["ETL_CRASH_AT": "committed:2"])
        #expect(killed.signaled, "\(killed.stderr)")
        let copy = sandbox.stateDirectory + "-copy"
        try FileManager.default.copyItem(atPath: sandbox.stateDirectory, toPath: copy)
        defer { try? FileManager.default.removeItem(atPath: copy) }
        try sandbox.slowCommits(seconds: 0.4)
        // Which process wrote each checkpoint row, and when.
        try sandbox.db().execute("""
            CREATE TABLE test_writes (writer text NOT NULL, at timestamptz NOT NULL);
            CREATE FUNCTION test_write() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO test_writes VALUES (current_setting('application_name'), clock_timestamp()); RETURN NULL; END $$;
            CREATE TRIGGER test_write AFTER INSERT ON etl_checkpoints FOR EACH ROW EXECUTE FUNCTION test_write();
            """)
        let original = try sandbox.launch(["resume"] + sandbox.connectionArguments)
        #expect(try eventually(60) { (try? sandbox.status()["done"] as? Int).flatMap { $0 } ?? 0 >= 6 })
        try Services.services("restart", "postgres")
        let second = try sandbox.run(["resume", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL, "--state-dir", copy])
        let first = try original.wait()

        // One loads; the other is refused or stops, unless it only began once the first had
        // finished (then it finds every batch loaded, and writes nothing).
        let outcomes = [first, second]
        print("a second run while PostgreSQL restarts: the original exited \(first.status), the copy \(second.status)")
        #expect(outcomes.contains { $0.status == 0 }, "one run loads: \(first.status) \(first.stderr) | \(second.status) \(second.stderr)")
        for other in outcomes where other.status != 0 {
            #expect(other.status == 75 && !other.signaled, "the other is refused or stops: \(other.stderr)")
            #expect(other.stderr.contains("another etl-job run"), "\(other.stderr)")
        }
        // After the restart the writes of the two processes never interleave: one process
        // wrote all of its rows before the other wrote any.
        let restarted = try sandbox.db().execute("SELECT pg_postmaster_start_time()").rows[0][0]!
        let writers = try sandbox.db().query("SELECT writer FROM test_writes WHERE at > $1::timestamptz ORDER BY at", [restarted]).rows.map { $0[0]! }
        let switches = zip(writers, writers.dropFirst()).filter { $0 != $1 }.count
        #expect(!writers.isEmpty && switches <= (outcomes.allSatisfy { $0.status == 0 } ? 1 : 0), "one writer at a time after the restart: \(writers)")

        let winner = first.status == 0 ? sandbox.stateDirectory : copy
        #expect(try sandbox.checksums() == (try Reference.checksums()))
        #expect(try sandbox.duplicateKeys() == 0)
        let verify = try sandbox.run(["verify", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL, "--state-dir", winner])
        #expect(verify.status == 0, "\(verify.stdout)")
    }

    @Test func aFailingCommitIsRetriedAndLoadsOnce() throws {
        let sandbox = try seededSandbox()
        try sabotageCommits(sandbox, times: 3, with: "RAISE EXCEPTION 'injected commit failure'")
        let result = try sandbox.job("start", ["--batch-size", "250"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stderr.components(separatedBy: "injected commit failure").count - 1 == 3, "\(result.stderr)")
        try expectExact(sandbox, "3 failed commits")
    }

    /// The backend dies while COMMIT runs: the client cannot know whether the batch landed,
    /// reconnects, and the checkpoint row decides (here: it did not land, so it is loaded again).
    @Test func aConnectionLostDuringCommitIsSettledByTheCheckpoint() throws {
        let sandbox = try seededSandbox()
        try sabotageCommits(sandbox, times: 2, with: "PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(1)")
        let result = try sandbox.job("start", ["--batch-size", "250"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stderr.components(separatedBy: "lost the connection to PostgreSQL").count - 1 == 2, "\(result.stderr)")
        try expectExact(sandbox, "2 connections lost during COMMIT")
    }

    @Test func restartingTheSourceMidScanNeitherSkipsNorRepeats() throws {
        let sandbox = try seededSandbox()
        // Backpressure holds the scan open: one pending batch at most, small getMores.
        let job = try sandbox.launch(["start"] + sandbox.connectionArguments
            + ["--batch-size", "100", "--workers", "1", "--max-pending", "1", "--cursor-batch-size", "50"])
        #expect(try eventually(60) { (try? sandbox.status()["done"] as? Int).flatMap { $0 } ?? 0 >= 2 })
        let extracted = try sandbox.status()["extracted"] as? Int ?? 0
        #expect(extracted < Reference.users, "the scan is still open")
        try Services.services("restart", "mongo")
        let result = try job.wait()
        try finish(sandbox, after: result)
        try expectExact(sandbox, "source restarted after \(extracted) documents")
    }

    @Test func aFullQueueMapGrowsDuringARun() throws {
        let sandbox = try seededSandbox()
        let result = try sandbox.job("start", ["--queue-map-mb", "1"])
        #expect(result.status == 0, "\(result.stderr)")
        try expectExact(sandbox, "1 MB initial map")
    }

    /// Every kind of malformed document, mixed into a normal dataset, through a crash right
    /// after the last numeric `_id` was queued (so the string `_id` is reached by a resumed scan).
    @Test func theBadInputCorpusIsSetAsideWithReasonsAndEverythingElseLoads() throws {
        let sandbox = try Sandbox()
        let users = 2_000
        let seeded = try sandbox.run(["seed", "--users", String(users), "--bad-input", "--database", sandbox.mongoDatabase,
                                      "--mongodb-url", Services.mongoURL])
        #expect(seeded.status == 0, "\(seeded.stderr)")
        // What the source holds: a server may refuse some malformed documents (invalid UTF-8).
        var stored = Set<String>()
        let cursor = try sandbox.users.scanById(afterIdElement: nil, batchSize: 1000)
        while let doc = try cursor.next() {
            var it = BSONIterator(document: doc)!
            if it.find("_id") { stored.insert(it.displayValue) }
        }
        let corpus = BadInputCorpus.documents(users: users, generator: UserGenerator(seed: 42))
        #expect(corpus.allSatisfy { stored.contains($0.displayId) || $0.sourceMayRefuse })
        let bad = corpus.filter { $0.reason != nil && stored.contains($0.displayId) }
        #expect(bad.count >= 14)
        let crashed = try sandbox.job("start", ["--batch-size", "200"], environment: ["ETL_CRASH_AT": "enqueued:10"])
        #expect(crashed.signaled, "\(crashed.stderr)")
        let resumed = try sandbox.job("resume")
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stdout.contains("set aside         \(bad.count)"), "\(resumed.stdout)")

        let status = try sandbox.status()
        #expect(status["documentsSetAside"] as? Int == bad.count)
        #expect(status["documentsLoaded"] as? Int == stored.count - bad.count)
        let listed = try sandbox.run(["status", "--rejected", "--json", "--state-dir", sandbox.stateDirectory])
        let listing = try #require(try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [String: Any])
        let entries = try #require(listing["documents"] as? [[String: Any]])
        let reasons = Dictionary(uniqueKeysWithValues: entries.map { ($0["_id"] as! String, $0["reason"] as! String) })
        for doc in bad {
            #expect(reasons[doc.displayId]?.contains(doc.reason!) == true, "\(doc.kind): \(reasons[doc.displayId] ?? "not set aside")")
        }
        #expect(reasons.count == bad.count)
        let verify = try sandbox.job("verify")
        #expect(verify.status == 0, "\(verify.stdout)")
        #expect(try sandbox.duplicateKeys() == 0)
        print("bad-input corpus: \(bad.count) malformed documents set aside, \(corpus.count - bad.count) unusual ones loaded")
    }
}

@Suite(.serialized) struct HostileConfigurationTests {
    @Test func aWrongPostgresPasswordIsOneLineWithoutThePassword() throws {
        let sandbox = try Sandbox()
        let result = try sandbox.run(["start", "--postgres-url", "postgresql://etl:WrongSecret9@127.0.0.1:55432/\(sandbox.name)",
                                      "--mongodb-url", Services.mongoURL, "--state-dir", sandbox.stateDirectory])
        #expect(result.status == 69)
        #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        #expect(result.stderr.contains("password authentication failed for user \"etl\""))
        #expect(!(result.stdout + result.stderr).contains("WrongSecret9"))
    }

    @Test func anUnusableStateDirectoryIsOneLine() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 10)
        let blocker = sandbox.stateDirectory + "-file"
        FileManager.default.createFile(atPath: blocker, contents: Data("x".utf8))
        defer { try? FileManager.default.removeItem(atPath: blocker) }
        let result = try sandbox.run(["start", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL,
                                      "--database", sandbox.mongoDatabase, "--state-dir", blocker + "/state"])
        #expect(result.status == 69)
        #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        #expect(result.stderr.contains("cannot use the state directory \(blocker)/state"), "\(result.stderr)")
    }

    /// A target that takes no writes (a standby, or a role whose transactions are read-only):
    /// the target refusing the job, 70, one line saying so, whether the schema must still be
    /// created (the migration fails) or already is (the first write fails).
    @Test func aReadOnlyTargetIsRefusedWith70SayingSo() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 30)
        let role = sandbox.name + "_ro"
        let admin = try Services.postgres()
        try admin.execute("CREATE ROLE \(role) LOGIN PASSWORD 'ReadOnly5'; GRANT ALL ON DATABASE \(sandbox.name) TO \(role); "
            + "ALTER ROLE \(role) SET default_transaction_read_only = on")
        defer { _ = try? admin.execute("DROP OWNED BY \(role) CASCADE; DROP ROLE IF EXISTS \(role)") }
        try sandbox.db().execute("GRANT ALL ON SCHEMA public TO \(role)")
        let url = "postgresql://\(role):ReadOnly5@127.0.0.1:55432/\(sandbox.name)"
        let arguments = ["--postgres-url", url, "--mongodb-url", Services.mongoURL, "--database", sandbox.mongoDatabase]
        let unmigrated = try sandbox.run(["start", "--state-dir", sandbox.stateDirectory] + arguments)
        #expect(unmigrated.status == 70, "\(unmigrated.stderr)")
        #expect(unmigrated.stderr.contains("cannot migrate the schema") && unmigrated.stderr.contains("the target is read-only"), "\(unmigrated.stderr)")
        #expect(unmigrated.stderr.split(separator: "\n").count == 1 && !unmigrated.stderr.contains("ReadOnly5"), "\(unmigrated.stderr)")

        #expect(try sandbox.job("migrate").status == 0)
        try sandbox.db().execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO \(role)")
        let migrated = try sandbox.run(["start", "--state-dir", sandbox.stateDirectory + "-2"] + arguments)
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-2") }
        #expect(migrated.status == 70 && migrated.stderr.contains("the target is read-only"), "\(migrated.stderr)")
        #expect(migrated.stderr.split(separator: "\n").filter { $0.hasPrefix("etl-job: error: ") }.count == 1, "\(migrated.stderr)")
        #expect(try sandbox.counts()["users"] == 0, "nothing was written")
    }

    @Test func aPostgresUserWithoutRightsIsOneLineAndLosesNothing() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 50)
        #expect(try sandbox.job("migrate").status == 0)
        let role = sandbox.name + "_reader"
        let admin = try Services.postgres()
        try admin.execute("CREATE ROLE \(role) LOGIN PASSWORD 'ReaderSecret7'")
        defer { _ = try? admin.execute("DROP OWNED BY \(role) CASCADE; DROP ROLE IF EXISTS \(role)") }
        try sandbox.db().execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO \(role)")
        let url = "postgresql://\(role):ReaderSecret7@127.0.0.1:55432/\(sandbox.name)"
        let result = try sandbox.run(["start", "--postgres-url", url, "--mongodb-url", Services.mongoURL,
                                      "--database", sandbox.mongoDatabase, "--state-dir", sandbox.stateDirectory])
        #expect(result.status == 70, "missing rights are neither the documents' fault nor transient: the job stops")
        #expect(result.stderr.split(separator: "\n").count == 1 || result.stderr.contains("permission denied"), "\(result.stderr)")
        #expect(result.stderr.contains("permission denied for table"), "\(result.stderr)")
        #expect(!(result.stdout + result.stderr).contains("ReaderSecret7"))
        // Refused before it wrote anything or recorded a job: with the right user, start finishes.
        #expect(try sandbox.counts()["users"] == 0)
        let resumed = try sandbox.job("start")
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try sandbox.counts()["users"] == 50)
    }
}

/// A second MongoDB-wire server with authentication, provisioned by the test itself.
final class AuthenticatedMongo {
    private let server: PrivateMongo
    var port: Int { server.port }

    init(user: String, password: String) throws {
        server = try PrivateMongo()
        do {
            // Scoped: the server's graceful stop waits for connected clients.
            let client = try Services.mongo(server.url)
            let command = BSONDocument()
            command.writer.append("createUser", user)
            command.writer.append("pwd", password)
            command.writer.appendArray("roles") { $0.append("0", "root") }
            try client.runCommand(command, database: "admin")
        }
        try server.restart(with: ["--auth"])
    }
}

extension HostileConfigurationTests {
    @Test func aWrongMongoPasswordIsOneLineWithoutThePassword() throws {
        let sandbox = try Sandbox()
        let server = try AuthenticatedMongo(user: "etl", password: "RightSecret5")
        let base = ["--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory]
        let wrong = try sandbox.run(["start", "--mongodb-url", "mongodb://etl:WrongSecret9@127.0.0.1:\(server.port)/?authSource=admin"] + base)
        #expect(wrong.status == 69, "\(wrong.stderr)")
        #expect(wrong.stderr.split(separator: "\n").count == 1, "\(wrong.stderr)")
        #expect(wrong.stderr.hasPrefix("etl-job: error: cannot reach MongoDB at mongodb://etl:***@127.0.0.1:\(server.port)/"), "\(wrong.stderr)")
        #expect(wrong.stderr.lowercased().contains("auth"), "\(wrong.stderr)")
        #expect(!(wrong.stdout + wrong.stderr).contains("WrongSecret9"))
        // The right password gets past authentication to the source check: this server has no such collection.
        let right = try sandbox.run(["start", "--mongodb-url", "mongodb://etl:RightSecret5@127.0.0.1:\(server.port)/?authSource=admin"] + base)
        #expect(right.status == 66, "\(right.stderr)")
        #expect(right.stderr.contains("the collection sample_db.users does not exist"), "\(right.stderr)")
        #expect(!(right.stdout + right.stderr).contains("RightSecret5"))
    }
}
