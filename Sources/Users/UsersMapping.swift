import DurableETL
import Foundation
import Mongo
import Postgres

/// The users pipeline: the 15 tables of DATA.md and how one user document becomes their rows.
public struct UsersMapping: DocumentMapping {
    /// Its 15 tables are code: a field they do not name is dropped (counted and reported), or
    /// its document set aside (`--unmapped set-aside`); it cannot evolve or keep one.
    public private(set) var unmappedPolicy = UnmappedPolicy.drop

    public init() {}

    public func with(unmappedPolicy: UnmappedPolicy) -> (any DocumentMapping)? {
        guard unmappedPolicy == .drop || unmappedPolicy == .setAside else { return nil }
        var copy = self
        copy.unmappedPolicy = unmappedPolicy
        return copy
    }

    public var name: String { "users" }
    public var source: SourceCollection { SourceCollection(database: "sample_db", collection: "users") }
    public var tables: [TableSpec] { Self.tables }

    public func map(_ document: UnsafeRawBufferPointer, into rows: inout TableRows) throws(RejectReason) {
        var unmapped: [UnmappedField] = []
        try map(document, into: &rows, unmapped: &unmapped)
    }

    public func map(_ document: UnsafeRawBufferPointer, into rows: inout TableRows, unmapped: inout [UnmappedField]) throws(RejectReason) {
        var writer = UserRowWriter()
        swap(&writer.rows, &rows)
        swap(&writer.unmapped, &unmapped)
        defer {
            swap(&writer.rows, &rows)
            swap(&writer.unmapped, &unmapped)
        }
        do {
            try writer.emit(document)
        } catch {
            throw error as? RejectReason ?? RejectReason("\(error)")
        }
    }

    /// After the tables: the seed's unique columns (`users.username`, `users.email`). On a
    /// target created by an earlier version, each is added only when the rows allow it;
    /// otherwise the migration refuses, naming values more than one user has (never
    /// dropping or altering a row).
    public var migrations: [Migration] {
        [Migration(version: 2, name: "users unique username and email", statements: Self.uniqueColumns.map(Self.addUnique))]
    }

    static let uniqueColumns = ["username", "email"]

    static func addUnique(_ column: String) -> String {
        """
        DO $$
        DECLARE duplicated text;
        BEGIN
            SELECT string_agg(quote_literal(v), ', ') INTO duplicated
              FROM (SELECT \(column) AS v FROM users GROUP BY \(column) HAVING count(*) > 1 ORDER BY 1 LIMIT 5) d;
            IF duplicated IS NOT NULL THEN
                RAISE EXCEPTION 'users.\(column) holds values that more than one user has (%): the users pipeline keeps \(column) UNIQUE, so the constraint users_\(column)_key cannot be added; remove the duplicate rows (or empty the tables), or load into another --target-schema', duplicated;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'users'::regclass AND conname = 'users_\(column)_key') THEN
                ALTER TABLE users ADD CONSTRAINT users_\(column)_key UNIQUE (\(column));
            END IF;
        END $$
        """
    }

    /// A document's key is its `_id`: a user's rows are found by it (see `tables`).
    public var documentKeyType: UInt32? { BinaryCopyWriter.OID.int8 }

    public func displayId(ofKey key: String) -> String? { key }

    public func documentKey(_ document: UnsafeRawBufferPointer, into key: inout BinaryCopyWriter) throws(RejectReason) {
        guard var it = BSONIterator(document: document), it.find("_id") else { throw RejectReason("is missing", at: "_id") }
        let id = try it.int64("_id")
        guard id >= -maxUserId, id <= maxUserId else {
            throw RejectReason("is \(id), outside the range whose child ids fit a bigint (±\(maxUserId))", at: "_id")
        }
        key.int8(id)
    }

