import ETLCore
import Foundation
import Testing
import DurableETL
import TestSupport
import Users
import UsersFixtures

@Suite struct SetAsideLimitTests {
    @Test func parsesCountsAndPercentagesAndRejectsTheRest() {
        #expect(SetAsideLimit("10") == .count(10))
        #expect(SetAsideLimit("2.5%") == .percent(2.5))
        #expect(SetAsideLimit("0") == .count(0))
        for bad in ["-1", "5x", "101%", "%", ""] { #expect(SetAsideLimit(bad) == nil, "\(bad)") }
        #expect(SetAsideLimit.default.description == "1%")
    }

    @Test func failsOnlyAboveTheLimitAndAlwaysWhenNothingLoaded() {
        let onePercent = SetAsideLimit.percent(1)
        #expect(onePercent.failure(loaded: 990, setAside: 10) == nil, "10 of 1,000 is exactly 1%")
        let over = onePercent.failure(loaded: 989, setAside: 11)
        #expect(over?.contains("11 documents were set aside, more than the limit of 10 (1% of 1000 documents read)") == true, "\(over ?? "")")
        #expect(over?.contains("etl-job status --rejected") == true)
        #expect(SetAsideLimit.count(3).failure(loaded: 10, setAside: 3) == nil)
        #expect(SetAsideLimit.count(3).failure(loaded: 10, setAside: 4) != nil)
        #expect(SetAsideLimit.percent(100).failure(loaded: 0, setAside: 5)?.contains("none was loaded") == true)
        #expect(SetAsideLimit.percent(100).failure(loaded: 0, setAside: 0) == nil)
    }
}

@Suite struct SecretsTests {
    @Test func aPasswordIsMaskedWhereverALibraryQuotesIt() {
        Secrets.register(url: "postgresql://app:s3cret%zzPW@db.example:5432/app")
        Secrets.register(url: "mongodb://reader:p%40ss%3Aword@mongo.example/")
        #expect(Secrets.scrub("invalid percent-encoded token: \"s3cret%zzPW\"") == "invalid percent-encoded token: \"***\"")
        #expect(Secrets.scrub("auth failed for p@ss:word here") == "auth failed for *** here")
        #expect(Redact.url("postgresql://app:s3cret%zzPW@db.example:5432/app") == "postgresql://app:***@db.example:5432/app")
    }

    @Test func aShortPasswordDoesNotMaskOrdinaryWordsOrTheVisibleUserName() {
        Secrets.register(url: "postgresql://etl:etl@127.0.0.1:55432/etl")
        Secrets.register("Zq9x")
        #expect(Secrets.scrub("etl-job: cannot connect as etl") == "etl-job: cannot connect as etl")
        #expect(Secrets.scrub("password Zq9x rejected; Zq9xy is fine") == "password *** rejected; Zq9xy is fine")
    }
}

@Suite struct StopTests {
    @Test func aSleepEndsAtOnceWhenAStopIsRequested() {
        let stop = StopToken()
        let started = ContinuousClock.now
        // A thread of its own: this test blocks its own thread in `sleep`, as the job's threads do.
        Thread.detachNewThread {
            Thread.sleep(forTimeInterval: 0.1)
            stop.request(.signal(SIGINT))
        }
        let completed = stop.sleep(30)
        #expect(!completed)
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(!stop.sleep(30), "once stopped, every later wait returns at once")
    }

    @Test func aChildStopsWithItsParentButNotTheOtherWayRound() {
        let parent = StopToken()
        let failed = parent.child()
        failed.request(.failure)
        #expect(failed.reason == .failure && !parent.isStopRequested, "a failure of one partition's run leaves the worker running")
        parent.release(failed)
        let child = parent.child()
        let calls = Counter()
        _ = child.onEscalation { calls.add() }
        parent.request(.signal(SIGTERM))
        #expect(child.reason == .signal(SIGTERM))
        parent.escalate()
        #expect(calls.value == 1, "the parent's escalation reaches the child's cancellations")
        #expect(parent.child().reason == .signal(SIGTERM), "a child of a stopped token is stopped")
    }

    @Test func backoffGrowsIsCappedAndJittered() {
        for attempt in 1...20 {
            let d = Backoff.delay(attempt: attempt, base: 0.2, cap: 5)
            let full = min(5, 0.2 * pow(2, Double(attempt - 1)))
            #expect(d <= full && d >= 0.75 * full, "attempt \(attempt): \(d)")
        }
    }

    @Test func escalationRunsTheRegisteredCancellationsOnce() {
        let stop = StopToken()
        let calls = Counter()
        let key = stop.onEscalation { calls.add() }
        let removed = stop.onEscalation { calls.add(100) }
        stop.remove(removed)
        stop.escalate()
        stop.remove(key)
        stop.escalate()
        #expect(calls.value == 1)
    }

    /// A statement started after the grace period (its cancellation registered late) is
    /// cancelled at once, not left to the final exit.
    @Test func aCancellationRegisteredAfterTheEscalationRunsAtOnce() {
        let stop = StopToken()
        stop.request(.signal(SIGTERM))
        stop.escalate()
        let calls = Counter()
        let key = stop.onEscalation { calls.add() }
        #expect(calls.value == 1)
        stop.remove(key)
        stop.escalate()
        #expect(calls.value == 1, "run once, not kept for a later escalation")
    }

    @Test func cancellingTheTaskRequestsAStopThatEveryWaitSees() async throws {
        let stop = StopToken()
        let task = Task {
            await stop.bridgingCancellation {
                await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                    Thread.detachNewThread {
                        _ = stop.sleep(30)
                        done.resume()
                    }
                }
            }
        }
        try await Task.sleep(for: .milliseconds(100))
        let started = ContinuousClock.now
        task.cancel()
        await task.value
        #expect(stop.reason == .cancelled)
        #expect(ContinuousClock.now - started < .seconds(5))
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func add(_ n: Int = 1) { lock.withLock { count += n } }
    var value: Int { lock.withLock { count } }
}
