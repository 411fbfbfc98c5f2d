import Foundation
import Mongo
import Postgres
import Testing
import DurableETL
import TestSupport
import Users
import UsersFixtures

/// The world attacking a job: a full disk under the state directory, damaged state files, a
/// second job on the same target, a target changed between runs, dates at the edge of BSON.
/// Each must end in a clear error with its exit code or in an exact result.
@Suite(.serialized) struct DamageTests {
    /// A job killed after queuing a few batches, so the queue holds pending payloads.
    private func interruptedJob(users: Int = 600) throws -> Sandbox {
        let sandbox = try Sandbox()
        try sandbox.seed(users: users)
        let crashed = try sandbox.job("start", ["--batch-size", "100", "--workers", "1", "--max-pending", "4"],
                                      environment: ["ETL_CRASH_AT": "enqueued:4"])
        #expect(crashed.signaled || crashed.status == 137, "\(crashed.stderr)")
        return sandbox
    }

    /// `commands` end with exit 74 and one error line naming the damage, never a signal.
    private func expectDamageRefused(_ sandbox: Sandbox, _ what: String, naming: String, commands: [String]) throws {
        for command in commands {
            let result = try sandbox.job(command)
            let last = result.stderr.split(separator: "\n").last.map(String.init) ?? ""
            #expect(result.status == 74 && !result.signaled, "\(what), \(command): exit \(result.status) \(result.stderr)")
            #expect(last.hasPrefix("etl-job: error: ") && last.contains(naming), "\(what): \(result.stderr)")
        }
    }

    @Test func aTruncatedQueueFileIsAClearErrorNeverASignal() throws {
        let sandbox = try interruptedJob()
        let path = sandbox.stateDirectory + "/users/data.mdb"
        #expect(truncate(path, 40_000) == 0)
        let loaded = try sandbox.counts()
        try expectDamageRefused(sandbox, "truncated data.mdb", naming: "\(path) is 40000 bytes", commands: ["resume", "status"])
        #expect(try sandbox.counts() == loaded, "nothing was loaded from a truncated queue")
        let status = try sandbox.job("status")
        let committed = try sandbox.db().execute("SELECT count(*), sum(documents_loaded) FROM etl_checkpoints").rows[0]
        #expect(status.stdout.contains("the target's checkpoints at"), "\(status.stdout)")
        let expected = committed[0] == "0" ? "no committed batch" : "\(committed[0]!) batches committed, \(committed[1]!) documents loaded"
        #expect(status.stdout.contains(expected), "\(status.stdout)")
    }

    /// Changes one byte of a document queued in the last batch before the kill (users 301-400,
    /// which no worker took yet): the e-mail of user 399.
    private func damageAQueuedDocument(_ sandbox: Sandbox) throws {
        let path = sandbox.stateDirectory + "/users/data.mdb"
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        let at = try #require(data.range(of: Data("_399@example.com".utf8))).lowerBound
        data[at + 1] = UInt8(ascii: "6")
        try data.write(to: URL(fileURLWithPath: path))
    }

