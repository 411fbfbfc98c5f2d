import Foundation
import Mongo
import Postgres
import Testing

/// The services the tests run against: the local ones `scripts/services start` runs, unless
/// ETL_TEST_POSTGRES_URL / ETL_TEST_MONGODB_URL say otherwise. A missing service fails the
/// test that needs it (never skips it).
public enum Services {
    public static let env = ProcessInfo.processInfo.environment
    public static let postgresURL = env["ETL_TEST_POSTGRES_URL"] ?? "postgresql://etl:etl@127.0.0.1:55432/etl"
    public static let mongoURL = env["ETL_TEST_MONGODB_URL"] ?? "mongodb://127.0.0.1:57017"

    public struct Missing: Error, CustomStringConvertible {
        public let description: String
    }

    public static func postgres(_ url: String = postgresURL) throws -> PGConnection {
        do {
            return try PGConnection(url: url, connectTimeout: 3)
        } catch {
            throw Missing(description: "PostgreSQL is not reachable (\(error)); run scripts/services start")
        }
    }

    public static func mongo(_ url: String = mongoURL) throws -> MongoClient {
        do {
            let client = try MongoClient(url: url, serverSelectionTimeoutMS: 3000)
            try client.ping()
            return client
        } catch {
            throw Missing(description: "MongoDB is not reachable at \(url) (\(error)); run scripts/services start")
        }
    }

    public static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Runs `scripts/services <arguments>` (to restart a service under a running job).
    /// posix_spawn + waitpid: the script leaves daemons behind, which Foundation's
    /// `Process.waitUntilExit` does not cope with.
    public static func services(_ arguments: String...) throws {
        try services(environment: [:], arguments)
    }

