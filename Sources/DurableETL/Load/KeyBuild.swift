import ETLCore
import Foundation
import Postgres
import Synchronization

/// How the final step of a load builds its keys (`--key-connections`,
/// `--maintenance-work-mem`, `--maintenance-workers`).
public struct KeyBuild: Sendable, Equatable {
    /// Sessions building keys at once. Two measured fastest on this project's 2-core machine
    /// (100,000 users: 2.4-3.0 s for the 12 primary and 14 foreign keys, against 3.9 s in one
    /// session); more help where PostgreSQL has more cores.
    public var connections = 2
    /// `maintenance_work_mem` of those sessions (nil: the server's). 64 MB, 256 MB and 1 GB
    /// built the 100,000 users' keys in the same time: each table's sort fits.
    public var workMemory: String?
    /// `max_parallel_maintenance_workers` of those sessions (nil: 0 when several sessions
    /// build at once, which measured faster than each build starting its own workers on the
    /// same cores; the server's otherwise).
    public var parallelWorkers: Int?

    public init(connections: Int = 2, workMemory: String? = nil, parallelWorkers: Int? = nil) {
        (self.connections, self.workMemory, self.parallelWorkers) = (connections, workMemory, parallelWorkers)
    }

    /// The `SET`s of a session that builds keys while `sessions` do.
    func settings(sessions: Int) -> [String] {
        var sets: [String] = []
        if let workMemory { sets.append("SET maintenance_work_mem = '\(workMemory.replacingOccurrences(of: "'", with: "''"))'") }
        if let workers = parallelWorkers ?? (sessions > 1 ? 0 : nil) { sets.append("SET max_parallel_maintenance_workers = \(workers)") }
        return sets
    }

    /// Whether `text` is a size PostgreSQL takes for `maintenance_work_mem` (`256MB`, `1GB`, `65536` kB).
    public static func isMemorySize(_ text: String) -> Bool {
        text.wholeMatch(of: /[0-9]+ ?(kB|MB|GB|TB)?/) != nil
    }
}

/// The sessions of one key step: each statement in its own fenced transaction, handed out
/// in order to whichever session is free.
struct KeySessions: @unchecked Sendable {
    // Safe: `first` is the caller's connection, used by one thread only while the caller
    // waits in `run`; every other session is opened and used by its own thread.
    let target: Target
    let first: PGConnection
    let build: KeyBuild
    let fence: @Sendable (PGConnection) throws -> Void
    let committed: @Sendable () -> Void

    func run(_ statements: [String]) throws {
        guard !statements.isEmpty else { return }
        let count = max(1, min(build.connections, statements.count))
        // The next statement to hand out; nil once one failed, so that the others stop.
        let next = Mutex<Int?>(0)
        let errors = Threads.runAndWait(count: count, name: "keys") { index in
            do {
                let db = index == 0 ? first : try target.releasedOrConnect()
                for set in build.settings(sessions: count) {
                    do {
                        try db.execute(set)
                    } catch let error as PGError where error.sqlState?.hasPrefix("22") == true {
                        throw JobError(.usage, "PostgreSQL refused a setting of the sessions that build the keys (\(set)): \(error.message); "
                            + "every document is loaded: \(GoOn.advice) with another --maintenance-work-mem or --maintenance-workers")
                    }
                }
                while let i = next.withLock({ n -> Int? in
                    guard let current = n, current < statements.count else { return nil }
                    n = current + 1
                    return current
                }) {
                    try db.withTransaction {
                        try fence(db)
                        try db.execute(statements[i])
                    }
                    committed()
                }
            } catch {
                next.withLock { $0 = nil }
                throw error
            }
        }
        if let error = errors.first { throw error }
    }
}
