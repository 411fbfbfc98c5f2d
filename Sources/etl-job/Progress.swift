import ArgumentParser
import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue
import DurableETL

/// The live progress line on a terminal while a run goes, read through the run's own
/// queues: the running job (its id) and, for several pipelines, their sum. Removed when the
/// run ends, leaving its last state on a line of its own.
final class Progress: RunObserver, @unchecked Sendable {
    // Safe: `running` is guarded by `lock`; drawing happens under it too, so no line is
    // drawn after `runEnded` removed it.
    private let lock = NSCondition()
    private var running = false
    /// Which run draws: a worker's runs (one a partition) follow each other at once, and the
    /// thread of one that ended must not go on into the next.
    private var generation = 0

    private var finalLine: (() -> String?)?
    /// The thread drawing the current run's line.
    private var drawer: DedicatedThread?

    func runStarted(_ pipelines: [RunningPipeline]) {
        lock.lock()
        running = true
        generation += 1
        let mine = generation
        finalLine = { Self.line(pipelines) }
        lock.unlock()
        let thread = Threads.spawn(name: "progress") { [self] in
            lock.lock()
            defer { lock.unlock() }
            while running && generation == mine {
                _ = lock.wait(until: Date(timeIntervalSinceNow: 1))
                guard running, generation == mine, let line = Self.line(pipelines) else { continue }
                Console.standardError.status(line)
            }
        }
        lock.lock()
        drawer = thread
        lock.unlock()
    }

    func runEnded() {
        lock.lock()
        running = false
        Console.standardError.endStatus(finalLine?())
        finalLine = nil
        lock.broadcast()
        let ending = drawer
        drawer = nil
        lock.unlock()
        // It reads the run's queues (LMDB read transactions, each with its thread's reader
        // slot): it ends, and lets go of them, before the run goes on to close them or exit.
        ending?.join()
    }

    static func line(_ pipelines: [RunningPipeline]) -> String? {
        var parts: [String] = []
        for p in pipelines {
            guard let status = (try? p.queue.status()).flatMap({ $0 }) else { return nil }
            let name = pipelines.count > 1 ? "\(p.name) " : ""
            if p.changes {
                let sync = SyncView(status, active: true, now: Date().timeIntervalSince1970)
                parts.append("\(name)sync: \(sync.events) changes applied (\(sync.replaced) replaced, \(sync.deleted) deleted, \(sync.setAside) set aside), "
                    + "\(status.pending) batch\(status.pending == 1 ? "" : "es") pending" + (sync.lagSeconds.map { String(format: ", lag %.1f s", $0) } ?? ""))
                continue
            }
            let source = JobIdentity.decode((try? p.queue.identity) ?? nil)?.source
                .status(at: (try? p.queue.extractPosition) ?? nil, extractionFinished: status.extractionFinished)
            let view = StatusView(pipeline: p.name, status, source: source, active: true)
            let total = status.sourceTotal.map { "/\($0)" } ?? ""
            let file = status.extractionFinished ? "" : source?.progress.map { "\($0), " } ?? ""
            let eta = view.etaSeconds.map { String(format: ", ETA %.0f s", $0) } ?? ""
            // A partition's job id is the job's and its number (`etl-job worker`).
            let partition = p.jobId.split(separator: "/").dropFirst().first.map { " partition \($0)" } ?? ""
            parts.append("\(name)job \(p.jobId.prefix(8))\(partition): loaded \(status.documentsLoaded)\(total) documents, \(status.totalRows) rows, "
                + "\(file)\(status.pending) batches pending\(eta)")
        }
        return parts.joined(separator: " | ")
    }
}
