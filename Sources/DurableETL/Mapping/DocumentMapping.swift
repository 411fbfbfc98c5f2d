import Foundation
import Mongo
import Postgres

/// What a pipeline supplies to the engine: where its documents come from, the tables they
/// become, and the function from one document to its rows. Everything durable (the queue,
/// extraction by `_id`, COPY with a checkpoint in one transaction, retries, bisection of
/// rejected documents, recovery, migrations, status, verify) is the engine's.
public protocol DocumentMapping: Sendable {
    /// Names the pipeline: keys its state directory, checkpoints, set-aside records,
    /// migrations and target lock. Lowercase letters, digits, `-` and `_`.
    var name: String { get }
    /// The collection read unless the command names another.
    var source: SourceCollection { get }
    /// The target tables, each stated once, parents before children.
    var tables: [TableSpec] { get }
    /// Schema changes after the tables' first version, in order (version 1 creates `tables`).
    var migrations: [Migration] { get }
    /// For a pipeline defined by data (a mapping file): that definition, recorded with the
    /// job so that a resume runs the same one and can refuse a changed one. Nil when the
    /// pipeline is code.
    var definition: String? { get }
    /// Appends the rows of one document to `rows` (one writer per table, in `tables` order),
    /// or throws why the document must be set aside. Rows appended before a throw are
    /// discarded by the engine, so a document loads whole or not at all.
    func map(_ document: UnsafeRawBufferPointer, into rows: inout TableRows) throws(RejectReason)
    /// The same, noting in `unmapped` every field of the document that no column or child
    /// table holds (a `jsonb` column holds its whole subtree), and every value a column
    /// cannot hold that a variant column would. The engine applies `unmappedPolicy` to them.
    func map(_ document: UnsafeRawBufferPointer, into rows: inout TableRows, unmapped: inout [UnmappedField]) throws(RejectReason)
    /// What a load does with the fields `map` notes.
    var unmappedPolicy: UnmappedPolicy { get }
    /// The same mapping with another policy (`--unmapped`), or nil when it cannot follow it
    /// (a pipeline written in code cannot change its tables).
    func with(unmappedPolicy: UnmappedPolicy) -> (any DocumentMapping)?
    /// The mapping changed to hold the fields it notes in `documents` (new columns, child
    /// tables, variant columns), or nil when it cannot change (or they need nothing). A new
    /// table takes none of the names in `taken` (tables of the schema that are not its own).
    func evolved(holding documents: [[UInt8]], taken: Set<String>) -> Evolution?
    /// The mapping a recorded `definition` (of an evolved version of this one) describes.
    func inForce(definition: String) throws -> any DocumentMapping
    /// The type OID of a document's key, the value each table's `documentRows` finds the
    /// document's rows by; nil when the pipeline cannot tell a document's key from its `_id`
    /// (then its documents cannot be replaced or deleted, so it cannot be kept in sync).
    var documentKeyType: UInt32? { get }
    /// Writes the key of the document whose `_id` (at least) `document` holds, as one value.
    func documentKey(_ document: UnsafeRawBufferPointer, into key: inout BinaryCopyWriter) throws(RejectReason)
    /// How `status` and `verify` name the document whose key PostgreSQL prints as `key`
    /// (its `_id` as `BSONSequence.displayId` shows it); nil when the pipeline cannot tell.
    func displayId(ofKey key: String) -> String?
}

extension DocumentMapping {
    /// The tables whose primary keys `--keys after` builds after the load.
    public var keysBuiltAfter: [TableSpec] { tables.enumerated().filter { $0.element.keyFollowsDocument(isRoot: $0.offset == 0) }.map(\.element) }

    public var migrations: [Migration] { [] }
    public var definition: String? { nil }

    public func map(_ document: UnsafeRawBufferPointer, into rows: inout TableRows, unmapped: inout [UnmappedField]) throws(RejectReason) {
        try map(document, into: &rows)
    }

    public var unmappedPolicy: UnmappedPolicy { .drop }
    public func with(unmappedPolicy: UnmappedPolicy) -> (any DocumentMapping)? { unmappedPolicy == self.unmappedPolicy ? self : nil }
    public func evolved(holding documents: [[UInt8]], taken: Set<String>) -> Evolution? { nil }
    public func inForce(definition: String) throws -> any DocumentMapping { self }
    public var documentKeyType: UInt32? { nil }

