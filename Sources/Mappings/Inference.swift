import DurableETL
import Foundation
import Mongo

/// What `etl-job init` learns from a sample of documents, and the mapping file it proposes.
///
/// Rules: int32 → integer; int32 and int64 → bigint; any other mix of numbers (double,
/// Decimal128) → numeric (exact), double alone → double precision; string → text; bool →
/// boolean; date → timestamptz; ObjectId → text (its hex); binary of subtype 4 → uuid, other
/// binary → bytea. Objects that read as records are flattened into the parent's columns
/// (`dims.w` → `dims_w`, a key absent from some objects nullable); objects that read as maps
/// (id-like keys, or many keys each in few objects), and mixtures of other types, → jsonb.
/// Arrays of objects → a child table `<table>_<field>` keyed by the parent's key and the
/// position; arrays of one scalar type → a PostgreSQL array; anything else → jsonb. A field
/// absent from (or null in) any sampled document is nullable.
public struct Inference {
    /// Statistics of one field over the sample.
    final class Field {
        var present = 0
        var nulls = 0
        var types: [BSONType: Int] = [:]
        var binarySubtypes = Set<UInt8>()
        var children: [String: Field] = [:]
        var order: [String] = []
        var objects = 0
        var element: Field?
        var arrays = 0

        func child(_ key: String) -> Field {
            if let found = children[key] { return found }
            let field = Field()
            children[key] = field
            order.append(key)
            return field
        }
    }

    let root = Field()
    public private(set) var documents = 0
    /// Sampled documents that are damaged inside, left out of the evidence (a damaged document
    /// would read as one whose later fields are absent, and make them nullable): `_id` and
    /// where, the first few.
    public private(set) var damaged: [String] = []
    public private(set) var damagedCount = 0

    public init() {}

    /// Adds one sampled document, unless it is damaged.
    public mutating func add(_ document: UnsafeRawBufferPointer) {
        if let damage = BSON.damage(in: document) {
            damagedCount += 1
            if damaged.count < 5 { damaged.append("_id \(BSONSequence.displayId(document)): \(damage)") }
            return
        }
        guard let it = BSONIterator(document: document) else { return }
        documents += 1
        root.present += 1
        Self.object(it, into: root)
    }

    private static func object(_ iterator: BSONIterator, into field: Field) {
        var it = iterator
        field.objects += 1
        while it.next() {
            value(it, into: field.child(it.key))
        }
    }

    static func value(_ it: BSONIterator, into field: Field) {
        guard it.type != .null && it.type != .undefined else {
            field.nulls += 1
            return
        }
        field.present += 1
        field.types[it.type, default: 0] += 1
        switch it.type {
        case .document:
            if let child = it.children { object(child, into: field) }
        case .array:
            field.arrays += 1
            let element = field.element ?? Field()
            field.element = element
            if var items = it.children {
                while items.next() { value(items, into: element) }
            }
        case .binary:
            if let (subtype, _) = it.binary { field.binarySubtypes.insert(subtype) }
        default:
            break
        }
    }

    // MARK: Proposing a mapping

    /// The mapping file for `source`, as JSON, with the evidence in `notes`.
    /// `takenTables`: names other pipelines of the same job already use (a whole database's).
    public func mapping(source: SourceCollection, uniqueIndexes: [UniqueIndex] = [], takenTables: Set<String> = []) -> [String: Any] {
        var notes: [String: String] = [:]
        var tables = takenTables
        let table = tableName(source.collection, &tables)
        let idField = root.children["_id"]
        var columns: [[String: Any]] = []
        if let id = idField {
            // _ids of several types (or documents) keep every value distinct as extended JSON
            // text: jsonb would merge documents whose members differ only in order, and an
            // ObjectId with the string of its hex.
            let type = scalarType(id) ?? "extjson"
            columns.append(["field": "_id", "column": "id", "type": type, "key": true])
            notes["_id"] = evidence(id, of: documents) + (scalarType(id) == nil ? "; several types or objects: an extjson key (Relaxed Extended JSON text, member order kept) keeps them distinct" : "")
        }
        var used: Set<String> = ["id"]
        var children: [[String: Any]] = []
        for key in root.order where key != "_id" {
            describe(root.children[key]!, path: key, prefix: "", parentCount: documents, table: table, context: "",
                     columns: &columns, children: &children, used: &used, tables: &tables, notes: &notes)
        }
        // A pipeline is named after its collection unless that is not a pipeline name.
        let pipeline = Self.pipelineName(source.collection)
        if pipeline != source.collection {
            notes["(pipeline)"] = "the collection's name '\(source.collection)' is not a pipeline name (letters, digits, - and _, starting with a letter): "
                + "the pipeline is named '\(pipeline)'; rename it as you like"
        }
        let (groups, indexNotes) = Self.carry(uniqueIndexes, into: &columns)
        if !indexNotes.isEmpty { notes["(unique indexes)"] = indexNotes.joined(separator: "; ") }
        var mapping: [String: Any] = [
            "formatVersion": MappingFile.formatVersion,
            "source": ["database": source.database, "collection": source.collection],
            "unmapped": UnmappedPolicy.evolve.rawValue,
            "table": table,
            "columns": columns,
            "children": children,
            "notes": notes.merging(sampleNotes) { a, _ in a },
        ]
        if pipeline != source.collection { mapping["pipeline"] = pipeline }
        if !groups.isEmpty { mapping["unique"] = groups }
        return mapping
    }

