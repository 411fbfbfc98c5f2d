import DurableETL
import Foundation

/// A mapping file (`"formatVersion": 1`): one collection described as tables, read and
/// checked. Every problem is reported with the JSON path where it is (`$.children[0].columns[2].type`).
///
/// ```json
/// {"formatVersion": 1, "source": {"database": "shop", "collection": "orders"},
///  "table": "orders",
///  "columns": [{"field": "_id", "column": "id", "type": "text", "key": true},
///              {"field": "customer.name", "column": "customer_name", "type": "text", "nullable": true}],
///  "children": [{"field": "items", "table": "orders_items",
///                "columns": [{"field": "sku", "column": "sku", "type": "text"}]}]}
/// ```
public struct MappingFile: Sendable, Equatable {
    public struct Column: Sendable, Equatable {
        /// Dotted path in the document (or array element); "" is the element itself.
        public var field: String
        public var column: String
        public var type: ColumnType
        public var nullable: Bool
        public var key: Bool
        /// UNIQUE on its own (a MongoDB unique index on the field).
        public var unique: Bool = false
        /// For a variant column: the column of the same field whose type its values do not
        /// fit (`age__text` holds the `age` values that are strings; `age` is NULL in those rows),
        /// or the child table of the same field, whose arrays it does not hold (`items__text`
        /// holds the `items` values that are not arrays).
        public var variantOf: String? = nil
    }

    public struct Table: Sendable, Equatable {
        /// For a child table: the path of its array in the parent's document.
        public var field: String?
        public var name: String
        public var columns: [Column]
        public var children: [Table]
        /// Groups of columns UNIQUE together (a compound unique index), by column name.
        public var unique: [[String]] = []

        /// Every UNIQUE column set: single columns, then the groups.
        public var uniqueSets: [[String]] { columns.filter(\.unique).map { [$0.column] } + unique }
    }

    public var pipeline: String
    public var source: SourceCollection
    /// What a load does with the fields no column or child table names (default evolve).
    public var unmapped: UnmappedPolicy = .evolve
    public var root: Table
    /// The JSON text it was read from.
    public var text: String

    public static let formatVersion = 1

    /// A problem in a mapping file: where it is and what is wrong.
    public struct Invalid: Error, CustomStringConvertible, Sendable {
        public let path: String
        public let problem: String
        public var description: String { "\(path): \(problem)" }
    }

