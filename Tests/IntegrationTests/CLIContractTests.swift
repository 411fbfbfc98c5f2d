import Foundation
import Postgres
import TestSupport
import Testing

/// What scripts and people rely on: the version, usage errors, log levels, progress in a
/// log, the JSON documents' shapes, and every form of connection string.
@Suite(.serialized) struct CLIContractTests {
    @Test(arguments: [["--version"], ["version"]])
    func theVersionNamesEtlJobAndTheLinkedLibraries(arguments: [String]) throws {
        let result = try Sandbox.runBinary(arguments)
        #expect(result.status == 0)
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 4, "\(result.stdout)")
        #expect(lines.first?.wholeMatch(of: /etl-job \d+\.\d+\.\d+ \((commit [0-9a-f]{12}(-dirty)?|built without a commit)\)/) != nil)
        #expect(lines.dropFirst().first?.wholeMatch(of: /libmongoc \d+\.\d+\.\d+/) != nil)
        #expect(lines.dropFirst(2).first?.wholeMatch(of: /libpq \d+\.\d+/) != nil)
        #expect(lines.dropFirst(3).first?.wholeMatch(of: /liblmdb \d+\.\d+\.\d+/) != nil)
    }

    @Test(arguments: [
        (["start", "--log-level", "verbose"], [:], "valid levels: trace, debug, info, notice, warning, error, critical", "See 'etl-job start --help'."),
        (["start", "--workers", "x"], [:], "The value 'x' is invalid for '--workers", "See 'etl-job start --help'."),
        (["stat"], [:], "Unexpected argument 'stat'", "Commands: start, resume, worker, sync, status, verify, init, mapping, seed, migrate, version. See 'etl-job --help'."),
        (["start", "--pipeline", "nope"], [:], "unknown pipeline 'nope'; the known pipelines are: users", "See 'etl-job start --help'."),
        (["status", "-q", "-v"], [:], "-q and -v contradict each other", "See 'etl-job status --help'."),
        (["start", "--progress-interval", "0"], [:], "--progress-interval must be a positive number", "See 'etl-job start --help'."),
        (["start", "--keys", "sometimes"], [:], "--keys 'sometimes' is not a mode; valid modes: after, during", "See 'etl-job start --help'."),
        (["start", "--keys", "after", "--foreign-keys", "during"], [:], "the foreign keys cannot be in place during it", "See 'etl-job start --help'."),
        (["start", "--all-collections"], [:], "--all-collections runs every collection of --database; name the database", "See 'etl-job start --help'."),
        (["start", "--all-collections", "--database", "shop", "--source-file", "a.bson"], [:], "use --source-dump for a dump directory", "See 'etl-job start --help'."),
        (["start", "--sample", "0", "--all-collections", "--database", "shop"], [:], "--sample must be at least 1", "See 'etl-job start --help'."),
        (["init", "--database", "shop", "--output", "a.json"], [:], "a whole database writes one per collection into --output-dir", "See 'etl-job init --help'."),
        (["init", "--database", "shop", "--collection", "orders", "--output-dir", "m"], [:], "--output-dir is for a whole database", "See 'etl-job init --help'."),
        (["init"], [:], "init needs --database (a whole database) and --collection (one collection), --source-file", "See 'etl-job init --help'."),
        (["start", "--source-dump", ""], [:], "--source-dump needs a path", nil),
        (["status"], ["ETL_LOG_LEVEL": "loud"], "ETL_LOG_LEVEL 'loud' is not a level; valid levels: trace, debug", nil),
        (["worker", "--partitions", "0"], [:], "--partitions must be between 1 and 10000", "See 'etl-job worker --help'."),
        (["worker", "--pipeline", "users"], [:], "--pipeline chooses what --partitions plans", "See 'etl-job worker --help'."),
        (["worker", "--partitions", "2", "--source-dump", "dump"], [:], "--source-dump plans a whole dump", "See 'etl-job worker --help'."),
        (["scan", "--partitions", "0"], [:], "--partitions must be between 1 and 10000", nil),
        (["start", "--unmapped", "sometimes"], [:], "The value 'sometimes' is invalid for '--unmapped <policy>'", "See 'etl-job start --help'."),
        (["start", "--unmapped", "evolve"], [:], "the users pipeline cannot follow the unmapped-field policy 'evolve'", nil),
        (["mapping"], [:], "name the pipeline with --pipeline", nil),
        (["mapping", "--pipeline", "users"], [:], "the users pipeline is built in", nil),
    ] as [([String], [String: String], String, String?)])
    func aUsageErrorSaysWhatIsWrongWhatIsValidAndWhereHelpIs(arguments: [String], environment: [String: String], problem: String, pointer: String?) throws {
        let state = ["ETL_STATE_DIR": NSTemporaryDirectory() + "etl-none"]
        let result = try Sandbox.runBinary(arguments, environment: environment.merging(state) { a, _ in a })
        #expect(result.status == 64, "\(result.stderr)")
        #expect(result.stderr.hasPrefix("etl-job: error: "), "\(result.stderr)")
        #expect(result.stderr.contains(problem), "\(result.stderr)")
        if let pointer { #expect(result.stderr.contains(pointer), "\(result.stderr)") }
        #expect(!result.stderr.contains("USAGE:") && !result.stderr.contains("Backtrace"))
        #expect(result.stdout.isEmpty)
    }

    @Test func helpGroupsTheOptions() throws {
        let help = try Sandbox.runBinary(["start", "--help"])
        #expect(help.status == 0)
        for group in ["SOURCE:", "TARGET:", "JOB:", "OUTPUT:", "RUN:"] {
            #expect(help.stdout.contains(group), "\(group) in\n\(help.stdout)")
        }
    }

    @Test func eachLogLevelAddsRealDetail() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 60)
        func run(_ flags: [String]) throws -> String {
            let result = try sandbox.job("start", ["--fresh", "--yes", "--batch-size", "20"] + flags)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(!result.stdout.isEmpty, "the report goes to stdout whatever the level")
            return result.stderr
        }
        let quiet = try run(["-q"])
        #expect(quiet.isEmpty, "-q: warnings and errors only, no progress: \(quiet)")
        let info = try run([])
        #expect(info.contains(" info etl-job: started a new job") && !info.contains("claimed a batch"), "\(info)")
        let debug = try run(["-v"])
        #expect(debug.contains("debug etl-job: claimed a batch") && debug.contains("committed a batch") && !debug.contains("SQL "), "\(debug)")
        let trace = try run(["--log-level", "trace"])
        #expect(trace.contains("trace etl-job: SQL COPY \"users\" FROM STDIN (FORMAT binary): 20 rows"), "\(trace)")
        #expect(trace.contains("trace etl-job: SQL INSERT INTO etl_checkpoints; COMMIT (pipelined) batch=") && trace.contains("ms="), "\(trace)")
        let fromEnvironment = try sandbox.job("start", ["--fresh", "--yes"], environment: ["ETL_LOG_LEVEL": "debug"])
        #expect(fromEnvironment.stderr.contains("claimed a batch"), "ETL_LOG_LEVEL=debug")
    }

    @Test func aRedirectedRunWritesAPlainProgressLineEveryIntervalAndNoCarriageReturn() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 400)
        try sandbox.slowCommits(seconds: 0.3)
        let result = try sandbox.job("start", ["--batch-size", "20", "--workers", "2", "--progress-interval", "0.5"])
        #expect(result.status == 0, "\(result.stderr)")
        let progress = result.stderr.split(separator: "\n").filter { $0.hasPrefix("job ") && $0.contains("documents") }
        #expect(progress.count >= 2, "\(result.stderr)")
        #expect(!result.stderr.contains("\r") && !result.stderr.contains("\u{1B}") && !result.stdout.contains("\r"))
    }

    @Test func statusJSONHasOneShapeWithAJobAndWithout() throws {
        let sandbox = try Sandbox()
        let none = try JSON.object(try sandbox.job("status", ["--json"]).stdout)
        #expect(Set(none.keys) == JSON.statusKeys)
        #expect(none["schemaVersion"] as? Int == 2 && none["hasJob"] as? Bool == false)
        let stamp = try #require(none["etlJob"] as? [String: Any], "every document says which etl-job wrote it")
        let versionLine = try Sandbox.runBinary(["--version"]).stdout.split(separator: "\n").first.map(String.init) ?? ""
        #expect(versionLine.hasPrefix("etl-job \(stamp["version"] as? String ?? "?") ("), "\(stamp) against \(versionLine)")
        #expect((none["pipelines"] as? [Any])?.isEmpty == true)
        #expect(Set((none["total"] as? [String: Any] ?? [:]).keys) == JSON.totalKeys)

        try sandbox.seed(users: 30)
        #expect(try sandbox.job("start").status == 0)
        let some = try JSON.object(try sandbox.job("status", ["--json"]).stdout)
        #expect(Set(some.keys) == JSON.statusKeys && some["hasJob"] as? Bool == true)
        let pipeline = try #require((some["pipelines"] as? [[String: Any]])?.first)
        #expect(Set(pipeline.keys) == JSON.pipelineKeys, "keys never vanish: \(pipeline.keys.sorted())")
        #expect(pipeline["pipeline"] as? String == "users" && pipeline["documentsLoaded"] as? Int == 30)

        let rejected = try JSON.object(try sandbox.job("status", ["--rejected", "--json"]).stdout)
        #expect(Set(rejected.keys) == ["schemaVersion", "etlJob", "stateDirectory", "documents"])

        let verify = try JSON.object(try sandbox.job("verify", ["--json"]).stdout)
        #expect(Set(verify.keys) == ["schemaVersion", "etlJob", "agrees", "pipelines"] && verify["agrees"] as? Bool == true)
        let report = try #require((verify["pipelines"] as? [[String: Any]])?.first)
        #expect(Set(report.keys) == ["pipeline", "agrees", "comparedNothing", "sourceDocuments", "setAsideByJob", "rejectedByRules", "tables", "foreignKeys",
                                     "unheld", "firstUnheld", "droppedByPolicy", "droppedPaths", "targetDifferences"])
        #expect(verify["schemaVersion"] as? Int == 2)
        let users = try #require((report["tables"] as? [[String: Any]])?.first)
        #expect(users["table"] as? String == "users" && users["expected"] as? Int == 30 && users["actual"] as? Int == 30)
    }

    @Test func reportJSONIsWrittenWhateverTheOutcome() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 40)
        let path = sandbox.stateDirectory + "-report.json"
        defer { try? FileManager.default.removeItem(atPath: path) }

        let missing = try sandbox.job("start", ["--collection", "nothing", "--report-json", path])
        #expect(missing.status == 66)
        var report = try JSON.object(try String(contentsOfFile: path, encoding: .utf8))
        #expect(Set(report.keys) == JSON.reportKeys)
        #expect(report["exitCode"] as? Int == 66 && report["exitReason"] as? String == "error")
        #expect((report["error"] as? String)?.contains("nothing does not exist") == true)

        let done = try sandbox.job("start", ["--report-json", path])
        #expect(done.status == 0)
        report = try JSON.object(try String(contentsOfFile: path, encoding: .utf8))
        #expect(report["exitCode"] as? Int == 0 && report["exitReason"] as? String == "finished" && report["error"] is NSNull)
        #expect(report["documentsLoaded"] as? Int == 40)
        let pipeline = try #require((report["pipelines"] as? [[String: Any]])?.first)
        #expect((pipeline["rows"] as? [String: Int])?["users"] == 40 && pipeline["finished"] as? Bool == true)
        #expect(Set((report["stages"] as? [String: Any] ?? [:]).keys).contains("COPY"))
        // The duration is the command's: its phases, from the process's start, add up to it.
        let phases = try #require(report["phases"] as? [String: Double])
        #expect(Set(phases.keys) == ["start", "prepare", "load", "finish"])
        #expect(phases.values.allSatisfy { $0 >= 0 } && (phases["start"] ?? 0) > 0 && (phases["load"] ?? 0) > 0)
        let seconds = try #require(report["seconds"] as? Double)
        #expect(abs(phases.values.reduce(0, +) - seconds) < 0.01, "\(phases) sum to \(seconds)")
        #expect(seconds < done.seconds + 0.05, "no longer than the process ran: \(seconds) of \(done.seconds)")
        #expect(seconds > done.seconds * 0.5, "the most of the process's time: \(seconds) of \(done.seconds)")
        #expect(done.stdout.contains("duration") && done.stdout.contains("(start "))
        #expect(!FileManager.default.fileExists(atPath: path + ".tmp-\(getpid())"))
    }

    @Test func libpqKeywordStringsAndPGVariablesWork() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 25)
        let keywords = "host=127.0.0.1 port=55432 dbname=\(sandbox.name) user=etl password=etl"
        let withKeywords = try sandbox.run(["start", "--postgres-url", keywords, "--mongodb-url", Services.mongoURL,
                                            "--database", sandbox.mongoDatabase, "--state-dir", sandbox.stateDirectory])
        #expect(withKeywords.status == 0, "\(withKeywords.stderr)")
        let pg = ["PGHOST": "127.0.0.1", "PGPORT": "55432", "PGDATABASE": sandbox.name, "PGUSER": "etl", "PGPASSWORD": "etl"]
        let withVariables = try sandbox.run(["status", "--state-dir", sandbox.stateDirectory], environment: pg)
        #expect(withVariables.status == 0, "libpq's variables name the same target: \(withVariables.stderr)")
        let mongoOptions = Services.mongoURL + "/?authSource=admin&appname=etl-test&serverSelectionTimeoutMS=4000&tls=false"
        let verify = try sandbox.run(["verify", "--mongodb-url", mongoOptions, "--state-dir", sandbox.stateDirectory], environment: pg)
        #expect(verify.status == 0, "\(verify.stderr)")

        let wrong = try sandbox.run(["start", "--postgres-url", "host=127.0.0.1 port=1 dbname=x password=Kw0rdSecret",
                                     "--mongodb-url", Services.mongoURL, "--database", sandbox.mongoDatabase,
                                     "--state-dir", sandbox.stateDirectory + "-wrong"])
        #expect(wrong.status == 69, "\(wrong.stderr)")
        #expect(!(wrong.stdout + wrong.stderr).contains("Kw0rdSecret"), "\(wrong.stderr)")
        let malformed = try sandbox.run(["status", "--postgres-url", "host=127.0.0.1 port", "--state-dir", sandbox.stateDirectory])
        #expect(malformed.status == 64 && malformed.stderr.contains("malformed PostgreSQL connection string"), "\(malformed.stderr)")
    }

    /// A worker, planning or not (the Kubernetes example's arguments among them), says why it
    /// cannot reach the target as `start` does: 69 for a server it cannot reach, 64 for a URL
    /// it cannot read, the password masked.
    @Test func aWorkerThatCannotReachTheTargetSaysSoAsStartDoes() throws {
        let manifest = try String(contentsOf: Services.packageRoot.appendingPathComponent("examples/kubernetes/etl-job-workers.yaml"), encoding: .utf8)
        let args = try #require(manifest.firstMatch(of: /args: \[([^\]]*)\]/)).1
        let example = args.split(separator: ",").map { $0.trimmingCharacters(in: .whitespacesAndNewlines).trimmingCharacters(in: CharacterSet(charactersIn: "\"")) }
        #expect(example.first == "worker" && example.contains("--partitions"), "\(example)")
        let state = NSTemporaryDirectory() + "etl-worker-unreachable"
        defer { try? FileManager.default.removeItem(atPath: state) }
        for command in [["worker"], ["worker", "--partitions", "2"], example.filter { $0 != "--state-dir" && $0 != "/state" }] {
            let unreachable = try Sandbox.runBinary(command + ["--state-dir", state, "--postgres-url", "postgresql://etl:Kw0rdSecret@127.0.0.1:1/etl"])
            #expect(unreachable.status == 69 && unreachable.stderr.contains("cannot connect to PostgreSQL"), "\(command): \(unreachable.stderr)")
            #expect(!unreachable.stderr.contains("Kw0rdSecret"))
            let malformed = try Sandbox.runBinary(command + ["--state-dir", state, "--postgres-url", "postgresql://etl@127.0.0.1:1/etl?bogus=1"])
            #expect(malformed.status == 64 && malformed.stderr.contains("malformed PostgreSQL connection string"), "\(command): \(malformed.stderr)")
        }
    }
}

enum JSON {
    static let statusKeys: Set<String> = ["schemaVersion", "etlJob", "stateDirectory", "hasJob", "active", "pipelines", "total", "resnapshot"]
    static let totalKeys: Set<String> = ["documentsLoaded", "documentsSetAside", "totalRows", "finished"]
    static let pipelineKeys: Set<String> = [
        "pipeline", "job", "active", "complete", "finished", "sourceDocuments", "extracted", "extractionFinished", "batches",
        "pending", "inFlight", "done", "documentsLoaded", "documentsSetAside", "rows", "totalRows", "documentsPerSecond", "etaSeconds",
        "sourceFile", "sourceFileRead", "foreignKeys", "foreignKeysInPlace", "sync", "unmapped", "mappingVersion",
    ]
    static let reportKeys: Set<String> = [
        "schemaVersion", "etlJob", "exitCode", "exitReason", "error", "seconds", "cpuSeconds", "peakMemoryBytes", "documentsLoaded",
        "documentsSetAside", "totalRows", "stages", "pipelines", "changes", "thisRun", "phases",
    ]

    static func object(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "\(text)")
    }
}
