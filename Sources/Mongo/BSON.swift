import CMongoc
import Foundation

/// BSON element types the job distinguishes (the values of `bson_type_t`).
public enum BSONType: UInt32, Sendable {
    case double = 0x01, utf8 = 0x02, document = 0x03, array = 0x04, binary = 0x05
    case undefined = 0x06, objectId = 0x07, bool = 0x08, dateTime = 0x09, null = 0x0A
    case regex = 0x0B, code = 0x0D, symbol = 0x0E, int32 = 0x10, timestamp = 0x11
    case int64 = 0x12, decimal128 = 0x13, other = 0xFF

    /// The type byte of an element of this type.
    @inlinable
    public var byte: UInt8 { UInt8(truncatingIfNeeded: rawValue) }

    public var name: String {
        switch self {
        case .double: "double"
        case .utf8: "string"
        case .document: "object"
        case .array: "array"
        case .binary: "binary"
        case .undefined: "undefined"
        case .objectId: "objectId"
        case .bool: "bool"
        case .dateTime: "date"
        case .null: "null"
        case .regex: "regex"
        case .code: "code"
        case .symbol: "symbol"
        case .int32: "int32"
        case .timestamp: "timestamp"
        case .int64: "int64"
        case .decimal128: "decimal128"
        case .other: "unsupported type"
        }
    }
}

/// Reads one BSON document (or array) in place, without copying it.
///
/// Valid only while the bytes it was created from live; it never owns them.
public struct BSONIterator {
    @usableFromInline var raw = bson_iter_t()

    /// Starts before the first element of the document stored in `bytes`.
    /// Returns nil when the length prefix does not fit the buffer.
    @inlinable
    public init?(document bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress,
              bson_iter_init_from_data(iterPtr(&raw), base.assumingMemoryBound(to: UInt8.self), bytes.count)
        else { return nil }
    }

    /// Advances to the next element; false at the end or on a corrupt element.
    @inlinable
    public mutating func next() -> Bool { bson_iter_next(iterPtr(&raw)) }

    /// The element at `path` in a document: each key but the last names an embedded document.
    public static func element(in document: UnsafeRawBufferPointer, at path: [StaticString]) -> BSONIterator? {
        guard var it = BSONIterator(document: document) else { return nil }
        for (i, key) in path.enumerated() {
            guard it.find(key) else { return nil }
            if i < path.count - 1 {
                guard let child = it.children else { return nil }
                it = child
            }
        }
        return it
    }

    /// How many elements this array or document element holds (0 for anything else).
    public var elementCount: Int {
        guard var child = children else { return 0 }
        var n = 0
        while child.next() { n += 1 }
        return n
    }

    /// Advances to the element named `key`; false when the document has none.
    /// Moves to the element named `key` (a name known only at run time), searching from here.
    public mutating func find(key: String) -> Bool {
        while next() {
            if strcmp(keyPointer, key) == 0 { return true }
        }
        return false
    }

    public mutating func find(_ key: StaticString) -> Bool {
        while next() {
            if keyIs(key) { return true }
        }
        return false
    }

    // The accessors below read libbson's iterator fields in place, as its own `_unsafe`
    // inlines do (`raw + d1`, the key from `key` to `d1 - 1`), where a call into libbson
    // would copy the whole iterator per element: they run for every field of every document.
    // `next()` has checked the element's bounds already.

    @inlinable
    public var type: BSONType {
        BSONType(rawValue: UInt32(typeByte)) ?? .other
    }

    /// The type byte itself: what the hot accessors below compare (BSONType's initializer
    /// is a call).
    @inlinable
    var typeByte: UInt8 { raw.raw[Int(raw.type)] }

    /// The current element's value bytes (libbson's `d1`).
    @inlinable
    var value: UnsafeRawPointer { UnsafeRawPointer(raw.raw + Int(raw.d1)) }

    /// The element's key as a NUL-terminated C string, valid as long as the document bytes.
    public var keyPointer: UnsafePointer<CChar> {
        UnsafeRawPointer(raw.raw + Int(raw.key)).assumingMemoryBound(to: CChar.self)
    }

    public var key: String { String(cString: keyPointer) }