    /// Reads a mapping file's JSON text.
    public init(json data: Data) throws(Invalid) {
        text = String(decoding: data, as: UTF8.self)
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw Invalid(path: "$", problem: "not valid JSON (\((error as NSError).userInfo[NSDebugDescriptionErrorKey] ?? error))")
        }
        let reader = Reader(value: object, path: "$")
        let top = try reader.object(allowed: ["formatVersion", "pipeline", "source", "unmapped", "table", "columns", "children", "unique", "notes"])
        let version = try reader.member(top, "formatVersion").int()
        guard version == Self.formatVersion else {
            throw Invalid(path: "$.formatVersion", problem: "is \(version); this etl-job reads format version \(Self.formatVersion)")
        }
        let sourceReader = try reader.member(top, "source")
        let source = try sourceReader.object(allowed: ["database", "collection"])
        self.source = SourceCollection(
            database: try sourceReader.member(source, "database").name(), collection: try sourceReader.member(source, "collection").name())
        pipeline = try reader.optionalMember(top, "pipeline")?.name() ?? self.source.collection
        guard pipeline.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }), pipeline.first?.isLetter == true else {
            throw Invalid(path: "$.pipeline", problem: "'\(pipeline)' is not a pipeline name (letters, digits, - and _, starting with a letter)")
        }
        if let policy = try reader.optionalMember(top, "unmapped") {
            let name = try policy.string()
            guard let value = UnmappedPolicy(rawValue: name) else {
                throw Invalid(path: policy.path, problem: "'\(name)' is not a policy; valid: \(UnmappedPolicy.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            unmapped = value
        }
        root = try Self.table(reader, top, isRoot: true)
        try validate()
    }

    private static func table(_ reader: Reader, _ object: [String: Any], isRoot: Bool) throws(Invalid) -> Table {
        let name = try reader.member(object, "table").name()
        let columnsReader = try reader.member(object, "columns")
        var columns: [Column] = []
        for item in try columnsReader.array() {
            let c = try item.object(allowed: ["field", "column", "type", "nullable", "key", "unique", "variantOf", "notes"])
            let typeReader = try item.member(c, "type")
            let typeName = try typeReader.string()
            guard let type = ColumnType(typeName) else {
                throw Invalid(path: typeReader.path, problem: "unknown type '\(typeName)'; valid types: \(ColumnType.names.joined(separator: ", ")), and [] after a scalar type for an array")
            }
            let key = try item.optionalMember(c, "key")?.bool() ?? false
            if key && !isRoot {
                throw Invalid(path: item.path + ".key", problem: "a child table's key is its parent's key and the position; only the root table declares one")
            }
            columns.append(Column(
                field: try item.member(c, "field").string(), column: try item.member(c, "column").name(), type: type,
                nullable: try item.optionalMember(c, "nullable")?.bool() ?? false, key: key,
                unique: try item.optionalMember(c, "unique")?.bool() ?? false, variantOf: try item.optionalMember(c, "variantOf")?.name()))
        }
        var unique: [[String]] = []
        if let groups = try reader.optionalMember(object, "unique") {
            for group in try groups.array() {
                var names: [String] = []
                for (i, item) in try group.array().enumerated() {
                    let column = try item.name()
                    guard columns.contains(where: { $0.column == column }) else {
                        throw Invalid(path: "\(group.path)[\(i)]", problem: "'\(column)' names no column of table \(name)")
                    }
                    names.append(column)
                }
                guard !names.isEmpty else { throw Invalid(path: group.path, problem: "a unique group needs at least one column") }
                unique.append(names)
            }
        }
        var children: [Table] = []
        if let childrenReader = try reader.optionalMember(object, "children") {
            for item in try childrenReader.array() {
                let c = try item.object(allowed: ["field", "table", "columns", "children", "unique", "notes"])
                var child = try table(item, c, isRoot: false)
                child.field = try item.member(c, "field").string()
                children.append(child)
            }
        }
        return Table(field: nil, name: name, columns: columns, children: children, unique: unique)
    }

    /// What JSON decoding cannot check: a root key, unique table and column names, no
    /// collision with the generated key columns, a field for every child.
    private func validate() throws(Invalid) {
        let keys = root.columns.filter(\.key)
        guard keys.count == 1 else {
            throw Invalid(path: "$.columns", problem: keys.isEmpty
                ? "the root table needs a key: one column with \"key\": true (usually the field _id)"
                : "only one column may be the key (found \(keys.count))")
        }
        guard !keys[0].nullable, !keys[0].type.isArray else {
            throw Invalid(path: "$.columns", problem: "the key column \(keys[0].column) must be NOT NULL and not an array")
        }
        var tables = Set<String>()
        func check(_ table: Table, _ path: String) throws(Invalid) {
            guard tables.insert(table.name).inserted else {
                throw Invalid(path: path + ".table", problem: "duplicate table '\(table.name)'")
            }
            var columns = Set(generatedKeyColumns(of: table))
            for (i, column) in table.columns.enumerated() {
                guard columns.insert(column.column).inserted else {
                    throw Invalid(path: "\(path).columns[\(i)].column", problem: "duplicate column '\(column.column)' in table \(table.name)"
                        + (generatedKeyColumns(of: table).contains(column.column) ? " (a key column the child table gets from its parent)" : ""))
                }
                if column.field.isEmpty && table.field == nil {
                    throw Invalid(path: "\(path).columns[\(i)].field", problem: "an empty field names an array element; the root table has none")
                }
                if let main = column.variantOf {
                    if table.children.contains(where: { $0.name == main && $0.field == column.field }) {
                        guard column.nullable else {
                            throw Invalid(path: "\(path).columns[\(i)]", problem: "a variant of a child table is nullable (it holds the values that are not arrays)")
                        }
                    } else {
                        guard let of = table.columns.first(where: { $0.column == main }), of.variantOf == nil, of.field == column.field, !of.key else {
                            throw Invalid(path: "\(path).columns[\(i)].variantOf",
                                          problem: "names no column or child table of table \(table.name) that reads the same field '\(column.field)'")
                        }
                        guard column.nullable, of.nullable else {
                            throw Invalid(path: "\(path).columns[\(i)]", problem: "a variant column and the column it is a variant of are nullable (one of them holds each value)")
                        }
                    }
                }
                if unmapped == .keep && column.column == UnmappedPolicy.restColumn {
                    throw Invalid(path: "\(path).columns[\(i)].column", problem: "'\(UnmappedPolicy.restColumn)' is the rest column of the keep policy; name this column otherwise")
                }
            }
            for (i, child) in table.children.enumerated() {
                if child.field?.isEmpty ?? true {
                    throw Invalid(path: "\(path).children[\(i)].field", problem: "names no array")
                }
                try check(child, "\(path).children[\(i)]")
            }
        }
        try check(root, "$")
    }

    /// The key columns a child table gets (its parent's key and its position), before its
    /// own columns; none for the root, whose key is one of its columns.
    func generatedKeyColumns(of table: Table) -> [String] {
        table == root ? [] : keyColumns(of: table)
    }

    /// A table's primary key: the root's key column; a child's parent key columns (the root's
    /// prefixed with the root table's name, a parent position with the parent's name) and its
    /// own `position`.
    func keyColumns(of table: Table) -> [String] {
        guard let path = ancestry(of: table) else { return [] }
        var key = [root.columns.first(where: \.key)!.column]
        var parent = root
        for child in path {
            key = key.enumerated().map { i, name in
                if parent == root && i == 0 { return root.name + "_" + name }
                return name == "position" ? parent.name + "_position" : name
            } + ["position"]
            parent = child
        }
        return key
    }

    /// The tables from the root's child down to `table` (empty for the root), or nil.
    func ancestry(of table: Table) -> [Table]? {
        func search(_ node: Table, _ path: [Table]) -> [Table]? {
            if node == table { return path }
            for child in node.children {
                if let found = search(child, path + [child]) { return found }
            }
            return nil
        }
        return search(root, [])
    }

    /// The tables and columns the file describes, one per line: recorded with a job, so that
    /// a resume with a changed file can say what changed. (Not the policy: the job's recorded
    /// definition keeps the one it started with, unless `--unmapped` says otherwise.)
    public var canonical: String { "source \(source.database).\(source.collection)\n" + describe(root, indent: "") }

    private func describe(_ table: Table, indent: String) -> String {
        var lines = ["\(indent)\(table.field.map { $0 + " → " } ?? "")\(table.name)"]
        for c in table.columns {
            lines.append("\(indent)  \(c.column) \(c.type.label)\(c.nullable ? " NULL" : "")\(c.key ? " KEY" : "")\(c.unique ? " UNIQUE" : "")"
                + "\(c.variantOf.map { " VARIANT OF " + $0 } ?? "") ← \(c.field.isEmpty ? "(element)" : c.field)")
        }
        for child in table.children { lines.append(describe(child, indent: indent + "  ")) }
        return lines.joined(separator: "\n")
    }
}

