import ArgumentParser
import ETLCore
import Foundation
import Logging
import DurableETL
import Postgres

/// Where the services and the state are: flag, then environment, then `.env`, then the
/// local services that `scripts/services start` runs. Shown in `--help` by group.
struct ConnectionOptions: ParsableArguments {
    static let defaultMongoURL = "mongodb://127.0.0.1:57017"
    static let defaultPostgresURL = "postgresql://etl:etl@127.0.0.1:55432/etl"
    static let defaultStateDirectory = "var/state"

    @OptionGroup(title: "Source") var source: SourceOptions
    @OptionGroup(title: "Target") var target: TargetOptions
    @OptionGroup(title: "Job") var state: StateOptions
    @OptionGroup(title: "Output") var output: OutputOptions

    func resolved(_ run: BucketOptions? = nil) throws -> JobSettings {
        let file = try DotEnv.read(state.envFile ?? ".env", required: state.envFile != nil)
        func pick(_ flag: String?, _ key: String, _ fallback: String) -> String {
            flag ?? ProcessInfo.processInfo.environment[key] ?? file[key] ?? fallback
        }
        let mongo = pick(source.mongoURL, "MONGODB_URL", Self.defaultMongoURL)
        let postgres = pick(target.postgresURL, "POSTGRES_URL", Self.defaultPostgresFallback)
        guard mongo.hasPrefix("mongodb://") || mongo.hasPrefix("mongodb+srv://") else {
            throw JobError(.usage, "malformed MongoDB URL \(Redact.url(mongo)): it must start with mongodb:// or mongodb+srv://")
        }
        do {
            try PGConnection.checkConnectionString(postgres)
        } catch let error as PGError {
            throw JobError(.usage, error.message)
        }
        if let schema = target.targetSchema, schema.isEmpty || schema.utf8.count > 63 || schema.contains("\0") {
            throw JobError(.usage, "--target-schema must be a PostgreSQL name of 1 to 63 bytes, not '\(schema)'")
        }
        var settings = JobSettings(
            mongoURL: mongo, postgresURL: postgres,
            stateDirectory: pick(state.stateDirectory, "ETL_STATE_DIR", Self.defaultStateDirectory), targetSchema: target.targetSchema)
        settings.source = SourceRequest(database: source.database, collection: source.collection, choice: try source.choice())
        if let run {
            settings.bucket = run.config
            settings.cursorBatchSize = run.cursorBatchSize
            settings.maxDocumentBytes = Int(run.maxDocumentMB * 1_048_576)
            settings.queueMapBytes = run.queueMapMB << 20
            settings.maxSetAside = run.setAsideLimit
            settings.allowEmpty = run.allowEmpty
            settings.keyBuild = run.keyBuild
            settings.unmapped = run.unmapped
        }
        return settings
    }

    /// Without a PostgreSQL URL anywhere, libpq's own environment (`PGHOST`, `PGSERVICE`, …)
    /// decides when it is set, as for psql; otherwise the bundled local cluster.
    static var defaultPostgresFallback: String {
        let env = ProcessInfo.processInfo.environment
        let libpq = ["PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"]
        return libpq.contains { env[$0] != nil } ? "" : defaultPostgresURL
    }

    /// Whether the user named a URL (flag, environment or `.env`) rather than taking the default.
    func urlsGiven() throws -> (mongo: Bool, postgres: Bool) {
        let file = try DotEnv.read(state.envFile ?? ".env", required: state.envFile != nil)
        let env = ProcessInfo.processInfo.environment
        return (source.mongoURL != nil || env["MONGODB_URL"] != nil || file["MONGODB_URL"] != nil,
                target.postgresURL != nil || env["POSTGRES_URL"] != nil || file["POSTGRES_URL"] != nil)
    }

    /// The logger at the level the flags and `ETL_LOG_LEVEL` ask for; also sets how progress
    /// is shown.
    func makeLogger() throws -> Logger {
        let level = try output.level()
        Console.standardError.configureProgress(plainInterval: .milliseconds(Int(output.progressInterval * 1000)), quiet: output.quiet)
        LoggingSystem.bootstrap { label in ConsoleLogHandler(label: label) }
        var logger = Logger(label: "etl-job")
        logger.logLevel = level
        return logger
    }
}

struct SourceOptions: ParsableArguments {
    @Option(name: .customLong("mongodb-url"), help: ArgumentHelp(
        "MongoDB URL, options included (tls, authSource, replicaSet…) (env MONGODB_URL; default \(ConnectionOptions.defaultMongoURL)).",
        valueName: "url"))
    var mongoURL: String?

