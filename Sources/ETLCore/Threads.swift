import Foundation
import Synchronization

/// Dedicated threads for work that blocks in C (a database round trip, an fsync): such work
/// must not occupy the few threads of Swift's cooperative pool.
public enum Threads {
    /// Runs `body(0..<count)` on `count` threads and returns every error thrown, in index order.
    public static func run(
        count: Int, name: String, _ body: @escaping @Sendable (Int) throws -> Void
    ) async -> [any Error] {
        guard count > 0 else { return [] }
        let results = Mutex<(left: Int, errors: [(Int, any Error)])>((count, []))
        return await withCheckedContinuation { (done: CheckedContinuation<[any Error], Never>) in
            for index in 0..<count {
                let thread = Thread {
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
                thread.name = "\(name)-\(index)"
                thread.stackSize = 4 << 20
                thread.start()
            }
        }
    }
}