    /// In an order that satisfies the foreign keys, each with its rough COPY bytes per
    /// document (so buffers rarely grow). Every column is NOT NULL; a child's `id` follows
    /// the id rule of DATA.md, which is how a user's rows are found in it: `id = _id`, or
    /// `id` from `_id * 10000` to `_id * 10000 + 9999`, or (messages, groups, whose ids come
    /// from the document) the column that references the user.
    public static let tables: [TableSpec] = [
        table(.users, 160, [("id", big), ("username", v), ("email", v), ("first_name", v), ("last_name", v),
                            ("age", int), ("created_at", ts), ("updated_at", ts)]),
        table(.addresses, 140, [("id", big), ("user_id", big), ("street", v), ("city", v), ("state", v),
                                ("zip_code", v), ("country", v), ("coordinates", json)], parent: ("user_id", .users)),
        table(.profiles, 160, [("id", big), ("user_id", big), ("bio", v), ("interests", json), ("skills", json)],
              parent: ("user_id", .users)),
        table(.education, 420, [("id", big), ("profile_id", big), ("institution", v), ("degree", v), ("year", int),
                                ("description", v)], parent: ("profile_id", .profiles)),
        table(.experience, 520, [("id", big), ("profile_id", big), ("company", v), ("position", v), ("duration", v),
                                 ("description", v)], parent: ("profile_id", .profiles)),
        table(.preferences, 130, [("id", big), ("user_id", big), ("language", v), ("timezone", v),
                                  ("notifications", json)], parent: ("user_id", .users)),
        table(.settings, 420, [("id", big), ("preference_id", big), ("key", v), ("value", v), ("timestamp", ts),
                               ("metadata", v)], parent: ("preference_id", .preferences)),
        table(.activityLog, 1600, [("id", big), ("user_id", big), ("key", v), ("value", v), ("timestamp", ts),
                                   ("metadata", v)], parent: ("user_id", .users)),
        table(.transactions, 650, [("id", big), ("user_id", big), ("key", v), ("value", v), ("timestamp", ts),
                                   ("metadata", v)], parent: ("user_id", .users)),
        table(.messages, 880, [("id", v), ("user_id", big), ("from", v), ("to", v), ("subject", v), ("body", v),
                               ("timestamp", ts), ("read", "boolean")], parent: ("user_id", .users)),
        table(.attachments, 16, [("id", big), ("message_id", v), ("name", v), ("size", int), ("file_type", v)],
              parent: ("message_id", .messages)),
        table(.socialMedia, 260, [("id", big), ("user_id", big), ("connections", json)], parent: ("user_id", .users)),
        table(.posts, 700, [("id", big), ("social_media_id", big), ("key", v), ("value", v), ("timestamp", ts),
                            ("metadata", v)], parent: ("social_media_id", .socialMedia)),
        table(.groups, 160, [("id", v), ("social_media_id", big), ("name", v), ("joined", ts)],
              parent: ("social_media_id", .socialMedia)),
        table(.largeData, 570, [("id", big), ("user_id", big), ("blob1", v), ("blob2", v), ("blob3", v), ("blob4", v),
                                ("blob5", v)], parent: ("user_id", .users)),
    ]

    public static var tableNames: [String] { tables.map(\.name) }

    static let v = "varchar", ts = "timestamptz", big = "bigint", int = "integer", json = "jsonb"

    /// A table at the position of `t`, keyed by its first column.
    private static func table(_ t: T, _ bytes: Int, _ columns: [(String, String)], parent: (String, T)? = nil) -> TableSpec {
        TableSpec(
            t.name, columns: columns.map { TableSpec.Column($0.0, $0.1) }, primaryKey: [columns[0].0],
            foreignKeys: parent.map { [TableSpec.ForeignKey([$0.0], references: $0.1.name)] } ?? [],
            bytesPerDocument: bytes, documentRows: t.documentRows)
    }
}

/// The tables' positions in `UsersMapping.tables`, in load order.
enum T: Int, CaseIterable {
    case users, addresses, profiles, education, experience, preferences, settings, activityLog
    case transactions, messages, attachments, socialMedia, posts, groups, largeData

    /// How a user's rows are found here by the user's `_id`.
    var documentRows: DocumentRows {
        switch self {
        case .users, .addresses, .profiles, .preferences, .socialMedia, .largeData: .key("id")
        case .education, .experience, .settings, .activityLog, .transactions, .posts, .attachments: .keyRange("id", factor: 10_000)
        case .messages: .key("user_id")
        case .groups: .key("social_media_id")
        }
    }

    /// The table's name: the case in snake_case.
    var name: String {
        String(describing: self).reduce(into: "") { name, c in
            if c.isUppercase { name += "_" + c.lowercased() } else { name.append(c) }
        }
    }
}

/// The largest `_id` whose child ids (`_id * 10000 + index`) still fit in a bigint.
let maxUserId: Int64 = Int64.max / 10_000 - 1
/// Entries an array may hold before its ids would run into the next user's.
let maxEntriesPerArray = 10_000