    @inlinable
    public func keyIs(_ name: StaticString) -> Bool {
        let length = Int(raw.d1) - Int(raw.key) - 1
        return length == name.utf8CodeUnitCount && memcmp(raw.raw + Int(raw.key), name.utf8Start, length) == 0
    }

    /// An integral number stored as int32, int64 or a double without a fractional part.
    @inlinable
    public var integer: Int64? {
        switch typeByte {
        case BSONType.int32.byte: return Int64(Int32(littleEndian: value.loadUnaligned(as: Int32.self)))
        case BSONType.int64.byte: return Int64(littleEndian: value.loadUnaligned(as: Int64.self))
        case BSONType.double.byte:
            let d = Double(bitPattern: UInt64(littleEndian: value.loadUnaligned(as: UInt64.self)))
            guard d.isFinite, d.rounded() == d, abs(d) < 9.0e15 else { return nil }
            return Int64(d)
        default: return nil
        }
    }

    /// Any number as a double.
    @inlinable
    public var number: Double? {
        switch typeByte {
        case BSONType.double.byte: return Double(bitPattern: UInt64(littleEndian: value.loadUnaligned(as: UInt64.self)))
        case BSONType.int32.byte: return Double(Int32(littleEndian: value.loadUnaligned(as: Int32.self)))
        case BSONType.int64.byte: return Double(Int64(littleEndian: value.loadUnaligned(as: Int64.self)))
        default: return nil
        }
    }

    /// The bytes of a UTF-8 string element (not validated; see `BSON.isValidUTF8`).
    @inlinable
    public var utf8: UnsafeRawBufferPointer? {
        guard typeByte == BSONType.utf8.byte else { return nil }
        // A length prefix that counts the NUL, then the bytes (bson_iter_utf8).
        let length = max(0, Int(Int32(littleEndian: value.loadUnaligned(as: Int32.self))) - 1)
        return UnsafeRawBufferPointer(start: value + 4, count: length)
    }

    /// A Decimal128 as libbson writes it: exact decimal digits (`-12.50`, `1.2E+7`, `NaN`).
    public var decimal128String: String? {
        guard type == .decimal128 else { return nil }
        var copy = raw
        var value = bson_decimal128_t()
        guard bson_iter_decimal128(iterPtr(&copy), &value) else { return nil }
        var buffer = [CChar](repeating: 0, count: 64)
        bson_decimal128_to_string(&value, &buffer)
        return String(cString: buffer)
    }

    /// An ObjectId's 24 lowercase hex digits.
    public var objectIdHex: String? {
        guard type == .objectId else { return nil }
        var copy = raw
        guard let oid = bson_iter_oid(iterPtr(&copy)) else { return nil }
        var buffer = [CChar](repeating: 0, count: 25)
        bson_oid_to_string(oid, &buffer)
        return String(cString: buffer)
    }

    /// This value as MongoDB's relaxed extended JSON (`{ "$oid" : "…" }`, `1.5`, …).
    public var extendedJSON: String {
        let element = BSONDocument()
        append(to: element.writer, as: "v")
        let json = element.withUnsafeBytes { BSON.json($0) }
        // `{ "v" : VALUE }` → `VALUE`
        guard let colon = json.firstIndex(of: ":"), json.hasSuffix("}") else { return json }
        return String(json[json.index(after: colon)..<json.index(before: json.endIndex)]).trimmingCharacters(in: .whitespaces)
    }

    /// Binary data and its subtype, read in place.
    public var binary: (subtype: UInt8, bytes: UnsafeRawBufferPointer)? {
        guard type == .binary else { return nil }
        var copy = raw
        var subtype = bson_subtype_t(0)
        var length: UInt32 = 0
        var data: UnsafePointer<UInt8>?
        bson_iter_binary(iterPtr(&copy), &subtype, &length, &data)
        return (UInt8(truncatingIfNeeded: subtype.rawValue), UnsafeRawBufferPointer(start: data, count: Int(length)))
    }

    /// Milliseconds since the Unix epoch, UTC.
    @inlinable
    public var dateTimeMillis: Int64? {
        guard typeByte == BSONType.dateTime.byte else { return nil }
        return Int64(littleEndian: value.loadUnaligned(as: Int64.self))
    }

