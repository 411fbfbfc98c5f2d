import Mongo

/// How a batch writes a document's rows: the loader's write modes, each run inside the
/// batch's transaction with its checkpoint row.
public enum WriteMode: String, Sendable, Codable, CaseIterable {
    /// COPY the document's rows (the snapshot: its tables start empty).
    case append
    /// Remove the document's rows in every table of the pipeline (found by its key), then
    /// COPY the rows its new version maps to. A new version that is now bad input is set
    /// aside with its reason, and its old rows stay removed: the target never holds rows of
    /// a version the source no longer has.
    case replace
    /// Remove the document's rows.
    case delete
}

/// One document of a batch of changes, as the queue holds it: a BSON document
/// `{"op": "replace"|"delete", "_id": <the document's _id>, "doc": <its new version>}`
/// (`doc` for `replace` only). Being a document itself, a change travels through the queue,
/// its checksum and its framing like any other.
public struct Change: Sendable, Equatable {
    public var mode: WriteMode
    /// `{"_id": value}`.
    public var id: [UInt8]
    /// The new version, for `replace`.
    public var document: [UInt8]?

    public init(mode: WriteMode, id: [UInt8], document: [UInt8]? = nil) {
        self.mode = mode
        self.id = id
        self.document = document
    }

    /// A replacement of the document `document` (its `_id` read from it).
    public static func replace(_ document: [UInt8]) -> Change? {
        document.withUnsafeBytes(BSONSequence.idElement).map { Change(mode: .replace, id: $0, document: document) }
    }

    public var encoded: [UInt8] {
        let envelope = BSONDocument()
        envelope.writer.append("op", mode.rawValue)
        id.withUnsafeBytes { bytes in
            guard var it = BSONIterator(document: bytes), it.next() else { return }
            it.append(to: envelope.writer, as: "_id")
        }
        if let document, let copy = document.withUnsafeBytes({ BSONDocument(copying: $0) }) {
            envelope.writer.append("doc", document: copy)
        }
        return envelope.bytes
    }

    /// Where a change's parts lie in the bytes of its envelope: its mode, and the byte range of
    /// its new version (nil for a delete). The envelope itself holds the `_id`, so it serves as
    /// the document a mapping reads the key from.
    public static func parse(_ envelope: UnsafeRawBufferPointer) -> (mode: WriteMode, document: Range<Int>?)? {
        guard let base = envelope.baseAddress, var it = BSONIterator(document: envelope) else { return nil }
        var mode: WriteMode?
        var document: Range<Int>?
        while it.next() {
            if it.keyIs("op"), let text = it.utf8 {
                mode = WriteMode(rawValue: String(decoding: text, as: UTF8.self))
            } else if it.keyIs("doc"), let raw = it.documentBytes {
                let start = raw.baseAddress! - base
                document = start..<(start + raw.count)
            }
        }
        guard let mode, mode != .append, (mode == .replace) == (document != nil) else { return nil }
        return (mode, document)
    }
}

extension Change {
    /// The envelopes of `batch` that decide a document's rows: of several changes to one
    /// `_id`, only the last, in the order of those last changes.
    public static func latestPerDocument(_ batch: [[UInt8]]) -> [[UInt8]] {
        var last: [[UInt8]: Int] = [:]
        let ids = batch.map { envelope in envelope.withUnsafeBytes(BSONSequence.idElement) }
        for (i, id) in ids.enumerated() { if let id { last[id] = i } }
        return batch.indices.filter { i in ids[i].map { last[$0] == i } ?? true }.map { batch[$0] }
    }
}
