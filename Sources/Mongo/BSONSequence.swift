import CMongoc
import Foundation

/// Helpers for documents laid end to end (a queued batch, a mongodump file) and for their `_id`.
public enum BSONSequence {
    /// More than any document MongoDB stores (16 MiB): a larger length means damaged bytes.
    public static let maxDocumentBytes = 48 << 20

    /// What the bytes at `offset` of a sequence hold: the one reading of a length prefix,
    /// for every sequence of documents the job reads.
    public enum Frame: Equatable, Sendable {
        /// A whole document of `length` bytes.
        case document(length: Int)
        /// The start of one; `needed` bytes from `offset` would hold it (or its length).
        case incomplete(needed: Int)
        /// A length no document can have.
        case invalidLength(Int)
        /// A document that does not end (with its 0 byte) where its length says.
        case unterminated(length: Int)
    }

    public static func frame(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Frame {
        let available = bytes.count - offset
        guard available >= 4 else { return .incomplete(needed: 4) }
        let length = Int(Int32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: Int32.self)))
        guard length >= 5, length <= maxDocumentBytes else { return .invalidLength(length) }
        guard available >= length else { return .incomplete(needed: length) }
        guard bytes[offset + length - 1] == 0 else { return .unterminated(length: length) }
        return .document(length: length)
    }

    /// The documents of a sequence as byte ranges, or nil when it is not documents laid end
    /// to end to its last byte.
    public static func ranges(_ payload: [UInt8]) -> [Range<Int>]? {
        payload.withUnsafeBytes { raw in
            var ranges: [Range<Int>] = []
            var offset = 0
            while offset < raw.count {
                guard case .document(let length) = frame(raw, at: offset) else { return nil }
                ranges.append(offset..<offset + length)
                offset += length
            }
            return ranges
        }
    }

    /// `{"_id": value}` of a document, the form the queue stores as the extract position.
    public static func idElement(_ document: UnsafeRawBufferPointer) -> [UInt8]? {
        guard var it = BSONIterator(document: document), it.find("_id") else { return nil }
        let element = BSONDocument()
        it.append(to: element.writer, as: "_id")
        return element.bytes
    }

    /// A readable `_id` of a document, distinct for distinct values of any type: integers as
    /// digits, strings quoted, anything else (ObjectId, UUID, binary, …) as extended JSON.
    public static func displayId(_ document: UnsafeRawBufferPointer) -> String {
        guard var it = BSONIterator(document: document) else { return "<unreadable>" }
        guard it.find("_id") else { return it.isDamaged ? "<damaged before its _id>" : "<no _id>" }
        if it.type == .int32 || it.type == .int64, let i = it.integer { return String(i) }
        if it.type == .utf8, let s = it.utf8, BSON.isValidUTF8(s) {
            return "\"" + String(decoding: s, as: UTF8.self) + "\""
        }
        return it.extendedJSON
    }
}
