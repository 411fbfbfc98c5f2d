import Foundation
import Synchronization

/// Dedicated threads for work that blocks in C (a database round trip, an fsync).
///
/// The rule for every contributor: a call into libpq, libmongoc or LMDB never runs on Swift's
/// cooperative pool (an `async` function's own thread). That pool has one thread per core;
/// on a 2-core machine two blocked calls stop every task, the signal handling included. Run
/// such work in `Threads.blocking` (one call) or `Threads.run` (a pool of workers).
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
        fileprivate let group = DispatchGroup()
        fileprivate let errors = Mutex<[(Int, any Error)]>([])

        public func wait() -> [any Error] {
            group.wait()
            return errors.withLock { $0 }.sorted { $0.0 < $1.0 }.map(\.1)
        }
    }

    public static func start(count: Int, name: String, _ body: @escaping @Sendable (Int) throws -> Void) -> Started {
        let started = Started()
        for index in 0..<max(0, count) {
            started.group.enter()
            start(name: "\(name)-\(index)") {
                defer { started.group.leave() }
                do { try body(index) } catch { started.errors.withLock { $0.append((index, error)) } }
            }
        }
        return started
    }

    /// Runs `body(0..<count)` on `count` threads and returns every error thrown, in index order.
    public static func run(
        count: Int, name: String, _ body: @escaping @Sendable (Int) throws -> Void
    ) async -> [any Error] {
        guard count > 0 else { return [] }
        let results = Mutex<(left: Int, errors: [(Int, any Error)])>((count, []))
        return await withCheckedContinuation { (done: CheckedContinuation<[any Error], Never>) in
            for index in 0..<count {
                start(name: "\(name)-\(index)") {
                    var failure: (any Error)?
                    do { try body(index) } catch { failure = error }
                    let finished: [any Error]? = results.withLock { state in
                        if let failure { state.errors.append((index, failure)) }
                        state.left -= 1
                        guard state.left == 0 else { return nil }
                        return state.errors.sorted { $0.0 < $1.0 }.map(\.1)
                    }
                    if let finished { done.resume(returning: finished) }
                }
            }
        }
    }

    /// A dedicated thread named `name`, with room for libpq's and libmongoc's stacks.
    private static func start(name: String, _ body: @escaping @Sendable () -> Void) {
        let thread = Thread(block: body)
        thread.name = name
        thread.stackSize = 4 << 20
        thread.start()
    }
}