    @Option(help: ArgumentHelp("Source database (default the pipeline's; resume, status and verify default to the job's).", valueName: "name"))
    var database: String?

    @Option(help: ArgumentHelp("Source collection (default the pipeline's; resume, status and verify default to the job's).", valueName: "name"))
    var collection: String?

    @Option(name: .customLong("source-file"), help: ArgumentHelp(
        "Read a mongodump output file (.bson, or gzip-compressed .bson.gz) instead of MongoDB; one pipeline per run (resume, status and verify default to the job's file).",
        valueName: "path"))
    var sourceFile: String?

    @Option(name: .customLong("source-dump"), help: ArgumentHelp(
        "Read a mongodump output directory (DIR/<database>/<collection>.bson or .bson.gz) instead of MongoDB: each collection is a pipeline reading its own file (--database chooses among several databases).",
        valueName: "dir"))
    var sourceDump: String?

    /// Whether a source other than a MongoDB collection is named.
    var namesAnotherSource: Bool { sourceFile != nil || sourceDump != nil }

    /// The source another than MongoDB the command names, with absolute paths, so that a
    /// resume from another directory finds it.
    func choice() throws -> (any SourceChoice)? {
        if sourceFile != nil && sourceDump != nil {
            throw JobError(.usage, "--source-file and --source-dump both name the source; give one")
        }
        if let sourceFile { return BSONFileSource.Choice(path: try Self.absolute(sourceFile, "--source-file")) }
        if let sourceDump { return BSONDumpDirectory.Choice(try BSONDumpDirectory(path: try Self.absolute(sourceDump, "--source-dump"), database: database)) }
        return nil
    }

    private static func absolute(_ path: String, _ option: String) throws -> String {
        guard !path.isEmpty else { throw JobError(.usage, "\(option) needs a path") }
        if path.hasPrefix("/") { return path }
        return URL(fileURLWithPath: path, relativeTo: URL(fileURLWithPath: FileManager.default.currentDirectoryPath)).standardizedFileURL.path
    }
}

struct TargetOptions: ParsableArguments {
    @Option(name: .customLong("postgres-url"), help: ArgumentHelp(
        "PostgreSQL URL or libpq keyword/value string ('host=… dbname=…') (env POSTGRES_URL; else libpq's PG* variables when set; else the local cluster).",
        valueName: "conninfo"))
    var postgresURL: String?

    @Option(name: .customLong("target-schema"), help: ArgumentHelp(
        "PostgreSQL schema of the tables, checkpoints and migrations, created if missing (default public; resume, status and verify default to the job's).",
        valueName: "name"))
    var targetSchema: String?
}

struct StateOptions: ParsableArguments {
    @Option(name: .customLong("state-dir"), help: ArgumentHelp(
        "Directory of the job's durable queues (env ETL_STATE_DIR; default \(ConnectionOptions.defaultStateDirectory)).", valueName: "dir"))
    var stateDirectory: String?

    @Option(name: .customLong("env-file"), help: ArgumentHelp("File of KEY=VALUE lines read after the environment (default .env, when present).", valueName: "file"))
    var envFile: String?
}

struct OutputOptions: ParsableArguments {
    static let levels = Logger.Level.allCases.map(\.rawValue)

    @Option(name: .customLong("log-level"), help: ArgumentHelp(
        "One of \(levels.joined(separator: ", ")) (env ETL_LOG_LEVEL; default info). debug adds batch claims and commits; trace adds SQL and timings per batch.",
        valueName: "level"))
    var logLevel: String?

    @Flag(name: [.customShort("v"), .long], help: "Log at debug level (batch claims and commits).")
    var verbose = false

    @Flag(name: [.customShort("q"), .long], help: "Log warnings and errors only, and no progress lines.")
    var quiet = false

    @Option(name: .customLong("progress-interval"), help: ArgumentHelp(
        "Seconds between progress lines when stderr is not a terminal (on a terminal the line is live).", valueName: "seconds"))
    var progressInterval = 10.0

    static let formats = Console.Format.allCases.map(\.rawValue)

    @Option(name: .customLong("log-format"), help: ArgumentHelp(
        "text (default) or json: one JSON object a line on stderr (time, level, message, fields), no progress line (env ETL_LOG_FORMAT).",
        valueName: "format"))
    var logFormat: String?