    /// The source's unique indexes as the root table's constraints: one on a single column is
    /// `"unique": true` on it, a compound one a group of the table's `unique`. An index is left
    /// out (and the note says why) when it is partial, or when a field of it is not a column
    /// of the root table, or is an array (MongoDB then keeps each element unique).
    static func carry(_ indexes: [UniqueIndex], into columns: inout [[String: Any]]) -> (groups: [[String]], notes: [String]) {
        var groups: [[String]] = [], notes: [String] = []
        for index in indexes {
            if index.partial {
                notes.append("\(index.name): partial, not carried (no table constraint holds for only some rows)")
                continue
            }
            let found = index.fields.compactMap { field in columns.firstIndex { ($0["field"] as? String) == field } }
            guard found.count == index.fields.count else {
                notes.append("\(index.name): a field of it is not a column of the root table (it is in an array or a jsonb column), not carried")
                continue
            }
            guard !found.contains(where: { (columns[$0]["type"] as? String)?.hasSuffix("[]") == true }) else {
                notes.append("\(index.name): on an array, whose every element MongoDB keeps unique, which no column constraint says; not carried")
                continue
            }
            let names = found.map { columns[$0]["column"] as! String }
            if found.count == 1 { columns[found[0]]["unique"] = true } else { groups.append(names) }
            notes.append("\(index.name) → UNIQUE (\(names.joined(separator: ", ")))")
        }
        return (groups, notes)
    }

    /// Whether any sampled document has an `_id`: without one a document's rows have no key.
    public var sawIds: Bool { root.children["_id"] != nil }

