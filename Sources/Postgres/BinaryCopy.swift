/// Builds a PostgreSQL binary COPY stream: no escaping, no number formatting, and the
/// server parses it faster than text.
///
/// Layout: signature, flags, extension length; per row a field count, then per field a
/// length (-1 for NULL) and the value in network byte order; a trailer of -1.
public struct BinaryCopyWriter: Sendable {
    public var bytes: [UInt8] { storage }
    public var rowCount: Int { rows }
    // Stored under other names so that the value writers below can be inlined into a
    // mapping's code (another module): they run for every field of every row.
    @usableFromInline var storage: [UInt8]
    @usableFromInline var rows = 0

    private static let header: [UInt8] = Array("PGCOPY\n".utf8) + [0xFF, 0x0D, 0x0A, 0x00] + [0, 0, 0, 0] + [0, 0, 0, 0]
    /// Microseconds between the Unix epoch and PostgreSQL's epoch, 2000-01-01 UTC.
    @usableFromInline static let postgresEpochOffsetMillis: Int64 = 946_684_800_000

    public init(capacity: Int = 1 << 16) {
        storage = Self.header
        storage.reserveCapacity(capacity)
    }

    /// Values written one after another with no COPY header: the elements of a binary array
    /// parameter (`arrayParameter`).
    public init(elements: Int) {
        storage = []
        storage.reserveCapacity(elements * 12)
    }

    /// The `count` values written so far (with `init(elements:)`) as a one-dimensional binary
    /// array of `elementOID`, for a query parameter in binary format.
    public func arrayParameter(elementOID: UInt32, count: Int) -> [UInt8] {
        var header: [UInt8] = []
        for v in [Int32(count == 0 ? 0 : 1), 0, Int32(bitPattern: elementOID)] + (count == 0 ? [] : [Int32(count), 1]) {
            withUnsafeBytes(of: v.bigEndian) { header.append(contentsOf: $0) }
        }
        return header + bytes
    }

    /// A mark to return to with `rollback(to:)`, so a document that fails halfway adds nothing.
    public var mark: (count: Int, rows: Int) { (storage.count, rows) }

    public mutating func rollback(to mark: (count: Int, rows: Int)) {
        storage.removeSubrange(mark.count...)
        rows = mark.rows
    }

    public var isEmpty: Bool { rowCount == 0 }

    @inlinable
    public mutating func beginRow(fields: Int) {
        rows += 1
        append(UInt16(fields))
    }

    /// SQL NULL, in a column of any type.
    @inlinable
    public mutating func null() {
        append(UInt32(bitPattern: -1))
    }

    @inlinable
    public mutating func int8(_ v: Int64) {
        append(UInt32(8))
        append(UInt64(bitPattern: v))
    }

    @inlinable
    public mutating func int4(_ v: Int32) {
        append(UInt32(4))
        append(UInt32(bitPattern: v))
    }

    @inlinable
    public mutating func bool(_ v: Bool) {
        append(UInt32(1))
        storage.append(v ? 1 : 0)
    }

    /// Text, varchar: the UTF-8 bytes as they are.
    @inlinable
    public mutating func text(_ utf8: UnsafeRawBufferPointer) {
        append(UInt32(utf8.count))
        storage.append(contentsOf: utf8)
    }

    public mutating func text(_ s: String) {
        var s = s
        s.withUTF8 { text(UnsafeRawBufferPointer($0)) }
    }

    /// The milliseconds since the Unix epoch that a timestamptz can hold: 4713 BC to 294276 AD
    /// (PostgreSQL's MIN_TIMESTAMP and END_TIMESTAMP). Inside it, the epoch shift and the
    /// conversion to microseconds below cannot overflow.
    public static let timestampRangeMillis: Range<Int64> = -210_866_803_200_000..<9_224_318_016_000_000

    /// timestamptz from milliseconds since the Unix epoch, which must lie in `timestampRangeMillis`.
    @inlinable
    public mutating func timestamp(millis: Int64) {
        append(UInt32(8))
        append(UInt64(bitPattern: (millis - Self.postgresEpochOffsetMillis) * 1000))
    }

    /// jsonb: a version byte (1) followed by JSON text written by `body`.
    public mutating func jsonb(_ body: (inout JSONText) throws -> Void) rethrows {
        try json(version: [1], body)
    }

    /// text holding the JSON text written by `body`, exactly as written (member order kept).
    public mutating func jsonText(_ body: (inout JSONText) throws -> Void) rethrows {
        try json(version: [], body)
    }

