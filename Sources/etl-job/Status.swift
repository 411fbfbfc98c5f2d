import ArgumentParser
import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue
import Users

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the queue: pending, in flight, done, set aside, rows loaded, throughput, ETA.")

    @OptionGroup var connection: ConnectionOptions

    @Flag(help: "Print JSON for scripts.")
    var json = false

    @Flag(help: "List the documents set aside, with their _id and reason.")
    var rejected = false

    @Flag(name: .customLong("with-documents"), help: "With --rejected: include each document as extended JSON.")
    var withDocuments = false

    func run() async throws {
        try await reportingErrors {
            let settings = try connection.resolved()
            let directory = settings.stateDirectory
            guard DurableQueue.exists(in: directory) else {
                if json { print("{\"job\":null}") } else { print("no job in \(directory)") }
                return
            }
            do {
                let queue = try DurableQueue(directory: directory, readOnly: true)
                try refuseMismatch(try queue.identity, settings: settings)
                if rejected {
                    try printRejected(try queue.setAsideDocuments())
                } else if let status = try queue.status() {
                    let view = StatusView(status, active: JobLock.isHeld(directory: directory))
                    print(json ? view.json : view.text)
                } else {
                    print(json ? "{\"job\":null}" : "no job in \(directory)")
                }
            } catch let error as LMDBError where error.isNotFound && JobLock.isHeld(directory: directory) {
                // A run that holds the directory is still creating its queue's tables.
                print(json ? "{\"job\":null}" : "no job in \(directory) yet: a run is starting")
            } catch let error where !(error is JobError) {
                let failure = JobError.queue(error, directory)
                if failure.kind == .ioError { printCheckpoints(settings.postgresURL) }
                throw failure
            }
        }
    }

    /// When the queue cannot be read, what the target's checkpoint rows still tell: the
    /// batches each job committed there, the documents they loaded, the last commit.
    private func printCheckpoints(_ url: String) {
        guard let db = try? PGConnection(url: url, connectTimeout: 3),
              let rows = try? db.execute("""
                  SELECT job_id, count(*), sum(documents_loaded), max(committed_at)::text FROM etl_checkpoints
                  GROUP BY job_id ORDER BY max(committed_at) DESC
                  """).rows
        else {
            print("the queue cannot be read, and neither can the target's checkpoints at \(Redact.url(url))")
            return
        }
        print("the queue cannot be read; the target's checkpoints at \(Redact.url(url)) record:")
        if rows.isEmpty { print("  no committed batch") }
        for row in rows {
            print("  job \(row[0] ?? "?"): \(row[1] ?? "0") batches committed, \(row[2] ?? "0") documents loaded, the last at \(row[3] ?? "?")")
        }
    }

    /// Refuses (exit 64) when a setting the user named differs from what the job recorded.
    private func refuseMismatch(_ recorded: JobIdentity?, settings: JobSettings) throws {
        guard let recorded else { return }
        let urls = try connection.urlsGiven()
        var given = recorded
        if settings.databaseGiven { given.database = settings.database }
        if settings.collectionGiven { given.collection = settings.collection }
        if urls.mongo, let client = try? MongoClient(url: settings.mongoURL) { given.sourceServers = client.servers }
        if urls.postgres {
            let named = PGConnection.named(in: settings.postgresURL)
            given.targetHost = named.host ?? given.targetHost
            given.targetPort = named.port ?? given.targetPort
            given.targetDatabase = named.database ?? given.targetDatabase
        }
        try UsersJob(settings: settings, logger: Logger(label: "etl-job")).refuseMismatch(recorded: recorded, current: given)
    }

    private func printRejected(_ documents: [SetAsideDocument]) throws {
        if json {
            let entries = documents.map { d -> [String: Any] in
                var e: [String: Any] = ["batch": d.batch, "_id": d.documentId, "reason": d.reason]
                if withDocuments { e["document"] = d.document.withUnsafeBytes { BSON.json($0) } }
                return e
            }
            print(String(decoding: try JSONSerialization.data(withJSONObject: entries, options: [.sortedKeys]), as: UTF8.self))
            return
        }
        print("\(documents.count) document(s) set aside")
        for d in documents {
            print("_id \(d.documentId) (batch \(d.batch)): \(d.reason)")
            if withDocuments { print("  " + d.document.withUnsafeBytes { BSON.json($0, limit: 2000) }) }
        }
    }
}

