import ArgumentParser
import Foundation
import Mongo
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
            let directory = try connection.resolved().stateDirectory
            guard DurableQueue.exists(in: directory) else {
                if json { print("{\"job\":null}") } else { print("no job in \(directory)") }
                return
            }
            let queue: DurableQueue
            do {
                queue = try DurableQueue(directory: directory, readOnly: true)
            } catch {
                throw JobError(.unavailable, "cannot read the queue in \(directory): \(error)")
            }
            if rejected {
                try printRejected(try queue.setAsideDocuments())
            } else if let status = try queue.status() {
                let view = StatusView(status, active: JobLock.isHeld(directory: directory))
                print(json ? view.json : view.text)
            } else {
                print(json ? "{\"job\":null}" : "no job in \(directory)")
            }
        }
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
        let state = complete ? "complete" : active ? "running" : "stopped (resumable with 'etl-job resume')"
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

/// A progress line on a terminal's stderr while a run goes.
enum Progress {
    static func show(_ directory: String) async {
        guard let queue = try? DurableQueue(directory: directory, readOnly: true) else { return }
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            guard !Task.isCancelled, let status = try? queue.status() else { continue }
            let view = StatusView(status, active: true)
            let total = status.sourceTotal.map { "/\($0)" } ?? ""
            let eta = view.etaSeconds.map { String(format: ", ETA %.0f s", $0) } ?? ""
            let line = "\rloaded \(status.documentsLoaded)\(total) users, \(status.totalRows) rows, \(status.pending) batches pending\(eta)   "
            FileHandle.standardError.write(Data(line.utf8))
        }
        FileHandle.standardError.write(Data("\n".utf8))
    }
}