    private mutating func json(version: [UInt8], _ body: (inout JSONText) throws -> Void) rethrows {
        let lengthAt = storage.count
        append(UInt32(0))
        storage.append(contentsOf: version)
        var json = JSONText(bytes: [])
        swap(&json.bytes, &storage)
        do {
            try body(&json)
        } catch {
            // The caller rolls the half-written value back (a document loads whole or not at all).
            swap(&json.bytes, &storage)
            throw error
        }
        swap(&json.bytes, &storage)
        let length = UInt32(storage.count - lengthAt - 4).bigEndian
        withUnsafeBytes(of: length) { storage.replaceSubrange(lengthAt..<lengthAt + 4, with: $0) }
    }

    @inlinable
    public mutating func float8(_ v: Double) {
        append(UInt32(8))
        append(v.bitPattern)
    }

    /// uuid from its 16 bytes.
    public mutating func uuid(_ bytes16: UnsafeRawBufferPointer) {
        precondition(bytes16.count == 16, "a uuid is 16 bytes")
        bytea(bytes16)
    }

    /// bytea (and any type whose binary form is the bytes as they are).
    public mutating func bytea(_ data: UnsafeRawBufferPointer) {
        append(UInt32(data.count))
        storage.append(contentsOf: data)
    }

    /// numeric from a decimal string as libbson writes a Decimal128 (`-12.50`, `1.2E+7`,
    /// `NaN`, `Infinity`), exactly, with its scale. False when `decimal` is not such a number.
    public mutating func numeric(_ decimal: String) -> Bool {
        guard let value = NumericValue(decimal) else { return false }
        append(UInt32(8 + 2 * value.digits.count))
        append(Int16(value.digits.count))
        append(value.weight)
        append(value.sign)
        append(value.scale)
        for digit in value.digits { append(digit) }
        return true
    }

    /// A one-dimensional array of `count` elements of the type `elementOID`, each written by
    /// `element` with this writer's value methods (or `null()`).
    public mutating func array(elementOID: UInt32, count: Int, _ element: (inout BinaryCopyWriter, Int) -> Void) {
        let lengthAt = storage.count
        append(UInt32(0))
        append(Int32(count == 0 ? 0 : 1))  // dimensions
        append(Int32(0))  // flags: ignored by the server, nulls are marked per element
        append(elementOID)
        if count > 0 {
            append(Int32(count))
            append(Int32(1))  // lower bound
            for i in 0..<count { element(&self, i) }
        }
        let length = UInt32(storage.count - lengthAt - 4).bigEndian
        withUnsafeBytes(of: length) { storage.replaceSubrange(lengthAt..<lengthAt + 4, with: $0) }
    }

    /// Type OIDs of array elements.
    public enum OID {
        public static let bool: UInt32 = 16, bytea: UInt32 = 17, int8: UInt32 = 20, int4: UInt32 = 23, text: UInt32 = 25
        public static let float8: UInt32 = 701, timestamptz: UInt32 = 1184, numeric: UInt32 = 1700, uuid: UInt32 = 2950
        public static let jsonb: UInt32 = 3802
    }

    /// The complete stream: everything written plus the trailer.
    public func finished() -> [UInt8] { storage + Self.trailer }

    /// The trailer that ends a stream (a field count of -1).
    public static let trailer: [UInt8] = [0xFF, 0xFF]

    /// Byte by byte, most significant first: for these 2 to 8 bytes the compiler unrolls it
    /// into plain stores, where appending a buffer of them costs a generic call each.
    @inlinable @inline(__always)
    mutating func append<T: FixedWidthInteger>(_ v: T) {
        var shift = T.bitWidth - 8
        while shift >= 0 {
            storage.append(UInt8(truncatingIfNeeded: v >> shift))
            shift -= 8
        }
    }
}

/// A decimal number in PostgreSQL's numeric form: base-10000 digits, the weight of the
/// first, a sign, and the display scale.
struct NumericValue: Equatable {
    var digits: [Int16]
    var weight: Int16
    var sign: Int16
    var scale: Int16

    static let positive: Int16 = 0x0000, negative: Int16 = 0x4000
    static let nan = Int16(bitPattern: 0xC000), plusInfinity = Int16(bitPattern: 0xD000), minusInfinity = Int16(bitPattern: 0xF000)

