import Foundation
import Mongo
import Postgres
import Queue

/// Compares the target tables with the rows a mapping gives for the source documents.
///
/// The source is streamed: each chunk of documents is flattened and COPYed into temporary
/// copies of the mapping's tables (disk-backed, in PostgreSQL), so memory stays flat whatever the
/// size of the collection. PostgreSQL then compares primary keys and whole rows (`row::text`, the
/// same rendering on both sides: jsonb normalized, timestamps exact).
public struct Verifier {
    public struct TableResult: Sendable, Encodable, Equatable {
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

        private enum CodingKeys: String, CodingKey {
            case table, expected, actual, missing, unexpected, differing, firstMissing, firstUnexpected, firstDiffering, agrees
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(table, forKey: .table)
            try c.encode(expected, forKey: .expected)
            try c.encode(actual, forKey: .actual)
            try c.encode(missing, forKey: .missing)
            try c.encode(unexpected, forKey: .unexpected)
            try c.encode(differing, forKey: .differing)
            try c.encode(firstMissing, forKey: .firstMissing)
            try c.encode(firstUnexpected, forKey: .firstUnexpected)
            try c.encode(firstDiffering, forKey: .firstDiffering)
            try c.encode(agrees, forKey: .agrees)
        }
    }

    /// One pipeline's comparison; encoded with what is derived (`agrees`, `comparedNothing`).
    public struct Report: Sendable, Encodable {
        public var pipeline: String
        public var sourceDocuments: Int
        /// Documents the job set aside (from its queue): their rows are not expected.
        public var setAsideByJob: Int
        /// Documents the rules reject now that the job did not record as set aside.
        public var rejectedByRules: [String]
        public var tables: [TableResult]
        /// The tables' foreign keys, when checked (`checkForeignKeys`).
        public var foreignKeys: ForeignKeyCheck?
        /// Source documents with a field that no column, variant, child table or rest column
        /// holds, and that the policy does not drop: the first few, as `_id: field 'x' (type)`.
        public var unheld = 0
        public var firstUnheld: [String] = []
        /// Source documents with fields the policy (`drop`) leaves out on purpose, and their paths.
        public var droppedByPolicy = 0
        public var droppedPaths: [String] = []
        /// How the target's tables differ from what the mapping in force writes (a column of
        /// source data dropped or altered).
        public var targetDifferences: [String] = []

        /// True when every table holds exactly the expected rows, and something was compared:
        /// a source with documents whose target expects no row at all is not agreement. Foreign
        /// keys must be in place, unless the job has yet to add them.
        public var agrees: Bool {
            rejectedByRules.isEmpty && tables.allSatisfy(\.agrees) && !comparedNothing && foreignKeys?.agrees != false
                && unheld == 0 && targetDifferences.isEmpty
        }

        /// The source has documents, yet no row was expected (all set aside, or none readable).
        public var comparedNothing: Bool { sourceDocuments > 0 && tables.allSatisfy { $0.expected == 0 } }

        private enum CodingKeys: String, CodingKey {
            case pipeline, sourceDocuments, setAsideByJob, rejectedByRules, tables, foreignKeys, agrees, comparedNothing
            case unheld, firstUnheld, droppedByPolicy, droppedPaths, targetDifferences
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(pipeline, forKey: .pipeline)
            try c.encode(sourceDocuments, forKey: .sourceDocuments)
            try c.encode(setAsideByJob, forKey: .setAsideByJob)
            try c.encode(rejectedByRules, forKey: .rejectedByRules)
            try c.encode(tables, forKey: .tables)
            try c.encode(foreignKeys, forKey: .foreignKeys)
            try c.encode(agrees, forKey: .agrees)
            try c.encode(comparedNothing, forKey: .comparedNothing)
            try c.encode(unheld, forKey: .unheld)
            try c.encode(firstUnheld, forKey: .firstUnheld)
            try c.encode(droppedByPolicy, forKey: .droppedByPolicy)
            try c.encode(droppedPaths, forKey: .droppedPaths)
            try c.encode(targetDifferences, forKey: .targetDifferences)
        }
    }

