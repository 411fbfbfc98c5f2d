#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// What the run's loops are busy with and since when, so that a health check can tell a loop
/// that works from one wedged (a statement a server never answers). A loop marks the work it
/// may block in — a batch's transaction, a read from the source — with `during`; time it
/// waits on purpose (for a batch to claim, for room in the queue, in a backoff) is unmarked,
/// and a wait on purpose inside marked work (a change stream's getMore on a quiet stream)
/// says `progressed` each time the server answers. So only work that never ends grows old;
/// whether old is too old is the caller's decision.
public enum Liveness {
    private struct Work {
        let what: String
        let since: ContinuousClock.Instant
    }

    /// The work of each thread that is in some, by thread.
    private static let busy = Mutex<[UInt: Work]>([:])

    private static var thread: UInt { UInt(pthread_self()) }

    /// Runs `body`, marked as `what` while it runs.
    public static func during<T>(_ what: @autoclosure () -> String, _ body: () throws -> T) rethrows -> T {
        let (thread, work) = (thread, Work(what: what(), since: .now))
        let outer = busy.withLock { $0.updateValue(work, forKey: thread) }
        defer { busy.withLock { $0[thread] = outer } }
        return try body()
    }

    /// The work this thread is in goes on: a server answered, so it counts from now.
    public static func progressed() {
        let thread = thread
        busy.withLock { busy in
            if let work = busy[thread] { busy[thread] = Work(what: work.what, since: .now) }
        }
    }

    /// The work marked the longest ago that is still going on, and for how many seconds.
    public static func oldest() -> (what: String, seconds: Double)? {
        let now = ContinuousClock.now
        return busy.withLock { $0.values.min { $0.since < $1.since } }.map { ($0.what, (now - $0.since).seconds) }
    }
}