    public func documentKey(_ document: UnsafeRawBufferPointer, into key: inout BinaryCopyWriter) throws(RejectReason) {
        throw RejectReason("the \(name) pipeline cannot tell a document's key from its _id")
    }

    public func displayId(ofKey key: String) -> String? { nil }
}

/// Which rows of a table belong to one document, found by the document's key: how the
/// `replace` and `delete` write modes find the rows to remove.
public enum DocumentRows: Sendable, Equatable {
    /// Rows whose `column` holds the document's key.
    case key(String)
    /// Rows whose integer `column` lies from key × `factor` to key × `factor` + `factor` − 1
    /// (ids derived from the key; found through the primary key's index when it is that).
    case keyRange(String, factor: Int64)

    var column: String {
        switch self {
        case .key(let column), .keyRange(let column, _): column
        }
    }
}

public struct SourceCollection: Sendable, Equatable {
    public var database: String
    public var collection: String

    public init(database: String, collection: String) {
        self.database = database
        self.collection = collection
    }
}

/// A change to a pipeline's tables, applied once per target schema.
public struct Migration: Sendable {
    public let version: Int
    public let name: String
    public let statements: [String]

    public init(version: Int, name: String, statements: [String]) {
        self.version = version
        self.name = name
        self.statements = statements
    }
}

/// One target table: its columns, primary key and foreign keys.
public struct TableSpec: Sendable {
    public struct Column: Sendable {
        public let name: String
        /// A PostgreSQL type name as CREATE TABLE takes it (`bigint`, `varchar`, `jsonb`, `text[]`).
        public let type: String
        public let nullable: Bool

        public init(_ name: String, _ type: String, nullable: Bool = false) {
            self.name = name
            self.type = type
            self.nullable = nullable
        }
    }

    /// Columns of this table that reference the primary key of `table`, ON DELETE CASCADE.
    public struct ForeignKey: Sendable {
        public let columns: [String]
        public let table: String

        public init(_ columns: [String], references table: String) {
            self.columns = columns
            self.table = table
        }
    }

    public let name: String
    public let columns: [Column]
    public let primaryKey: [String]
    public let foreignKeys: [ForeignKey]
    /// About how many COPY bytes one document adds here, so buffers rarely grow.
    public let bytesPerDocument: Int
    /// How a document's rows here are found by its key (default: the first primary-key column
    /// holds it, as in a root table and in a child table keyed by its root's key).
    public let documentRows: DocumentRows
    /// Column sets that are UNIQUE (created with the table): a document whose values another
    /// document already holds is set aside, as for a primary key.
    public let unique: [[String]]

    public init(
        _ name: String, columns: [Column], primaryKey: [String], foreignKeys: [ForeignKey] = [], unique: [[String]] = [],
        bytesPerDocument: Int = 256, documentRows: DocumentRows? = nil
    ) {
        precondition(!primaryKey.isEmpty, "table \(name) needs a primary key")
        self.name = name
        self.columns = columns
        self.primaryKey = primaryKey
        self.foreignKeys = foreignKeys
        self.unique = unique
        self.bytesPerDocument = bytesPerDocument
        self.documentRows = documentRows ?? .key(primaryKey[0])
    }

    /// The indexes replacing and deleting documents' rows needs beyond the primary key: the
    /// column that finds a document's rows here, and each foreign key's columns (which
    /// PostgreSQL reads for every parent row deleted, to cascade), unless the primary key
    /// leads with them. Each as (name, columns).
    var changeIndexes: [(name: String, columns: [String])] {
        var sets: [[String]] = [[documentRows.column]] + foreignKeys.map(\.columns)
        sets.removeAll { Array(primaryKey.prefix($0.count)) == $0 }
        var seen = Set<[String]>()
        return sets.filter { seen.insert($0).inserted }.map { columns in
            var index = ([name] + columns).joined(separator: "_")
            while index.utf8.count > 58 { index.removeLast() }
            return (index + "_doc", columns)
        }
    }