    /// Whether a pipeline's foreign keys are in place in the target.
    public struct ForeignKeyCheck: Sendable, Encodable, Equatable {
        public var expected: Int
        public var inPlace: Int
        /// `table(columns) -> parent` of each key not in place.
        public var missing: [String]
        /// The job adds them when its load completes and has not got there yet.
        public var pending: Bool
        /// Tables, and the tables among them without their primary key (a job with `--keys
        /// after` builds those of child tables when its load completes).
        public var primaryKeys: Int = 0
        public var primaryKeysMissing: [String] = []

        public var agrees: Bool { pending || (missing.isEmpty && primaryKeysMissing.isEmpty) }
    }

    /// Checks which of `mapping`'s foreign keys are in place in `target`.
    public static func checkForeignKeys(_ db: PGConnection, _ target: Target, _ mapping: any DocumentMapping, pending: Bool) throws -> ForeignKeyCheck {
        let missing = try target.missingForeignKeys(db, mapping)
        let expected = mapping.tables.reduce(0) { $0 + $1.foreignKeys.count }
        var check = ForeignKeyCheck(
            expected: expected, inPlace: expected - missing.count,
            missing: missing.map { "\($0.table.name)(\($0.key.columns.joined(separator: ", "))) -> \($0.key.table)" }, pending: pending)
        check.primaryKeys = mapping.tables.count
        check.primaryKeysMissing = try target.tablesWithoutPrimaryKey(db, mapping).map(\.name)
        return check
    }

    let db: PGConnection
    let mapping: any DocumentMapping
    let source: any DocumentCursor
    let setAside: Set<String>
    /// How many documents of each set-aside `_id` the job set aside (1 when not given).
    let setAsideCounts: [String: Int]
    let maxDocumentBytes: Int
    let chunk: Int
    /// Paths `etl_unmapped` records as dropped by a run's policy: their absence is no difference.
    let droppedByJob: Set<String>

    /// `db`: a connection to the target schema (`Target.connect`). `setAside`: `_id`s (as the
    /// queue shows them) of documents the job set aside.
    public init(
        db: PGConnection, mapping: any DocumentMapping, source: any DocumentCursor, setAside: Set<String>, setAsideCounts: [String: Int] = [:],
        maxDocumentBytes: Int = JobSettings.defaultMaxDocumentBytes, chunk: Int = 1000, droppedByJob: Set<String> = []
    ) {
        self.droppedByJob = droppedByJob
        self.db = db
        self.mapping = mapping
        self.source = source
        self.setAside = setAside
        self.setAsideCounts = setAsideCounts
        self.maxDocumentBytes = maxDocumentBytes
        self.chunk = chunk
    }

    public func run(progress: (Int) -> Void = { _ in }, differences: [String] = []) throws -> Report {
        var report = Report(pipeline: mapping.name, sourceDocuments: 0, setAsideByJob: 0, rejectedByRules: [], tables: [])
        // Tables that do not hold what the mapping writes cannot be compared row by row.
        guard differences.isEmpty else {
            report.targetDifferences = differences
            return report
        }
        // One snapshot of the target for the whole comparison, which writes only temporary tables.
        return try db.withTransaction(isolation: "REPEATABLE READ", end: .rollback) { try compare(into: report, progress: progress) }
    }

