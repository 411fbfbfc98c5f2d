import Foundation

/// Runs `stage` on a thread of its own, one batch at a time and in order, so that the
/// producer reads the next batch while the previous one is made durable. At most one batch
/// waits: `submit` blocks while one does, which is the backpressure the producer feels.
public final class Handoff<Item>: @unchecked Sendable {
    // Safe: every mutable field is read and written only while holding `condition`.
    private let condition = NSCondition()
    private var waiting: [Item]?
    private var busy = false
    private var closed = false
    private var failure: (any Error)?
    private let stage: ([Item]) throws -> Void
    /// Ended (joined) by `finish` and `abandon`, so that nothing it holds (the queue's LMDB
    /// environment, its thread's reader slot) is released after the producer went on.
    private var worker: DedicatedThread?

    public init(name: String, stage: @escaping ([Item]) throws -> Void) {
        self.stage = stage
        worker = Threads.spawn(name: name) { [self] in run() }
    }

    /// Hands a batch over; rethrows the failure of an earlier one.
    public func submit(_ batch: [Item]) throws {
        condition.lock()
        defer { condition.unlock() }
        while waiting != nil && failure == nil { condition.wait() }
        if let failure { throw failure }
        waiting = batch
        condition.broadcast()
    }

    /// Waits until every batch handed over is staged; rethrows a failure.
    public func finish() throws {
        defer { worker?.join() }
        condition.lock()
        defer { condition.unlock() }
        while (waiting != nil || busy) && failure == nil { condition.wait() }
        closed = true
        condition.broadcast()
        if let failure { throw failure }
    }

    /// Drops a waiting batch and waits for the one being staged (a batch is staged whole or
    /// not at all); the producer is stopping on an error.
    public func abandon() {
        defer { worker?.join() }
        condition.lock()
        defer { condition.unlock() }
        waiting = nil
        closed = true
        condition.broadcast()
        while busy { condition.wait() }
    }

    private func run() {
        condition.lock()
        while true {
            while waiting == nil && !closed { condition.wait() }
            guard let batch = waiting, failure == nil else { break }
            waiting = nil
            busy = true
            condition.broadcast()
            condition.unlock()
            var error: (any Error)?
            do { try stage(batch) } catch let failed { error = failed }
            condition.lock()
            busy = false
            if let error { failure = error }
            condition.broadcast()
        }
        condition.unlock()
    }
}
