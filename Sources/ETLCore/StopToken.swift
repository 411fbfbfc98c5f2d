import Dispatch
import Foundation
import Synchronization

/// A request to stop, observed by extract and workers at safe points (between batches,
/// between documents), so that a stop never leaves a batch half-written. Every wait of the
/// job (`sleep`, retry backoff) wakes as soon as a stop is requested.
public final class StopToken: @unchecked Sendable {
    // Safe: `reason` and `handlers` are guarded by `condition`'s lock.
    public enum Reason: Equatable, Sendable {
        case signal(Int32)
        case failure
        /// The task running the job was cancelled.
        case cancelled
    }

    private let condition = NSCondition()
    private var stopReason: Reason?
    private var handlers: [Int: @Sendable () -> Void] = [:]
    private var nextHandler = 0
    /// The stop has escalated: a handler registered from now on runs at once.
    private var escalated = false
    /// Tokens that stop when this one does (and escalate with it), but not the other way.
    private var children: [ObjectIdentifier: StopToken] = [:]

    public init() {}

    /// A token that a stop of this one stops too, while a stop requested on it (a failure of
    /// the work it runs) leaves this one running: one unit of work among several, such as a
    /// worker's partition. `release` it when that work is over.
    public func child() -> StopToken {
        let child = StopToken()
        condition.lock()
        let (reason, late) = (stopReason, escalated)
        if reason == nil { children[ObjectIdentifier(child)] = child }
        condition.unlock()
        if let reason { child.request(reason) }
        if late { child.escalate() }
        return child
    }

    public func release(_ child: StopToken) {
        condition.lock()
        children[ObjectIdentifier(child)] = nil
        condition.unlock()
    }

    public var isStopRequested: Bool { reason != nil }
    public var reason: Reason? {
        condition.lock()
        defer { condition.unlock() }
        return stopReason
    }

    /// Records the first reason (later requests keep it) and wakes every sleeper.
    public func request(_ reason: Reason) {
        condition.lock()
        let first = stopReason == nil
        if first { stopReason = reason }
        condition.broadcast()
        let stopping = first ? Array(children.values) : []
        condition.unlock()
        stopping.forEach { $0.request(reason) }
    }

    /// Sleeps up to `seconds`; returns false when a stop was requested (at once if it was already).
    @discardableResult
    public func sleep(_ seconds: Double) -> Bool {
        let deadline = Date(timeIntervalSinceNow: seconds)
        condition.lock()
        defer { condition.unlock() }
        while stopReason == nil {
            if !condition.wait(until: deadline) { break }
        }
        return stopReason == nil
    }

    /// Registers work to run when the stop escalates (`escalate()`), such as cancelling a
    /// statement on a server; returns a key for `remove`. Registered after the escalation
    /// (a statement started during the grace period's end), it runs at once.
    public func onEscalation(_ handler: @escaping @Sendable () -> Void) -> Int {
        condition.lock()
        nextHandler += 1
        let key = nextHandler
        let late = escalated
        if !late { handlers[key] = handler }
        condition.unlock()
        if late { handler() }
        return key
    }

    public func remove(_ key: Int) {
        condition.lock()
        handlers[key] = nil
        condition.unlock()
    }

    /// The graceful part of a stop is over: cancel what is still waiting on a server.
    public func escalate() {
        condition.lock()
        escalated = true
        let pending = Array(handlers.values)
        handlers.removeAll()
        let escalating = Array(children.values)
        condition.unlock()
        pending.forEach { $0() }
        escalating.forEach { $0.escalate() }
    }

    /// Runs `body` with the cancellation of its task bridged to this token: a cancelled task
    /// requests a stop (`.cancelled`), which every wait and safe point of the job observes.
    public func bridgingCancellation<T>(_ body: () async throws -> T) async rethrows -> T {
        try await withTaskCancellationHandler(operation: body, onCancel: { request(.cancelled) })
    }
}

/// The one backoff of every retry loop: exponential from `base`, capped, with jitter so
/// that workers retrying together do not hit a recovering server in step.
public enum Backoff {
    public static func delay(attempt: Int, base: Double = 0.2, cap: Double = 5) -> Double {
        let exponential = min(cap, base * Double(1 << min(max(attempt - 1, 0), 16)))
        return exponential * Double.random(in: 0.75...1.0)
    }

    /// Waits before retry `attempt`; false when a stop was requested meanwhile.
    public static func wait(attempt: Int, stop: StopToken, base: Double = 0.2, cap: Double = 5) -> Bool {
        stop.sleep(delay(attempt: attempt, base: base, cap: cap))
    }
}

/// Turns SIGINT and SIGTERM into a stop request. A second signal exits at once.
///
/// A stop must end the process within `deadline` seconds whatever the services do. After
/// `grace` seconds the stop escalates (statements still running are cancelled); at
/// `deadline` the process exits with 128 + signal as a kill would, which the queue and the
/// checkpoints are built to survive: the run stays resumable.
public final class SignalTrap {
    private let sources: [any DispatchSourceSignal]

    public init(
        stop: StopToken, grace: Double = 2, deadline: Double = 4.5,
        onFirst: @escaping @Sendable (Int32) -> Void = { _ in }
    ) {
        let queue = DispatchQueue(label: "etl.signals")
        sources = [SIGINT, SIGTERM].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler {
                if stop.isStopRequested, case .signal = stop.reason { _exit(128 + number) }
                stop.request(.signal(number))
                onFirst(number)
                queue.asyncAfter(deadline: .now() + grace) { stop.escalate() }
                queue.asyncAfter(deadline: .now() + deadline) {
                    Console.standardError.line("etl-job: stopping took longer than \(Int(deadline)) s; exiting now (\(GoOn.advice) to go on)")
                    _exit(128 + number)
                }
            }
            source.resume()
            return source
        }
    }

    deinit { sources.forEach { $0.cancel() } }

    /// Until a trap is set: SIGINT or SIGTERM exits at once with 128 + signal (nothing has
    /// been written yet), rather than the process being killed by it.
    public static func exitOnSignalsUntilTrapped() {
        for number in [SIGINT, SIGTERM] { signal(number) { _exit(128 + $0) } }
    }
}