extension MappingFile {
    /// The file as JSON members, as `init` writes them (`MappingText.render` lays them out).
    public var dictionary: [String: Any] {
        var top = Self.dictionary(root)
        top["formatVersion"] = Self.formatVersion
        top["source"] = ["database": source.database, "collection": source.collection]
        top["unmapped"] = unmapped.rawValue
        if pipeline != source.collection { top["pipeline"] = pipeline }
        return top
    }

    static func dictionary(_ table: Table) -> [String: Any] {
        var members: [String: Any] = ["table": table.name, "columns": table.columns.map(dictionary), "children": table.children.map(dictionary)]
        if let field = table.field { members["field"] = field }
        if !table.unique.isEmpty { members["unique"] = table.unique }
        return members
    }

    static func dictionary(_ column: Column) -> [String: Any] {
        var members: [String: Any] = ["field": column.field, "column": column.column, "type": column.type.fileName]
        if column.key { members["key"] = true }
        if column.nullable { members["nullable"] = true }
        if column.unique { members["unique"] = true }
        if let variantOf = column.variantOf { members["variantOf"] = variantOf }
        return members
    }

    /// The file's text as `init` lays it out.
    public var rendered: String { MappingText.render(dictionary) }
}

/// Walks a decoded JSON value, naming where it is.
private struct Reader {
    let value: Any
    let path: String

    func object(allowed: Set<String>) throws(MappingFile.Invalid) -> [String: Any] {
        guard let object = value as? [String: Any] else { throw MappingFile.Invalid(path: path, problem: "must be an object") }
        if let unknown = object.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw MappingFile.Invalid(path: "\(path).\(unknown)", problem: "unknown member; allowed: \(allowed.sorted().joined(separator: ", "))")
        }
        return object
    }

    func member(_ object: [String: Any], _ key: String) throws(MappingFile.Invalid) -> Reader {
        guard let value = object[key], !(value is NSNull) else { throw MappingFile.Invalid(path: "\(path).\(key)", problem: "is missing") }
        return Reader(value: value, path: "\(path).\(key)")
    }

    func optionalMember(_ object: [String: Any], _ key: String) throws(MappingFile.Invalid) -> Reader? {
        guard let value = object[key], !(value is NSNull) else { return nil }
        return Reader(value: value, path: "\(path).\(key)")
    }

    func array() throws(MappingFile.Invalid) -> [Reader] {
        guard let array = value as? [Any] else { throw MappingFile.Invalid(path: path, problem: "must be an array") }
        return array.enumerated().map { Reader(value: $0.element, path: "\(path)[\($0.offset)]") }
    }

    func string() throws(MappingFile.Invalid) -> String {
        guard let s = value as? String else { throw MappingFile.Invalid(path: path, problem: "must be a string") }
        return s
    }

    /// A PostgreSQL or MongoDB name: non-empty, at most 63 bytes, no NUL.
    func name() throws(MappingFile.Invalid) -> String {
        let s = try string()
        guard !s.isEmpty, s.utf8.count <= 63, !s.contains("\0") else {
            throw MappingFile.Invalid(path: path, problem: "'\(s)' is not a name (1 to 63 bytes)")
        }
        return s
    }

    func bool() throws(MappingFile.Invalid) -> Bool {
        // JSONSerialization gives booleans as NSNumbers of ObjC type "c" (numbers are "i", "q", "d").
        guard let n = value as? NSNumber, String(cString: n.objCType) == "c" else {
            throw MappingFile.Invalid(path: path, problem: "must be true or false")
        }
        return n.boolValue
    }

    func int() throws(MappingFile.Invalid) -> Int {
        guard let n = value as? NSNumber, let i = Int(exactly: n.doubleValue) else { throw MappingFile.Invalid(path: path, problem: "must be an integer") }
        return i
    }
}
