import DurableETL
import Mongo
import Postgres

/// Notes with their comments. A document
///
///     {_id: <any type>, title: "…", pinned: true, comments: [{author: "…", text: "…"}, …]}
///
/// becomes one `notes` row (`pinned` may be absent: NULL) and one `note_comments` row per
/// comment, keyed by the note's key and the comment's position.
public struct NotesMapping: DocumentMapping {
    public init() {}

    public var name: String { "notes" }
    public var source: SourceCollection { SourceCollection(database: "app", collection: "notes") }

    public var tables: [TableSpec] {
        [
            TableSpec("notes", columns: [.init("id", "text"), .init("title", "text"), .init("pinned", "boolean", nullable: true)],
                      primaryKey: ["id"]),
            TableSpec("note_comments",
                      columns: [.init("note_id", "text"), .init("position", "integer"), .init("author", "text"), .init("body", "text")],
                      primaryKey: ["note_id", "position"],
                      foreignKeys: [.init(["note_id"], references: "notes")]),
        ]
    }

    // A note's rows are found by its key (what `sync` replaces or deletes them by): each
    // table's first key column holds it.
    public var documentKeyType: UInt32? { BinaryCopyWriter.OID.text }

    public func documentKey(_ document: UnsafeRawBufferPointer, into key: inout BinaryCopyWriter) throws(RejectReason) {
        key.text(BSONSequence.displayId(document))
    }

    public func map(_ document: UnsafeRawBufferPointer, into rows: inout TableRows) throws(RejectReason) {
        // Any _id type: the key is the _id as etl-job shows it (digits, a quoted string, or
        // extended JSON such as {"$oid": "…"}), distinct for distinct values.
        let key = BSONSequence.displayId(document)
        let note = try lookup(BSONIterator(document: document)!, ["title"])
        var pinned: Bool?
        var comments: BSONIterator?
        var it = BSONIterator(document: document)!
        while it.next() {
            if it.keyIs("pinned") { pinned = try it.boolean("pinned") }
            if it.keyIs("comments") { comments = try it.array("comments") }
        }
        let title = try note[0].string("title")
        rows.row(0, fields: 3) { w in
            w.text(key)
            w.text(title)
            if let pinned { w.bool(pinned) } else { w.null() }
        }
        guard var comment = comments else { return }
        var position: Int32 = 0
        while comment.next() {
            do {
                let fields = try lookup(try comment.document(nil), ["author", "text"])
                let (author, body) = (try fields[0].string("author"), try fields[1].string("text"))
                rows.row(1, fields: 4) { w in
                    w.text(key)
                    w.int4(position)
                    w.text(author)
                    w.text(body)
                }
            } catch {
                throw error.inside("comments[\(position)]")
            }
            position += 1
        }
    }
}
