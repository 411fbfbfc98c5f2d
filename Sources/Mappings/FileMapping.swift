import DurableETL
import Foundation
import Mongo
import Postgres

/// A mapping file as a pipeline: its tables (a child table's key is its parent's key plus
/// the entry's position, with a foreign key to the parent, to any depth) and the document →
/// rows function that follows the file.
public struct FileMapping: DocumentMapping {
    public let file: MappingFile
    public let tables: [TableSpec]
    /// Per table (in `tables` order): how to fill it.
    private let plans: [Plan]

    struct Plan: Sendable {
        let table: Int
        /// The table's array field as written in the file, for rejection paths (children only).
        let field: String
        /// The path of the table's array in its parent's document (children only).
        let arrayPath: [String]
        let columns: [(path: [String], column: MappingFile.Column)]
        let children: [Int]
        let keyColumns: Int
    }

    public var name: String { file.pipeline }
    public var source: SourceCollection { file.source }
    /// The file as read: recorded with the job.
    public var definition: String? { file.text }

    public init(_ file: MappingFile) {
        self.file = file
        var tables: [TableSpec] = []
        var plans: [Plan] = []
        func add(_ table: MappingFile.Table, parent: MappingFile.Table?) -> Int {
            let index = tables.count
            let generated = file.generatedKeyColumns(of: table)
            var columns = generated.enumerated().map { i, name in
                TableSpec.Column(name, i == generated.count - 1 ? "integer" : Self.keyType(file, name, parent: table))
            }
            columns += table.columns.map { TableSpec.Column($0.column, $0.type.sql, nullable: $0.nullable) }
            let key = file.keyColumns(of: table)
            let foreignKeys = parent.map { [TableSpec.ForeignKey(Array(key.dropLast()), references: $0.name)] } ?? []
            tables.append(TableSpec(table.name, columns: columns, primaryKey: key, foreignKeys: foreignKeys, unique: table.uniqueSets,
                                    bytesPerDocument: 32 * max(1, table.columns.count)))
            plans.append(Plan(table: index, field: table.field ?? table.name, arrayPath: Self.path(table.field ?? ""), columns: table.columns.map { (Self.path($0.field), $0) },
                              children: [], keyColumns: generated.count))
            let children = table.children.map { add($0, parent: table) }
            plans[index] = Plan(table: index, field: plans[index].field, arrayPath: plans[index].arrayPath, columns: plans[index].columns, children: children,
                                keyColumns: generated.count)
            return index
        }
        _ = add(file.root, parent: nil)
        self.tables = tables
        self.plans = plans
        rootKey = file.root.columns.first(where: \.key)!
        rootKeyPath = Self.path(rootKey.field)
    }

    /// The root table's key column and its path, resolved once (not per document).
    private let rootKey: MappingFile.Column
    private let rootKeyPath: [String]

    /// The SQL type of an inherited key column: the root key's type, or integer for a position.
    private static func keyType(_ file: MappingFile, _ name: String, parent: MappingFile.Table) -> String {
        let rootKey = file.root.columns.first(where: \.key)!
        return name == file.root.name + "_" + rootKey.column ? rootKey.type.sql : "integer"
    }

    static func path(_ field: String) -> [String] {
        field.isEmpty ? [] : field.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
    }

    /// A document's rows are found by its root key (the first column of every table's key),
    /// when that key is its `_id`: what a change stream names a deleted document by.
    public var documentKeyType: UInt32? { rootKey.field == "_id" ? rootKey.type.oid : nil }