    /// The key of the document a row belongs to, as an SQL expression over the table's columns.
    var documentKeyExpression: String {
        switch documentRows {
        case .key(let column): quoteIdentifier(column)
        // Floor division: rows of a negative key lie from key × factor upwards too.
        case .keyRange(let column, let factor): "((\(quoteIdentifier(column)) - ((\(quoteIdentifier(column)) % \(factor)) + \(factor)) % \(factor)) / \(factor))"
        }
    }

    /// Removes the rows of the documents whose keys `$1` (a binary array) holds.
    var deleteDocumentsStatement: String {
        switch documentRows {
        case .key(let column):
            "DELETE FROM \(quotedName) WHERE \(quoteIdentifier(column)) = ANY($1)"
        case .keyRange(let column, let factor):
            "DELETE FROM \(quotedName) t USING unnest($1::bigint[]) AS k(v) WHERE t.\(quoteIdentifier(column)) BETWEEN k.v * \(factor) AND k.v * \(factor) + \(factor - 1)"
        }
    }

    /// Whether this table's primary key follows from the document's key, so that it cannot
    /// repeat across documents once the root table's key does not: a child table found by its
    /// primary key's first column (`_id`, `_id * 10000 + index`, or the root key and a
    /// position). Its key can be built after the load (`--keys after`); a key taken from the
    /// document's data (`messages.id`) stays in place, where a repeated value sets the
    /// document aside as it is loaded. A mapping that still wrote two rows with one such key
    /// fails the final step (exit 70) instead of loading them.
    public func keyFollowsDocument(isRoot: Bool) -> Bool { !isRoot && documentRows.column == primaryKey[0] }

    /// Adds the primary key (on a table loaded without it).
    var addPrimaryKey: String {
        "ALTER TABLE \(quotedName) ADD CONSTRAINT \(quoteIdentifier(primaryKeyName)) PRIMARY KEY (\(primaryKey.map(quoteIdentifier).joined(separator: ", ")))"
    }

    /// The name PostgreSQL gives an unnamed primary key (`table_pkey`), within its 63 bytes.
    var primaryKeyName: String {
        var name = name
        while name.utf8.count > 58 { name.removeLast() }
        return name + "_pkey"
    }

    public var quotedName: String { quoteIdentifier(name) }
    public var quotedColumns: [String] { columns.map { quoteIdentifier($0.name) } }

    /// The table without its foreign keys: the job adds them before or after the load
    /// (`--foreign-keys`), by `addConstraint`.
    var createStatement: String {
        var lines = columns.map { "\(quoteIdentifier($0.name)) \($0.type)\($0.nullable ? "" : " NOT NULL")" }
        lines.append("PRIMARY KEY (\(primaryKey.map(quoteIdentifier).joined(separator: ", ")))")
        for columns in unique {
            lines.append("CONSTRAINT \(quoteIdentifier(uniqueConstraintName(columns))) UNIQUE (\(columns.map(quoteIdentifier).joined(separator: ", ")))")
        }
        return "CREATE TABLE \(quotedName) (\n    " + lines.joined(separator: ",\n    ") + "\n)"
    }

    /// The name PostgreSQL gives an unnamed unique constraint (`table_column_key`), within its 63 bytes.
    public func uniqueConstraintName(_ columns: [String]) -> String {
        var name = ([name] + columns).joined(separator: "_")
        while name.utf8.count > 59 { name.removeLast() }
        return name + "_key"
    }

    /// The name PostgreSQL gives an unnamed foreign key (`table_column_fkey`), within its 63 bytes.
    func constraintName(_ key: ForeignKey) -> String {
        var name = ([name] + key.columns).joined(separator: "_")
        while name.utf8.count > 58 { name.removeLast() }
        return name + "_fkey"
    }

    func addConstraint(_ key: ForeignKey) -> String {
        "ALTER TABLE \(quotedName) ADD CONSTRAINT \(quoteIdentifier(constraintName(key))) FOREIGN KEY ("
            + key.columns.map(quoteIdentifier).joined(separator: ", ") + ") REFERENCES \(quoteIdentifier(key.table)) ON DELETE CASCADE"
    }
}

