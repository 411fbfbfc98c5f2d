import Foundation

/// A mapping file as `init` writes it: members in the order docs/reference/mapping-file.md shows them
/// (`formatVersion`, `pipeline`, `source`, `table`, `columns`, `children`, `notes`), one column
/// per line, a child table's members in the same order, indented under its entry; notes sorted
/// by key. The same mapping always gives the same bytes.
public enum MappingText {
    public static func render(_ mapping: [String: Any]) -> String {
        var lines = ["{"]
        var members: [String] = []
        for key in ["formatVersion", "pipeline", "source", "unmapped", "table"] {
            guard let value = mapping[key] else { continue }
            members.append("  " + scalar(key) + ": " + inline(value, order: ["database", "collection"]))
        }
        members.append(contentsOf: table(mapping, indent: "  ", isRoot: true))
        if let notes = mapping["notes"] as? [String: String], !notes.isEmpty {
            let entries = notes.keys.sorted().map { "    " + scalar($0) + ": " + scalar(notes[$0]!) }
            members.append("  \"notes\": {\n" + entries.joined(separator: ",\n") + "\n  }")
        }
        lines.append(members.joined(separator: ",\n"))
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }

    static let columnOrder = ["field", "column", "type", "key", "nullable", "unique", "variantOf"]

    /// A table's `columns` and `children` members (a child's `field` and `table` come first, on its opening line).
    private static func table(_ table: [String: Any], indent: String, isRoot: Bool) -> [String] {
        var members: [String] = []
        let columns = table["columns"] as? [[String: Any]] ?? []
        members.append(indent + "\"columns\": " + list(columns.map { inline($0, order: columnOrder) }, indent: indent))
        if let groups = table["unique"] as? [[String]], !groups.isEmpty {
            members.append(indent + "\"unique\": " + inline(groups, order: []))
        }
        let children = table["children"] as? [[String: Any]] ?? []
        // A child table without children of its own leaves the member out (it is optional).
        if !children.isEmpty || isRoot {
            let entries = children.map { child -> String in
                let head = "{" + ["field", "table"].compactMap { key in child[key].map { scalar(key) + ": " + inline($0, order: []) } }
                    .joined(separator: ", ")
                let inner = Self.table(child, indent: indent + "   ", isRoot: false)
                return head + ",\n" + inner.joined(separator: ",\n") + "}"
            }
            members.append(indent + "\"children\": " + list(entries, indent: indent))
        }
        return members
    }

    private static func list(_ items: [String], indent: String) -> String {
        guard !items.isEmpty else { return "[]" }
        return "[\n" + items.map { indent + "  " + $0 }.joined(separator: ",\n") + "\n" + indent + "]"
    }

    /// An object on one line, members in `order` first, then the rest sorted.
    private static func inline(_ value: Any, order: [String]) -> String {
        if let object = value as? [String: Any] {
            let keys = order.filter { object[$0] != nil } + object.keys.filter { !order.contains($0) }.sorted()
            return "{" + keys.map { scalar($0) + ": " + inline(object[$0]!, order: []) }.joined(separator: ", ") + "}"
        }
        if let array = value as? [Any] {
            return "[" + array.map { inline($0, order: []) }.joined(separator: ", ") + "]"
        }
        return scalar(value)
    }

    private static func scalar(_ value: Any) -> String {
        if let flag = value as? Bool { return flag ? "true" : "false" }
        let data = (try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .withoutEscapingSlashes])) ?? Data("null".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