    /// The same with `environment` added (for a cluster of a test's own: `ETL_PG_DIR`, `ETL_PG_PORT`).
    public static func services(environment: [String: String], _ arguments: [String]) throws {
        let script = packageRoot.appendingPathComponent("scripts/services").path
        let argv = ([script] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var variables = ProcessInfo.processInfo.environment
        variables.merge(environment) { $1 }
        let envp = variables.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { envp.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        var pid: pid_t = 0
        #expect(posix_spawn(&pid, script, &actions, nil, argv, envp) == 0)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        #expect(status == 0, "scripts/services \(arguments.joined(separator: " ")): \(describeWaitStatus(status))")
    }

    /// The etl-job executable built next to the tests.
    public static let binary: String = {
        if let path = env["ETL_JOB_BIN"] { return path }
        return packageRoot.appendingPathComponent(".build/debug/etl-job").path
    }()

    /// Another executable built next to the tests.
    public static func sibling(_ name: String) -> String {
        URL(fileURLWithPath: binary).deletingLastPathComponent().appendingPathComponent(name).path
    }
}

/// A private world for one test: its own PostgreSQL database, MongoDB database and state directory.
public final class Sandbox {
    public let name: String
    public let postgresURL: String
    public let mongoDatabase: String
    public let stateDirectory: String
    public let mongo: MongoClient

    public init() throws {
        name = "etl_t_" + UUID().uuidString.prefix(8).lowercased()
        let admin = try Services.postgres()
        try admin.execute("CREATE DATABASE \(name)")
        var components = URLComponents(string: Services.postgresURL)!
        components.path = "/" + name
        postgresURL = components.string!
        mongoDatabase = name
        mongo = try Services.mongo()
        stateDirectory = NSTemporaryDirectory() + name
        #expect(FileManager.default.isExecutableFile(atPath: Services.binary), "build etl-job first: \(Services.binary)")
    }

    deinit {
        _ = try? Services.postgres().execute("DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
        try? mongo.dropDatabase(mongoDatabase)
        try? FileManager.default.removeItem(atPath: stateDirectory)
    }

    public func db() throws -> PGConnection { try Services.postgres(postgresURL) }

    /// Runs `etl-job` to completion outside any sandbox.
    public static func runBinary(_ arguments: [String], environment: [String: String] = [:]) throws -> JobResult {
        try RunningJob(arguments: arguments, environment: environment).wait()
    }

    /// Arguments every job command needs to use this sandbox.
    public var connectionArguments: [String] {
        ["--postgres-url", postgresURL, "--mongodb-url", Services.mongoURL, "--database", mongoDatabase, "--state-dir", stateDirectory]
    }

    public func launch(_ arguments: [String], environment: [String: String] = [:]) throws -> RunningJob {
        try RunningJob(arguments: arguments, environment: environment)
    }

    /// Runs `etl-job` to completion.
    @discardableResult
    public func run(_ arguments: [String], environment: [String: String] = [:], sourceLocation: SourceLocation = #_sourceLocation) throws -> JobResult {
        try launch(arguments, environment: environment).wait(sourceLocation: sourceLocation)
    }

    public func job(_ command: String, _ extra: [String] = [], environment: [String: String] = [:],
                    sourceLocation: SourceLocation = #_sourceLocation) throws -> JobResult {
        try run([command] + connectionArguments + extra, environment: environment, sourceLocation: sourceLocation)
    }

    /// The status of the state directory's first pipeline (`status --json`), or [:] without a job.
    public func status() throws -> [String: Any] {
        let result = try run(["status", "--json", "--state-dir", stateDirectory])
        let document = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] ?? [:]
        return (document["pipelines"] as? [[String: Any]])?.first ?? [:]
    }

    /// Row count and an order-independent content checksum of each table (in `schema`).
    public func checksums(tables: [String], schema: String = "public") throws -> [String: String] {
        let db = try db()
        var sums: [String: String] = [:]
        for table in tables {
            let row = try db.execute("SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM \"\(schema)\".\"\(table)\" x").rows[0]
            sums[table] = "\(row[0]!) \(row[1]!)"
        }
        return sums
    }

    public func counts(tables: [String], schema: String = "public") throws -> [String: Int] {
        try checksums(tables: tables, schema: schema).mapValues { Int($0.split(separator: " ")[0])! }
    }

    /// Migrates the sandbox's target and makes every batch's COMMIT take at least `seconds`
    /// (a trigger on the checkpoint row), so that a run outlasts what a test does meanwhile.
    public func slowCommits(seconds: Double) throws {
        #expect(try job("migrate").status == 0)
        try db().execute("""
            CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep(\(seconds)); RETURN NULL; END $$;
            CREATE TRIGGER slow_commit AFTER INSERT ON etl_checkpoints FOR EACH ROW EXECUTE FUNCTION slow_commit();
            """)
    }

    /// No table may hold a primary key twice (primary keys forbid it, but say so explicitly).
    public func duplicateKeys(tables: [String], schema: String = "public") throws -> Int {
        let db = try db()
        return try tables.reduce(0) { total, table in
            total + Int(try db.execute("SELECT count(*) - count(DISTINCT id) FROM \"\(schema)\".\"\(table)\"").rows[0][0]!)!
        }
    }
}

public struct JobResult: CustomStringConvertible {
    /// The exit status, or the number of the signal that killed the process (`signaled`).
    public let status: Int32
    public let signaled: Bool
    public let stdout: String
    public let stderr: String
    public let seconds: Double

    /// "exit 65" or "killed by SIGABRT", then its standard error: what a failed expectation
    /// on a run should show.
    public var description: String {
        (signaled ? "killed by \(signalName(status))" : "exit \(status)") + (stderr.isEmpty ? "" : "; stderr:\n\(stderr)")
    }
}

/// Signals that only a crash sends (a failed assertion in C, a bad pointer, a Swift trap):
/// never what a test asks for, so a child killed by one fails the test that ran it.
public let crashSignals: Set<Int32> = [SIGABRT, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGSYS]

/// "SIGABRT" for 6, and so on ("signal 42" for one without a name here).
public func signalName(_ number: Int32) -> String {
    let names: [Int32: String] = [
        SIGHUP: "SIGHUP", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT", SIGILL: "SIGILL", SIGTRAP: "SIGTRAP", SIGABRT: "SIGABRT",
        SIGBUS: "SIGBUS", SIGFPE: "SIGFPE", SIGKILL: "SIGKILL", SIGUSR1: "SIGUSR1", SIGSEGV: "SIGSEGV", SIGUSR2: "SIGUSR2",
        SIGPIPE: "SIGPIPE", SIGALRM: "SIGALRM", SIGTERM: "SIGTERM", SIGCHLD: "SIGCHLD", SIGCONT: "SIGCONT", SIGSTOP: "SIGSTOP",
        SIGTSTP: "SIGTSTP", SIGXCPU: "SIGXCPU", SIGXFSZ: "SIGXFSZ", SIGSYS: "SIGSYS",
    ]
    return names[number] ?? "signal \(number)"
}

/// How a `waitpid` status reads: "exit 1", "killed by SIGSEGV".
public func describeWaitStatus(_ status: Int32) -> String {
    let signal = status & 0x7f
    if signal == 0 { return "exit \((status >> 8) & 0xff)" }
    return "killed by \(signalName(signal))" + (status & 0x80 != 0 ? " (core dumped)" : "")
}

/// A running etl-job process, with its output captured to files.
public final class RunningJob {
    public let process = Process()
    private let out: URL, err: URL
    private let started = Date()

    /// `unsetting`: variables of this process's environment the job does not inherit.
    public init(executable: String = Services.binary, arguments: [String], environment: [String: String], unsetting: [String] = []) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for name in ["MONGODB_URL", "POSTGRES_URL"] + unsetting { env[name] = nil }
        env.merge(environment) { $1 }
        process.environment = env
        let base = NSTemporaryDirectory() + "etl-job-" + UUID().uuidString
        out = URL(fileURLWithPath: base + ".out")
        err = URL(fileURLWithPath: base + ".err")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: out)
        process.standardError = try FileHandle(forWritingTo: err)
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }

    public var isRunning: Bool { process.isRunning }

    /// Signals the test sent (a crash signal sent on purpose is no crash).
    private var sent: Set<Int32> = []

    public func signal(_ number: Int32) {
        sent.insert(number)
        kill(process.processIdentifier, number)
    }

    /// Waits for the process. One killed by a crash signal (SIGABRT, SIGSEGV, …) the test did
    /// not send fails the test here, naming the signal with the command and its standard
    /// error, whatever the caller goes on to check: a crash, at exit too, is never silent.
    /// SIGKILL (the crash points', the tests' own kills) is only reported in `JobResult`.
    public func wait(sourceLocation: SourceLocation = #_sourceLocation) throws -> JobResult {
        process.waitUntilExit()
        let result = JobResult(
            status: process.terminationStatus, signaled: process.terminationReason == .uncaughtSignal,
            stdout: try String(contentsOf: out, encoding: .utf8), stderr: try String(contentsOf: err, encoding: .utf8),
            seconds: Date().timeIntervalSince(started))
        if result.signaled, crashSignals.contains(result.status), !sent.contains(result.status) {
            let command = ([process.executableURL?.lastPathComponent ?? "?"] + (process.arguments ?? [])).joined(separator: " ")
            Issue.record("\(command) was \(result)\nstdout (last 2,000 characters):\n\(result.stdout.suffix(2000))", sourceLocation: sourceLocation)
        }
        try? FileManager.default.removeItem(at: out)
        try? FileManager.default.removeItem(at: err)
        return result
    }
}

/// Polls `condition` every 50 ms for up to `seconds`.
public func eventually(_ seconds: Double, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try condition() { return true }
        Thread.sleep(forTimeInterval: 0.05)
    }
    return try condition()
}