    private func compare(into report: Report, progress: (Int) -> Void) throws -> Report {
        var report = report
        for table in mapping.tables {
            try db.execute("CREATE TEMP TABLE \(expected(table)) (LIKE \(table.quotedName)) ON COMMIT DROP")
        }
        var dropped = Set<String>()
        var fields: [UnmappedField] = []
        var rows = newRows()
        // The documents of set-aside `_id`s: a file may hold an `_id` twice, one copy loaded.
        var copies: [String: [[UInt8]]] = [:]
        while let document = try source.next() {
            report.sourceDocuments += 1
            let id = document.withUnsafeBytes(BSONSequence.displayId)
            if setAside.contains(id) {
                copies[id, default: []].append(document.count <= maxDocumentBytes ? document : [])
                continue
            }
            fields.removeAll(keepingCapacity: true)
            let rejected = document.withUnsafeBytes { doc -> RejectReason? in
                do throws(RejectReason) {
                    try rows.add(document: doc, unmapped: &fields)
                    return nil
                } catch {
                    return error
                }
            }
            if let rejected {
                report.rejectedByRules.append("\(id): \(rejected)")
            } else if !fields.isEmpty {
                // Held by the rest column (keep), or left out on purpose (drop); otherwise held nowhere.
                switch mapping.unmappedPolicy {
                case .keep: break
                case _ where mapping.unmappedPolicy == .drop || fields.allSatisfy({ droppedByJob.contains($0.path) }):
                    report.droppedByPolicy += 1
                    dropped.formUnion(fields.map(\.path))
                case .evolve, .setAside, .drop:
                    report.unheld += 1
                    if report.firstUnheld.count < 5 { report.firstUnheld.append("\(id): field '\(fields[0].path)' (\(fields[0].type.name))") }
                }
            }
            if rows.documents == chunk {
                try load(rows)
                rows = newRows()
                progress(report.sourceDocuments)
            }
        }
        for (id, held) in copies.sorted(by: { $0.key < $1.key }) {
            let loaded = held.count - (setAsideCounts[id] ?? 1)
            report.setAsideByJob += held.count - max(0, loaded)
            guard loaded > 0 else { continue }
            // The copy the job loaded (the first to commit): the one whose rows the target holds.
            let candidates = held.filter { !$0.isEmpty }
            if let chosen = try candidates.first(where: isLoaded) ?? candidates.first {
                chosen.withUnsafeBytes { try? rows.add(document: $0) }
            }
        }
        try load(rows)
        report.tables = try mapping.tables.map(compare)
        report.droppedPaths = dropped.sorted()
        return report
    }

    /// Whether every row of `document` is in the target, as it is.
    private func isLoaded(_ document: [UInt8]) throws -> Bool {
        var one = newRows()
        guard (try? document.withUnsafeBytes { try one.add(document: $0) }) != nil else { return false }
        for (t, table) in mapping.tables.enumerated() where !one.tables[t].isEmpty {
            let probe = quoteIdentifier("probe_" + table.name)
            try db.execute("CREATE TEMP TABLE IF NOT EXISTS \(probe) (LIKE \(table.quotedName)) ON COMMIT DROP; TRUNCATE \(probe)")
            try db.copyIn(probe, columns: table.quotedColumns, binary: one.tables[t].bytes, BinaryCopyWriter.trailer)
            let on = table.primaryKey.map { "a.\(quoteIdentifier($0)) = p.\(quoteIdentifier($0))" }.joined(separator: " AND ")
            let absent = try db.execute("""
                SELECT count(*) FROM \(probe) p LEFT JOIN \(table.quotedName) a ON \(on)
                WHERE a.\(quoteIdentifier(table.primaryKey[0])) IS NULL OR a::text <> p::text
                """).rows[0][0]
            if absent != "0" { return false }
        }
        return true
    }

    private func newRows() -> MappedRows {
        MappedRows(mapping, expectedDocuments: chunk, maxDocumentBytes: maxDocumentBytes)
    }

    private func expected(_ table: TableSpec) -> String { quoteIdentifier("expected_" + table.name) }

    private func load(_ rows: MappedRows) throws {
        for (t, table) in mapping.tables.enumerated() where !rows.tables[t].isEmpty {
            try db.copyIn(expected(table), columns: table.quotedColumns, binary: rows.tables[t].bytes, BinaryCopyWriter.trailer)
        }
    }