/// When a job puts its tables' keys in place (`--keys`, `--foreign-keys`).
public enum ForeignKeyMode: String, Sendable, Codable, CaseIterable {
    /// Load the tables without their foreign keys and without the primary keys that follow
    /// from the document's key (`TableSpec.keyFollowsDocument`), then build those and add the
    /// foreign keys in one final step, as pg_restore orders a restore: each index is built
    /// once, sorted, instead of row by row. The default of a new job (its tables are empty).
    case keysAfter = "keys-after"
    /// Only the foreign keys after the load (`--keys during`); every primary key in place.
    case after
    /// Keep them in place while loading (what etl-job 0.2 and earlier did).
    case during

    /// The foreign keys are added in the final step.
    public var foreignKeysAfter: Bool { self != .during }
}

/// A PostgreSQL identifier, quoted.
public func quoteIdentifier(_ identifier: String) -> String {
    "\"" + identifier.replacingOccurrences(of: "\"", with: "\"\"") + "\""
}

/// A text[] literal of plain names.
func postgresArray(_ items: [String]) -> String {
    "{" + items.map { "\"" + $0.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\"" }.joined(separator: ",") + "}"
}

/// The binary COPY rows of a chunk of documents: one writer per table of a mapping.
public struct TableRows: Sendable {
    public var tables: [BinaryCopyWriter]

    /// No tables (a placeholder to swap with).
    public init() { tables = [] }

    init(_ mapping: any DocumentMapping, documents: Int) {
        tables = mapping.tables.map { BinaryCopyWriter(capacity: documents * $0.bytesPerDocument) }
    }

    /// Starts a row of `fields` values in table `index` and lets `body` write them.
    public mutating func row(_ index: Int, fields: Int, _ body: (inout BinaryCopyWriter) throws -> Void) rethrows {
        tables[index].beginRow(fields: fields)
        try body(&tables[index])
    }
}

/// Documents flattened by a mapping, added whole or not at all: what a batch's COPY sends,
/// and what a mapping's own tests can look at.
public struct MappedRows: Sendable {
    public private(set) var rows: TableRows
    public private(set) var documents = 0
    public let mapping: any DocumentMapping
    public let maxDocumentBytes: Int

    public init(_ mapping: any DocumentMapping, expectedDocuments: Int = 500, maxDocumentBytes: Int = JobSettings.defaultMaxDocumentBytes) {
        rows = TableRows(mapping, documents: expectedDocuments)
        self.mapping = mapping
        self.maxDocumentBytes = maxDocumentBytes
    }

    public var tables: [BinaryCopyWriter] { rows.tables }

    public func rowCount(_ table: Int) -> Int { rows.tables[table].rowCount }

    /// Adds one document's rows, or throws the reason it does not fit and adds nothing.
    public mutating func add(document bytes: UnsafeRawBufferPointer) throws(RejectReason) {
        var unmapped: [UnmappedField] = []
        try add(document: bytes, unmapped: &unmapped)
    }

    /// The same, with the fields the mapping does not name in `unmapped` (also when the
    /// document is set aside for them, by the `set-aside` policy).
    public mutating func add(document bytes: UnsafeRawBufferPointer, unmapped: inout [UnmappedField]) throws(RejectReason) {
        guard bytes.count <= maxDocumentBytes else {
            throw RejectReason("the document is \(megabytes(bytes.count)), more than the \(megabytes(maxDocumentBytes)) limit (--max-document-mb)")
        }
        guard BSON.declaredLength(bytes) == bytes.count else { throw RejectReason("the document is not valid BSON") }
        // Whole, before any field is read: a mapping reads damage as the end of a document.
        if let damage = BSON.damage(in: bytes) { throw RejectReason("\(damage)") }
        let marks = rows.tables.map(\.mark)
        do throws(RejectReason) {
            try mapping.map(bytes, into: &rows, unmapped: &unmapped)
            if mapping.unmappedPolicy == .setAside, let first = unmapped.first {
                throw RejectReason("is not in the mapping (\(article(first.type)); the mapping's policy for unmapped fields is set-aside)", at: first.path)
            }
            documents += 1
        } catch {
            for i in rows.tables.indices { rows.tables[i].rollback(to: marks[i]) }
            throw error
        }
    }
}

private func megabytes(_ bytes: Int) -> String {
    let mb = Double(bytes) / 1_048_576
    return mb.rounded() == mb ? "\(Int(mb)) MB" : String(format: "%.1f MB", mb)
}