    init?(_ text: String) {
        var rest = Substring(text)
        var negative = false
        if rest.first == "-" || rest.first == "+" {
            negative = rest.first == "-"
            rest = rest.dropFirst()
        }
        switch rest {
        case "NaN": self.init(digits: [], weight: 0, sign: Self.nan, scale: 0); return
        case "Infinity", "Inf": self.init(digits: [], weight: 0, sign: negative ? Self.minusInfinity : Self.plusInfinity, scale: 0); return
        default: break
        }
        var exponent = 0
        if let e = rest.firstIndex(where: { $0 == "E" || $0 == "e" }) {
            guard let value = Int(rest[rest.index(after: e)...]), abs(value) < 100_000 else { return nil }
            exponent = value
            rest = rest[..<e]
        }
        let parts = rest.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count <= 2, !rest.isEmpty, parts.allSatisfy({ $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }),
              parts.contains(where: { !$0.isEmpty })
        else { return nil }
        let fraction = parts.count == 2 ? String(parts[1]) : ""
        let all = String(parts[0]) + fraction
        let power = exponent - fraction.count  // value = all × 10^power
        guard -power <= 16_383 else { return nil }  // numeric's largest display scale
        var integer: String, decimals: String
        if power >= 0 {
            (integer, decimals) = (all + String(repeating: "0", count: power), "")
        } else if all.count > -power {
            (integer, decimals) = (String(all.dropLast(-power)), String(all.suffix(-power)))
        } else {
            (integer, decimals) = ("", String(repeating: "0", count: -power - all.count) + all)
        }
        integer = String(integer.drop { $0 == "0" })
        integer = String(repeating: "0", count: (4 - integer.count % 4) % 4) + integer
        decimals += String(repeating: "0", count: (4 - decimals.count % 4) % 4)
        func groups(_ s: String) -> [Int16] {
            stride(from: 0, to: s.count, by: 4).map { i in
                Int16(s[s.index(s.startIndex, offsetBy: i)..<s.index(s.startIndex, offsetBy: i + 4)])!
            }
        }
        var digits = groups(integer) + groups(decimals)
        var weight = integer.count / 4 - 1
        while digits.first == 0 {
            digits.removeFirst()
            weight -= 1
        }
        while digits.last == 0 { digits.removeLast() }
        guard abs(weight) < Int(Int16.max) else { return nil }
        let zero = digits.isEmpty
        self.init(
            digits: digits, weight: zero ? 0 : Int16(weight), sign: negative && !zero ? Self.negative : Self.positive,
            scale: Int16(max(0, -power)))
    }

    init(digits: [Int16], weight: Int16, sign: Int16, scale: Int16) {
        self.digits = digits
        self.weight = weight
        self.sign = sign
        self.scale = scale
    }
}

/// JSON text appended straight into a COPY buffer.
public struct JSONText: Sendable {
    public internal(set) var bytes: [UInt8]

    /// Empty JSON text, to build a value before knowing whether it is written at all.
    public init() { bytes = [] }

    init(bytes: [UInt8]) { self.bytes = bytes }

    /// JSON text written elsewhere, as it is.
    public mutating func raw(_ text: JSONText) { bytes.append(contentsOf: text.bytes) }

    public mutating func raw(_ s: StaticString) {
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
    }

    public mutating func bool(_ v: Bool) { v ? raw("true") : raw("false") }

    /// Text that is already JSON (a number's digits, a nested value), as it is.
    public mutating func raw(_ s: String) { bytes.append(contentsOf: s.utf8) }

    /// A finite double in the shortest form that reads back to the same value.
    public mutating func number(_ v: Double) {
        bytes.append(contentsOf: v.description.utf8)
    }

    /// A JSON string from valid UTF-8, escaping quotes, backslashes and control characters
    /// (runs of other bytes copied at once: most strings need no escape at all).
    public mutating func string(_ utf8: UnsafeRawBufferPointer) {
        bytes.append(UInt8(ascii: "\""))
        var plain = 0
        for (i, byte) in utf8.enumerated() where byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") {
            bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: utf8[plain..<i]))
            plain = i + 1
            switch byte {
            case UInt8(ascii: "\""): raw("\\\"")
            case UInt8(ascii: "\\"): raw("\\\\")
            case 0x0A: raw("\\n")
            case 0x0D: raw("\\r")
            case 0x09: raw("\\t")
            default:
                raw("\\u00")
                let hex: StaticString = "0123456789abcdef"
                bytes.append(hex.utf8Start[Int(byte >> 4)])
                bytes.append(hex.utf8Start[Int(byte & 0xF)])
            }
        }
        bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: utf8[plain...]))
        bytes.append(UInt8(ascii: "\""))
    }
}
