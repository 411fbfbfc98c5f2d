import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue

/// A refusal or a failure the user can act on: printed as one line, never as a trace.
public struct JobError: Error, CustomStringConvertible {
    public enum Kind: Sendable { case usage, unavailable, busy, failed }
    public let kind: Kind
    public let description: String

    public init(_ kind: Kind, _ description: String) {
        self.kind = kind
        self.description = description
    }
}

/// What a run did, printed at its end.
public struct RunReport: Sendable {
    public var status: QueueStatus
    public var seconds: Double
    public var usage: ProcessUsage
    public var stages: [(Stage, Double)]

    public var users: Int64 { status.documentsLoaded }

    public func render() -> String {
        func n(_ v: Int64) -> String { v.formatted(.number.grouping(.automatic)) }
        func rate(_ v: Int64) -> String { seconds > 0 ? n(Int64(Double(v) / seconds)) : "-" }
        var lines = [
            "etl-job: run complete",
            "  users loaded      \(n(status.documentsLoaded))",
            "  documents set aside \(n(status.documentsSetAside))" + (status.documentsSetAside > 0 ? "  (etl-job status --rejected)" : ""),
            "  rows              \(n(status.totalRows))",
        ]
        for table in Schema.tableNames {
            lines.append("    \(table.padding(toLength: 16, withPad: " ", startingAt: 0)) \(n(status.rows[table] ?? 0))")
        }
        lines += [
            "  duration          \(String(format: "%.2f s", seconds))",
            "  users/s           \(rate(status.documentsLoaded))",
            "  rows/s            \(rate(status.totalRows))",
            "  peak memory       \(String(format: "%.1f MB", Double(usage.peakResidentBytes) / 1_048_576))",
            "  CPU time          \(String(format: "%.2f s", usage.cpuSeconds))",
            "  time per stage (summed over threads)",
        ]
        for (stage, s) in stages {
            lines.append("    \(stage.label.padding(toLength: 16, withPad: " ", startingAt: 0)) \(String(format: "%.2f s", s))")
        }
        return lines.joined(separator: "\n")
    }
}

/// `start` and `resume` of the users job.
public struct UsersJob {
    public let settings: JobSettings
    public let logger: Logger

    public init(settings: JobSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    /// A new run. Refuses when the state directory holds a job or the target holds rows,
    /// unless `fresh`, which discards both.
    public func start(fresh: Bool, stop: StopToken) async throws -> RunReport {
        let lock = try takeLock()
        let db = try connectPostgres()
        let client = try connectMongo()
        try migrate(db)
        if fresh {
            try discardState()
            try Schema.truncate(db)
            logger.info("discarded the previous job and truncated the target tables")
        } else {
            if let queue = try? openQueue(), let status = try queue.status() {
                throw JobError(.usage, status.isComplete && status.finishedAt != nil
                    ? "the job in \(settings.stateDirectory) already finished; use 'etl-job start --fresh' to run again from scratch"
                    : "the state directory \(settings.stateDirectory) holds an unfinished job; run 'etl-job resume' (or 'etl-job start --fresh' to discard it)")
            }
            if let table = try firstNonEmptyTable(db) {
                throw JobError(.usage, "the target table \(table) already holds rows; use 'etl-job start --fresh' to truncate the target tables first")
            }
        }
        let total = try? client.collection(database: settings.database, name: settings.collection).estimatedCount()
        let queue = try openQueue()
        try queue.createJob(id: UUID().uuidString.lowercased(), sourceTotal: total)
        logger.info("started a new job", metadata: ["documents": "\(total.map(String.init) ?? "unknown")"])
        return try await run(queue: queue, lock: lock, stop: stop)
    }

    /// Continues the job in the state directory where it stopped.
    public func resume(stop: StopToken) async throws -> RunReport {
        let lock = try takeLock()
        let db = try connectPostgres()
        _ = try connectMongo()
        try migrate(db)
        guard DurableQueue.exists(in: settings.stateDirectory), let queue = try? openQueue(), try queue.status() != nil else {
            throw JobError(.usage, "there is no job to resume in \(settings.stateDirectory); run 'etl-job start'")
        }
        return try await run(queue: queue, lock: lock, stop: stop)
    }

    private func run(queue: DurableQueue, lock: JobLock, stop: StopToken) async throws -> RunReport {
        let started = ContinuousClock.now
        let clock = StageClock()
        guard let jobId = try queue.jobId else { throw JobError(.failed, "the queue holds no job id") }
        try queue.beginRun()
        let processor = UsersProcessor(settings: settings, queue: queue, jobId: jobId, clock: clock, logger: logger)
        let runner = ETLRunner(processor: processor, config: settings.bucket, extractSource: !(try queue.extractionFinished))
        try await Manager(workers: settings.bucket.managerWorkers).runAll([runner], stop: stop)
        withExtendedLifetime(lock) {}
        guard let status = try queue.status() else { throw JobError(.failed, "the queue lost its job") }
        return RunReport(
            status: status, seconds: (ContinuousClock.now - started).seconds, usage: .current(),
            stages: Stage.allCases.map { ($0, clock.seconds($0)) })
    }

    /// Applies pending migrations; a failure names what it was doing.
    @discardableResult
    public func migrate(_ db: PGConnection) throws -> Int {
        do {
            return try Schema.migrate(db)
        } catch {
            throw JobError(.failed, "cannot migrate the schema: \(error)")
        }
    }

    private func takeLock() throws -> JobLock {
        do {
            return try JobLock(directory: settings.stateDirectory)
        } catch let busy as JobLock.Busy {
            throw JobError(.busy, busy.description)
        } catch {
            throw JobError(.unavailable, "cannot use the state directory \(settings.stateDirectory): \(error.localizedDescription)")
        }
    }

    private func openQueue() throws -> DurableQueue {
        do {
            return try DurableQueue(directory: settings.stateDirectory, initialMapSize: settings.queueMapBytes)
        } catch {
            throw JobError(.unavailable, "cannot open the queue in \(settings.stateDirectory): \(error)")
        }
    }

    /// Removes the queue's files (the lock file stays: this process holds it).
    private func discardState() throws {
        for file in ["data.mdb", "lock.mdb"] {
            let path = settings.stateDirectory + "/" + file
            if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
        }
    }

    public func connectPostgres() throws -> PGConnection {
        do {
            return try PGConnection(url: settings.postgresURL)
        } catch let error as PGError where error.kind == .malformedURL {
            throw JobError(.usage, error.message)
        } catch {
            throw JobError(.unavailable, "\(error)")
        }
    }

    public func connectMongo() throws -> MongoClient {
        do {
            let client = try MongoClient(url: settings.mongoURL)
            try client.ping()
            return client
        } catch let error as MongoError where error.message.hasPrefix("malformed") {
            throw JobError(.usage, error.message)
        } catch {
            throw JobError(.unavailable, "cannot reach MongoDB at \(Redact.url(settings.mongoURL)): \(error)")
        }
    }

    private func firstNonEmptyTable(_ db: PGConnection) throws -> String? {
        for table in Schema.tables {
            if try db.execute("SELECT 1 FROM \(table.quotedName) LIMIT 1").rows.count > 0 { return table.name }
        }
        return nil
    }
}
