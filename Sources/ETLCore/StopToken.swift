import Dispatch
import Synchronization

/// A request to stop, observed by extract and workers at safe points (between batches,
/// between documents), so that a stop never leaves a batch half-written.
public final class StopToken: Sendable {
    public enum Reason: Equatable, Sendable {
        case signal(Int32)
        case failure
    }

    private let state = Mutex<Reason?>(nil)

    public init() {}

    public var isStopRequested: Bool { state.withLock { $0 != nil } }
    public var reason: Reason? { state.withLock { $0 } }

    /// Records the first reason; later requests keep it.
    public func request(_ reason: Reason) {
        state.withLock { if $0 == nil { $0 = reason } }
    }
}

/// Turns SIGINT and SIGTERM into a stop request. A second signal exits at once.
public final class SignalTrap {
    private let sources: [any DispatchSourceSignal]

    public init(stop: StopToken, onFirst: @escaping @Sendable (Int32) -> Void = { _ in }) {
        let queue = DispatchQueue(label: "etl.signals")
        sources = [SIGINT, SIGTERM].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler {
                if stop.isStopRequested, case .signal = stop.reason { exit(128 + number) }
                stop.request(.signal(number))
                onFirst(number)
            }
            source.resume()
            return source
        }
    }

    deinit { sources.forEach { $0.cancel() } }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
