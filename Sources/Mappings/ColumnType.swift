import DurableETL
import Foundation
import Mongo
import Postgres

/// A column type a mapping file may name, and how a BSON value becomes it.
public indirect enum ColumnType: Sendable, Equatable {
    case integer, bigint, double, numeric, text, boolean, timestamptz, uuid, bytea, jsonb
    /// Any value as MongoDB Relaxed Extended JSON in a text column, member order kept: the key
    /// type for `_id`s that are documents or of several types (jsonb would merge `{a, b}` with
    /// `{b, a}`, and an ObjectId with the string of its hex).
    case extendedJSON
    case array(ColumnType)

    static let scalars: [(String, ColumnType)] = [
        ("integer", .integer), ("bigint", .bigint), ("double precision", .double), ("numeric", .numeric), ("text", .text),
        ("boolean", .boolean), ("timestamptz", .timestamptz), ("uuid", .uuid), ("bytea", .bytea), ("jsonb", .jsonb),
        ("extjson", .extendedJSON),
    ]
    static var names: [String] { scalars.map(\.0) }

    public init?(_ name: String) {
        let trimmed = name.trimmingCharacters(in: .whitespaces).lowercased()
        if trimmed.hasSuffix("[]") {
            guard let element = ColumnType(String(trimmed.dropLast(2))), !element.isArray, element != .jsonb, element != .extendedJSON else { return nil }
            self = .array(element)
        } else if let found = Self.scalars.first(where: { $0.0 == trimmed }) {
            self = found.1
        } else {
            return nil
        }
    }

    public var sql: String {
        switch self {
        case .array(let element): element.sql + "[]"
        case .extendedJSON: "text"
        default: Self.scalars.first { $0.1 == self }!.0
        }
    }

    /// The type as a mapping file names it.
    public var fileName: String {
        switch self {
        case .array(let element): element.fileName + "[]"
        default: Self.scalars.first { $0.1 == self }!.0
        }
    }

    /// The type of the variant column that holds a value of `type` its column cannot:
    /// integers → bigint, double → double precision, Decimal128 → numeric, string and
    /// ObjectId → text, bool → boolean, date → timestamptz, binary → bytea, anything else
    /// (objects, arrays, the rest) → jsonb. Named `<column>__<suffix>` (`variantSuffix`).
    static func variant(for type: BSONType) -> ColumnType {
        switch type {
        case .int32, .int64: .bigint
        case .double: .double
        case .decimal128: .numeric
        case .utf8, .objectId: .text
        case .bool: .boolean
        case .dateTime: .timestamptz
        case .binary: .bytea
        default: .jsonb
        }
    }

    /// How a variant column's name ends: `age__text`, `age__bigint`, `age__double`, `age__jsonb`.
    var variantSuffix: String {
        switch self {
        case .double: "double"
        case .boolean: "bool"
        default: fileName.replacingOccurrences(of: "[]", with: "_array")
        }
    }

    /// Whether `value` (present, not null) can be written as this type.
    func fits(_ value: BSONIterator) -> Bool {
        var scratch = BinaryCopyWriter(capacity: 64)
        do {
            try write(value, nullable: true, into: &scratch)
            return true
        } catch {
            return false
        }
    }

    /// The type as `--explain`-like listings show it: the SQL type, and the encoding for extjson.
    public var label: String { self == .extendedJSON ? "text (extjson)" : sql }

    var isArray: Bool { if case .array = self { true } else { false } }

    var oid: UInt32 {
        switch self {
        case .integer: BinaryCopyWriter.OID.int4
        case .bigint: BinaryCopyWriter.OID.int8
        case .double: BinaryCopyWriter.OID.float8
        case .numeric: BinaryCopyWriter.OID.numeric
        case .text, .extendedJSON: BinaryCopyWriter.OID.text
        case .boolean: BinaryCopyWriter.OID.bool
        case .timestamptz: BinaryCopyWriter.OID.timestamptz
        case .uuid: BinaryCopyWriter.OID.uuid
        case .bytea: BinaryCopyWriter.OID.bytea
        case .jsonb: BinaryCopyWriter.OID.jsonb
        case .array: 0
        }
    }

    /// Writes `value` (nil: the field is absent) as this type, or throws why it cannot.
    func write(_ value: BSONIterator?, nullable: Bool, into w: inout BinaryCopyWriter) throws(RejectReason) {
        guard let value, value.type != .null, value.type != .undefined else {
            guard nullable else { throw RejectReason(value == nil ? "is missing" : "is null, and its column is NOT NULL") }
            w.null()
            return
        }
        try writeValue(value, into: &w)
    }

    private func writeValue(_ it: BSONIterator, into w: inout BinaryCopyWriter) throws(RejectReason) {
        func mismatch() -> RejectReason { RejectReason("is \(article(it.type)), expected \(expected)") }
        switch self {
        case .integer:
            guard let v = it.integer else { throw mismatch() }
            guard let v32 = Int32(exactly: v) else { throw RejectReason("is \(v), not a 32-bit integer") }
            w.int4(v32)
        case .bigint:
            guard let v = it.integer else { throw mismatch() }
            w.int8(v)
        case .double:
            guard it.type == .double || it.type == .int32 || it.type == .int64, let v = it.number else { throw mismatch() }
            w.float8(v)
        case .numeric:
            let text: String
            switch it.type {
            case .decimal128: text = it.decimal128String ?? ""
            case .int32, .int64: text = String(it.integer!)
            case .double: text = it.number!.isFinite ? "\(it.number!)" : (it.number!.isNaN ? "NaN" : it.number! > 0 ? "Infinity" : "-Infinity")
            default: throw mismatch()
            }
            guard w.numeric(text) else { throw RejectReason("is \(text), which numeric cannot hold") }
        case .text:
            if let hex = it.objectIdHex {
                w.text(hex)
            } else {
                w.text(try it.string(nil))
            }
        case .boolean:
            guard let v = it.bool else { throw mismatch() }
            w.bool(v)
        case .timestamptz:
            guard let v = it.dateTimeMillis else { throw mismatch() }
            guard BinaryCopyWriter.timestampRangeMillis.contains(v) else {
                throw RejectReason("is a date out of range (\(v) ms from 1970; timestamptz holds 4713 BC to 294276 AD)")
            }
            w.timestamp(millis: v)
        case .uuid:
            guard let (subtype, bytes) = it.binary, subtype == 4 || subtype == 3, bytes.count == 16 else {
                throw RejectReason("is \(article(it.type)), expected a UUID (binary subtype 4, 16 bytes)")
            }
            w.uuid(bytes)
        case .bytea:
            if let (_, bytes) = it.binary {
                w.bytea(bytes)
            } else if it.type == .objectId, let hex = it.objectIdHex {
                let bytes = stride(from: 0, to: 24, by: 2).map { i in
                    UInt8(hex[hex.index(hex.startIndex, offsetBy: i)..<hex.index(hex.startIndex, offsetBy: i + 2)], radix: 16)!
                }
                bytes.withUnsafeBytes { w.bytea($0) }
            } else {
                throw mismatch()
            }
        case .jsonb:
            do {
                try w.jsonb { j in try j.value(it) }
            } catch {
                throw error as? RejectReason ?? RejectReason("\(error)")
            }
        case .extendedJSON:
            do {
                try w.jsonText { j in try j.extendedValue(it) }
            } catch {
                throw error as? RejectReason ?? RejectReason("\(error)")
            }
        case .array(let element):
            guard it.type == .array, var items = it.children else { throw mismatch() }
            var values: [BSONIterator] = []
            while items.next() { values.append(items) }
            var failure: RejectReason?
            w.array(elementOID: element.oid, count: values.count) { w, i in
                guard failure == nil else { return }
                do throws(RejectReason) {
                    try element.write(values[i], nullable: true, into: &w)
                } catch {
                    failure = error.inside("[\(i)]")
                }
            }
            if let failure { throw failure }
        }
    }

    private var expected: String {
        switch self {
        case .integer, .bigint: "an integer"
        case .double, .numeric: "a number"
        case .text: "a string"
        case .boolean: "a bool"
        case .timestamptz: "a date"
        case .uuid: "a UUID"
        case .bytea: "binary data"
        case .jsonb, .extendedJSON: "any value"
        case .array: "an array"
        }
    }
}
