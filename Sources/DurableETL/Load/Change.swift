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
/// `{"op": "replace"|"delete"|"none", "_id": <the document's _id>, "doc": <its new version>,
/// "pos": <the source's position after it>, "at": <when it happened, seconds since 1970>}`
/// (`doc` for `replace` only; `pos` and `at` when the source has them). `none` changes no
/// row: it carries the position of a stream that has been quiet, so that it is committed.
/// Being a document itself, a change travels through the queue, its checksum and its
/// framing like any other.
public struct Change: Sendable, Equatable {
    /// Nil for `none`.
    public var mode: WriteMode?
    /// `{"_id": value}` (nil for `none`).
    public var id: [UInt8]?
    /// The new version, for `replace`.
    public var document: [UInt8]?
    /// The source's position after this change (a BSON document), if it tells one.
    public var position: [UInt8]?
    /// When the change was made, in seconds since 1970, if the source tells.
    public var time: Double?

    public init(mode: WriteMode?, id: [UInt8]?, document: [UInt8]? = nil, position: [UInt8]? = nil, time: Double? = nil) {
        self.mode = mode
        self.id = id
        self.document = document
        self.position = position
        self.time = time
    }

    /// A replacement of the document `document` (its `_id` read from it).
    public static func replace(_ document: [UInt8], position: [UInt8]? = nil, time: Double? = nil) -> Change? {
        document.withUnsafeBytes(BSONSequence.idElement).map { Change(mode: .replace, id: $0, document: document, position: position, time: time) }
    }

    public var encoded: [UInt8] {
        let envelope = BSONDocument()
        let w = envelope.writer
        w.append("op", mode?.rawValue ?? "none")
        id?.withUnsafeBytes { bytes in
            guard var it = BSONIterator(document: bytes), it.next() else { return }
            it.append(to: w, as: "_id")
        }
        for (key, bytes) in [("doc", document), ("pos", position)] {
            if let bytes, let copy = bytes.withUnsafeBytes({ BSONDocument(copying: $0) }) { w.append(key, document: copy) }
        }
        if let time { w.append("at", time) }
        return envelope.bytes
    }

    /// What an envelope holds, read in place.
    public struct Parsed {
        /// Nil for `none`.
        public var mode: WriteMode?
        /// The byte range of the new version in the envelope (for `replace`).
        public var document: Range<Int>?
        /// The source position after the change, in place.
        public var position: Range<Int>?
        public var time: Double?
    }

    /// Reads an envelope; nil when it is not one. The envelope holds the `_id`, so it serves
    /// as the document a mapping reads the key from.
    public static func parse(_ envelope: UnsafeRawBufferPointer) -> Parsed? {
        guard let base = envelope.baseAddress, var it = BSONIterator(document: envelope) else { return nil }
        var op: String?
        var parsed = Parsed()
        var hasId = false
        func range(_ raw: UnsafeRawBufferPointer) -> Range<Int> {
            let start = raw.baseAddress! - base
            return start..<(start + raw.count)
        }
        while it.next() {
            if it.keyIs("op"), let text = it.utf8 { op = String(decoding: text, as: UTF8.self) }
            else if it.keyIs("_id") { hasId = true }
            else if it.keyIs("doc"), let raw = it.documentBytes { parsed.document = range(raw) }
            else if it.keyIs("pos"), let raw = it.documentBytes { parsed.position = range(raw) }
            else if it.keyIs("at") { parsed.time = it.number }
        }
        switch op {
        case "none"?:
            return parsed
        case let name?:
            guard let mode = WriteMode(rawValue: name), mode != .append, hasId, (mode == .replace) == (parsed.document != nil) else { return nil }
            parsed.mode = mode
            return parsed
        case nil:
            return nil
        }
    }
}

extension Change {
    /// The envelopes of `batch` that decide a document's rows: of several changes to one
    /// `_id`, only the last, in the order of those last changes (a `none` stays only when
    /// the batch holds nothing else).
    public static func latestPerDocument(_ batch: [[UInt8]]) -> [[UInt8]] {
        var last: [[UInt8]: Int] = [:]
        let ids = batch.map { envelope in envelope.withUnsafeBytes(BSONSequence.idElement) }
        for (i, id) in ids.enumerated() { if let id { last[id] = i } }
        let kept = batch.indices.filter { i in ids[i].map { last[$0] == i } ?? false }.map { batch[$0] }
        return kept.isEmpty ? Array(batch.suffix(1)) : kept
    }
}
