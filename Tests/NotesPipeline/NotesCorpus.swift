import DurableETL
import Mongo

/// Notes for the engine's tests, generated the same way in every process (the tests and the
/// program they kill): `_id`s of six types, 0 to 3 comments, `pinned` on half, and one note
/// (7) whose title is a number, which must be set aside.
public enum NotesCorpus {
    /// Note `i`'s `_id`, of type `i % 6`: int32, int64, string, ObjectId, UUID, binary.
    public static func appendId(_ i: Int, to w: BSONWriter) {
        switch i % 6 {
        case 0: w.append("_id", Int32(i))
        case 1: w.append("_id", Int64(10_000_000_000) + Int64(i))
        case 2: w.append("_id", "note-\(i)")
        case 3: w.append("_id", objectId: (0..<12).map { UInt8(truncatingIfNeeded: i * 31 + $0) })
        case 4: w.append("_id", binary: (0..<16).map { UInt8(truncatingIfNeeded: i * 17 + $0) }, subtype: 4)
        default: w.append("_id", binary: Array("blob-\(i)".utf8), subtype: 0)
        }
    }

    /// Note `i`: `comments` comments (nil: no `comments` field), a numeric title when `badTitle`.
    public static func note(_ i: Int, title: String? = nil, comments: Int?, badTitle: Bool = false) -> BSONDocument {
        let doc = BSONDocument()
        let w = doc.writer
        appendId(i, to: w)
        if badTitle { w.append("title", Int32(i)) } else { w.append("title", title ?? "Note \(i): ünïcödé \u{1}") }
        if i % 2 == 0 { w.append("pinned", i % 4 == 0) }
        if let comments {
            w.appendArray("comments") { list in
                for c in 0..<comments {
                    list.appendDocument(String(c)) { d in
                        d.append("author", "author \(c)")
                        d.append("text", "comment \(c) on \(i)")
                    }
                }
            }
        }
        return doc
    }

    /// The `count` notes of the snapshot.
    public static func documents(count: Int) -> [BSONDocument] {
        (0..<count).map { note($0, comments: $0 % 4, badTitle: $0 == 7) }
    }

    /// Changes to the snapshot's notes, in order, and the notes as they then are. By `i % 5`:
    /// comments grown, emptied, removed, the note deleted, the note changed twice in a row; then
    /// note 8 gets a numeric title (set aside, its old rows removed), note 7 a good one, and
    /// ten new notes arrive.
    public static func changes(count: Int) -> (changes: [[UInt8]], final: [[UInt8]]) {
        var final = Dictionary(uniqueKeysWithValues: documents(count: count).enumerated().map { ($0.offset, $0.element.bytes) })
        var changes: [[UInt8]] = []
        func replace(_ i: Int, _ doc: BSONDocument) {
            changes.append(Change.replace(doc.bytes)!.encoded)
            final[i] = doc.bytes
        }
        for i in 0..<count {
            switch i % 5 {
            case 0: replace(i, note(i, comments: i % 4 + 2, badTitle: i == 7))
            case 1: replace(i, note(i, comments: 0, badTitle: i == 7))
            case 2: replace(i, note(i, comments: nil, badTitle: i == 7))
            case 3:
                let id = note(i, comments: 0).bytes.withUnsafeBytes(BSONSequence.idElement)!
                changes.append(Change(mode: .delete, id: id).encoded)
                final[i] = nil
            default:
                replace(i, note(i, title: "first version of \(i)", comments: 1, badTitle: i == 7))
                replace(i, note(i, title: "second version of \(i)", comments: 2, badTitle: i == 7))
            }
        }
        replace(8, note(8, comments: 1, badTitle: true))
        replace(7, note(7, title: "Note 7, titled at last", comments: 3))
        for i in count..<(count + 10) { replace(i, note(i, comments: i % 3)) }
        return (changes, final.keys.sorted().map { final[$0]! })
    }
}
