import Foundation
import Mongo
import Postgres
import Testing
import DurableETL
import TestSupport
import Users
import UsersFixtures

/// What a person meets at a terminal, and the rails that keep a run from ending with rows
/// missing and exit 0: a job remembers what it moves, nothing moved is not success, Ctrl-C
/// is obeyed in every state, refusals leave nothing behind, secrets are never printed.
@Suite(.serialized) struct RailsTests {
    // MARK: A terminal

    @Test func startResumeAndStatusUnderATerminalExitCleanlyWithTheirSummary() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 300)
        let crashed = try sandbox.inTerminal(["start"] + sandbox.connectionArguments + ["--batch-size", "50"],
                                             environment: ["ETL_CRASH_AT": "committed:2"])
        #expect(crashed.status == 137, "the crash point kills the job: \(crashed.stdout)")
        let resumed = try sandbox.inTerminal(["resume"] + sandbox.connectionArguments)
        #expect(resumed.status == 0, "\(resumed.stdout)")
        #expect(resumed.stdout.contains("etl-job: run complete"))
        #expect(resumed.stdout.contains("documents loaded  300") || resumed.stdout.contains("documents loaded  250"),
                "\(resumed.stdout)")
        let started = try sandbox.inTerminal(["start", "--fresh", "--yes"] + sandbox.connectionArguments)
        #expect(started.status == 0, "\(started.stdout)")
        #expect(started.stdout.contains("documents loaded  300"), "\(started.stdout)")
        let status = try sandbox.inTerminal(["status", "--state-dir", sandbox.stateDirectory])
        #expect(status.status == 0)
        #expect(status.stdout.contains("complete"), "\(status.stdout)")
        for result in [resumed, started, status] {
            for fatal in ["double free", "Backtrace", "Fatal error", "Segmentation", "Bus error"] {
                #expect(!result.stdout.contains(fatal), "\(result.stdout)")
            }
        }
        #expect(try sandbox.counts()["users"] == 300)
    }

    @Test func theProgressLineShowsTheNewJobNeverGluesToALogLineAndEndsWithANewline() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 2_000)
        #expect(try sandbox.job("start", ["--batch-size", "500"]).status == 0)
        let oldJob = try #require(try sandbox.status()["job"] as? String)
        // Slow enough for several progress lines on any machine (40 batches, each COMMIT 80 ms).
        try sandbox.slowCommits(seconds: 0.08)
        let result = try sandbox.inTerminal(
            ["start", "--fresh", "--yes", "--batch-size", "50", "--workers", "1"] + sandbox.connectionArguments)
        #expect(result.status == 0, "\(result.stdout)")
        let newJob = try #require(try sandbox.status()["job"] as? String)
        let screen = TerminalScreen(result.stdout)
        let progress = screen.lines.filter { $0.hasPrefix("job ") }
        #expect(!progress.isEmpty, "a run of several seconds shows progress: \(screen.lines)")
        #expect(progress.allSatisfy { $0.hasPrefix("job \(newJob.prefix(8)):") }, "\(progress)")
        #expect(!result.stdout.contains(String(oldJob.prefix(8))), "the previous job never shows")
        for line in screen.lines where line.contains(" etl-job: ") && !line.hasPrefix("etl-job: ") {
            #expect(line.first?.isNumber == true, "a log line starts on a line of its own: \(line)")
        }
        #expect(screen.lines.contains("etl-job: run complete"), "the report starts on a line of its own")
    }

    @Test func redirectedOutputHoldsNoCarriageReturnOrEscape() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 300)
        let result = try sandbox.job("start", ["--batch-size", "50"])
        #expect(result.status == 0)
        for text in [result.stdout, result.stderr] {
            #expect(!text.contains("\r") && !text.contains("\u{1B}"), "\(text.debugDescription)")
        }
    }

    // MARK: A job remembers what it moves

    @Test func commandsNamingAnotherSourceOrTargetThanTheJobsAreRefusedNamingBoth() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 300)
        try sandbox.mongo.collection(database: sandbox.mongoDatabase, name: "usres").insertMany([UserGenerator(seed: 1).document(id: 1)])
        let crashed = try sandbox.job("start", ["--batch-size", "50"], environment: ["ETL_CRASH_AT": "committed:2"])
        #expect(crashed.signaled || crashed.status == 137)
        var otherTarget = URLComponents(string: sandbox.postgresURL)!
        otherTarget.path = "/etl"
        let refusals: [(String, [String], String)] = [
            ("resume", ["--collection", "usres"], "collection is 'usres' but the job was started on 'users'"),
            ("status", ["--collection", "usres"], "collection is 'usres' but the job was started on 'users'"),
            ("verify", ["--collection", "usres"], "collection is 'usres' but the job was started on 'users'"),
            ("resume", ["--postgres-url", otherTarget.string!], "target database is 'etl' but the job was started on '\(sandbox.name)'"),
        ]
        for (command, extra, message) in refusals {
            let before = try FileManager.default.contentsOfDirectory(atPath: sandbox.stateDirectory).sorted()
            let result = try sandbox.job(command, extra)
            #expect(result.status == 64, "\(command) \(extra): \(result.stderr)")
            #expect(result.stderr.contains(message), "\(result.stderr)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: sandbox.stateDirectory).sorted() == before)
        }
        let resumed = try sandbox.job("resume")
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try sandbox.counts() == (try expectedCounts(sandbox)))
    }

    // MARK: Nothing moved is not success

    @Test func aMissingCollectionExits66NamingThoseThatExistAndCreatesNothing() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 10)
        let result = try sandbox.job("start", ["--collection", "usres"])
        #expect(result.status == 66)
        #expect(result.stderr.contains("the collection \(sandbox.mongoDatabase).usres does not exist; collections in \(sandbox.mongoDatabase): users"),
                "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: sandbox.stateDirectory), "no state directory")
        #expect(try sandbox.tableCount() == 0, "no DDL")
    }

    @Test func anEmptyCollectionFailsUnlessAllowed() throws {
        let sandbox = try Sandbox()
        let empty = BSONDocument()
        empty.writer.append("create", "users")
        try sandbox.mongo.runCommand(empty, database: sandbox.mongoDatabase)
        let refused = try sandbox.job("start")
        #expect(refused.status == 66)
        #expect(refused.stderr.contains("is empty; add --allow-empty"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: sandbox.stateDirectory))
        let allowed = try sandbox.job("start", ["--allow-empty"])
        #expect(allowed.status == 0, "\(allowed.stderr)")
    }

    @Test func tooManyDocumentsSetAsideExit65UntilAResumeAcceptsThem() throws {
        let sandbox = try Sandbox()
        #expect(try sandbox.run(["seed", "--users", "200", "--bad-input"] + sandbox.connectionArguments).status == 0)
        let first = try sandbox.job("start")
        #expect(first.status == 65, "\(first.stderr)")
        #expect(first.stderr.contains("documents were set aside, more than the limit of 2 (1% of 200 documents read)"), "\(first.stderr)")
        #expect(first.stderr.contains("etl-job status --rejected"))
        let loaded = try #require(try sandbox.status()["documentsLoaded"] as? Int)
        #expect(try sandbox.counts()["users"] == loaded, "everything loadable is loaded")
        #expect(try sandbox.job("resume").status == 65, "the same limit fails again")
        let accepted = try sandbox.job("resume", ["--max-set-aside", "20%"])
        #expect(accepted.status == 0, "\(accepted.stderr)")
        #expect(try sandbox.status()["finished"] as? Bool == true)
    }

    @Test func aTargetThatRejectsEveryRowFailsWhateverTheLimitAndVerifyDoesNotSayOK() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 40)
        #expect(try sandbox.job("migrate").status == 0)
        try sandbox.db().execute("ALTER TABLE users ADD CONSTRAINT refuse_all CHECK (id < 0)")
        let result = try sandbox.job("start", ["--max-set-aside", "100%"])
        #expect(result.status == 65, "\(result.stderr)")
        #expect(result.stderr.contains("every document read (40) was set aside and none was loaded"), "\(result.stderr)")
        let verify = try sandbox.job("verify")
        #expect(verify.status == 65, "\(verify.stdout)")
        #expect(verify.stdout.contains("NOT VERIFIED"))
    }

    // MARK: Ctrl-C in every state

    @Test(arguments: ["postgres", "mongo"])
    func ctrlCWhileAServiceIsDownExits130Within5SecondsAndResumeIsExact(service: String) throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 2_000)
        // Each batch takes at least 0.1 s to commit, so the run (and its open scan, held by
        // backpressure) outlasts stopping a service.
        try sandbox.slowCommits(seconds: 0.1)
        let job = try sandbox.launch(["start"] + sandbox.connectionArguments
            + ["--batch-size", "50", "--workers", "1", "--max-pending", "1", "--cursor-batch-size", "50"])
        #expect(try eventually(60) { (try? sandbox.status()["done"] as? Int).flatMap { $0 } ?? 0 >= 2 })
        #expect(try sandbox.status()["extractionFinished"] as? Bool == false, "the scan is still open")
        if service == "mongo" {
            // Stopped politely, the wire server first finishes serving the open cursor: kill it.
            try Services.killMongo()
        } else {
            try Services.services("stop", service)
        }
        defer { try? Services.services("start", service) }
        Thread.sleep(forTimeInterval: 1.5)  // the job is now retrying against a closed port
        let signalled = Date()
        job.signal(SIGINT)
        let result = try job.wait()
        let seconds = Date().timeIntervalSince(signalled)
        #expect(result.status == 130 && !result.signaled, "exit \(result.status): \(result.stderr)")
        #expect(seconds < 5, "stopped in \(seconds) s")
        try Services.services("start", service)
        let resumed = try sandbox.job("resume")
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try sandbox.counts() == (try expectedCounts(sandbox)))
        #expect(try sandbox.duplicateKeys() == 0)
    }

    /// libmongoc makes /dev/shm/mongoc-<pid> when it loads, and removes it only when the
    /// process ends cleanly: the job removes its name at once, so that a killed run leaves none.
    @Test func aRunKilledWithSIGKILLLeavesNoSharedMemorySegmentBehind() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 300)
        try sandbox.slowCommits(seconds: 0.2)
        // The tests' own environment keeps libmongoc out of shared memory: the job must not inherit that.
        let job = try RunningJob(arguments: ["start"] + sandbox.connectionArguments + ["--batch-size", "50", "--workers", "1"],
                                 environment: [:], unsetting: ["MONGOC_DISABLE_SHM"])
        let segment = "/dev/shm/mongoc-\(job.pid)"
        #expect(try eventually(60) { (try? sandbox.status()["done"] as? Int).flatMap { $0 } ?? 0 >= 1 }, "the run loads")
        #expect(!FileManager.default.fileExists(atPath: segment), "no segment while it runs")
        job.signal(SIGKILL)
        let result = try job.wait()
        #expect(result.signaled)
        #expect(!FileManager.default.fileExists(atPath: segment), "none after the kill")
        let resumed = try sandbox.job("resume")
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try sandbox.counts() == (try expectedCounts(sandbox)))
    }

    // MARK: Refusals leave nothing behind; secrets

    @Test func refusedCommandsCreateNoStateDirectoryAndRunNoDDL() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 10)
        let refusals: [([String], Int32)] = [
            (["start", "--batch-size", "0"], 64),
            (["start", "--env-file", "/nonexistent/.env"], 64),
            (["start", "--max-set-aside", "lots"], 64),
            (["resume"], 64),
            (["start", "--database", "nothing_here"], 66),
        ]
        for (arguments, code) in refusals {
            let result = try sandbox.run([arguments[0]] + sandbox.connectionArguments + arguments.dropFirst())
            #expect(result.status == code, "\(arguments): \(result.stderr)")
            let lines = result.stderr.split(separator: "\n")
            #expect(lines.count == 1 || (lines.count == 2 && lines[1].hasPrefix("See 'etl-job ")), "one error line: \(result.stderr)")
            #expect(!FileManager.default.fileExists(atPath: sandbox.stateDirectory), "\(arguments) created the state directory")
        }
        #expect(try sandbox.tableCount() == 0)
    }

    @Test func aPasswordWithAnInvalidEscapeNeverAppears() throws {
        let sandbox = try Sandbox()
        for url in ["postgresql://etl:s3cret%zzPW@127.0.0.1:55432/etl", "postgresql://etl:s3cretPW@127.0.0.1:55432/etl"] {
            let result = try sandbox.run(["start", "--postgres-url", url, "--mongodb-url", Services.mongoURL, "--state-dir", sandbox.stateDirectory])
            #expect(result.status == 64 || result.status == 69, "\(result.stderr)")
            #expect(!result.stderr.contains("s3cret") && !result.stdout.contains("s3cret"), "\(result.stderr)")
            #expect(result.stderr.contains("127.0.0.1"), "the rest of the reason stays: \(result.stderr)")
        }
    }

    @Test func scriptsServicesStopNeverSignalsAProcessItDidNotStart() throws {
        let copy = NSTemporaryDirectory() + "etl-services-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: copy) }
        try FileManager.default.createDirectory(atPath: copy + "/scripts", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: copy + "/var/run", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Services.packageRoot.path + "/scripts/services", toPath: copy + "/scripts/services")
        let stranger = Process()
        stranger.executableURL = URL(fileURLWithPath: "/bin/sleep")
        stranger.arguments = ["30"]
        try stranger.run()
        defer { stranger.terminate() }
        try "\(stranger.processIdentifier)\n".write(toFile: copy + "/var/run/mongo.pid", atomically: true, encoding: .utf8)
        let stop = Process()
        stop.executableURL = URL(fileURLWithPath: copy + "/scripts/services")
        stop.arguments = ["stop", "mongo"]
        stop.environment = ProcessInfo.processInfo.environment.merging(["ETL_MONGO_PORT": "1"]) { $1 }
        stop.standardOutput = FileHandle.nullDevice
        stop.standardError = FileHandle.nullDevice
        try stop.run()
        stop.waitUntilExit()
        #expect(stranger.isRunning, "a pid file naming another process must not get it killed")
    }
}