    /// `name` as a pipeline name: each character that is not an ASCII letter, digit, - or _
    /// becomes _, and a name that does not start with a letter gets a `c_` in front.
    public static func pipelineName(_ name: String) -> String {
        var derived = String(name.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") ? $0 : "_" })
        if derived.first?.isLetter != true { derived = "c_" + derived }
        return derived
    }

    private var sampleNotes: [String: String] {
        var notes = ["(sample)": "\(documents) documents read; delete this member when you have reviewed the mapping"]
        if damagedCount > 0 {
            notes["(damaged)"] = "\(damagedCount) sampled documents are damaged BSON and were left out (a load sets them aside): "
                + damaged.joined(separator: "; ")
        }
        return notes
    }

    /// Adds the columns (or child tables) for one field of a table's documents.
    func describe(
        _ field: Field, path: String, prefix: String, parentCount: Int, table: String, context: String,
        columns: inout [[String: Any]], children: inout [[String: Any]], used: inout Set<String>,
        tables: inout Set<String>, notes: inout [String: String]
    ) {
        let nullable = field.present < parentCount || field.nulls > 0
        let column = Self.unique(prefix + path.split(separator: ".").last.map(String.init)!, &used)
        let onlyObjects = field.types.keys.allSatisfy { $0 == .document } && !field.types.isEmpty
        let onlyArrays = field.types.keys.allSatisfy { $0 == .array } && !field.types.isEmpty
        if onlyObjects && stableKeys(field) {
            for key in field.order {
                describe(field.children[key]!, path: path + "." + key, prefix: column + "_", parentCount: field.objects,
                         table: table, context: context, columns: &columns, children: &children, used: &used, tables: &tables, notes: &notes)
            }
            // A nullable object makes each of its fields nullable.
            if nullable { for i in columns.indices where (columns[i]["field"] as? String)?.hasPrefix(path + ".") == true { columns[i]["nullable"] = true } }
            return
        }
        if onlyArrays, let element = field.element, element.types.keys.allSatisfy({ $0 == .document }), !element.types.isEmpty, stableKeys(element) {
            let child = tableName(table + "_" + column, &tables)
            var childColumns: [[String: Any]] = []
            var childChildren: [[String: Any]] = []
            var childUsed: Set<String> = ["position"]
            for key in element.order {
                describe(element.children[key]!, path: key, prefix: "", parentCount: element.objects, table: child,
                         context: context + path + "[].", columns: &childColumns, children: &childChildren, used: &childUsed, tables: &tables, notes: &notes)
            }
            children.append(["field": path, "table": child, "columns": childColumns, "children": childChildren])
            notes[context + path] = evidence(field, of: parentCount) + "; arrays of objects → child table \(child) (\(element.present) entries)"
            return
        }
        var type = "jsonb"
        if let scalar = scalarType(field) {
            type = scalar
        } else if onlyArrays, let element = field.element, let elementType = scalarType(element), elementType != "jsonb", element.nulls == 0 {
            type = elementType + "[]"
        }
        var entry: [String: Any] = ["field": path, "column": column, "type": type]
        if nullable { entry["nullable"] = true }
        columns.append(entry)
        notes[context + path] = evidence(field, of: parentCount)
    }

    /// The scalar column type for a field's values, nil when they are objects, arrays or a mixture.
    private func scalarType(_ field: Field) -> String? {
        let types = Set(field.types.keys)
        guard !types.isEmpty else { return nil }
        let numbers: Set<BSONType> = [.int32, .int64, .double, .decimal128]
        if types.isSubset(of: numbers) {
            if types == [.int32] { return "integer" }
            if types.isSubset(of: [.int32, .int64]) { return "bigint" }
            if types == [.double] { return "double precision" }
            return "numeric"
        }
        guard types.count == 1, let type = types.first else { return nil }
        switch type {
        case .utf8: return "text"
        case .bool: return "boolean"
        case .dateTime: return "timestamptz"
        case .objectId: return "text"
        case .binary: return field.binarySubtypes == [4] ? "uuid" : "bytea"
        default: return nil
        }
    }

    /// An object is a record, flattened into a column per key (nullable where the key is
    /// absent from some objects, however rare), unless it reads as a map from keys to values:
    /// keys that look like ids (digits, 16 or more hex digits, UUIDs) for most of its keys, more
    /// than 32 distinct keys, or 8 or more keys most of which appear in under a tenth of the
    /// objects. A map stays one jsonb column, which keeps every key.
    private func stableKeys(_ field: Field) -> Bool {
        guard field.objects > 0 else { return false }
        let keys = field.order
        guard keys.count <= 32 else { return false }
        guard 2 * keys.filter(Self.looksLikeId).count <= keys.count else { return false }
        let rare = field.children.values.filter { 10 * ($0.present + $0.nulls) < field.objects }.count
        return keys.count < 8 || 2 * rare <= keys.count
    }

    /// A key that names an entity rather than a property: `2019`, `5f1e…` (16+ hex digits), a UUID.
    static func looksLikeId(_ key: String) -> Bool {
        guard !key.isEmpty else { return false }
        if key.allSatisfy({ $0.isASCII && $0.isNumber }) { return true }
        if key.count >= 16 && key.allSatisfy({ $0.isASCII && $0.isHexDigit }) { return true }
        return UUID(uuidString: key) != nil
    }

    private func evidence(_ field: Field, of total: Int) -> String {
        let types = field.types.sorted { ($0.value, $1.key.name) > ($1.value, $0.key.name) }.map { "\($0.key.name) \($0.value)" }.joined(separator: ", ")
        return "in \(field.present) of \(total)" + (field.nulls > 0 ? ", null in \(field.nulls)" : "") + (types.isEmpty ? "" : "; \(types)")
    }

    /// `name` (at most 63 bytes), or with `_2`, `_3`… when `used` has it; added to `used`.
    static func unique(_ name: String, _ used: inout Set<String>) -> String {
        // PostgreSQL keeps 63 bytes of a name: cut at a character that ends within them.
        func cut(_ bytes: Int) -> String {
            var kept = ""
            for character in name {
                guard kept.utf8.count + character.utf8.count <= bytes else { break }
                kept.append(character)
            }
            return kept
        }
        var candidate = cut(63)
        var n = 2
        while used.contains(candidate) {
            candidate = cut(60) + "_\(n)"
            n += 1
        }
        used.insert(candidate)
        return candidate
    }

    private func tableName(_ name: String, _ used: inout Set<String>) -> String { Self.unique(name, &used) }
}
