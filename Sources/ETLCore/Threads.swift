import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Dedicated threads for work that blocks in C (a database round trip, an fsync).
///
/// The rule for every contributor: a call into libpq, libmongoc or LMDB never runs on Swift's
/// cooperative pool (an `async` function's own thread). That pool has one thread per core;
/// on a 2-core machine two blocked calls stop every task, the signal handling included. Run
/// such work in `Threads.blocking` (one call) or `Threads.run` (a pool of workers).
///
/// Every thread started here is joinable and known to the process until it is joined, so
/// that a command can end them all before it exits (`Threads.endAll`, called once by
/// `etl-job`'s `main`): a thread still releasing a libpq connection, an SSL context or its
/// OpenSSL thread state while `exit` runs OpenSSL's and libmongoc's cleanup is what made a
/// finished `verify` die of SIGABRT (issue #40). Its waiter is told only once its body and
/// everything the body captured are released (a connection's `PQfinish` included), so
/// nothing but the thread's own exit is left when a command goes on.
public enum Threads {
    /// Runs `body` on a thread of its own and returns its result to the awaiting task.
    public static func blocking<T: Sendable>(name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        let result = Mutex<Result<T, any Error>?>(nil)
        let errors = await run(count: 1, name: name) { _ in
            let value = try body()
            result.withLock { $0 = .success(value) }
        }
        if let error = errors.first { throw error }
        return try result.withLock { $0 }!.get()
    }

    /// `run` for a caller that is itself a dedicated thread (never the cooperative pool): it
    /// waits, blocked, for the `count` threads to end.
    public static func runAndWait(count: Int, name: String, _ body: @escaping @Sendable (Int) throws -> Void) -> [any Error] {
        start(count: count, name: name, body).wait()
    }

    /// Threads started for a dedicated thread that goes on with its own work meanwhile, then
    /// waits for them (`wait`, which returns every error thrown, in index order).
    public final class Started: Sendable {
        fileprivate let threads = Mutex<[DedicatedThread]>([])
        fileprivate let errors = Mutex<[(Int, any Error)]>([])

        /// Joins every thread (each has ended, its exit included, when this returns).
        public func wait() -> [any Error] {
            for thread in threads.withLock({ $0 }) { thread.join() }
            return errors.withLock { $0 }.sorted { $0.0 < $1.0 }.map(\.1)
        }
    }

    public static func start(count: Int, name: String, _ body: @escaping @Sendable (Int) throws -> Void) -> Started {
        let started = Started()
        for index in 0..<max(0, count) {
            let thread = spawn(name: "\(name)-\(index)") {
                do { try body(index) } catch { started.errors.withLock { $0.append((index, error)) } }
            }
            started.threads.withLock { $0.append(thread) }
        }
        return started
    }

    /// Runs `body(0..<count)` on `count` threads and returns every error thrown, in index order.
    public static func run(
        count: Int, name: String, _ body: @escaping @Sendable (Int) throws -> Void
    ) async -> [any Error] {
        guard count > 0 else { return [] }
        let results = Mutex<(left: Int, errors: [(Int, any Error)])>((count, []))
        let failures = Mutex<[Int: any Error]>([:])
        return await withCheckedContinuation { (done: CheckedContinuation<[any Error], Never>) in
            for index in 0..<count {
                spawn(name: "\(name)-\(index)", {
                    do { try body(index) } catch { failures.withLock { $0[index] = error } }
                }, ended: {
                    // After `body` and its captures are released, on this thread.
                    let failure = failures.withLock { $0[index] }
                    let finished: [any Error]? = results.withLock { state in
                        if let failure { state.errors.append((index, failure)) }
                        state.left -= 1
                        guard state.left == 0 else { return nil }
                        return state.errors.sorted { $0.0 < $1.0 }.map(\.1)
                    }
                    if let finished { done.resume(returning: finished) }
                })
            }
        }
    }

    /// A dedicated thread named `name`, with room for libpq's and libmongoc's stacks. `ended`
    /// runs on it once `body` returned and what `body` captured is released.
    @discardableResult
    public static func spawn(name: String, _ body: @escaping @Sendable () -> Void, ended: @escaping @Sendable () -> Void = {}) -> DedicatedThread {
        reapEnded()
        let thread = DedicatedThread(name: name)
        live.withLock { $0.append(thread) }
        thread.start(body, ended: ended)
        return thread
    }