/// Writes one user document's rows into the 15 tables' COPY streams.
struct UserRowWriter {
    var rows = TableRows()
    /// Fields of the document that none of the 15 tables holds.
    var unmapped: [UnmappedField] = []

    /// Notes the fields of an object that `lookup` did not ask for (`prefix`: where the object is).
    private mutating func note(_ found: Fields, _ names: [StaticString], _ prefix: @autoclosure () -> String) {
        guard found.strays > 0 else { return }
        for (key, type) in found.strays(among: names) { unmapped.append(UnmappedField(path: prefix() + key, type: type)) }
    }

    private mutating func row(_ t: T, _ fields: Int, _ body: (inout BinaryCopyWriter) throws -> Void) rethrows {
        try rows.row(t.rawValue, fields: fields, body)
    }

    mutating func emit(_ bytes: UnsafeRawBufferPointer) throws {
        guard let root = BSONIterator(document: bytes) else { throw RejectReason("the document is not valid BSON") }
        let f = try lookup(root, Names.top)
        note(f, Names.top, "")
        let id = try f[0].int64("_id")
        guard id >= -maxUserId, id <= maxUserId else {
            throw RejectReason("is \(id), outside the range whose child ids fit a bigint (±\(maxUserId))", at: "_id")
        }
        try row(.users, 8) { w in
            w.int8(id)
            for i in 1...4 { w.text(try f[i].string(Names.top[i])) }
            let age = try f[5].int64("age")
            guard let age32 = Int32(exactly: age) else { throw RejectReason("is \(age), not a 32-bit integer", at: "age") }
            w.int4(age32)
            w.timestamp(millis: try f[6].date("createdAt"))
            w.timestamp(millis: try f[7].date("updatedAt"))
        }
        let (addressDoc, profileDoc, preferencesDoc) = (try f[8].document("address"), try f[9].document("profile"), try f[10].document("preferences"))
        let (activity, transactions, messageList) = (try f[11].array("activityLog"), try f[12].array("transactions"), try f[13].array("messages"))
        let (social, large) = (try f[14].document("socialMedia"), try f[15].document("largeData"))
        try within("address") { try address(addressDoc, id) }
        try within("profile") { try profile(profileDoc, id) }
        try within("preferences") { try preferences(preferencesDoc, id) }
        try within("activityLog") { try entries(activity, .activityLog, id) }
        try within("transactions") { try entries(transactions, .transactions, id) }
        try within("messages") { try messages(messageList, id) }
        try within("socialMedia") { try socialMedia(social, id) }
        try within("largeData") { try largeData(large, id) }
    }

    private mutating func address(_ doc: BSONIterator, _ id: Int64) throws {
        let f = try lookup(doc, Names.address)
        note(f, Names.address, "address.")
        let coordinates = try f[5].document("coordinates")
        let c = try within("coordinates") { try lookup(coordinates, Names.coordinates) }
        note(c, Names.coordinates, "address.coordinates.")
        try row(.addresses, 8) { w in
            w.int8(id)
            w.int8(id)
            for i in 0...4 { w.text(try f[i].string(Names.address[i])) }
            let lat = try within("coordinates") { try c[0].finite("lat") }
            let lng = try within("coordinates") { try c[1].finite("lng") }
            w.jsonb { j in
                j.raw("{\"lat\": ")
                j.number(lat)
                j.raw(", \"lng\": ")
                j.number(lng)
                j.raw("}")
            }
        }
    }

    private mutating func profile(_ doc: BSONIterator, _ id: Int64) throws {
        let f = try lookup(doc, Names.profile)
        note(f, Names.profile, "profile.")
        try row(.profiles, 5) { w in
            w.int8(id)
            w.int8(id)
            w.text(try f[0].string("bio"))
            try stringArray(f[1], "interests", into: &w)
            try stringArray(f[2], "skills", into: &w)
        }
        let (education, experience) = (try f[3].array("education"), try f[4].array("experience"))
        try within("education") {
            try each(education) { entry, index in
                let e = try lookup(entry, Names.education)
                note(e, Names.education, "profile.education[].")
                try row(.education, 6) { w in
                    w.int8(childId(id, index))
                    w.int8(id)
                    w.text(try e[0].string("institution"))
                    w.text(try e[1].string("degree"))
                    let year = try e[2].int64("year")
                    guard let year32 = Int32(exactly: year) else { throw RejectReason("is \(year), not a 32-bit integer", at: "year") }
                    w.int4(year32)
                    w.text(try e[3].string("description"))
                }
            }
        }
        try within("experience") {
            try each(experience) { entry, index in
                let e = try lookup(entry, Names.experience)
                note(e, Names.experience, "profile.experience[].")
                try row(.experience, 6) { w in
                    w.int8(childId(id, index))
                    w.int8(id)
                    for i in 0...3 { w.text(try e[i].string(Names.experience[i])) }
                }
            }
        }
    }