    /// Also chooses the format of stderr, as soon as the flags parse, so that a refusal
    /// before the run is written in it too.
    func validate() throws {
        guard progressInterval > 0 else { throw ValidationError("--progress-interval must be a positive number of seconds") }
        guard !(quiet && verbose) else { throw ValidationError("-q and -v contradict each other; give one") }
        if let logLevel, Logger.Level(rawValue: logLevel) == nil {
            throw ValidationError("--log-level '\(logLevel)' is not a level; valid levels: \(Self.levels.joined(separator: ", "))")
        }
        Console.standardError.use(try format())
    }

    /// --log-format, else ETL_LOG_FORMAT, else text.
    func format() throws -> Console.Format {
        let (text, source) = logFormat.map { ($0, "--log-format") } ?? (ProcessInfo.processInfo.environment["ETL_LOG_FORMAT"] ?? "", "ETL_LOG_FORMAT")
        if text.isEmpty && source == "ETL_LOG_FORMAT" { return .text }
        guard let format = Console.Format(rawValue: text.lowercased()) else {
            throw ValidationError("\(source) '\(text)' is not a log format; valid formats: \(Self.formats.joined(separator: ", "))")
        }
        return format
    }

    /// --log-level, else -q / -v, else ETL_LOG_LEVEL, else info.
    func level() throws -> Logger.Level {
        if let logLevel, let level = Logger.Level(rawValue: logLevel) { return level }
        if quiet { return .warning }
        if verbose { return .debug }
        guard let text = ProcessInfo.processInfo.environment["ETL_LOG_LEVEL"], !text.isEmpty else { return .info }
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            throw JobError(.usage, "ETL_LOG_LEVEL '\(text)' is not a level; valid levels: \(Self.levels.joined(separator: ", "))")
        }
        return level
    }
}

/// Log lines on stderr through the shared `Console`, so that they never glue onto the
/// progress line and never carry a password: text, or one JSON object a line.
struct ConsoleLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(
        level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?,
        source: String, file: String, function: String, line: UInt
    ) {
        let all = metadata.merging(explicit ?? [:]) { $1 }.sorted { $0.key < $1.key }
        let console = Console.standardError
        if console.format == .json {
            return console.event(level: level.rawValue, message: "\(message)", fields: all.map { ($0.key, "\($0.value)") })
        }
        let fields = all.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        console.line("\(Console.timestamp(Date())) \(level) \(label): \(message)" + (fields.isEmpty ? "" : " " + fields))
    }
}

/// The batching knobs of a run.
struct BucketOptions: ParsableArguments {
    @Option(name: .customLong("batch-size"), help: "Documents per batch.")
    var batchSize = BucketConfig.defaultBatchSize

    @Option(help: "Transform/load workers, each with its own PostgreSQL connection, shared among the pipelines (default: one per core, at least 2).")
    var workers = BucketConfig.defaultWorkers

    @Option(name: .customLong("flush-timeout"), help: "Seconds after which a partial batch is queued anyway (default 5; for sync 0.5, so that a change waits little).")
    var flushTimeout: Double?

    @Option(name: .customLong("max-pending"), help: "Extraction pauses while this many batches wait in the queue.")
    var maxPending = 8

    @Option(name: .customLong("cursor-batch-size"), help: "Documents per MongoDB getMore.")
    var cursorBatchSize: Int32 = 500

    @Option(name: .customLong("max-document-mb"), help: "Documents larger than this (MB) are set aside.")
    var maxDocumentMB = Double(JobSettings.defaultMaxDocumentBytes >> 20)

    @Option(name: .customLong("queue-map-mb"), help: .hidden)
    var queueMapMB = 64

    @Option(name: .customLong("max-set-aside"), help: "Fail (exit 65) when more documents than this are set aside: N or N% of those read.")
    var maxSetAside = SetAsideLimit.default.description

    @Flag(name: .customLong("allow-empty"), help: "Run on an empty collection instead of refusing it (exit 66).")
    var allowEmpty = false

    @Option(name: .customLong("key-connections"), help: "PostgreSQL sessions building the keys added after the load, at once.")
    var keyConnections = 2

    @Option(name: .customLong("maintenance-work-mem"), help: ArgumentHelp(
        "maintenance_work_mem of the sessions building the keys (e.g. 256MB; default: the server's).", valueName: "size"))
    var maintenanceWorkMem: String?

    @Option(name: .customLong("maintenance-workers"), help: ArgumentHelp(
        "max_parallel_maintenance_workers of the sessions building the keys (default 0 when several build at once, else the server's).", valueName: "n"))
    var maintenanceWorkers: Int?

    var keyBuild: KeyBuild { KeyBuild(connections: keyConnections, workMemory: maintenanceWorkMem, parallelWorkers: maintenanceWorkers) }