    @inlinable
    public var bool: Bool? {
        guard typeByte == BSONType.bool.byte else { return nil }
        return value.load(as: UInt8.self) != 0
    }

    /// The bytes of this embedded document or array element (a BSON document themselves), in place.
    public var documentBytes: UnsafeRawBufferPointer? {
        let kind = type
        guard kind == .document || kind == .array else { return nil }
        var copy = raw
        var length: UInt32 = 0
        var data: UnsafePointer<UInt8>?
        if kind == .document { bson_iter_document(iterPtr(&copy), &length, &data) } else { bson_iter_array(iterPtr(&copy), &length, &data) }
        return data.map { UnsafeRawBufferPointer(start: $0, count: Int(length)) }
    }

    /// An iterator over the elements of this document or array element.
    @inlinable
    public var children: BSONIterator? {
        guard typeByte == BSONType.document.byte || typeByte == BSONType.array.byte else { return nil }
        // bson_iter_recurse: the embedded document's length prefix, then the document.
        let length = Int(UInt32(littleEndian: value.loadUnaligned(as: UInt32.self)))
        return BSONIterator(document: UnsafeRawBufferPointer(start: value, count: length))
    }

    /// A short human-readable rendering of a scalar value, for error messages.
    public var displayValue: String {
        if let i = integer { return String(i) }
        if let s = utf8 {
            return BSON.isValidUTF8(s) ? "\"" + String(decoding: s.prefix(64), as: UTF8.self) + "\"" : "<invalid UTF-8>"
        }
        if let d = number { return String(d) }
        return "<\(type.name)>"
    }

    /// Runs `body` with this iterator as libbson's `bson_iter_t *`.
    mutating func withRaw<R>(_ body: (OpaquePointer) -> R) -> R { body(iterPtr(&raw)) }

    /// Whether the last `next()` returned false on an element it cannot read rather than at
    /// the end (libbson sets `err_off` then, and only then).
    public var isDamaged: Bool { raw.err_off != 0 }

    /// The current element's offset from the document's first byte (after a failed
    /// `next()`, the damaged one's).
    @inlinable
    public var elementOffset: UInt32 { raw.off }

    /// An iterator on the element of this document that starts at `offset` (an
    /// `elementOffset` read from it before), as `next()` found it there.
    @inlinable
    public func element(at offset: UInt32) -> BSONIterator {
        var it = self
        it.raw.next_off = offset
        _ = it.next()
        return it
    }

    /// The first byte of the document this iterator reads (valid until `next()` fails).
    fileprivate var start: UnsafeRawPointer? { raw.raw.map(UnsafeRawPointer.init) }

    /// Copies this element, key and value, into `writer` under `key`.
    public func append(to writer: BSONWriter, as key: String) {
        var copy = raw
        _ = bson_append_iter(writer.handle, key, Int32(key.utf8.count), iterPtr(&copy))
    }
}

/// `bson_iter_t` is declared 128-byte aligned, so Swift imports pointers to it as opaque.
/// libbson (built by gcc, where the type is 80 bytes) needs only natural alignment, so the
/// address of a Swift-held value is a valid `bson_iter_t *`. Valid only for the duration of the call
/// it is passed to, which is the only way it is used.
@inlinable @inline(__always)
func iterPtr(_ iter: UnsafeMutablePointer<bson_iter_t>) -> OpaquePointer { OpaquePointer(iter) }

/// Where a BSON document is damaged inside: the first element libbson cannot read.
public struct BSONDamage: Error, Equatable, Sendable, CustomStringConvertible {
    /// From the document's first byte.
    public let offset: Int
    /// The fields (and array indices) around the damaged element, outermost first.
    public fileprivate(set) var path: [String]
    /// The last element read before it at the same level, if any.
    public let after: String?

    public init(offset: Int, path: [String], after: String?) {
        self.offset = offset
        self.path = path
        self.after = after
    }

    public var description: String {
        var place: [String] = []
        if !path.isEmpty { place.append("inside '\(Self.render(path))'") }
        if let after { place.append("after '\(Self.render(path + [after]))'") }
        if place.isEmpty { place.append("at its first element") }
        return "damaged BSON at byte \(offset) of the document (" + place.joined(separator: ", ")
            + "): the element there cannot be read (an unknown type, or a key or length that runs past its end)"
    }