    private mutating func preferences(_ doc: BSONIterator, _ id: Int64) throws {
        let f = try lookup(doc, Names.preferences)
        note(f, Names.preferences, "preferences.")
        let notifications = try f[2].document("notifications")
        let n = try within("notifications") { try lookup(notifications, Names.notifications) }
        note(n, Names.notifications, "preferences.notifications.")
        try row(.preferences, 5) { w in
            w.int8(id)
            w.int8(id)
            w.text(try f[0].string("language"))
            w.text(try f[1].string("timezone"))
            let flags = try within("notifications") { try (n[0].boolean("email"), n[1].boolean("push"), n[2].boolean("sms")) }
            w.jsonb { j in
                j.raw("{\"email\": ")
                j.bool(flags.0)
                j.raw(", \"push\": ")
                j.bool(flags.1)
                j.raw(", \"sms\": ")
                j.bool(flags.2)
                j.raw("}")
            }
        }
        let settings = try f[3].array("settings")
        try within("settings") { try entries(settings, .settings, id) }
    }

    /// Where the entries of an entries table are, as a note names their fields.
    private static func arrayPath(_ table: T) -> String {
        switch table {
        case .settings: "preferences.settings[]."
        case .posts: "socialMedia.posts[]."
        case .transactions: "transactions[]."
        default: "activityLog[]."
        }
    }

    /// activityLog, transactions, settings and posts: {key, value, timestamp, metadata} entries.
    private mutating func entries(_ array: BSONIterator, _ table: T, _ id: Int64) throws {
        try each(array) { entry, index in
            let e = try lookup(entry, Names.entry)
            note(e, Names.entry, Self.arrayPath(table))
            try row(table, 6) { w in
                w.int8(childId(id, index))
                w.int8(id)
                w.text(try e[0].string("key"))
                w.text(try e[1].string("value"))
                w.timestamp(millis: try e[2].date("timestamp"))
                w.text(try e[3].string("metadata"))
            }
        }
    }

    private mutating func messages(_ array: BSONIterator, _ id: Int64) throws {
        var seen = DistinctIds(kind: "message")
        var attachmentIndex = 0
        try each(array) { entry, _ in
            let m = try lookup(entry, Names.message)
            note(m, Names.message, "messages[].")
            let messageId = try m[0].string("id")
            try seen.insert(messageId)
            try row(.messages, 8) { w in
                w.text(messageId)
                w.int8(id)
                for i in 1...4 { w.text(try m[i].string(Names.message[i])) }
                w.timestamp(millis: try m[5].date("timestamp"))
                w.bool(try m[6].boolean("read"))
            }
            // Attachment ids run across all of the user's messages, so two messages never collide.
            let attachments = try m[7].array("attachments")
            try within("attachments") {
                try each(attachments) { attachment, _ in
                    guard attachmentIndex < maxEntriesPerArray else {
                        throw RejectReason("holds more than \(maxEntriesPerArray) attachments in all; their ids would collide with the next user's")
                    }
                    let a = try lookup(attachment, Names.attachment)
                    note(a, Names.attachment, "messages[].attachments[].")
                    try row(.attachments, 5) { w in
                        w.int8(childId(id, attachmentIndex))
                        w.text(messageId)
                        w.text(try a[0].string("name"))
                        let size = try a[1].int64("size")
                        guard let size32 = Int32(exactly: size) else { throw RejectReason("is \(size), not a 32-bit integer", at: "size") }
                        w.int4(size32)
                        w.text(try a[2].string("type"))
                    }
                    attachmentIndex += 1
                }
            }
        }
    }

