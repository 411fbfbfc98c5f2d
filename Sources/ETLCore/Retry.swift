import Foundation

/// The one retry loop of the job (extract and load alike, and every wait for a server or a
/// lock): runs `body` until it succeeds, a failure is not retryable, the retries or the time
/// are used up, or a stop is requested; between attempts it waits with the stop-aware
/// `Backoff` (which wakes at once on a stop). The policy is the value; the loop is this one.
public struct Retry: Sendable {
    /// Failures in a row after which the last one is thrown.
    public var retries: Int
    public var base: Double
    public var cap: Double
    /// When set, no attempt starts after it: the last failure is thrown instead.
    public var deadline: ContinuousClock.Instant?

    public init(retries: Int, base: Double = 0.2, cap: Double = 5) {
        self.retries = retries
        self.base = base
        self.cap = cap
    }

    /// Attempts about every `interval` seconds for up to `seconds`: a wait for a server that is
    /// starting up, or for a lock another session is letting go.
    public static func within(_ seconds: Double, every interval: Double) -> Retry {
        var retry = Retry(retries: .max, base: interval, cap: interval)
        retry.deadline = .now + .milliseconds(Int(seconds * 1000))
        return retry
    }

    /// A failed attempt about to be retried: which one in a row, and why.
    public struct Attempt {
        public let number: Int
        public let error: any Error
    }

    /// `body` receives `progressed`, to call when it got somewhere: the failures in a row
    /// start again from zero (a long scan may outlive several server restarts). `onRetry`
    /// runs before each wait (to log, or to drop a broken connection). `stop`: nil for steps
    /// that a stop must not cut short.
    public func run<T>(
        stop: StopToken?, clock: StageClock? = nil, isRetryable: (any Error) -> Bool,
        onRetry: (Attempt) -> Void, body: (_ progressed: () -> Void) throws -> T
    ) throws -> T {
        var failures = 0
        while true {
            do {
                return try body { failures = 0 }
            } catch where isRetryable(error) && failures < retries && !(stop?.isStopRequested ?? false)
                            && deadline.map({ ContinuousClock.now < $0 }) ?? true {
                failures += 1
                onRetry(Attempt(number: failures, error: error))
                let wait = { () -> Bool in
                    guard let stop else {
                        Thread.sleep(forTimeInterval: Backoff.delay(attempt: failures, base: base, cap: cap))
                        return true
                    }
                    return Backoff.wait(attempt: failures, stop: stop, base: base, cap: cap)
                }
                guard clock?.measure(.waiting, wait) ?? wait() else { throw error }
            }
        }
    }
}
