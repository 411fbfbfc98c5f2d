import CZlib

/// A batch's record in the `batches` table: its state, document count, the CRC-32 of its
/// payload and its extent in the source (the positions before it and after its last
/// document). Records of earlier versions end after the count or the checksum.
///
///     state u8 | documents i64 LE | crc32 u32 LE | before-length u32 BE | before | last
struct BatchRecord {
    var state: BatchState
    var documents: Int
    var checksum: UInt32?
    var before: [UInt8]?
    var last: [UInt8]?

    init(state: BatchState, documents: Int, checksum: UInt32, before: [UInt8], last: [UInt8]) {
        (self.state, self.documents, self.checksum, self.before, self.last) = (state, documents, checksum, before, last)
    }

    init?(_ raw: UnsafeRawBufferPointer) {
        guard raw.count >= 9, let state = BatchState(rawValue: raw[0]) else { return nil }
        self.state = state
        documents = Int(Codec.int(UnsafeRawBufferPointer(rebasing: raw[1..<9])))
        checksum = raw.count >= 13 ? UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 9, as: UInt32.self)) : nil
        if raw.count > 17 {
            let length = Int(UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: 13, as: UInt32.self)))
            if 17 + length <= raw.count {
                before = Array(raw[17..<(17 + length)])
                last = Array(raw[(17 + length)...])
            }
        }
    }

    var encoded: [UInt8] {
        var bytes = [state.rawValue] + Codec.int(Int64(documents))
        guard let checksum else { return bytes }
        bytes += withUnsafeBytes(of: checksum.littleEndian, Array.init)
        guard let before, let last else { return bytes }
        return bytes + Codec.int32(UInt32(before.count)) + before + last
    }
}

/// How the documents of a payload are laid out. The queue holds opaque bytes; whoever writes
/// them (the engine: BSON documents) says how many whole documents a payload holds laid end to
/// end to its last byte, or nil when it is not such a sequence.
public struct Framing: Sendable {
    public let count: @Sendable ([UInt8]) -> Int?

    public init(count: @escaping @Sendable ([UInt8]) -> Int?) { self.count = count }
}

/// What a batch record promises about its payload: the number of documents, laid end to
/// end to the last byte (as its `Framing` reads them), and the payload's CRC-32 (zlib). A
/// changed byte, a damaged length or a zeroed page breaks one of the three.
public enum BatchIntegrity {
    static func check(id: UInt64, record raw: UnsafeRawBufferPointer?, payload: [UInt8], framing: Framing?, directory: String) throws {
        guard let raw, let record = BatchRecord(raw) else {
            throw damaged(id, directory, "its record is missing or short")
        }
        if let stored = record.checksum {
            guard Codec.crc32(payload) == stored else { throw damaged(id, directory, "its checksum does not match") }
        }
        if let framing, framing.count(payload) != record.documents {
            throw damaged(id, directory, "it should hold \(record.documents) documents laid end to end")
        }
    }

    /// The checksum the queue records for documents laid end to end.
    public static func checksum(_ documents: [[UInt8]]) -> UInt32 {
        documents.reduce(0) { crc, document in
            document.withUnsafeBytes { UInt32(CZlib.crc32_z(UInt(crc), $0.baseAddress?.assumingMemoryBound(to: UInt8.self), $0.count)) }
        }
    }

    private static func damaged(_ id: UInt64, _ directory: String, _ what: String) -> DamagedBatch {
        DamagedBatch(id: id, file: directory + "/data.mdb", problem: what)
    }
}

/// Byte layouts of keys and values. Keys are big-endian so LMDB's order is numeric order.
enum Codec {
    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { raw in
            UInt32(CZlib.crc32_z(0, raw.baseAddress?.assumingMemoryBound(to: UInt8.self), raw.count))
        }
    }


    static func key(_ id: UInt64) -> [UInt8] { withUnsafeBytes(of: id.bigEndian, Array.init) }
    static func id(_ key: [UInt8]) -> UInt64 { key.withUnsafeBytes { UInt64(bigEndian: $0.loadUnaligned(as: UInt64.self)) } }
    static func int32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.bigEndian, Array.init) }
    static func int(_ v: Int64) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
    static func int(_ raw: UnsafeRawBufferPointer) -> Int64 { Int64(littleEndian: raw.loadUnaligned(as: Int64.self)) }
    static func double(_ v: Double) -> [UInt8] { int(Int64(bitPattern: v.bitPattern)) }
    static func double(_ raw: UnsafeRawBufferPointer) -> Double { Double(bitPattern: UInt64(bitPattern: int(raw))) }

    static func setAside(_ doc: SetAsideDocument) -> [UInt8] {
        var out: [UInt8] = []
        for field in [Array(doc.documentId.utf8), Array(doc.reason.utf8)] {
            out += withUnsafeBytes(of: UInt32(field.count).littleEndian, Array.init) + field
        }
        return out + doc.document
    }

    static func setAside(_ raw: UnsafeRawBufferPointer, batch: UInt64) -> SetAsideDocument {
        var offset = 0
        func field() -> String {
            let n = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
            defer { offset += 4 + n }
            return String(decoding: raw[(offset + 4)..<(offset + 4 + n)], as: UTF8.self)
        }
        let id = field()
        let reason = field()
        return SetAsideDocument(batch: batch, documentId: id, reason: reason, document: Array(raw[offset...]))
    }
}
