import Foundation
import Testing
import TestSupport

/// How commands end (issue #40: a `verify` printed OK and then died of SIGABRT at exit).
/// A command joins every thread it started before the process ends, and ends without running
/// library cleanup that a thread could race. `ETL_THREAD_END_DELAY_MS` (tests only) holds each
/// thread that long after its waiter was told, before the thread exits, so that a command that
/// went on without joining would exit under it; `ETL_THREADS_AT_EXIT=report` names any thread
/// still running at exit on stderr and turns a success into exit 70.
@Suite(.serialized) struct ExitTests {
    static let leftBehind = "threads still running at exit"

    /// Each command the job runs, on success and on a refusal, from MongoDB and from a file,
    /// with every thread lingering 150 ms at its end: none may be running when it exits.
    @Test func everyCommandJoinsItsThreadsBeforeItExits() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 150)
        let file = sandbox.stateDirectory + "-users.bson"
        let fileState = sandbox.stateDirectory + "-file"
        defer {
            try? FileManager.default.removeItem(atPath: file)
            try? FileManager.default.removeItem(atPath: fileState)
        }
        let environment = ["ETL_THREAD_END_DELAY_MS": "150", "ETL_THREADS_AT_EXIT": "report"]
        let fromFile = ["--postgres-url", sandbox.postgresURL, "--state-dir", fileState, "--target-schema", "from_file"]
        let runs: [(String, [String], Int32)] = [
            ("seed a file", ["seed", "--users", "150", "--output", file], 0),
            ("start from MongoDB", ["start"] + sandbox.connectionArguments, 0),
            ("start from a file", ["start", "--source-file", file] + fromFile, 0),
            ("verify MongoDB", ["verify"] + sandbox.connectionArguments, 0),
            ("verify a file", ["verify", "--source-file", file] + fromFile, 0),
            ("status", ["status", "--state-dir", sandbox.stateDirectory], 0),
            ("status --json", ["status", "--json", "--state-dir", fileState], 0),
            ("resume of a finished job", ["resume"] + fromFile, 0),
            ("sync serving metrics", ["sync", "--metrics-address", "127.0.0.1:\(Scrape.freePort())"] + sandbox.connectionArguments, 0),
            ("resume serving metrics", ["resume", "--metrics-address", "127.0.0.1:\(Scrape.freePort())"] + fromFile, 0),
            ("start refused: the job is finished", ["start", "--source-file", file] + fromFile, 64),
            ("verify refused: another source server", ["verify", "--postgres-url", sandbox.postgresURL, "--mongodb-url", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300",
                                           "--state-dir", sandbox.stateDirectory], 69),
        ]
        for (what, arguments, expected) in runs {
            let result = try sandbox.run(arguments, environment: environment)
            #expect(!result.stderr.contains(Self.leftBehind), "\(what) left a thread running at exit: \(result)")
            #expect(!result.signaled, "\(what): \(result)")
            #expect(expected == 0 ? result.status == 0 : result.status != 0 && result.status != 70, "\(what): \(result)")
        }
    }

    /// `verify` and `status` again and again, each thread's end shifted by 0-2 ms into the
    /// window where the process exits: none is killed by a signal. Bounded to about 45 s.
    @Test func commandsRunAgainAndAgainAreNeverKilledAtExit() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 60)
        let loaded = try sandbox.job("start")
        #expect(loaded.status == 0, "\(loaded)")
        let deadline = Date().addingTimeInterval(45)
        var runs = 0
        while runs < 50 && Date() < deadline {
            let command = runs % 2 == 0 ? ["verify"] + sandbox.connectionArguments : ["status", "--state-dir", sandbox.stateDirectory]
            let result = try sandbox.run(command, environment: ["ETL_THREAD_END_DELAY_MS": String(runs % 3), "ETL_THREADS_AT_EXIT": "report"])
            #expect(result.status == 0 && !result.signaled, "run \(runs) (\(command[0])): \(result)")
            runs += 1
        }
        #expect(runs >= 30, "only \(runs) runs in 45 s")
    }
}
