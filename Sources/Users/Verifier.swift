import Foundation
import Mongo
import Postgres
import Queue

/// Compares the target tables with what DATA.md's rules give for the source documents.
///
/// The source is streamed: each chunk of documents is flattened and COPYed into temporary
/// copies of the 15 tables (disk-backed, in PostgreSQL), so memory stays flat whatever the
/// size of the collection. PostgreSQL then compares keys and whole rows (`row::text`, the
/// same rendering on both sides: jsonb normalized, timestamps exact).
public struct Verifier {
    public struct TableResult: Sendable, Codable, Equatable {
        public var table: String
        public var expected: Int
        public var actual: Int
        public var missing: Int
        public var unexpected: Int
        public var differing: Int
        public var firstMissing: [String]
        public var firstUnexpected: [String]
        public var firstDiffering: [String]

        public var agrees: Bool { missing == 0 && unexpected == 0 && differing == 0 && expected == actual }
    }

    public struct Report: Sendable, Codable {
        public var sourceDocuments: Int
        /// Documents the job set aside (from its queue): their rows are not expected.
        public var setAsideByJob: Int
        /// Documents the rules reject now that the job did not record as set aside.
        public var rejectedByRules: [String]
        public var tables: [TableResult]

        /// True when every table holds exactly the expected rows, and something was compared:
        /// a source with documents whose target expects no row at all is not agreement.
        public var agrees: Bool {
            rejectedByRules.isEmpty && tables.allSatisfy(\.agrees) && !comparedNothing
        }

        /// The source has documents, yet no row was expected (all set aside, or none readable).
        public var comparedNothing: Bool { sourceDocuments > 0 && tables.allSatisfy { $0.expected == 0 } }
    }

    let db: PGConnection
    let collection: MongoCollection
    let setAside: Set<String>
    let chunk: Int

    /// `setAside`: `_id`s (as the queue shows them) of documents the job set aside.
    public init(db: PGConnection, collection: MongoCollection, setAside: Set<String>, chunk: Int = 1000) {
        self.db = db
        self.collection = collection
        self.setAside = setAside
        self.chunk = chunk
    }

    public func run(progress: (Int) -> Void = { _ in }) throws -> Report {
        // One snapshot of the target for the whole comparison.
        try db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        defer { _ = try? db.execute("ROLLBACK") }
        for table in Schema.tables {
            try db.execute("CREATE TEMP TABLE \(expected(table)) (LIKE \(table.quotedName)) ON COMMIT DROP")
        }
        var report = Report(sourceDocuments: 0, setAsideByJob: 0, rejectedByRules: [], tables: [])
        let cursor = try collection.scanById(afterIdElement: nil, batchSize: 1000)
        var rows = UserRows(expectedDocuments: chunk)
        while let doc = try cursor.next() {
            report.sourceDocuments += 1
            let id = displayId(doc)
            if setAside.contains(id) {
                report.setAsideByJob += 1
                continue
            }
            do {
                try rows.add(document: doc)
            } catch {
                report.rejectedByRules.append("\(id): \(error)")
            }
            if rows.documents == chunk {
                try load(rows)
                rows = UserRows(expectedDocuments: chunk)
                progress(report.sourceDocuments)
            }
        }
        try load(rows)
        report.tables = try Schema.tables.map(compare)
        return report
    }

    private func expected(_ table: Table) -> String { quote("expected_" + table.name) }

    private func load(_ rows: UserRows) throws {
        for (t, table) in Schema.tables.enumerated() where !rows.tables[t].isEmpty {
            try db.copyIn(expected(table), columns: table.quotedColumns, binary: rows.tables[t].bytes, BinaryCopyWriter.trailer)
        }
    }

    private func compare(_ table: Table) throws -> TableResult {
        let e = expected(table), t = table.quotedName
        let counts = try db.execute("""
            SELECT (SELECT count(*) FROM \(e)), (SELECT count(*) FROM \(t)),
                   count(*) FILTER (WHERE a.id IS NULL), count(*) FILTER (WHERE x.id IS NULL),
                   count(*) FILTER (WHERE x.id IS NOT NULL AND a.id IS NOT NULL AND x::text <> a::text)
            FROM \(e) x FULL JOIN \(t) a ON a.id = x.id
            """).rows[0].map { Int($0 ?? "0") ?? 0 }
        func first(_ condition: String) throws -> [String] {
            try db.execute("SELECT coalesce(x.id, a.id)::text FROM \(e) x FULL JOIN \(t) a ON a.id = x.id WHERE \(condition) ORDER BY 1 LIMIT 5")
                .rows.map { $0[0] ?? "" }
        }
        return TableResult(
            table: table.name, expected: counts[0], actual: counts[1], missing: counts[2], unexpected: counts[3],
            differing: counts[4],
            firstMissing: counts[2] > 0 ? try first("a.id IS NULL") : [],
            firstUnexpected: counts[3] > 0 ? try first("x.id IS NULL") : [],
            firstDiffering: counts[4] > 0 ? try first("x.id IS NOT NULL AND a.id IS NOT NULL AND x::text <> a::text") : [])
    }
}

extension Verifier.Report {
    public func render() -> String {
        func n(_ v: Int) -> String { v.formatted(.number.grouping(.automatic)) }
        var lines = [
            "source documents   \(n(sourceDocuments))",
            "set aside by job   \(n(setAsideByJob))  (their rows are not expected)",
        ]
        if !rejectedByRules.isEmpty {
            lines.append("rejected by the rules but not recorded as set aside: \(rejectedByRules.count)")
            lines += rejectedByRules.prefix(5).map { "  _id \($0)" }
        }
        lines.append("table            expected     actual  missing  unexpected  differing")
        for t in tables {
            let name = t.table.padding(toLength: 14, withPad: " ", startingAt: 0)
            func col(_ v: Int, _ w: Int) -> String { String(repeating: " ", count: max(0, w - n(v).count)) + n(v) }
            lines.append("\(name) \(col(t.expected, 10)) \(col(t.actual, 10)) \(col(t.missing, 8)) \(col(t.unexpected, 11)) \(col(t.differing, 10))\(t.agrees ? "" : "  ✗")")
            if !t.firstMissing.isEmpty { lines.append("    missing ids: \(t.firstMissing.joined(separator: ", "))") }
            if !t.firstUnexpected.isEmpty { lines.append("    unexpected ids: \(t.firstUnexpected.joined(separator: ", "))") }
            if !t.firstDiffering.isEmpty { lines.append("    differing ids: \(t.firstDiffering.joined(separator: ", "))") }
        }
        let rows = tables.reduce(0) { $0 + $1.expected }
        lines.append(agrees ? "OK: source and target agree (\(n(rows)) rows compared)"
            : comparedNothing ? "NOT VERIFIED: the source has \(n(sourceDocuments)) documents but no row was compared"
            : "MISMATCH: source and target disagree")
        return lines.joined(separator: "\n")
    }
}