    /// `profile.education[1]`: array elements (keys "0", "1", …) as indices.
    static func render(_ path: [String]) -> String {
        path.reduce("") { text, part in
            part.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) && !part.isEmpty ? text + "[\(part)]" : (text.isEmpty ? part : text + "." + part)
        }
    }
}

public enum BSON {
    /// Checks a whole document, every nested document and array included, the way libbson
    /// reads it: each element's type is known, its key and value end inside their parent,
    /// and each level ends exactly where its length says. Iteration that stops on damage
    /// otherwise looks like the end of a document, and a mapping would read a damaged
    /// document as one whose later fields are absent. String contents are not checked here
    /// (mappings name the field of invalid UTF-8). Nil for a whole document.
    public static func damage(in bytes: UnsafeRawBufferPointer) -> BSONDamage? {
        if isCertainlyWhole(bytes) { return nil }
        return walkedDamage(in: bytes)
    }

    /// The same answer as `damage(in:)`, always found by walking the document with libbson.
    public static func walkedDamage(in bytes: UnsafeRawBufferPointer) -> BSONDamage? {
        guard let base = bytes.baseAddress, let it = BSONIterator(document: bytes) else {
            return BSONDamage(offset: 0, path: [], after: nil)
        }
        return damage(it, base: base)
    }

    /// True only when libbson's iteration reads every level of the document to its end:
    /// libbson's own checks (bson_iter_next in 1.23), element by element, in one pass over
    /// the bytes with no call per element, and stricter where libbson is lenient (a nested
    /// document's header and trailing NUL are checked too). False means "walk it with
    /// libbson to know": regular expressions, DBPointers and code with scope are left to it.
    /// Most documents are whole, and this pass costs a fraction of the walk.
    public static func isCertainlyWhole(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return false }
        return isCertainlyWhole(base, count: bytes.count)
    }

    private static func isCertainlyWhole(_ base: UnsafeRawPointer, count len: Int) -> Bool {
        guard len >= 5, Int(base.loadUnaligned(as: UInt32.self).littleEndian) == len,
              base.load(fromByteOffset: len - 1, as: UInt8.self) == 0 else { return false }
        let b = base.assumingMemoryBound(to: UInt8.self)
        func u32(_ at: Int) -> Int { Int(base.loadUnaligned(fromByteOffset: at, as: UInt32.self).littleEndian) }
        var at = 4
        while at != len - 1 {
            let type = b[at]
            // The key: a NUL before the end.
            var o = at + 1
            while o < len, b[o] != 0 { o += 1 }
            guard o < len else { return false }
            o += 1
            let next: Int
            switch type {
            case 0x01, 0x09, 0x11, 0x12: next = o + 8  // double, date, timestamp, int64
            case 0x02, 0x0D, 0x0E:  // string, code, symbol: a length counting its NUL
                guard o + 4 < len else { return false }
                let l = u32(o)
                guard l > 0, l <= len - (o + 4), b[o + 4 + l - 1] == 0 else { return false }
                next = o + 4 + l
            case 0x05:  // binary
                guard o + 4 < len else { return false }
                let l = u32(o)
                guard l < len - o - 4 else { return false }
                if b[o + 4] == 0x02 {  // the old subtype repeats the length inside
                    guard l >= 4, o + 9 <= len, u32(o + 5) + 4 == l else { return false }
                }
                next = o + 5 + l
            case 0x03, 0x04:  // document, array
                guard o + 4 < len else { return false }
                let l = u32(o)
                guard l <= len - o, isCertainlyWhole(base + o, count: l) else { return false }
                next = o + l
            case 0x07: next = o + 12  // ObjectId
            case 0x08:  // bool: 0 or 1
                guard o < len, b[o] <= 1 else { return false }
                next = o + 1
            case 0x10: next = o + 4  // int32
            case 0x13: next = o + 16  // decimal128
            case 0x06, 0x0A, 0x7F, 0xFF: next = o  // undefined, null, maxKey, minKey
            default: return false  // end of document too early, an unknown type, or one left to libbson
            }
            guard next < len else { return false }
            at = next
        }
        return true
    }

    /// Keys are turned into strings only on the way out of a damaged document.
    private static func damage(_ iterator: BSONIterator, base: UnsafeRawPointer) -> BSONDamage? {
        var it = iterator
        guard let start = it.start else { return BSONDamage(offset: 0, path: [], after: nil) }
        var last: UnsafePointer<CChar>?
        while it.next() {
            if it.type == .document || it.type == .array {
                guard let child = it.children else {
                    return BSONDamage(offset: start - base + Int(it.elementOffset), path: [], after: last.map { String(cString: $0) })
                }
                if var found = damage(child, base: base) {
                    found.path.insert(it.key, at: 0)
                    return found
                }
            }
            last = it.keyPointer
        }
        // The element that cannot be read starts at `elementOffset` (libbson keeps it).
        guard it.isDamaged else { return nil }
        return BSONDamage(offset: start - base + Int(it.elementOffset), path: [], after: last.map { String(cString: $0) })
    }

    /// True for well-formed UTF-8 without embedded NUL bytes (PostgreSQL text cannot hold NUL).
    public static func isValidUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return true }
        // Most text is ASCII: check 8 bytes at a time for a high bit or a NUL, and leave
        // anything else to libbson.
        var i = 0
        while i + 8 <= bytes.count {
            let word = bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            let hasZero = (word &- 0x0101_0101_0101_0101) & ~word & 0x8080_8080_8080_8080
            if word & 0x8080_8080_8080_8080 != 0 || hasZero != 0 { break }
            i += 8
        }
        while i < bytes.count, bytes[i] != 0, bytes[i] < 0x80 { i += 1 }
        if i == bytes.count { return true }
        return bson_utf8_validate(base.assumingMemoryBound(to: CChar.self), bytes.count, false)
    }

    /// The total length a BSON document declares in its first four bytes.
    public static func declaredLength(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard bytes.count >= 5 else { return nil }
        return Int(bytes.loadUnaligned(as: Int32.self).littleEndian)
    }

    /// Relaxed extended JSON of a document, for people reading set-aside documents.
    public static func json(_ bytes: UnsafeRawBufferPointer, limit: Int = .max) -> String {
        if let damage = damage(in: bytes) { return "<\(bytes.count) bytes of \(damage)>" }
        guard let base = bytes.baseAddress,
              let doc = bson_new_from_data(base.assumingMemoryBound(to: UInt8.self), bytes.count)
        else { return "<corrupt BSON of \(bytes.count) bytes>" }
        defer { bson_destroy(doc) }
        var length = 0
        guard let json = bson_as_relaxed_extended_json(doc, &length) else { return "<unprintable BSON>" }
        defer { bson_free(json) }
        let text = String(cString: json)
        return text.count > limit ? String(text.prefix(limit)) + "…" : text
    }
}