/// The status numbers with what is derived from them: throughput and ETA.
struct StatusView: Encodable {
    let job: String
    let active: Bool
    let complete: Bool
    let finished: Bool
    let sourceDocuments: Int64?
    let extracted: Int64
    let extractionFinished: Bool
    let batches: Int
    let pending: Int
    let inFlight: Int
    let done: Int
    let documentsLoaded: Int64
    let documentsSetAside: Int64
    let rows: [String: Int64]
    let totalRows: Int64
    let documentsPerSecond: Double?
    let etaSeconds: Double?

    init(_ s: QueueStatus, active: Bool, now: Double = Date().timeIntervalSince1970) {
        job = s.jobId
        self.active = active
        complete = s.isComplete
        finished = s.finishedAt != nil
        sourceDocuments = s.sourceTotal
        extracted = s.extracted
        extractionFinished = s.extractionFinished
        batches = s.batches
        pending = s.pending
        inFlight = s.inFlight
        done = s.done
        documentsLoaded = s.documentsLoaded
        documentsSetAside = s.documentsSetAside
        rows = s.rows
        totalRows = s.totalRows
        let end = active ? now : (s.finishedAt ?? now)
        if let begin = s.runStartedAt, end > begin, s.documentsLoaded > s.runStartLoaded {
            documentsPerSecond = Double(s.documentsLoaded - s.runStartLoaded) / (end - begin)
        } else {
            documentsPerSecond = nil
        }
        if s.isComplete {
            etaSeconds = 0
        } else if active, let rate = documentsPerSecond, let total = s.sourceTotal {
            etaSeconds = max(0, Double(total - s.documentsLoaded - s.documentsSetAside) / rate)
        } else {
            etaSeconds = nil
        }
    }

    var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try! encoder.encode(self), as: UTF8.self)
    }

    var text: String {
        func n(_ v: Int64) -> String { v.formatted(.number.grouping(.automatic)) }
        let state = finished ? "complete"
            : active ? "running"
            : complete ? "everything read is loaded or set aside, but the job is not finished (run 'etl-job resume')"
            : "stopped (resumable with 'etl-job resume')"
        var lines = [
            "job          \(job)  \(state)",
            "extracted    \(n(extracted))\(sourceDocuments.map { " of \(n($0))" } ?? "") documents\(extractionFinished ? " (source read to its end)" : "")",
            "batches      \(batches): \(pending) pending, \(inFlight) in flight, \(done) done",
            "loaded       \(n(documentsLoaded)) documents, \(n(totalRows)) rows",
            "set aside    \(n(documentsSetAside)) documents" + (documentsSetAside > 0 ? " (etl-job status --rejected)" : ""),
        ]
        if let rate = documentsPerSecond { lines.append("throughput   \(n(Int64(rate))) documents/s") }
        if let eta = etaSeconds, !complete { lines.append("ETA          \(Int(eta.rounded())) s") }
        lines.append("rows per table")
        for table in Schema.tableNames {
            lines.append("  \(table.padding(toLength: 14, withPad: " ", startingAt: 0)) \(n(rows[table] ?? 0))")
        }
        return lines.joined(separator: "\n")
    }
}

/// The live progress line on a terminal while a run goes, read through the run's own queue.
/// It shows the running job (its id), and is removed when the run ends.
final class Progress: RunObserver, @unchecked Sendable {
    // Safe: `running` is guarded by `lock`; drawing happens under it too, so no line is
    // drawn after `runEnded` removed it.
    private let lock = NSCondition()
    private var running = false

    private var finalLine: (() -> String?)?

    func runStarted(jobId: String, queue: DurableQueue) {
        lock.lock()
        running = true
        finalLine = { (try? queue.status()).flatMap { $0 }.map { Self.line(jobId: jobId, $0) } }
        lock.unlock()
        let thread = Thread { [self] in
            lock.lock()
            defer { lock.unlock() }
            while running {
                _ = lock.wait(until: Date(timeIntervalSinceNow: 1))
                guard running, let status = try? queue.status() else { continue }
                Console.standardError.status(Self.line(jobId: jobId, status))
            }
        }
        thread.name = "progress"
        thread.start()
    }

    func runEnded() {
        lock.lock()
        running = false
        Console.standardError.endStatus(finalLine?())
        finalLine = nil
        lock.broadcast()
        lock.unlock()
    }

    static func line(jobId: String, _ status: QueueStatus) -> String {
        let view = StatusView(status, active: true)
        let total = status.sourceTotal.map { "/\($0)" } ?? ""
        let eta = view.etaSeconds.map { String(format: ", ETA %.0f s", $0) } ?? ""
        return "job \(jobId.prefix(8)): loaded \(status.documentsLoaded)\(total) documents, \(status.totalRows) rows, "
            + "\(status.pending) batches pending\(eta)"
    }
}
