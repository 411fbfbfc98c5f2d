import ArgumentParser
import ETLCore
import Foundation
import Logging
import Users

/// Where the services and the state are: flag, then environment, then `.env`, then the
/// local services that `scripts/services start` runs.
struct ConnectionOptions: ParsableArguments {
    static let defaultMongoURL = "mongodb://127.0.0.1:57017"
    static let defaultPostgresURL = "postgresql://etl:etl@127.0.0.1:55432/etl"
    static let defaultStateDirectory = "var/state"

    @Option(name: .customLong("mongodb-url"), help: "MongoDB URL (env MONGODB_URL; default \(defaultMongoURL)).")
    var mongoURL: String?

    @Option(name: .customLong("postgres-url"), help: "PostgreSQL URL (env POSTGRES_URL; default the local cluster).")
    var postgresURL: String?

    @Option(name: .customLong("state-dir"), help: "Directory of the durable queue (env ETL_STATE_DIR; default \(defaultStateDirectory)).")
    var stateDirectory: String?

    @Option(name: .customLong("env-file"), help: "File of KEY=VALUE lines read after the environment.")
    var envFile: String = ".env"

    @Option(help: "Source database.")
    var database: String = "sample_db"

    @Option(help: "Source collection.")
    var collection: String = "users"

    @Option(name: .customLong("log-level"), help: "trace, debug, info, warning or error.")
    var logLevel: Logger.Level = .info

    func resolved(_ run: BucketOptions? = nil) throws -> JobSettings {
        let file = try DotEnv.read(envFile)
        func pick(_ flag: String?, _ key: String, _ fallback: String) -> String {
            flag ?? ProcessInfo.processInfo.environment[key] ?? file[key] ?? fallback
        }
        let mongo = pick(mongoURL, "MONGODB_URL", Self.defaultMongoURL)
        let postgres = pick(postgresURL, "POSTGRES_URL", Self.defaultPostgresURL)
        guard mongo.hasPrefix("mongodb://") || mongo.hasPrefix("mongodb+srv://") else {
            throw JobError(.usage, "malformed MongoDB URL \(Redact.url(mongo)): it must start with mongodb:// or mongodb+srv://")
        }
        guard postgres.hasPrefix("postgres://") || postgres.hasPrefix("postgresql://") else {
            throw JobError(.usage, "malformed PostgreSQL URL \(Redact.url(postgres)): it must start with postgresql:// or postgres://")
        }
        var settings = JobSettings(
            mongoURL: mongo, postgresURL: postgres, database: database, collection: collection,
            stateDirectory: pick(stateDirectory, "ETL_STATE_DIR", Self.defaultStateDirectory))
        if let run {
            settings.bucket = run.config
            settings.cursorBatchSize = run.cursorBatchSize
            settings.maxDocumentBytes = Int(run.maxDocumentMB * 1_048_576)
            settings.queueMapBytes = run.queueMapMB << 20
        }
        return settings
    }

    func makeLogger() -> Logger {
        LoggingSystem.bootstrap(StreamLogHandler.standardError)
        var logger = Logger(label: "etl-job")
        logger.logLevel = logLevel
        return logger
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// The batching knobs of a run.
struct BucketOptions: ParsableArguments {
    @Option(name: .customLong("batch-size"), help: "Documents per batch.")
    var batchSize = 500

    @Option(help: "Transform/load workers, each with its own PostgreSQL connection (default 2 × cores).")
    var workers = 2 * ProcessInfo.processInfo.activeProcessorCount

    @Option(name: .customLong("flush-timeout"), help: "Seconds after which a partial batch is queued anyway.")
    var flushTimeout = 5.0

    @Option(name: .customLong("manager-workers"), help: "Pipelines run at once.")
    var managerWorkers = 1

    @Option(name: .customLong("max-pending"), help: "Extraction pauses while this many batches wait in the queue.")
    var maxPending = 8

    @Option(name: .customLong("cursor-batch-size"), help: "Documents per MongoDB getMore.")
    var cursorBatchSize: Int32 = 500

    @Option(name: .customLong("max-document-mb"), help: "Documents larger than this (MB) are set aside.")
    var maxDocumentMB = Double(UserRows.defaultMaxDocumentBytes >> 20)

    @Option(name: .customLong("queue-map-mb"), help: .hidden)
    var queueMapMB = 64

    func validate() throws {
        guard batchSize > 0 else { throw ValidationError("--batch-size must be at least 1") }
        guard workers > 0 else { throw ValidationError("--workers must be at least 1") }
        guard flushTimeout > 0 else { throw ValidationError("--flush-timeout must be positive") }
        guard managerWorkers > 0 else { throw ValidationError("--manager-workers must be at least 1") }
        guard maxPending > 0 else { throw ValidationError("--max-pending must be at least 1") }
        guard cursorBatchSize > 0 else { throw ValidationError("--cursor-batch-size must be at least 1") }
        guard maxDocumentMB > 0 else { throw ValidationError("--max-document-mb must be positive") }
        guard queueMapMB > 0 else { throw ValidationError("--queue-map-mb must be at least 1") }
    }

    var config: BucketConfig {
        BucketConfig(
            batchSize: batchSize, workers: workers, flushTimeout: .milliseconds(Int(flushTimeout * 1000)),
            managerWorkers: managerWorkers, maxPendingBatches: maxPending)
    }
}

/// `.env`: KEY=VALUE lines, `#` comments, optional quotes. A missing file is empty.
enum DotEnv {
    static func read(_ path: String) throws -> [String: String] {
        guard FileManager.default.fileExists(atPath: path) else { return [:] }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
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

/// Runs a command body and turns its failures into one line on stderr and an exit code.
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as JobError {
        fail(error.description, code: error.kind.exitCode)
    } catch let error as ExitCode {
        throw error
    } catch {
        fail("\(error)", code: 1)
    }
}

func fail(_ message: String, code: Int32) -> Never {
    let oneLine = message.split(whereSeparator: \.isNewline).joined(separator: "; ")
    FileHandle.standardError.write(Data("etl-job: error: \(Redact.url(oneLine))\n".utf8))
    exit(code)
}

extension JobError.Kind {
    /// sysexits.h: 64 usage, 69 unavailable, 75 temporary failure (another run holds the state).
    var exitCode: Int32 {
        switch self {
        case .usage: 64
        case .unavailable: 69
        case .busy: 75
        case .failed: 1
        }
    }
}