    private mutating func socialMedia(_ doc: BSONIterator, _ id: Int64) throws {
        let f = try lookup(doc, Names.socialMedia)
        note(f, Names.socialMedia, "socialMedia.")
        try row(.socialMedia, 3) { w in
            w.int8(id)
            w.int8(id)
            try stringArray(f[0], "connections", into: &w)
        }
        let (posts, groups) = (try f[1].array("posts"), try f[2].array("groups"))
        try within("posts") { try entries(posts, .posts, id) }
        var seen = DistinctIds(kind: "group")
        try within("groups") {
            try each(groups) { entry, _ in
                let g = try lookup(entry, Names.group)
                note(g, Names.group, "socialMedia.groups[].")
                let groupId = try g[0].string("id")
                try seen.insert(groupId)
                try row(.groups, 4) { w in
                    w.text(groupId)
                    w.int8(id)
                    w.text(try g[1].string("name"))
                    w.timestamp(millis: try g[2].date("joined"))
                }
            }
        }
    }

    private mutating func largeData(_ doc: BSONIterator, _ id: Int64) throws {
        let f = try lookup(doc, Names.largeData)
        note(f, Names.largeData, "largeData.")
        try row(.largeData, 7) { w in
            w.int8(id)
            w.int8(id)
            for i in 0...4 { w.text(try f[i].string(Names.largeData[i])) }
        }
    }
}

// MARK: Field access

private enum Names {
    static let top: [StaticString] = [
        "_id", "username", "email", "firstName", "lastName", "age", "createdAt", "updatedAt", "address",
        "profile", "preferences", "activityLog", "transactions", "messages", "socialMedia", "largeData",
    ]
    static let address: [StaticString] = ["street", "city", "state", "zipCode", "country", "coordinates"]
    static let coordinates: [StaticString] = ["lat", "lng"]
    static let profile: [StaticString] = ["bio", "interests", "skills", "education", "experience"]
    static let education: [StaticString] = ["institution", "degree", "year", "description"]
    static let experience: [StaticString] = ["company", "position", "duration", "description"]
    static let preferences: [StaticString] = ["language", "timezone", "notifications", "settings"]
    static let notifications: [StaticString] = ["email", "push", "sms"]
    static let entry: [StaticString] = ["key", "value", "timestamp", "metadata"]
    static let message: [StaticString] = ["id", "from", "to", "subject", "body", "timestamp", "read", "attachments"]
    static let attachment: [StaticString] = ["name", "size", "type"]
    static let socialMedia: [StaticString] = ["connections", "posts", "groups"]
    static let group: [StaticString] = ["id", "name", "joined"]
    static let largeData: [StaticString] = ["blob1", "blob2", "blob3", "blob4", "blob5"]
}

func childId(_ userId: Int64, _ index: Int) -> Int64 { userId * 10_000 + Int64(index) }

/// String ids (messages, groups) seen so far in one document: a repeat is a rejection.
private struct DistinctIds {
    let kind: String
    private var seen: [UnsafeRawBufferPointer] = []

    init(kind: String) { self.kind = kind }

    mutating func insert(_ id: UnsafeRawBufferPointer) throws {
        guard !seen.contains(where: { $0.elementsEqual(id) }) else {
            throw RejectReason("repeats the \(kind) id \"\(String(decoding: id, as: UTF8.self))\" within the document", at: "id")
        }
        seen.append(id)
    }
}

/// Visits the entries of an array that must hold documents, with their index; more entries
/// than the id rule allows is a rejection.
private func each(_ array: BSONIterator, _ body: (BSONIterator, Int) throws -> Void) throws {
    var it = array
    var index = 0
    while it.next() {
        guard index < maxEntriesPerArray else {
            throw RejectReason("has more than \(maxEntriesPerArray) entries; their ids (_id * 10000 + index) would collide with the next user's")
        }
        try within("[\(index)]") {
            guard let entry = it.children, it.type == .document else {
                throw RejectReason("is \(article(it.type)), expected an object")
            }
            try body(entry, index)
        }
        index += 1
    }
}

/// A JSON array of strings, as jsonb.
private func stringArray(_ element: BSONIterator, _ name: StaticString, into w: inout BinaryCopyWriter) throws {
    var it = try element.array(name)
    var items: [UnsafeRawBufferPointer] = []
    try within("\(name)") {
        var index = 0
        while it.next() {
            items.append(try within("[\(index)]") { try it.string(nil) })
            index += 1
        }
    }
    w.jsonb { j in
        j.raw("[")
        for (i, item) in items.enumerated() {
            if i > 0 { j.raw(", ") }
            j.string(item)
        }
        j.raw("]")
    }
}