    /// A number as itself; a text key of 24 hex digits as the ObjectId it most likely was, other
    /// text as the string; an extjson key is already in that form.
    public func displayId(ofKey key: String) -> String? {
        guard rootKey.field == "_id" else { return nil }
        switch rootKey.type {
        case .integer, .bigint, .extendedJSON: return key
        case .text:
            let digits = Array(key.utf8)
            guard digits.count == 24, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 || $0 >= 0x61 && $0 <= 0x66 }) else { return "\"" + key + "\"" }
            let document = BSONDocument()
            document.writer.append("_id", objectId: stride(from: 0, to: 24, by: 2).map { UInt8(String(decoding: digits[$0..<$0 + 2], as: UTF8.self), radix: 16)! })
            return document.withUnsafeBytes(BSONSequence.displayId)
        default: return nil
        }
    }

    public func documentKey(_ document: UnsafeRawBufferPointer, into key: inout BinaryCopyWriter) throws(RejectReason) {
        guard let root = BSONIterator(document: document) else { throw RejectReason("the document is not valid BSON") }
        let value = try Self.find(rootKeyPath, in: root, element: nil)
        guard let value, value.type != .null else { throw RejectReason("is missing", at: rootKey.field) }
        do throws(RejectReason) {
            try rootKey.type.write(value, nullable: false, into: &key)
        } catch {
            throw error.inside(rootKey.field)
        }
    }

    public func map(_ document: UnsafeRawBufferPointer, into rows: inout TableRows) throws(RejectReason) {
        guard let root = BSONIterator(document: document) else { throw RejectReason("the document is not valid BSON") }
        let keyValue = try Self.find(rootKeyPath, in: root, element: nil)
        guard let keyValue, keyValue.type != .null else { throw RejectReason("is missing", at: rootKey.field) }
        try emit(plans[0], document: root, element: nil, key: Key(root: keyValue, type: rootKey.type, positions: []), into: &rows)
    }

    /// A row's key: the root key's value and the positions down to it.
    private struct Key {
        let root: BSONIterator
        let type: ColumnType
        let positions: [Int32]
    }

    private func emit(_ plan: Plan, document: BSONIterator?, element: BSONIterator?, key: Key, into rows: inout TableRows) throws(RejectReason) {
        let fields = plan.keyColumns + plan.columns.count
        var failure: RejectReason?
        rows.row(plan.table, fields: fields) { w in
            if plan.keyColumns > 0 {
                try? key.type.write(key.root, nullable: false, into: &w)
                for position in key.positions { w.int4(position) }
            }
            for (path, column) in plan.columns {
                do throws(RejectReason) {
                    let value = try Self.find(path, in: document, element: element)
                    try column.type.write(value, nullable: column.nullable, into: &w)
                } catch {
                    failure = failure ?? (column.field.isEmpty ? error : error.inside(column.field))
                    w.null()
                }
            }
        }
        if let failure { throw failure }
        for childIndex in plan.children {
            let child = plans[childIndex]
            let field = child.field
            guard let array = try Self.find(child.arrayPath, in: document, element: nil), array.type != .null else { continue }
            guard array.type == .array, var entries = array.children else {
                throw RejectReason("is \(article(array.type)), expected an array", at: field)
            }
            var position: Int32 = 0
            while entries.next() {
                let isDocument = entries.type == .document
                do {
                    try emit(child, document: isDocument ? entries.children : nil, element: entries,
                             key: Key(root: key.root, type: key.type, positions: key.positions + [position]), into: &rows)
                } catch {
                    throw error.inside("[\(position)]").inside(field)
                }
                position += 1
            }
        }
    }

    /// The value at `path` in `document` (nil when absent); an empty path is the array
    /// element itself. A path through something that is not an object is absent.
    static func find(_ path: [String], in document: BSONIterator?, element: BSONIterator?) throws(RejectReason) -> BSONIterator? {
        guard !path.isEmpty else { return element }
        guard var current = document else {
            throw RejectReason("is \(element.map { article($0.type) } ?? "missing"), expected an object")
        }
        for (i, key) in path.enumerated() {
            guard current.find(key: key) else { return nil }
            if i == path.count - 1 { return current }
            guard current.type == .document, let child = current.children else { return nil }
            current = child
        }
        return nil
    }
}