/// Builds one BSON document; owns its `bson_t` and frees it exactly once.
public final class BSONDocument {
    let handle: OpaquePointer

    public init() { handle = bson_new() }

    /// A copy of a document's bytes; nil when they are not a BSON document's.
    public init?(copying bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress,
              let handle = bson_new_from_data(base.assumingMemoryBound(to: UInt8.self), bytes.count) else { return nil }
        self.handle = handle
    }

    deinit { bson_destroy(handle) }

    private init(handle: OpaquePointer) { self.handle = handle }

    /// Storage for a `bson_t` a libmongoc call fills (a reply), 128-byte aligned as the type
    /// is declared; destroyed exactly once.
    final class Storage {
        let pointer: OpaquePointer
        private let raw: UnsafeMutableRawPointer

        init() {
            raw = UnsafeMutableRawPointer.allocate(byteCount: 128, alignment: 128)
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: 128)
            pointer = OpaquePointer(raw)
            bson_init(pointer)
        }

        /// The reply as a document of its own.
        func copy() -> BSONDocument { BSONDocument(handle: bson_copy(pointer)) }

        func destroy() {
            bson_destroy(pointer)
            raw.deallocate()
        }
    }

    public var writer: BSONWriter { BSONWriter(handle: handle) }

    public var bytes: [UInt8] {
        withUnsafeBytes { Array($0) }
    }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        let data = bson_get_data(handle)!
        let length = Int(UnsafeRawPointer(data).loadUnaligned(as: Int32.self).littleEndian)
        return try body(UnsafeRawBufferPointer(start: data, count: length))
    }
}

