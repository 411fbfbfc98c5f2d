import Foundation
import Postgres
import Testing
import TestSupport
@testable import DurableETL

/// The target's sessions passed from one stage of a run to the next, and the notifications
/// that wake waiting workers: both against the real PostgreSQL.
@Suite struct SessionTests {
    /// A schema of this test's own: released sessions are shared by every target of the
    /// process with the same URL and schema, and other tests release theirs.
    static func privateTarget() -> Target {
        Target(url: Services.postgresURL, schema: "session_test_" + UUID().uuidString.prefix(8).lowercased())
    }

    @Test func onlyAnIdleSessionIsHandedOnAndEachOnlyOnce() throws {
        let target = Self.privateTarget()
        let idle = try target.connect()
        target.release(idle)
        let copy = target
        #expect(copy.takeReleased() === idle, "copies of a target share what was released")
        #expect(target.takeReleased() == nil, "a released session is taken once")

        let inTransaction = try target.connect()
        try inTransaction.execute("BEGIN")
        target.release(inTransaction)
        let failed = try target.connect()
        try failed.execute("BEGIN")
        _ = try? failed.execute("SELECT 1 / 0")
        target.release(failed)
        #expect(target.takeReleased() == nil, "a session inside a transaction, open or failed, is never handed on")

        let ended = try target.connect()
        let pid = try ended.execute("SELECT pg_backend_pid()").rows[0][0]!
        target.release(ended)
        let other = try Services.postgres()
        _ = try other.execute("SELECT pg_terminate_backend(\(pid))")
        // Gone from the machine (the bundled server is local), so its socket is closed.
        #expect(eventually(5) { kill(pid_t(pid)!, 0) == -1 && errno == ESRCH }, "the backend exits")
        #expect(target.takeReleased() == nil, "a session the server ended after its release is not handed on")
    }

    @Test func targetsMadeApartShareReleasedSessionsOfTheirURLAndSchemaOnly() throws {
        let target = Self.privateTarget()
        let idle = try target.connect()
        target.release(idle)
        #expect(Self.privateTarget().takeReleased() == nil, "another schema's target does not take it")
        let elsewhere = Target(url: target.url, schema: target.schema)
        #expect(elsewhere.takeReleased() === idle, "a target made elsewhere in the process, for the same schema, takes it")
        #expect(target.takeReleased() == nil)
    }

    @Test func aListeningSessionHearsANotifyOnceItsTransactionCommits() throws {
        let channel = "etl_test_" + UUID().uuidString.prefix(8).lowercased()
        let listener = try Services.postgres()
        try listener.execute("LISTEN \(channel)")
        #expect(!listener.waitForNotification(seconds: 0.1), "nothing was sent")
        let sender = try Services.postgres()
        try sender.execute("BEGIN")
        try sender.execute("NOTIFY \(channel)")
        #expect(!listener.waitForNotification(seconds: 0.1), "not before the sender commits")
        try sender.execute("COMMIT")
        #expect(listener.waitForNotification(seconds: 5))
        #expect(!listener.waitForNotification(seconds: 0.05), "each notification is consumed once")
    }

    /// A lock others wait for (a lease, a pipeline's lock, the plan's) is held by a session with
    /// TCP keepalives, so that a vanished machine's lock ends within a minute; handed back, the
    /// session lets go of the lock and goes on without them, and one that never took the lock
    /// goes on as it is.
    @Test func aLockIsKeptAliveAndItsSessionHandedBackWithoutIt() throws {
        let target = Self.privateTarget()
        let held = try target.connect()
        let lock = try TargetLock(connection: held, pipeline: "sessions", schema: target.schema, reconnect: { try target.connect() })
        let system = try held.execute("SHOW tcp_keepalives_idle").rows[0][0]
        #expect(system != "30")
        #expect(try lock.tryAcquire())
        try lock.keepAlive()
        #expect(try held.execute("SHOW tcp_keepalives_idle").rows[0][0] == "30")
        let other = try TargetLock(connection: try target.connect(), pipeline: "sessions", schema: target.schema, reconnect: { try target.connect() })
        #expect(try !other.tryAcquire(), "held")

        lock.handBack(to: target)
        #expect(try other.tryAcquire(), "let go")
        let next = try #require(target.takeReleased())
        #expect(next === held)
        #expect(try next.execute("SHOW tcp_keepalives_idle").rows[0][0] == system, "the keepalives reset")

        let never = try target.connect()
        let untaken = try TargetLock(connection: never, pipeline: "sessions", schema: target.schema, reconnect: { try target.connect() })
        #expect(try !untaken.tryAcquire())
        untaken.handBack(to: target)
        #expect(target.takeReleased() === never)
        other.handBack(to: target)
    }
}
