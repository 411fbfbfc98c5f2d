import Foundation
import Postgres
import TestSupport
import Testing

/// What a batch sends in one round trip: several COPY streams in one query, and statements in
/// libpq's pipeline mode. Checked against PostgreSQL itself.
@Suite(.serialized) struct RoundTripTests {
    static func rows(_ values: [Int64]) -> [UInt8] {
        var w = BinaryCopyWriter()
        for v in values {
            w.beginRow(fields: 1)
            w.int8(v)
        }
        return w.bytes
    }

    @Test func severalCopiesInOneQueryLoadEachTableBetweenTheStatementsAround() throws {
        let sandbox = try Sandbox()
        let db = try sandbox.db()
        try db.execute("CREATE TABLE a (v int8); CREATE TABLE b (v int8); CREATE TABLE c (v int8)")
        try db.execute("BEGIN")
        try db.copyIn([
            PGCopy(table: "a", columns: ["v"], parts: [Self.rows([1, 2]), BinaryCopyWriter.trailer]),
            PGCopy(table: "b", columns: ["v"], parts: [Self.rows([3]), BinaryCopyWriter.trailer]),
            PGCopy(table: "c", columns: ["v"], parts: [Self.rows(Array(0..<10_000)), BinaryCopyWriter.trailer]),
        ], before: "SAVEPOINT s;", after: "RELEASE SAVEPOINT s;")
        try db.execute("COMMIT")
        let counts = try db.execute("SELECT (SELECT sum(v) FROM a), (SELECT sum(v) FROM b), (SELECT count(*) FROM c)").rows[0]
        #expect(counts == ["3", "3", "10000"])
    }

    @Test func aRejectedCopySkipsTheRestOfTheQueryAndIsThrown() throws {
        let sandbox = try Sandbox()
        let db = try sandbox.db()
        try db.execute("CREATE TABLE a (v int8); CREATE TABLE b (v int8 CHECK (v > 0)); CREATE TABLE c (v int8)")
        try db.execute("BEGIN")
        try db.execute("SAVEPOINT s")
        #expect {
            try db.copyIn([
                PGCopy(table: "a", columns: ["v"], parts: [Self.rows([1]), BinaryCopyWriter.trailer]),
                PGCopy(table: "b", columns: ["v"], parts: [Self.rows([-1]), BinaryCopyWriter.trailer]),
                PGCopy(table: "c", columns: ["v"], parts: [Self.rows([1]), BinaryCopyWriter.trailer]),
            ], after: "RELEASE SAVEPOINT s;")
        } throws: { ($0 as? PGError)?.sqlState == "23514" }
        // The connection is usable, and the savepoint (never released) undoes the whole query.
        try db.execute("ROLLBACK TO SAVEPOINT s; COMMIT")
        #expect(try db.execute("SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM c)").rows[0] == ["0", "0"])
    }

    @Test func aPipelineAnswersInOrderAndStopsAtTheFirstFailure() throws {
        let sandbox = try Sandbox()
        let db = try sandbox.db()
        try db.execute("CREATE TABLE k (v int8 PRIMARY KEY)")
        let done = try db.pipeline([("BEGIN", []), ("INSERT INTO k VALUES ($1)", ["1"]), ("SELECT count(*) FROM k", []), ("COMMIT", [])])
        #expect(done.count == 4)
        #expect(try done[2].get().rows == [["1"]])
        // The second INSERT fails: the statements after it are skipped, and the transaction rolls back.
        let failed = try db.pipeline([("BEGIN", []), ("INSERT INTO k VALUES ($1)", ["2"]), ("INSERT INTO k VALUES ($1)", ["1"]), ("COMMIT", [])])
        #expect(failed.count == 3)
        guard case .failure(let error) = failed[2] else { Issue.record("the repeated key was accepted"); return }
        #expect(error.sqlState == "23505")
        try db.execute("ROLLBACK")
        #expect(try db.execute("SELECT array_agg(v ORDER BY v)::text FROM k").rows == [["{1}"]])
    }
}
