import Foundation
import Mongo
import Postgres

/// Any BSON value as JSON, for jsonb columns: documents and arrays as they are, numbers as
/// numbers (Decimal128 exactly), dates as ISO 8601 text in UTC, ObjectIds as their hex,
/// UUIDs in their canonical form, other binary as base64, and the rest (regex, timestamp,
/// min/max key…) as MongoDB's extended JSON. What JSON cannot hold (NaN, infinities, invalid
/// UTF-8) is a rejection naming the field.
extension JSONText {
    /// Writes one value; a rejection's path starts below it (the caller adds its own field).
    public mutating func value(_ it: BSONIterator) throws(RejectReason) {
        switch it.type {
        case .document, .array:
            guard let child = it.children else { throw RejectReason("is not valid BSON") }
            try members(child, isArray: it.type == .array)
        case .utf8:
            guard let s = it.utf8, BSON.isValidUTF8(s) else { throw RejectReason("is not valid UTF-8 (or contains a NUL byte)") }
            string(s)
        case .int32, .int64:
            raw(String(it.integer!))
        case .double:
            guard let d = it.number, d.isFinite else { throw RejectReason("is \(it.number ?? .nan), which JSON cannot hold") }
            number(d)
        case .decimal128:
            guard let text = it.decimal128String, !text.contains("N"), !text.contains("I") else {
                throw RejectReason("is a Decimal128 NaN or infinity, which JSON cannot hold")
            }
            raw(text)
        case .bool:
            bool(it.bool!)
        case .null, .undefined:
            raw("null")
        case .dateTime:
            raw("\"" + Self.iso8601(millis: it.dateTimeMillis!) + "\"")
        case .objectId:
            raw("\"" + (it.objectIdHex ?? "") + "\"")
        case .binary:
            let (subtype, bytes) = it.binary!
            raw("\"" + (subtype == 4 && bytes.count == 16 ? Self.uuidText(bytes) : Data(bytes).base64EncodedString()) + "\"")
        default:
            raw(it.extendedJSON)
        }
    }

    /// A whole document as a JSON object.
    public mutating func document(_ bytes: UnsafeRawBufferPointer) throws(RejectReason) {
        guard let it = BSONIterator(document: bytes) else { throw RejectReason("is not valid BSON") }
        try members(it, isArray: false)
    }

    /// A document's or an array's members; `extended`: compact Relaxed Extended JSON (for
    /// extjson), else the jsonb form. A key that is not valid UTF-8 is a rejection (repairing
    /// it would change the data, and could make two keys one).
    private mutating func members(_ iterator: BSONIterator, isArray: Bool, extended: Bool = false) throws(RejectReason) {
        var child = iterator
        raw(isArray ? "[" : "{")
        var first = true
        while child.next() {
            if !first { extended ? raw(",") : raw(", ") }
            first = false
            var key = child.key
            if !isArray {
                guard BSON.isValidUTF8(UnsafeRawBufferPointer(start: child.keyPointer, count: strlen(child.keyPointer))) else {
                    throw RejectReason("has a key that is not valid UTF-8")
                }
                key.withUTF8 { string(UnsafeRawBufferPointer($0)) }
                extended ? raw(":") : raw(": ")
            }
            do {
                if extended { try extendedValue(child) } else { try value(child) }
            } catch {
                throw error.inside(isArray ? "[\(key)]" : key)
            }
        }
        raw(isArray ? "]" : "}")
    }

    /// Writes one value as MongoDB Relaxed Extended JSON (v2), compact (no spaces), with every
    /// document's members in their stored order: what keys a value by everything MongoDB tells
    /// apart. Types JSON would merge keep their wrappers (`{"$oid":…}`, `{"$date":…}`,
    /// `{"$binary":…}`, `{"$numberDecimal":…}`, non-finite doubles as `{"$numberDouble":…}`);
    /// 32- and 64-bit integers are plain numbers, as MongoDB compares them equal.
    public mutating func extendedValue(_ it: BSONIterator) throws(RejectReason) {
        switch it.type {
        case .document, .array:
            guard let child = it.children else { throw RejectReason("is not valid BSON") }
            try members(child, isArray: it.type == .array, extended: true)
        case .utf8:
            guard let s = it.utf8, BSON.isValidUTF8(s) else { throw RejectReason("is not valid UTF-8 (or contains a NUL byte)") }
            string(s)
        case .int32, .int64:
            raw(String(it.integer!))
        case .double:
            let d = it.number!
            if d.isFinite {
                number(d)
            } else {
                raw(d.isNaN ? #"{"$numberDouble":"NaN"}"# : d > 0 ? #"{"$numberDouble":"Infinity"}"# : #"{"$numberDouble":"-Infinity"}"#)
            }
        case .decimal128:
            raw(#"{"$numberDecimal":""# + (it.decimal128String ?? "") + #""}"#)
        case .bool:
            bool(it.bool!)
        case .null:
            raw("null")
        case .undefined:
            raw(#"{"$undefined":true}"#)
        case .objectId:
            raw(#"{"$oid":""# + (it.objectIdHex ?? "") + #""}"#)
        case .dateTime:
            // Relaxed form for years 1970 to 9999, the canonical one outside (as the spec says).
            let millis = it.dateTimeMillis!
            if (0..<253_402_300_800_000).contains(millis) {
                raw(#"{"$date":""# + Self.iso8601(millis: millis) + #""}"#)
            } else {
                raw(#"{"$date":{"$numberLong":""# + String(millis) + #""}}"#)
            }
        case .binary:
            let (subtype, bytes) = it.binary!
            raw(#"{"$binary":{"base64":""# + Data(bytes).base64EncodedString() + #"","subType":""# + String(format: "%02x", subtype) + #""}}"#)
        default:
            // Regular expressions, timestamps, code, min/max keys…: libbson's own form, compacted.
            raw(Self.compact(it.extendedJSON))
        }
    }

    /// libbson's `{ "a" : 1 }` spacing removed outside strings.
    static func compact(_ json: String) -> String {
        var out = "", inString = false, escaped = false
        for c in json {
            if inString {
                out.append(c)
                if escaped { escaped = false } else if c == "\\" { escaped = true } else if c == "\"" { inString = false }
            } else if c == "\"" {
                inString = true
                out.append(c)
            } else if c != " " {
                out.append(c)
            }
        }
        return out
    }

    static func iso8601(millis: Int64) -> String {
        // Whole seconds through Foundation, milliseconds exactly (a Double would round them).
        let (seconds, ms) = (millis.floorDivided(by: 1000), millis - millis.floorDivided(by: 1000) * 1000)
        let text = Date.ISO8601FormatStyle(timeZone: .gmt).format(Date(timeIntervalSince1970: Double(seconds)))
        return text.dropLast() + String(format: ".%03dZ", ms)
    }

    /// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    static func uuidText(_ bytes: UnsafeRawBufferPointer) -> String {
        let hex = bytes.map { String(format: "%02x", $0) }.joined()
        var text = ""
        for (i, c) in hex.enumerated() {
            if [8, 12, 16, 20].contains(i) { text.append("-") }
            text.append(c)
        }
        return text
    }
}

extension Int64 {
    /// Division rounding toward negative infinity (dates before 1970 too).
    func floorDivided(by d: Int64) -> Int64 {
        let q = self / d
        return (self % d != 0 && (self < 0) != (d < 0)) ? q - 1 : q
    }
}
