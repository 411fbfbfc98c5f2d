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
}