/// Appends elements to a `bson_t` that someone else owns (a document or an open child).
public struct BSONWriter {
    let handle: OpaquePointer

    public func append(_ key: String, _ value: String) {
        var value = value
        value.withUTF8 { appendUTF8(key, UnsafeRawBufferPointer($0)) }
    }

    /// Appends a string element from raw bytes exactly as given (they need not be valid UTF-8).
    public func append(_ key: String, utf8Bytes: [UInt8]) {
        utf8Bytes.withUnsafeBytes { appendUTF8(key, $0) }
    }

    private func appendUTF8(_ key: String, _ bytes: UnsafeRawBufferPointer) {
        let empty: StaticString = ""
        let start = bytes.baseAddress ?? UnsafeRawPointer(empty.utf8Start)
        _ = bson_append_utf8(
            handle, key, Int32(key.utf8.count), start.assumingMemoryBound(to: CChar.self), Int32(bytes.count))
    }

    public func append(_ key: String, _ value: Int32) { _ = bson_append_int32(handle, key, Int32(key.utf8.count), value) }
    public func append(_ key: String, _ value: Int64) { _ = bson_append_int64(handle, key, Int32(key.utf8.count), value) }
    public func append(_ key: String, _ value: Double) { _ = bson_append_double(handle, key, Int32(key.utf8.count), value) }
    public func append(_ key: String, _ value: Bool) { _ = bson_append_bool(handle, key, Int32(key.utf8.count), value) }
    /// A Decimal128 from its decimal text (`12.50`, `-1E+3`); false when libbson cannot read it.
    @discardableResult
    public func append(_ key: String, decimal128 text: String) -> Bool {
        var value = bson_decimal128_t()
        guard bson_decimal128_from_string(text, &value) else { return false }
        return bson_append_decimal128(handle, key, Int32(key.utf8.count), &value)
    }

    /// An ObjectId from its 12 bytes.
    public func append(_ key: String, objectId bytes: [UInt8]) {
        precondition(bytes.count == 12, "an ObjectId is 12 bytes")
        var oid = bson_oid_t()
        withUnsafeMutableBytes(of: &oid.bytes) { $0.copyBytes(from: bytes) }
        _ = bson_append_oid(handle, key, Int32(key.utf8.count), &oid)
    }

    /// Binary data of a subtype (0 generic, 4 UUID).
    public func append(_ key: String, binary bytes: [UInt8], subtype: UInt8 = 0) {
        _ = bytes.withUnsafeBufferPointer {
            bson_append_binary(handle, key, Int32(key.utf8.count), bson_subtype_t(UInt32(subtype)), $0.baseAddress, UInt32($0.count))
        }
    }

    public func appendNull(_ key: String) { _ = bson_append_null(handle, key, Int32(key.utf8.count)) }

    /// Appends a whole document as an embedded one.
    public func append(_ key: String, document: BSONDocument) {
        _ = bson_append_document(handle, key, Int32(key.utf8.count), document.handle)
    }

    public func append(_ key: String, dateTimeMillis: Int64) {
        _ = bson_append_date_time(handle, key, Int32(key.utf8.count), dateTimeMillis)
    }

    public func appendDocument(_ key: String, _ body: (BSONWriter) -> Void) {
        withChild { child in
            _ = bson_append_document_begin(handle, key, Int32(key.utf8.count), child)
            body(BSONWriter(handle: child))
            _ = bson_append_document_end(handle, child)
        }
    }

    /// Appends an array; `body` receives a writer and appends elements with keys "0", "1", ….
    public func appendArray(_ key: String, _ body: (BSONWriter) -> Void) {
        withChild { child in
            _ = bson_append_array_begin(handle, key, Int32(key.utf8.count), child)
            body(BSONWriter(handle: child))
            _ = bson_append_array_end(handle, child)
        }
    }

    /// Child `bson_t` storage: the type is 128-byte aligned, so Swift cannot declare one.
    private func withChild(_ body: (OpaquePointer) -> Void) {
        let storage = UnsafeMutableRawPointer.allocate(byteCount: 128, alignment: 128)
        defer { storage.deallocate() }
        body(OpaquePointer(storage))
    }
}