    @Test func aChangedByteInAQueuedDocumentIsCaughtAndTheBatchReadAgainFromTheSource() throws {
        let sandbox = try interruptedJob()
        try damageAQueuedDocument(sandbox)
        let resumed = try sandbox.job("resume")
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stderr.contains("a queued batch was damaged; read its documents again from the source batch=4"), "\(resumed.stderr)")
        #expect(try sandbox.counts() == (try expectedCounts(sandbox)))
        #expect(try sandbox.job("verify").status == 0, "user 399 holds its e-mail from the source, not the damaged one")
    }

    @Test func aDamagedBatchTheSourceCanNoLongerGiveStopsWith74AndLoadsNoneOfIt() throws {
        let sandbox = try interruptedJob()
        try damageAQueuedDocument(sandbox)
        let filter = BSONDocument()
        filter.writer.append("delete", "users")
        filter.writer.appendArray("deletes") { d in
            d.appendDocument("0") { one in
                one.appendDocument("q") { $0.append("_id", Int64(350)) }
                one.append("limit", Int32(1))
            }
        }
        try sandbox.mongo.runCommand(filter, database: sandbox.mongoDatabase)
        try expectDamageRefused(sandbox, "a changed byte, source changed", naming: "batch 4 in the queue", commands: ["resume"])
        let damagedBatch = try sandbox.db().execute("SELECT count(*) FROM users WHERE id BETWEEN 301 AND 400").rows[0][0]
        #expect(damagedBatch == "0", "no row of the damaged batch is loaded")
    }

    /// A stored extract position that is not one is damaged state: exit 74 at once, never a
    /// retry loop that ends in exit 1.
    @Test func aDamagedStoredPositionIsDamagedStateNotARetriedFailure() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 10)
        let source = MongoCollectionSource(url: Services.mongoURL, collection: SourceCollection(database: sandbox.mongoDatabase, collection: "users"))
        let started = ContinuousClock.now
        #expect(throws: (any Error).self) { _ = try source.open(after: [1, 2, 3], batchSize: 10) }
        do {
            _ = try source.open(after: [1, 2, 3], batchSize: 10)
        } catch {
            #expect(!source.isTransient(error), "not worth retrying")
            let job = JobError.classify(error)
            #expect(job.kind == .ioError && job.description.contains("the stored extract position is not a BSON document"), "\(job)")
        }
        #expect(ContinuousClock.now - started < .seconds(2))
        let away = MongoError(message: "No suitable servers found", kind: .transient)
        #expect(source.isTransient(away) && JobError.classify(away).kind == .failed, "a server away is retried, then leaves the run resumable")
    }

    @Test func zeroedPagesInTheMiddleAreNeverASilentSuccess() throws {
        let sandbox = try interruptedJob()
        let path = sandbox.stateDirectory + "/users/data.mdb"
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        let size = try handle.seekToEnd()
        try handle.seek(toOffset: size / 2 / 4096 * 4096)
        handle.write(Data(count: 3 * 4096))
        try handle.close()
        let result = try sandbox.job("resume")
        #expect(!result.signaled)
        if result.status == 0 {
            #expect(try sandbox.counts() == (try expectedCounts(sandbox)), "a resume that says done loaded everything")
        } else {
            #expect(result.status == 74, "\(result.stderr)")
        }
    }

    @Test func aFullDiskUnderTheStateDirectoryExits74AndAResumeAfterFreeingSpaceIsExact() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 2_000)
        let mountPoint = sandbox.stateDirectory + "-fs"
        let unmount = try mountTmpfs(at: mountPoint, size: "3m")
        defer { unmount() }
        let state = ["--state-dir", mountPoint + "/state"]
        let full = try sandbox.job("start", state + ["--max-pending", "100"])
        #expect(full.status == 74 && !full.signaled, "exit \(full.status): \(full.stderr)")
        #expect(full.stderr.contains("cannot write the queue in \(mountPoint)/state/users: No space left on device"), "\(full.stderr)")
        #expect(try shell("mount -o remount,size=64m \(mountPoint)") == 0)
        let resumed = try sandbox.job("resume", state)
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try sandbox.counts() == (try expectedCounts(sandbox)))
        #expect(try sandbox.job("verify", state).status == 0)
    }

    /// The target's disk fills: a PostgreSQL cluster of its own on a 150 MB tmpfs, loading
    /// 10,000 users. PostgreSQL fails to extend its files (53100) and its WAL write, and stops;
    /// the job says the target's disk is full and what to do, exit 74; after the volume grows
    /// and PostgreSQL starts again, resume loads the rest exactly.
    @Test func aFullTargetDiskExits74SayingSoAndAResumeAfterFreeingSpaceIsExact() throws {
        let sandbox = try Sandbox()
        let file = try FileSourceTests.dump(sandbox, users: 10_000)
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-files") }
        let mountPoint = sandbox.stateDirectory + "-pgfs"
        let unmount = try mountTmpfs(at: mountPoint, size: "150m")
        let cluster = ["ETL_PG_DIR": mountPoint + "/pg", "ETL_PG_PORT": "55498"]
        defer {
            try? Services.services(environment: cluster, ["stop", "postgres"])
            unmount()
        }
        try Services.services(environment: cluster, ["start", "postgres"])
        let arguments = ["--source-file", file, "--postgres-url", "postgresql://etl:etl@127.0.0.1:55498/etl", "--state-dir", sandbox.stateDirectory]
        let full = try sandbox.run(["start"] + arguments)
        #expect(full.status == 74 && !full.signaled, "exit \(full.status): \(full.stderr)")
        let error = full.stderr.split(separator: "\n").last { $0.hasPrefix("etl-job: error: ") }.map(String.init) ?? ""
        #expect(error.contains("the target PostgreSQL has no space left on its disk") && error.contains("then run 'etl-job resume'"), "\(full.stderr)")

        // Grown, and PostgreSQL started again (it may still be retrying its recovery, or have
        // given up): until it accepts connections.
        #expect(try shell("mount -o remount,size=1g \(mountPoint)") == 0)
        try Services.services(environment: cluster, ["restart", "postgres"])
        #expect(eventually(60) { (try? Services.postgres("postgresql://etl:etl@127.0.0.1:55498/etl")) != nil })
        let resumed = try sandbox.run(["resume"] + arguments)
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let verify = try sandbox.run(["verify"] + arguments)
        #expect(verify.status == 0, "every row exactly once: \(verify.stdout)")
        #expect(verify.stdout.contains("users                10,000") || verify.stdout.contains("10,000"), "\(verify.stdout)")
    }

    /// `start --fresh` discards the previous queue: a file it cannot remove (made immutable)
    /// is one line naming that file, exit 74, never a Foundation error domain; once the file
    /// can go, the same command discards what the failed one left aside and loads exactly.
    @Test func aQueueThatCannotBeDiscardedIsOneLineNamingThePathThenFreshLoadsExactly() throws {
        let sandbox = try interruptedJob()
        let file = sandbox.stateDirectory + "/users/data.mdb"
        let aside = sandbox.stateDirectory + "/.users.discarding/data.mdb"
        try #require(try shell("chattr +i '\(file)'") == 0, "chattr +i needs root on ext4")
        defer { _ = try? shell("chattr -i '\(file)' '\(aside)' 2>/dev/null") }
        let refused = try sandbox.job("start", ["--fresh", "--yes"])
        #expect(refused.status == 74 && !refused.signaled, "\(refused.stderr)")
        let line = refused.stderr.split(separator: "\n").last.map(String.init) ?? ""
        #expect(line.hasPrefix("etl-job: error: cannot remove \(aside): Operation not permitted"), "\(refused.stderr)")
        #expect(!refused.stderr.contains("Domain") && !refused.stdout.contains("Domain"))
        #expect(try shell("chattr -i '\(aside)'") == 0)
        let fresh = try sandbox.job("start", ["--fresh", "--yes"])
        #expect(fresh.status == 0, "\(fresh.stderr)")
        #expect(!FileManager.default.fileExists(atPath: sandbox.stateDirectory + "/.users.discarding"))
        #expect(try sandbox.counts() == (try expectedCounts(sandbox)))
        #expect(try sandbox.job("verify").status == 0)
    }

    /// `status` run over and over (as a monitor would) while `start --fresh` discards the queue
    /// and is killed at random moments: no run fails on its own clean-up, and the last loads exactly.
    @Test func statusPollingDuringFreshStartsNeverBreaksTheirCleanUp() throws {
        let sandbox = try interruptedJob()
        let stop = NSCondition()
        nonisolated(unsafe) var stopped = false, polls = 0
        let arguments = ["status", "--json", "--state-dir", sandbox.stateDirectory]
        let pollers = (0..<2).map { _ in
            Thread {
                while !stop.withLock({ stopped }) {
                    _ = try? Sandbox.runBinary(arguments)
                    stop.withLock { polls += 1 }
                }
            }
        }
        pollers.forEach { $0.start() }
        defer { stop.withLock { stopped = true } }
        var rng = SplitMix64(seed: 41_016)
        for round in 0..<12 {
            let job = try sandbox.launch(["start", "--fresh", "--yes"] + sandbox.connectionArguments + ["--batch-size", "100"])
            Thread.sleep(forTimeInterval: Double(100 + rng.next() % 700) / 1000)
            job.signal(SIGKILL)
            let result = try job.wait()
            #expect(result.signaled || result.status == 0, "round \(round): \(result.stderr)")
        }
        let last = try sandbox.job("start", ["--fresh", "--yes"])
        stop.withLock { stopped = true }
        #expect(stop.withLock { polls } > 20, "status ran while the runs discarded")
        #expect(last.status == 0, "\(last.stderr)")
        #expect(try sandbox.counts() == (try expectedCounts(sandbox)))
        #expect(try sandbox.job("verify").status == 0)
    }

    @Test func aSecondJobOnTheSameTargetRefusesWithin5SecondsNamingTheFirst() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 1_000)
        try sandbox.slowCommits(seconds: 0.3)
        let first = try sandbox.launch(["start"] + sandbox.connectionArguments + ["--batch-size", "50", "--workers", "1"])
        #expect(try eventually(30) { (try? sandbox.status()["done"] as? Int).flatMap { $0 } ?? 0 >= 1 })
        var arguments = sandbox.connectionArguments
        arguments[arguments.firstIndex(of: "--state-dir")! + 1] = sandbox.stateDirectory + "-second"
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-second") }
        let second = try sandbox.run(["start", "--fresh", "--yes"] + arguments)
        #expect(second.status == 75, "\(second.stderr)")
        #expect(second.seconds < 5)
        #expect(second.stderr.contains("another etl-job run is loading the users pipeline into schema public"), "\(second.stderr)")
        #expect(second.stderr.contains("application 'etl-job pid \(first.pid) on"), "the holder is named: \(second.stderr)")
        let result = try first.wait()
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try sandbox.counts() == (try expectedCounts(sandbox)), "the refused --fresh truncated nothing")
    }

    /// The sandbox's connection arguments with PostgreSQL reached through `proxy` (in plain
    /// protocol: no TLS or GSS negotiation for the proxy to read).
    static func arguments(_ sandbox: Sandbox, through proxy: LostCommitReplyProxy) -> [String] {
        var viaProxy = URLComponents(string: sandbox.postgresURL)!
        viaProxy.port = proxy.port
        viaProxy.query = "sslmode=disable&gssencmode=disable"
        var arguments = sandbox.connectionArguments
        arguments[arguments.firstIndex(of: "--postgres-url")! + 1] = viaProxy.string!
        return arguments
    }

    @Test func aCommitWhoseReplyIsLostWhileTheServerStaysAwayIsSettledByItsCheckpoint() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 600)
        let target = URLComponents(string: sandbox.postgresURL)!
        let proxy = try LostCommitReplyProxy(targetPort: target.port!, loseCommit: 2, refuseFor: 10)
        defer { proxy.stop() }
        let arguments = Self.arguments(sandbox, through: proxy)
        let first = try sandbox.run(["start"] + arguments + ["--batch-size", "100", "--workers", "1"])
        #expect(proxy.lostCommits == 1)
        // The server stayed away longer than the retries: a clear failure, the batch's fate unknown to the queue.
        #expect(first.status != 0 && !first.signaled, "\(first.stderr)")
        #expect(first.stderr.split(separator: "\n").last?.hasPrefix("etl-job: error: ") == true, "\(first.stderr)")
        Thread.sleep(until: (proxy.refusingUntil ?? Date()).addingTimeInterval(0.5))
        let resumed = try sandbox.run(["resume"] + arguments)
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try sandbox.counts() == (try expectedCounts(sandbox)))
        #expect(try sandbox.status()["documentsSetAside"] as? Int == 0)
        #expect(try sandbox.duplicateKeys() == 0)
        #expect(try sandbox.run(["verify"] + arguments).status == 0)
    }

    /// Right after a PostgreSQL restart the server answers "the database system is starting up"
    /// (57P03) until its recovery ends: `start`, `resume` and `sync` wait for it (up to a minute),
    /// saying so, instead of failing at once. (A resume must name the target as its job did,
    /// so the test starts through the proxy; all three connect the same way.)
    @Test func aRunWhilePostgreSQLIsStartingUpWaitsForItThenLoadsExactly() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 300)
        let target = URLComponents(string: sandbox.postgresURL)!
        let proxy = try LostCommitReplyProxy(targetPort: target.port!, loseCommit: 0, refuseFor: 0, startingUpFor: 3)
        defer { proxy.stop() }
        let arguments = Self.arguments(sandbox, through: proxy)
        let started = try sandbox.run(["start"] + arguments)
        #expect(started.status == 0, "\(started.stderr)")
        #expect(proxy.startingUpAnswers > 0, "the run met a server starting up")
        #expect(started.stderr.contains("PostgreSQL is starting up or recovering; waiting"), "\(started.stderr)")
        #expect(try sandbox.counts() == (try expectedCounts(sandbox)))
        #expect(try sandbox.run(["verify"] + arguments).status == 0)
    }

    @Test func aTargetAlteredBetweenRunsStopsWith70NamingTableColumnAndTypes() throws {
        let sandbox = try interruptedJob()
        try sandbox.db().execute("ALTER TABLE users ALTER COLUMN age TYPE text")
        let refused = try sandbox.job("resume")
        #expect(refused.status == 70, "\(refused.stderr)")
        #expect(refused.stderr.contains("users.age is text, expected integer"), "\(refused.stderr)")
        #expect(try sandbox.status()["documentsSetAside"] as? Int == 0, "nothing was set aside for it")
        try sandbox.db().execute("ALTER TABLE users ALTER COLUMN age TYPE integer USING age::integer")
        let resumed = try sandbox.job("resume")
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try sandbox.counts() == (try expectedCounts(sandbox)))
    }

    @Test func theFirstAndLastInstantsPostgresHoldsLoadAndOneBeyondIsSetAside() throws {
        let sandbox = try Sandbox()
        #expect(try sandbox.job("migrate").status == 0)
        let generator = UserGenerator(seed: 1)
        var rows = MappedRows(UsersMapping())
        let first = Int64(-210_866_803_200_000), last = Int64(9_224_318_015_999_999)
        for (id, millis) in [(Int64(1), first), (2, last)] {
            try generator.document(id: id, without: "createdAt") { $0.append("createdAt", dateTimeMillis: millis) }
                .withUnsafeBytes { try rows.add(document: $0) }
        }
        for beyond in [first - 1, last + 1, Int64.max, Int64.min] {
            #expect(throws: (any Error).self) {
                try generator.document(id: 3, without: "createdAt") { $0.append("createdAt", dateTimeMillis: beyond) }
                    .withUnsafeBytes { try rows.add(document: $0) }
            }
        }
        let db = try sandbox.db()
        for (t, table) in UsersMapping.tables.enumerated() where rows.rowCount(t) > 0 {
            try db.copyIn(table.quotedName, columns: table.quotedColumns, binary: rows.tables[t].bytes, BinaryCopyWriter.trailer)
        }
        try db.execute("SET TIME ZONE 'UTC'")
        let stored = try db.execute("SELECT created_at::text FROM users ORDER BY id").rows.map { $0[0]! }
        #expect(stored == ["4714-11-24 00:00:00+00 BC", "294276-12-31 23:59:59.999+00"])
    }
}

/// A tmpfs of `size` (`3m`) mounted at `path`, which it creates, for tests of a full disk (as
/// root); the returned closure unmounts it and removes the directory.
func mountTmpfs(at path: String, size: String) throws -> () -> Void {
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    #expect(try shell("mount -t tmpfs -o size=\(size) tmpfs \(path) && chmod 755 \(path)") == 0, "mounting a tmpfs needs root")
    return {
        _ = try? shell("umount \(path)")
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Runs a shell command line; returns its exit status.
func shell(_ command: String) throws -> Int32 {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", command]
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    return process.terminationStatus
}
