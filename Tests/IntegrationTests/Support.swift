import Foundation
import Mongo
import Postgres
import Testing
import Users

/// The services the tests run against: the local ones `scripts/services start` runs, unless
/// ETL_TEST_POSTGRES_URL / ETL_TEST_MONGODB_URL say otherwise. A missing service fails the
/// test that needs it (never skips it).
enum Services {
    static let env = ProcessInfo.processInfo.environment
    static let postgresURL = env["ETL_TEST_POSTGRES_URL"] ?? "postgresql://etl:etl@127.0.0.1:55432/etl"
    static let mongoURL = env["ETL_TEST_MONGODB_URL"] ?? "mongodb://127.0.0.1:57017"

    struct Missing: Error, CustomStringConvertible {
        let description: String
    }

    static func postgres(_ url: String = postgresURL) throws -> PGConnection {
        do {
            return try PGConnection(url: url, connectTimeout: 3)
        } catch {
            throw Missing(description: "PostgreSQL is not reachable (\(error)); run scripts/services start")
        }
    }

    static func mongo(_ url: String = mongoURL) throws -> MongoClient {
        do {
            let client = try MongoClient(url: url, serverSelectionTimeoutMS: 3000)
            try client.ping()
            return client
        } catch {
            throw Missing(description: "MongoDB is not reachable at \(url) (\(error)); run scripts/services start")
        }
    }

    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Runs `scripts/services <arguments>` (to restart a service under a running job).
    /// posix_spawn + waitpid: the script leaves daemons behind, which Foundation's
    /// `Process.waitUntilExit` does not cope with.
    static func services(_ arguments: String...) throws {
        let script = packageRoot.appendingPathComponent("scripts/services").path
        let argv = ([script] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        var pid: pid_t = 0
        #expect(posix_spawn(&pid, script, &actions, nil, argv, environ) == 0)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        #expect(status == 0, "scripts/services \(arguments.joined(separator: " ")) exited with \(status)")
    }

    /// The etl-job executable built next to the tests.
    static let binary: String = {
        if let path = env["ETL_JOB_BIN"] { return path }
        return packageRoot.appendingPathComponent(".build/debug/etl-job").path
    }()
}

/// A private world for one test: its own PostgreSQL database, MongoDB database and state directory.
final class Sandbox {
    let name: String
    let postgresURL: String
    let mongoDatabase: String
    let stateDirectory: String
    let mongo: MongoClient

    init() throws {
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

    var users: MongoCollection { mongo.collection(database: mongoDatabase, name: "users") }

    func db() throws -> PGConnection { try Services.postgres(postgresURL) }

    func seed(users n: Int, seed: UInt64 = 42, firstId: Int64 = 1) throws {
        let generator = UserGenerator(seed: seed)
        var next = firstId
        while next < firstId + Int64(n) {
            let upper = min(next + 500, firstId + Int64(n))
            try users.insertMany((next..<upper).map { generator.document(id: $0) })
            next = upper
        }
    }

    /// Arguments every job command needs to use this sandbox.
    var connectionArguments: [String] {
        ["--postgres-url", postgresURL, "--mongodb-url", Services.mongoURL, "--database", mongoDatabase, "--state-dir", stateDirectory]
    }

    func launch(_ arguments: [String], environment: [String: String] = [:]) throws -> RunningJob {
        try RunningJob(arguments: arguments, environment: environment)
    }

    /// Runs `etl-job` to completion.
    @discardableResult
    func run(_ arguments: [String], environment: [String: String] = [:]) throws -> JobResult {
        try launch(arguments, environment: environment).wait()
    }

    func job(_ command: String, _ extra: [String] = [], environment: [String: String] = [:]) throws -> JobResult {
        try run([command] + connectionArguments + extra, environment: environment)
    }

    func status() throws -> [String: Any] {
        let result = try run(["status", "--json", "--state-dir", stateDirectory])
        return try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] ?? [:]
    }

    /// Row count and an order-independent content checksum of each of the 15 tables.
    func checksums() throws -> [String: String] {
        let db = try db()
        var sums: [String: String] = [:]
        for table in Schema.tableNames {
            let row = try db.execute("SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x.id), '')) FROM \"\(table)\" x").rows[0]
            sums[table] = "\(row[0]!) \(row[1]!)"
        }
        return sums
    }

    func counts() throws -> [String: Int] {
        try checksums().mapValues { Int($0.split(separator: " ")[0])! }
    }

    /// Migrates the sandbox's target and makes every batch's COMMIT take at least `seconds`
    /// (a trigger on the checkpoint row), so that a run outlasts what a test does meanwhile.
    func slowCommits(seconds: Double) throws {
        #expect(try job("migrate").status == 0)
        try db().execute("""
            CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep(\(seconds)); RETURN NULL; END $$;
            CREATE TRIGGER slow_commit AFTER INSERT ON etl_checkpoints FOR EACH ROW EXECUTE FUNCTION slow_commit();
            """)
    }

    /// No table may hold a primary key twice (primary keys forbid it, but say so explicitly).
    func duplicateKeys() throws -> Int {
        let db = try db()
        return try Schema.tableNames.reduce(0) { total, table in
            total + Int(try db.execute("SELECT count(*) - count(DISTINCT id) FROM \"\(table)\"").rows[0][0]!)!
        }
    }
}

struct JobResult {
    let status: Int32
    let signaled: Bool
    let stdout: String
    let stderr: String
    let seconds: Double
}

/// A running etl-job process, with its output captured to files.
final class RunningJob {
    let process = Process()
    private let out: URL, err: URL
    private let started = Date()

    init(executable: String = Services.binary, arguments: [String], environment: [String: String]) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env["MONGODB_URL"] = nil
        env["POSTGRES_URL"] = nil
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

    var pid: Int32 { process.processIdentifier }

    func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    func wait() throws -> JobResult {
        process.waitUntilExit()
        let result = JobResult(
            status: process.terminationStatus, signaled: process.terminationReason == .uncaughtSignal,
            stdout: try String(contentsOf: out, encoding: .utf8), stderr: try String(contentsOf: err, encoding: .utf8),
            seconds: Date().timeIntervalSince(started))
        try? FileManager.default.removeItem(at: out)
        try? FileManager.default.removeItem(at: err)
        return result
    }
}

/// Polls `condition` every 50 ms for up to `seconds`.
func eventually(_ seconds: Double, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try condition() { return true }
        Thread.sleep(forTimeInterval: 0.05)
    }
    return try condition()
}
