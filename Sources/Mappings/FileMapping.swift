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
        var children: [Int]
        let keyColumns: Int
        /// How a note names a field of this table's objects: "" for the root, `orders[].` for
        /// the entries of `orders`.
        let prefix: String
        /// The fields of an object of this table that a column or child table holds; nil when
        /// a column holds the entry itself (then nothing in it is unmapped).
        let named: Named?
        /// Per column: where `named.walk` puts its value (nil: read with `find`).
        let columnSlots: [Int?]
        /// Per column: whether it holds its field only when that is not an object (other
        /// columns flatten the object, as when a field that was an object became a string).
        let scalarOnly: [Bool]
        /// Per column: the variant columns of the same field, in the order values try them.
        let variants: [[Int]]
        /// Per column: whether it is a variant of another column (written with its value).
        let isVariant: [Bool]
        /// Per child (as in `children`): the variant columns holding its field's values that
        /// are not arrays, in the order values try them.
        let arrayVariants: [[Int]]
        /// Per column: for a variant of a child table, its position in `arrayVariants`, resolved
        /// once (not per row).
        let arrayVariantOf: [Int?]
        /// Whether the last column is the rest column (`keep`).
        let keepsRest: Bool
    }

    public var name: String { file.pipeline }
    public var source: SourceCollection { file.source }
    /// The file as read: recorded with the job.
    public var definition: String? { file.text }
    public var unmappedPolicy: UnmappedPolicy { file.unmapped }

    public init(_ file: MappingFile) {
        self.file = file
        var tables: [TableSpec] = []
        var plans: [Plan] = []
        let keeps = file.unmapped == .keep
        func add(_ table: MappingFile.Table, parent: MappingFile.Table?, prefix: String) -> Int {
            let index = tables.count
            let generated = file.generatedKeyColumns(of: table)
            var columns = generated.enumerated().map { i, name in
                TableSpec.Column(name, i == generated.count - 1 ? "integer" : Self.keyType(file, name, parent: table))
            }
            columns += table.columns.map { TableSpec.Column($0.column, $0.type.sql, nullable: $0.nullable) }
            if keeps { columns.append(TableSpec.Column(UnmappedPolicy.restColumn, "jsonb", nullable: true)) }
            let key = file.keyColumns(of: table)
            let foreignKeys = parent.map { [TableSpec.ForeignKey(Array(key.dropLast()), references: $0.name)] } ?? []
            tables.append(TableSpec(table.name, columns: columns, primaryKey: key, foreignKeys: foreignKeys, unique: table.uniqueSets,
                                    bytesPerDocument: 32 * max(1, table.columns.count)))
            let paths = table.columns.map { Self.path($0.field) }
            let named = paths.contains(where: \.isEmpty) ? nil : Named(paths + table.children.map { Self.path($0.field ?? "") })
            let variants = table.columns.map { main in
                main.variantOf == nil ? table.columns.indices.filter { table.columns[$0].variantOf == main.column } : []
            }
            let arrayVariants = table.children.map { child in table.columns.indices.filter { table.columns[$0].variantOf == child.name } }
            plans.append(Plan(table: index, field: table.field ?? table.name, arrayPath: Self.path(table.field ?? ""), columns: Array(zip(paths, table.columns)),
                              children: [], keyColumns: generated.count, prefix: prefix, named: named,
                              columnSlots: paths.map { named?.slot(of: $0) },
                              scalarOnly: zip(paths, table.columns).map { path, column in
                                  column.type != .jsonb && column.type != .extendedJSON && named?.flattens(path) == true
                              },
                              variants: variants,
                              isVariant: table.columns.map { column in column.variantOf.map { of in !table.children.contains { $0.name == of } } ?? false },
                              arrayVariants: arrayVariants,
                              arrayVariantOf: table.columns.indices.map { i in arrayVariants.firstIndex { $0.contains(i) } }, keepsRest: keeps))
            plans[index].children = table.children.map { add($0, parent: table, prefix: prefix + ($0.field ?? "") + "[].") }
            return index
        }
        _ = add(file.root, parent: nil, prefix: "")
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
        var notes: [Note] = []
        try map(document, into: &rows, notes: &notes)
    }

    public func map(_ document: UnsafeRawBufferPointer, into rows: inout TableRows, unmapped: inout [UnmappedField]) throws(RejectReason) {
        var notes: [Note] = []
        defer { for note in notes { unmapped.append(UnmappedField(path: name(of: note), type: note.value.type)) } }
        try map(document, into: &rows, notes: &notes)
    }

    private func map(_ document: UnsafeRawBufferPointer, into rows: inout TableRows, notes: inout [Note]) throws(RejectReason) {
        guard let root = BSONIterator(document: document) else { throw RejectReason("the document is not valid BSON") }
        let keyValue = try Self.find(rootKeyPath, in: root, element: nil)
        guard let keyValue, keyValue.type != .null else { throw RejectReason("is missing", at: rootKey.field) }
        try emit(plans[0], document: root, element: nil, key: Key(root: keyValue, type: rootKey.type, positions: []), into: &rows, notes: &notes)
    }

    /// The same file with another policy; its definition (recorded with the job) says it, so
    /// that a resume, sync, worker or verify of the job follows the policy the job started with.
    public func with(unmappedPolicy: UnmappedPolicy) -> (any DocumentMapping)? {
        guard unmappedPolicy != file.unmapped else { return self }
        var file = file
        file.unmapped = unmappedPolicy
        file.text = file.rendered
        return FileMapping(file)
    }

    public func inForce(definition: String) throws -> any DocumentMapping {
        FileMapping(try MappingFile(json: Data(definition.utf8)))
    }

    /// A field of one object that the mapping does not hold (`variantOf` and `notArrayOf`
    /// nil), a value its column cannot hold (the column's index), or a value that is not the
    /// array a child table reads (the child's plan): where, in which table's objects, the value.
    struct Note {
        let plan: Int
        let path: [String]
        let variantOf: Int?
        var notArrayOf: Int? = nil
        let value: BSONIterator
    }

    private func name(of note: Note) -> String { plans[note.plan].prefix + note.path.joined(separator: ".") }

    /// A row's key: the root key's value and the positions down to it.
    private struct Key {
        let root: BSONIterator
        let type: ColumnType
        let positions: [Int32]
    }

    private func emit(_ plan: Plan, document: BSONIterator?, element: BSONIterator?, key: Key, into rows: inout TableRows,
                      notes: inout [Note]) throws(RejectReason) {
        var failure: RejectReason?
        if let document, let named = plan.named {
            // One pass over the object finds every named field (each column's value, without a
            // search per column) and notes the others.
            withUnsafeTemporaryAllocation(of: BSONIterator?.self, capacity: named.count) { found in
                found.initialize(repeating: nil)
                let first = notes.count
                named.walk(document, found: found) { path, value in notes.append(Note(plan: plan.table, path: path, variantOf: nil, value: value)) }
                failure = row(plan, key: key, unnamed: first..<notes.count, into: &rows, notes: &notes) { i, path throws(RejectReason) in
                    if let slot = plan.columnSlots[i] { return found[slot] }
                    return try Self.find(path, in: document, element: element)
                }
            }
        } else {
            failure = row(plan, key: key, unnamed: notes.count..<notes.count, into: &rows, notes: &notes) { _, path throws(RejectReason) in
                try Self.find(path, in: document, element: element)
            }
        }
        if let failure { throw failure }
        for (c, childIndex) in plan.children.enumerated() {
            let child = plans[childIndex]
            let field = child.field
            guard let array = try Self.find(child.arrayPath, in: document, element: nil), array.type != .null, array.type != .undefined else { continue }
            guard array.type == .array, var entries = array.children else {
                // Not the array the child table reads: a variant column of the field holds it, or under evolve will.
                if plan.arrayVariants[c].contains(where: { plan.columns[$0].column.type.fits(array) }) { continue }
                if file.unmapped == .evolve {
                    notes.append(Note(plan: plan.table, path: child.arrayPath, variantOf: nil, notArrayOf: childIndex, value: array))
                    continue
                }
                throw RejectReason("is \(article(array.type)), expected an array", at: field)
            }
            var position: Int32 = 0
            while entries.next() {
                let isDocument = entries.type == .document
                do {
                    try emit(child, document: isDocument ? entries.children : nil, element: entries,
                             key: Key(root: key.root, type: key.type, positions: key.positions + [position]), into: &rows, notes: &notes)
                } catch {
                    throw error.inside("[\(position)]").inside(field)
                }
                position += 1
            }
        }
    }

    /// Writes one row of `plan`'s table: the key columns, each column's value (`value(i,
    /// path)`), a variant's value where its column cannot hold it (or, under `evolve`, a note
    /// for the variant to add), and the rest column of the fields `unnamed` notes. Returns the
    /// first field that does not fit.
    private func row(_ plan: Plan, key: Key, unnamed: Range<Int>, into rows: inout TableRows, notes: inout [Note],
                     value: (Int, [String]) throws(RejectReason) -> BSONIterator?) -> RejectReason? {
        let fields = plan.keyColumns + plan.columns.count + (plan.keepsRest ? 1 : 0)
        var failure: RejectReason?
        // A value its column cannot hold, for the variant column (by index) that holds it.
        var forVariant: [(column: Int, value: BSONIterator)] = []
        rows.row(plan.table, fields: fields) { w in
            if plan.keyColumns > 0 {
                try? key.type.write(key.root, nullable: false, into: &w)
                for position in key.positions { w.int4(position) }
            }
            for (i, (path, column)) in plan.columns.enumerated() {
                if plan.isVariant[i] {
                    if let held = forVariant.first(where: { $0.column == i }) { try? column.type.write(held.value, nullable: true, into: &w) } else { w.null() }
                    continue
                }
                if let child = plan.arrayVariantOf[i] {
                    // The first variant of the child's field that holds a value that is not an array.
                    let found = try? value(i, path)
                    if let found, found.type != .array, found.type != .null, found.type != .undefined,
                       plan.arrayVariants[child].first(where: { plan.columns[$0].column.type.fits(found) }) == i {
                        try? column.type.write(found, nullable: true, into: &w)
                    } else {
                        w.null()
                    }
                    continue
                }
                do throws(RejectReason) {
                    var found = try value(i, path)
                    // An object here is held by the columns that flatten it.
                    if plan.scalarOnly[i], found?.type == .document { found = nil }
                    let mark = w.mark
                    do throws(RejectReason) {
                        try column.type.write(found, nullable: column.nullable, into: &w)
                    } catch {
                        guard let found, found.type != .null, found.type != .undefined, !column.key else { throw error }
                        w.rollback(to: mark)
                        if let variant = plan.variants[i].first(where: { plan.columns[$0].column.type.fits(found) }) {
                            forVariant.append((variant, found))
                        } else if file.unmapped == .evolve, ColumnType.variant(for: found.type) != column.type, ColumnType.variant(for: found.type).fits(found) {
                            notes.append(Note(plan: plan.table, path: path, variantOf: i, value: found))
                        } else {
                            throw error
                        }
                        w.null()
                    }
                } catch {
                    failure = failure ?? (column.field.isEmpty ? error : error.inside(column.field))
                    w.null()
                }
            }
            if plan.keepsRest {
                guard !unnamed.isEmpty else { return w.null() }
                let mark = w.mark
                do {
                    try w.jsonb { j in try Self.object(notes[unnamed], depth: 0, into: &j) }
                } catch {
                    failure = failure ?? (error as? RejectReason ?? RejectReason("\(error)")).inside(UnmappedPolicy.restColumn)
                    w.rollback(to: mark)
                    w.null()
                }
            }
        }
        return failure
    }

    /// The rest column's object: each noted field under its key, inside objects for its path.
    private static func object(_ notes: ArraySlice<Note>, depth: Int, into j: inout JSONText) throws(RejectReason) {
        j.raw("{")
        var i = notes.startIndex
        while i < notes.endIndex {
            let key = notes[i].path[depth]
            if i > notes.startIndex { j.raw(", ") }
            Array(key.utf8).withUnsafeBytes { j.string($0) }
            j.raw(": ")
            if notes[i].path.count == depth + 1 {
                try j.value(notes[i].value)
                i += 1
            } else {
                // The fields under one object the mapping flattens are noted one after another.
                var end = i
                while end < notes.endIndex, notes[end].path.count > depth + 1, notes[end].path[depth] == key { end += 1 }
                try object(notes[i..<end], depth: depth + 1, into: &j)
                i = end
            }
        }
        j.raw("}")
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

/// The fields of an object that a mapping's columns and child tables name, as a tree of keys:
/// a key that a column or child table reads whole ends there; a key the mapping flattens
/// (`dims` of `dims.w`) leads to the keys it names inside.
final class Named: Sendable {
    private let names: [String]
    private let keys: [[CChar]]
    /// The keys named inside each key's object (nil: none).
    private let inner: [Named?]
    /// Whether a column (or child table) reads each key's value itself.
    private let whole: [Bool]
    /// Where `walk` puts each key's value: a number per key of the whole tree.
    private let slots: [Int]
    /// How many slots the tree numbers (the size of `walk`'s `found`).
    let count: Int
    /// How deep the tree goes.
    private let depth: Int

    convenience init(_ paths: [[String]]) {
        var next = 0
        self.init(paths, next: &next)
    }

    private init(_ paths: [[String]], next: inout Int) {
        var order: [String] = []
        var groups: [String: [[String]]] = [:]
        for path in paths where !path.isEmpty {
            if groups[path[0]] == nil { order.append(path[0]) }
            groups[path[0], default: []].append(Array(path.dropFirst()))
        }
        names = order
        keys = order.map { Array($0.utf8CString) }
        var slots: [Int] = [], inner: [Named?] = [], whole: [Bool] = []
        for key in order {
            slots.append(next)
            next += 1
            let rest = groups[key]!
            whole.append(rest.contains(where: \.isEmpty))
            let deeper = rest.filter { !$0.isEmpty }
            inner.append(deeper.isEmpty ? nil : Named(deeper, next: &next))
        }
        self.slots = slots
        self.inner = inner
        self.whole = whole
        count = next
        depth = 1 + (inner.compactMap { $0?.depth }.max() ?? 0)
    }

    /// Whether `path` leads to keys named inside it (its object is flattened).
    func flattens(_ path: [String]) -> Bool {
        guard let first = path.first, let i = names.firstIndex(of: first), let inner = inner[i] else { return false }
        return path.count == 1 || inner.flattens(Array(path.dropFirst()))
    }

    /// Where `walk` puts the value at `path`; nil when the tree does not reach it.
    func slot(of path: [String]) -> Int? {
        guard let first = path.first, let i = names.firstIndex(of: first) else { return nil }
        return path.count == 1 ? slots[i] : inner[i]?.slot(of: Array(path.dropFirst()))
    }

    /// Puts the value of each named key of `object` in `found` (the first, for a key that
    /// repeats), and calls `note` with the path (from `object`) and value of each field no
    /// column holds, in document order; nulls hold nothing and are passed over.
    func walk(_ object: BSONIterator, found: UnsafeMutableBufferPointer<BSONIterator?>, _ note: ([String], BSONIterator) -> Void) {
        withUnsafeTemporaryAllocation(of: UnsafePointer<CChar>.self, capacity: depth) { ancestors in
            walk(object, found: found, ancestors: ancestors, level: 0, note)
        }
    }

    private func walk(_ object: BSONIterator, found: UnsafeMutableBufferPointer<BSONIterator?>, ancestors: UnsafeMutableBufferPointer<UnsafePointer<CChar>>,
                      level: Int, _ note: ([String], BSONIterator) -> Void) {
        func path(_ it: BSONIterator) -> [String] { (0..<level).map { String(cString: ancestors[$0]) } + [it.key] }
        var it = object
        var next = 0
        while it.next() {
            let holds = it.type != .null && it.type != .undefined
            // Documents usually hold their fields in the mapping's order: try the next one first.
            let index = next < keys.count && strcmp(it.keyPointer, keys[next]) == 0 ? next
                : keys.indices.first { strcmp(it.keyPointer, keys[$0]) == 0 } ?? -1
            guard index >= 0 else {
                if holds { note(path(it), it) }
                continue
            }
            next = index + 1
            if found[slots[index]] == nil { found[slots[index]] = it }
            guard let named = inner[index], holds else { continue }
            if it.type == .document, let child = it.children {
                ancestors[level] = it.keyPointer
                named.walk(child, found: found, ancestors: ancestors, level: level + 1, note)
            } else if !whole[index] {
                // A value where the mapping reads an object: none of its columns holds it.
                note(path(it), it)
            }
        }
    }
}

extension FileMapping {
    /// The mapping grown to hold what `documents` bring that it does not name, as `init`
    /// would have mapped it had its sample seen them: a scalar a new nullable column, an object
    /// flattened into columns (`vip.level` → `vip_level`), an array of scalars an array column,
    /// an array of objects a new child table; a value its column cannot hold a variant column
    /// (`age__text`). Every new column is nullable: the documents loaded before lack it.
    public func evolved(holding documents: [[UInt8]], taken: Set<String>) -> Evolution? {
        var fields: [Int: (order: [[String]], leaves: [[String]: Inference.Field])] = [:]
        var variants: [Int: [(column: Int, type: ColumnType)]] = [:]
        var notArrays: [Int: [(child: Int, type: ColumnType)]] = [:]
        for document in documents {
            document.withUnsafeBytes { raw in
                var rows = TableRows()
                rows.tables = tables.map { _ in BinaryCopyWriter(capacity: 256) }
                var notes: [Note] = []
                try? map(raw, into: &rows, notes: &notes)
                for note in notes {
                    if let child = note.notArrayOf {
                        let type = ColumnType.variant(for: note.value.type)
                        if !(notArrays[note.plan] ?? []).contains(where: { $0.child == child && $0.type == type }) {
                            notArrays[note.plan, default: []].append((child, type))
                        }
                        continue
                    }
                    if let column = note.variantOf {
                        let type = ColumnType.variant(for: note.value.type)
                        if !(variants[note.plan] ?? []).contains(where: { $0.column == column && $0.type == type }) {
                            variants[note.plan, default: []].append((column, type))
                        }
                        continue
                    }
                    // A name that cannot be a path of a mapping file stays unmapped (its document is set aside).
                    guard note.path.allSatisfy({ !$0.isEmpty && !$0.contains(".") }) else { continue }
                    // Each path's values on their own: each is described at its place, named by its path.
                    var entry = fields[note.plan] ?? ([], [:])
                    if entry.leaves[note.path] == nil {
                        entry.order.append(note.path)
                        entry.leaves[note.path] = Inference.Field()
                    }
                    Inference.value(note.value, into: entry.leaves[note.path]!)
                    fields[note.plan] = entry
                }
            }
        }
        guard !fields.isEmpty || !variants.isEmpty || !notArrays.isEmpty else { return nil }
        var top = file.dictionary
        var tableNames = Set(tables.map(\.name)).union(taken)
        var changes: [String] = []
        var destinations: [String: String] = [:]
        let inference = Inference()
        for (index, plan) in plans.enumerated() where fields[index] != nil || variants[index] != nil || notArrays[index] != nil {
            let table = tables[plan.table]
            var members = Self.tableMembers(&top, at: route(to: index))
            var columns = members["columns"] as? [[String: Any]] ?? []
            var children = members["children"] as? [[String: Any]] ?? []
            var used = Set(table.columns.map(\.name))
            for (column, type) in variants[index] ?? [] {
                let main = plan.columns[column].column
                let name = Inference.unique(main.column + "__" + type.variantSuffix, &used)
                columns.append(["field": main.field, "column": name, "type": type.fileName, "nullable": true, "variantOf": main.column])
                if let at = columns.firstIndex(where: { $0["column"] as? String == main.column }) { columns[at]["nullable"] = true }
                changes.append("\(plan.prefix + main.field) (\(type.fileName) values) → \(table.name).\(name) \(type.sql)")
                destinations[plan.prefix + main.field] = "\(table.name).\(name)"
            }
            for (child, type) in notArrays[index] ?? [] {
                let childTable = tables[plans[child].table].name
                let name = Inference.unique((plans[child].arrayPath.last ?? childTable) + "__" + type.variantSuffix, &used)
                columns.append(["field": plans[child].field, "column": name, "type": type.fileName, "nullable": true, "variantOf": childTable])
                changes.append("\(plan.prefix + plans[child].field) (\(type.fileName) values, not arrays) → \(table.name).\(name) \(type.sql)")
                destinations[plan.prefix + plans[child].field] = "\(table.name).\(name)"
            }
            for path in fields[index]?.order ?? [] {
                let dotted = path.joined(separator: ".")
                var notes: [String: String] = [:]
                let (columnsBefore, childrenBefore) = (columns.count, children.count)
                inference.describe(fields[index]!.leaves[path]!, path: dotted, prefix: path.dropLast().map { $0 + "_" }.joined(), parentCount: .max,
                                   table: table.name, context: plan.prefix, columns: &columns, children: &children, used: &used,
                                   tables: &tableNames, notes: &notes)
                let added = columns[columnsBefore...].map { "\(table.name).\($0["column"]!)" } + children[childrenBefore...].map { "\($0["table"]!)" }
                for i in columnsBefore..<columns.count {
                    columns[i]["nullable"] = true
                    changes.append("\(plan.prefix + (columns[i]["field"] as! String)) → \(table.name).\(columns[i]["column"]!) \(columns[i]["type"]!)")
                }
                for i in childrenBefore..<children.count {
                    children[i] = Self.nullable(children[i])
                    changes.append("\(plan.prefix + dotted)[] → child table \(children[i]["table"]!)")
                }
                // A value where the mapping flattens an object: the object's columns may be absent now.
                for (i, column) in columns.enumerated() where (column["field"] as? String)?.hasPrefix(dotted + ".") == true && column["nullable"] as? Bool != true {
                    columns[i]["nullable"] = true
                    changes.append("\(table.name).\(column["column"]!) nullable (\(plan.prefix + dotted) is not always an object)")
                }
                destinations[plan.prefix + dotted] = added.joined(separator: ", ")
            }
            members["columns"] = columns
            members["children"] = children
            Self.setTableMembers(&top, at: route(to: index), members)
        }
        guard let file = try? MappingFile(json: Data(MappingText.render(top).utf8)) else { return nil }
        return Evolution(mapping: FileMapping(file), changes: changes, destinations: destinations)
    }

    /// The child positions from the root down to plan `index` (empty for the root).
    private func route(to index: Int) -> [Int] {
        func search(_ plan: Int, _ path: [Int]) -> [Int]? {
            if plan == index { return path }
            for (i, child) in plans[plan].children.enumerated() {
                if let found = search(child, path + [i]) { return found }
            }
            return nil
        }
        return search(0, []) ?? []
    }

    private static func tableMembers(_ top: inout [String: Any], at route: [Int]) -> [String: Any] {
        var table = top
        for i in route { table = (table["children"] as! [[String: Any]])[i] }
        return table
    }

    private static func setTableMembers(_ table: inout [String: Any], at route: [Int], _ members: [String: Any]) {
        guard let first = route.first else {
            for (key, value) in members { table[key] = value }
            return
        }
        var children = table["children"] as! [[String: Any]]
        setTableMembers(&children[first], at: Array(route.dropFirst()), members)
        table["children"] = children
    }

    /// A new child table (and its children) with every column nullable.
    private static func nullable(_ table: [String: Any]) -> [String: Any] {
        var table = table
        table["columns"] = (table["columns"] as? [[String: Any]] ?? []).map { column in
            var column = column
            column["nullable"] = true
            return column
        }
        table["children"] = (table["children"] as? [[String: Any]] ?? []).map(nullable)
        return table
    }
}
