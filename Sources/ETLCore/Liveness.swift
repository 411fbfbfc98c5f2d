import Synchronization

/// What the run's loops are busy with and since when, so that a health check can tell a loop
/// that works from one wedged (a statement a server never answers). A loop marks the work it
/// may block in — a batch's transaction, a read from the source — with `during`; time it
/// waits on purpose (for a batch to claim, for room in the queue, in a backoff) is unmarked,
/// so only work that never ends grows old. Whether old is too old is the caller's decision.
public enum Liveness {
    private struct Work {
        let what: String
        let since: ContinuousClock.Instant
    }

    private static let busy = Mutex<(next: Int, work: [Int: Work])>((0, [:]))

    /// Runs `body`, marked as `what` while it runs.
    public static func during<T>(_ what: @autoclosure () -> String, _ body: () throws -> T) rethrows -> T {
        let work = Work(what: what(), since: .now)
        let key = busy.withLock { state in
            state.next += 1
            state.work[state.next] = work
            return state.next
        }
        defer { _ = busy.withLock { $0.work.removeValue(forKey: key) } }
        return try body()
    }

    /// The work marked the longest ago that is still going on, and for how many seconds.
    public static func oldest() -> (what: String, seconds: Double)? {
        let now = ContinuousClock.now
        return busy.withLock { $0.work.values.min { $0.since < $1.since } }.map { ($0.what, (now - $0.since).seconds) }
    }
}