    @Option(name: .customLong("unmapped"), help: ArgumentHelp(
        "What to do with fields a mapping does not name, over the mapping file's \"unmapped\": evolve (new columns and child tables, the default), "
            + "keep (a jsonb _rest column), set-aside (the document), drop. Built-in pipelines: drop or set-aside.", valueName: "policy"))
    var unmapped: UnmappedPolicy?

    var setAsideLimit: SetAsideLimit { SetAsideLimit(maxSetAside) ?? .default }

    /// Metrics and probes (shown among the run's options).
    @OptionGroup var operations: OperationsOptions

    func validate() throws {
        guard batchSize > 0 else { throw ValidationError("--batch-size must be at least 1") }
        guard workers > 0 else { throw ValidationError("--workers must be at least 1") }
        guard flushTimeout.map({ $0 > 0 }) ?? true else { throw ValidationError("--flush-timeout must be positive") }
        guard maxPending > 0 else { throw ValidationError("--max-pending must be at least 1") }
        guard cursorBatchSize > 0 else { throw ValidationError("--cursor-batch-size must be at least 1") }
        guard maxDocumentMB > 0 else { throw ValidationError("--max-document-mb must be positive") }
        guard queueMapMB > 0 else { throw ValidationError("--queue-map-mb must be at least 1") }
        guard keyConnections > 0 else { throw ValidationError("--key-connections must be at least 1") }
        guard maintenanceWorkers.map({ $0 >= 0 }) ?? true else { throw ValidationError("--maintenance-workers must be 0 or more") }
        if let maintenanceWorkMem, !KeyBuild.isMemorySize(maintenanceWorkMem) {
            throw ValidationError("--maintenance-work-mem must be a size such as 256MB or 1GB (units kB, MB, GB, TB), not '\(maintenanceWorkMem)'")
        }
        guard SetAsideLimit(maxSetAside) != nil else {
            throw ValidationError("--max-set-aside must be a count (e.g. 100) or a percentage (e.g. 2.5%), not '\(maxSetAside)'")
        }
    }

    var config: BucketConfig { config(flushTimeout: 5) }

    /// The batching with `flushTimeout` seconds unless the command line gives another.
    func config(flushTimeout fallback: Double) -> BucketConfig {
        BucketConfig(
            batchSize: batchSize, workers: workers, flushTimeout: .milliseconds(Int((flushTimeout ?? fallback) * 1000)),
            maxPendingBatches: maxPending)
    }
}

/// `.env`: KEY=VALUE lines, `#` comments, optional quotes. A missing default `.env` is
/// empty; a file the user named must exist.
enum DotEnv {
    static func read(_ path: String, required: Bool) throws -> [String: String] {
        guard FileManager.default.fileExists(atPath: path) else {
            if required { throw JobError(.usage, "--env-file \(path): no such file") }
            return [:]
        }
        // Read through a file handle, so that a device such as /dev/null reads as empty.
        guard let data = FileHandle(forReadingAtPath: path)?.readDataToEndOfFile(),
              let text = String(data: data, encoding: .utf8) else {
            throw JobError(.usage, "cannot read \(path)")
        }
        var values: [String: String] = [:]
        for rawLine in text.split(whereSeparator: \.isNewline) {
            var line = rawLine.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("export ") { line.removeFirst(7) }
            guard !line.hasPrefix("#"), let eq = line.firstIndex(of: "=") else { continue }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces)
            var value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, let q = value.first, q == "\"" || q == "'", value.last == q {
                value = String(value.dropFirst().dropLast())
            }
            values[key] = value
        }
        return values
    }
}

/// Runs a command body and turns its failures into one line on stderr and the exit code
/// the caller exits with (thrown, never `exit()` from async code).
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as ExitCode {
        throw error
    } catch {
        let job = JobError.classify(error)
        Console.standardError.line("etl-job: error: \(Redact.url(job.description))", level: .error)
        throw ExitCode(job.kind.exitCode)
    }
}

extension JobError.Kind {
    /// sysexits.h where one fits: 64 usage, 65 data, 66 no input, 69 unavailable, 70 software,
    /// 74 I/O, 75 temporary failure (another run holds the state).
    var exitCode: Int32 {
        switch self {
        case .usage: 64
        case .dataError: 65
        case .noInput: 66
        case .unavailable: 69
        case .software: 70
        case .ioError: 74
        case .busy: 75
        case .failed: 1
        }
    }
}

extension UnmappedPolicy: ExpressibleByArgument {}
extension OnHistoryLost: ExpressibleByArgument {}
