import CMongoc
import Foundation

/// Helpers for documents laid end to end (a queued batch, a mongodump file) and for their `_id`.
public enum BSONSequence {
    /// The documents of a sequence: byte ranges into it. Stops at the first length that does
    /// not fit.
    public static func ranges(_ payload: [UInt8]) -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        var offset = 0
        payload.withUnsafeBytes { raw in
            while offset + 4 <= raw.count {
                let length = Int(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: Int32.self)))
                guard length >= 5, offset + length <= raw.count else { break }
                ranges.append(offset..<offset + length)
                offset += length
            }
        }
        return ranges
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