    /// Ends the process's threads before it exits: joins each thread started here, waiting
    /// until `deadline` for those still at work (a thread does not outlive what it was started
    /// for, except on a path that stops early: a loader blocked in a round trip, a timer whose
    /// bucket was abandoned). Returns the names of those still running at the deadline.
    public static func endAll(until deadline: ContinuousClock.Instant) -> [String] {
        var running: [String] = []
        while let thread = live.withLock({ $0.first { !running.contains($0.id) } }) {
            if !thread.join(until: deadline) { running.append(thread.id) }
        }
        return live.withLock { $0.map(\.name) }
    }

    /// The threads started and not yet joined.
    static let live = Mutex<[DedicatedThread]>([])

    /// Joins the threads that have ended (only their exit is left), so that a long run does
    /// not keep the stack of each thread it ever started.
    static func reapEnded() {
        for thread in live.withLock({ $0.filter(\.hasEnded) }) { thread.join() }
    }

    /// Tests only (`ETL_THREAD_END_DELAY_MS`): a thread lingers this long after its waiter was
    /// told, before its exit, which widens the window in which a command could exit under it.
    static let endDelay: useconds_t? = ProcessInfo.processInfo.environment["ETL_THREAD_END_DELAY_MS"].flatMap { useconds_t($0) }.map { $0 * 1000 }
}

/// A joinable thread of the process's own (see `Threads`).
public final class DedicatedThread: @unchecked Sendable {
    // Safe: `state` and `handle` are read and written only while holding `condition`.
    public let name: String
    let id: String
    private let condition = NSCondition()
    private var state = State.starting
    private var handle = pthread_t()

    private enum State { case starting, running, ended, joining, joined }

    init(name: String) {
        self.name = name
        id = UUID().uuidString
    }

    fileprivate func start(_ body: @escaping @Sendable () -> Void, ended: @escaping @Sendable () -> Void) {
        let work = Work(thread: self, body: body, ended: ended)
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setstacksize(&attributes, 4 << 20)
        condition.lock()
        defer { condition.unlock() }
        let created = pthread_create(&handle, &attributes, { raw in
            let (thread, ended) = Work.run(raw!)
            ended()
            if let delay = Threads.endDelay { usleep(delay) }
            thread.condition.lock()
            thread.state = .ended
            thread.condition.broadcast()
            thread.condition.unlock()
            return nil
        }, Unmanaged.passRetained(work).toOpaque())
        precondition(created == 0, "cannot start thread \(name): \(String(cString: strerror(created)))")
        state = .running
    }

    /// Its body returned; only the exit of the thread is left.
    var hasEnded: Bool {
        condition.lock()
        defer { condition.unlock() }
        return state == .ended
    }

    /// Waits for the thread to end, its exit included (OpenSSL's and LMDB's thread-exit
    /// handlers have run when this returns).
    public func join() { _ = join(until: nil) }

    /// `join`, giving up at `deadline` if the thread is still at work then.
    func join(until deadline: ContinuousClock.Instant?) -> Bool {
        guard pthread_equal(pthread_self(), handle) == 0 else { return false }
        condition.lock()
        while state == .starting || state == .running || state == .joining {
            if let deadline {
                let left = deadline - .now
                if left <= .zero { break }
                _ = condition.wait(until: Date(timeIntervalSinceNow: left.seconds))
            } else {
                condition.wait()
            }
        }
        guard state == .ended || state == .joined else {
            condition.unlock()
            return false
        }
        let reap = state == .ended
        if reap { state = .joining }
        condition.unlock()
        if reap {
            pthread_join(handle, nil)
            Threads.live.withLock { $0.removeAll { $0 === self } }
            condition.lock()
            state = .joined
            condition.broadcast()
            condition.unlock()
        }
        return true
    }

    /// What a thread runs, handed to it retained; released on it when `body` returns.
    private final class Work {
        let thread: DedicatedThread
        let body: @Sendable () -> Void
        let ended: @Sendable () -> Void
        init(thread: DedicatedThread, body: @escaping @Sendable () -> Void, ended: @escaping @Sendable () -> Void) {
            self.thread = thread
            self.body = body
            self.ended = ended
        }

        /// Runs the body and releases it, with everything it captured (a connection's last
        /// reference, say), before the thread's waiter is told.
        @inline(never)
        static func run(_ raw: UnsafeMutableRawPointer) -> (DedicatedThread, @Sendable () -> Void) {
            let work = Unmanaged<Work>.fromOpaque(raw).takeRetainedValue()
            Thread.current.name = work.thread.name
            work.body()
            return (work.thread, work.ended)
        }
    }
}