    /// Joins expected and actual rows on the primary key; a row differs when its text
    /// rendering does.
    private func compare(_ table: TableSpec) throws -> TableResult {
        let e = expected(table), t = table.quotedName
        let keys = table.primaryKey.map(quoteIdentifier)
        let on = keys.map { "a.\($0) = x.\($0)" }.joined(separator: " AND ")
        let (xKey, aKey) = (keys.map { "x." + $0 }.joined(separator: ", "), keys.map { "a." + $0 }.joined(separator: ", "))
        let xMissing = "x.\(keys[0]) IS NULL", aMissing = "a.\(keys[0]) IS NULL"
        let differs = "NOT \(xMissing) AND NOT \(aMissing) AND x::text <> a::text"
        let counts = try db.execute("""
            SELECT (SELECT count(*) FROM \(e)), (SELECT count(*) FROM \(t)),
                   count(*) FILTER (WHERE \(aMissing)), count(*) FILTER (WHERE \(xMissing)), count(*) FILTER (WHERE \(differs))
            FROM \(e) x FULL JOIN \(t) a ON \(on)
            """).rows[0].map { Int($0 ?? "0") ?? 0 }
        func first(_ condition: String) throws -> [String] {
            let key = keys.count == 1 ? "coalesce(x.\(keys[0]), a.\(keys[0]))::text"
                : "CASE WHEN \(xMissing) THEN row(\(aKey))::text ELSE row(\(xKey))::text END"
            return try db.execute("SELECT \(key) FROM \(e) x FULL JOIN \(t) a ON \(on) WHERE \(condition) ORDER BY 1 LIMIT 5")
                .rows.map { $0[0] ?? "" }
        }
        return TableResult(
            table: table.name, expected: counts[0], actual: counts[1], missing: counts[2], unexpected: counts[3],
            differing: counts[4],
            firstMissing: counts[2] > 0 ? try first(aMissing) : [],
            firstUnexpected: counts[3] > 0 ? try first(xMissing) : [],
            firstDiffering: counts[4] > 0 ? try first(differs) : [])
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
        let width = max(14, tables.map(\.table.count).max() ?? 0)
        lines.append("table".padding(toLength: width, withPad: " ", startingAt: 0) + "   expected     actual  missing  unexpected  differing")
        for t in tables {
            let name = t.table.padding(toLength: width, withPad: " ", startingAt: 0)
            func col(_ v: Int, _ w: Int) -> String { String(repeating: " ", count: max(0, w - n(v).count)) + n(v) }
            lines.append("\(name) \(col(t.expected, 10)) \(col(t.actual, 10)) \(col(t.missing, 8)) \(col(t.unexpected, 11)) \(col(t.differing, 10))\(t.agrees ? "" : "  ✗")")
            if !t.firstMissing.isEmpty { lines.append("    missing ids: \(t.firstMissing.joined(separator: ", "))") }
            if !t.firstUnexpected.isEmpty { lines.append("    unexpected ids: \(t.firstUnexpected.joined(separator: ", "))") }
            if !t.firstDiffering.isEmpty { lines.append("    differing ids: \(t.firstDiffering.joined(separator: ", "))") }
        }
        if let keys = foreignKeys, !keys.primaryKeysMissing.isEmpty {
            lines.append("primary keys \(keys.primaryKeys - keys.primaryKeysMissing.count) of \(keys.primaryKeys) in place"
                + (keys.pending ? " (the job builds the rest in its final step, after the load; etl-job resume finishes one stopped there)" : "  ✗ missing: \(keys.primaryKeysMissing.joined(separator: ", "))"))
        }
        if let keys = foreignKeys, keys.expected > 0 {
            lines.append("foreign keys \(keys.inPlace) of \(keys.expected) in place"
                + (keys.missing.isEmpty ? "" : keys.pending ? " (the job adds them in its final step, after the load)" : "  ✗ missing: \(keys.missing.joined(separator: ", "))"))
        }
        if !targetDifferences.isEmpty {
            lines.append("the target's tables differ from the mapping in force, so no row was compared  ✗")
            lines += targetDifferences.prefix(5).map { "  \($0)" }
        }
        if unheld > 0 {
            lines.append("documents with a field no column holds: \(n(unheld))  ✗")
            lines += firstUnheld.map { "  _id \($0)" }
        }
        if droppedByPolicy > 0 {
            lines.append("documents with fields left out by the drop policy: \(n(droppedByPolicy)) (\(droppedPaths.prefix(5).joined(separator: ", "))\(droppedPaths.count > 5 ? ", …" : ""))")
        }
        let rows = tables.reduce(0) { $0 + $1.expected }
        lines.append(agrees ? "OK: source and target agree (\(n(rows)) rows compared)"
            : comparedNothing && targetDifferences.isEmpty ? "NOT VERIFIED: the source has \(n(sourceDocuments)) documents but no row was compared"
            : "MISMATCH: source and target disagree")
        return lines.joined(separator: "\n")
    }
}
