/// Builds a PostgreSQL binary COPY stream: no escaping, no number formatting, and the
/// server parses it faster than text.
///
/// Layout: signature, flags, extension length; per row a field count, then per field a
/// length (-1 for NULL) and the value in network byte order; a trailer of -1.
public struct BinaryCopyWriter: Sendable {
    public private(set) var bytes: [UInt8]
    public private(set) var rowCount = 0

    private static let header: [UInt8] = Array("PGCOPY\n".utf8) + [0xFF, 0x0D, 0x0A, 0x00] + [0, 0, 0, 0] + [0, 0, 0, 0]
    /// Microseconds between the Unix epoch and PostgreSQL's epoch, 2000-01-01 UTC.
    private static let postgresEpochOffsetMillis: Int64 = 946_684_800_000

    public init(capacity: Int = 1 << 16) {
        bytes = Self.header
        bytes.reserveCapacity(capacity)
    }

    /// A mark to return to with `rollback(to:)`, so a document that fails halfway adds nothing.
    public var mark: (count: Int, rows: Int) { (bytes.count, rowCount) }

    public mutating func rollback(to mark: (count: Int, rows: Int)) {
        bytes.removeSubrange(mark.count...)
        rowCount = mark.rows
    }

    public var isEmpty: Bool { rowCount == 0 }

    public mutating func beginRow(fields: Int) {
        rowCount += 1
        append(UInt16(fields))
    }

    /// SQL NULL, in a column of any type.
    public mutating func null() {
        append(UInt32(bitPattern: -1))
    }

    public mutating func int8(_ v: Int64) {
        append(UInt32(8))
        append(UInt64(bitPattern: v))
    }

    public mutating func int4(_ v: Int32) {
        append(UInt32(4))
        append(UInt32(bitPattern: v))
    }

    public mutating func bool(_ v: Bool) {
        append(UInt32(1))
        bytes.append(v ? 1 : 0)
    }

    /// Text, varchar: the UTF-8 bytes as they are.
    public mutating func text(_ utf8: UnsafeRawBufferPointer) {
        append(UInt32(utf8.count))
        bytes.append(contentsOf: utf8)
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
    public mutating func timestamp(millis: Int64) {
        append(UInt32(8))
        append(UInt64(bitPattern: (millis - Self.postgresEpochOffsetMillis) * 1000))
    }

    /// jsonb: a version byte (1) followed by JSON text written by `body`.
    public mutating func jsonb(_ body: (inout JSONText) -> Void) {
        let lengthAt = bytes.count
        append(UInt32(0))
        bytes.append(1)
        var json = JSONText(bytes: [])
        swap(&json.bytes, &bytes)
        body(&json)
        swap(&json.bytes, &bytes)
        let length = UInt32(bytes.count - lengthAt - 4).bigEndian
        withUnsafeBytes(of: length) { bytes.replaceSubrange(lengthAt..<lengthAt + 4, with: $0) }
    }

    /// The complete stream: everything written plus the trailer.
    public func finished() -> [UInt8] { bytes + Self.trailer }

    /// The trailer that ends a stream (a field count of -1).
    public static let trailer: [UInt8] = [0xFF, 0xFF]

    private mutating func append<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) }
    }
}

/// JSON text appended straight into a COPY buffer.
public struct JSONText: Sendable {
    var bytes: [UInt8]

    public mutating func raw(_ s: StaticString) {
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
    }

    public mutating func bool(_ v: Bool) { v ? raw("true") : raw("false") }

    /// A finite double in the shortest form that reads back to the same value.
    public mutating func number(_ v: Double) {
        bytes.append(contentsOf: v.description.utf8)
    }

    /// A JSON string from valid UTF-8, escaping quotes, backslashes and control characters.
    public mutating func string(_ utf8: UnsafeRawBufferPointer) {
        bytes.append(UInt8(ascii: "\""))
        for byte in utf8 {
            switch byte {
            case UInt8(ascii: "\""): raw("\\\"")
            case UInt8(ascii: "\\"): raw("\\\\")
            case 0x0A: raw("\\n")
            case 0x0D: raw("\\r")
            case 0x09: raw("\\t")
            case 0..<0x20:
                raw("\\u00")
                let hex: StaticString = "0123456789abcdef"
                bytes.append(hex.utf8Start[Int(byte >> 4)])
                bytes.append(hex.utf8Start[Int(byte & 0xF)])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}
