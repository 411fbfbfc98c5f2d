import Foundation
import Mongo
import Postgres

/// Why a document was set aside: the path of the offending field and what is wrong with it.
public struct RejectReason: Error, CustomStringConvertible, Sendable {
    var path: [String]
    let problem: String

    init(_ problem: String, at field: String? = nil) {
        self.problem = problem
        path = field.map { [$0] } ?? []
    }

    /// The same reason, one level further out (`education` → `profile.education`).
    func inside(_ parent: String) -> RejectReason {
        var copy = self
        copy.path.insert(parent, at: 0)
        return copy
    }

    public var description: String {
        guard var text = path.first else { return problem }
        for part in path.dropFirst() { text += part.hasPrefix("[") ? part : "." + part }
        return "field '\(text)' \(problem)"
    }
}

/// The tables' positions in `UserRows.tables`, in load order.
enum T: Int, CaseIterable {
    case users, addresses, profiles, education, experience, preferences, settings, activityLog
    case transactions, messages, attachments, socialMedia, posts, groups, largeData
}

/// The largest `_id` whose child ids (`_id * 10000 + index`) still fit in a bigint.
let maxUserId: Int64 = Int64.max / 10_000 - 1
/// Entries an array may hold before its ids would run into the next user's.
let maxEntriesPerArray = 10_000

/// Flattens user documents into the binary COPY streams of the 15 tables. A document is
/// added whole or, when any field does not fit, not at all.
public struct UserRows: Sendable {
    public private(set) var tables: [BinaryCopyWriter]
    public private(set) var documents = 0
    /// Larger documents are set aside (a batch of them would not fit memory or a COPY).
    public let maxDocumentBytes: Int

    public static let defaultMaxDocumentBytes = 8 << 20

    public init(expectedDocuments: Int = 500, maxDocumentBytes: Int = defaultMaxDocumentBytes) {
        self.maxDocumentBytes = maxDocumentBytes
        tables = T.allCases.map { t in BinaryCopyWriter(capacity: expectedDocuments * Self.bytesPerDocument[t.rawValue]) }
    }

    /// Rough COPY bytes per document for each table, so buffers rarely grow.
    private static let bytesPerDocument = [160, 140, 160, 420, 520, 130, 420, 1600, 650, 880, 16, 260, 700, 160, 570]

    public func rowCount(_ table: Int) -> Int { tables[table].rowCount }

    /// Adds one document's rows, or throws the reason it does not fit and adds nothing.
    public mutating func add(document bytes: UnsafeRawBufferPointer) throws(RejectReason) {
        let marks = tables.map(\.mark)
        do {
            try emit(bytes)
            documents += 1
        } catch {
            for i in tables.indices { tables[i].rollback(to: marks[i]) }
            throw error as! RejectReason
        }
    }

    private mutating func row(_ t: T, _ fields: Int, _ body: (inout BinaryCopyWriter) throws -> Void) rethrows {
        tables[t.rawValue].beginRow(fields: fields)
        try body(&tables[t.rawValue])
    }

    private mutating func emit(_ bytes: UnsafeRawBufferPointer) throws {
        guard bytes.count <= maxDocumentBytes else {
            throw RejectReason("the document is \(megabytes(bytes.count)), more than the \(megabytes(maxDocumentBytes)) limit (--max-document-mb)")
        }
        guard BSON.declaredLength(bytes) == bytes.count, let root = BSONIterator(document: bytes) else {
            throw RejectReason("the document is not valid BSON")
        }
        let f = try lookup(root, Names.top)
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
        let coordinates = try f[5].document("coordinates")
        let c = try within("coordinates") { try lookup(coordinates, Names.coordinates) }
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
        let notifications = try f[2].document("notifications")
        let n = try within("notifications") { try lookup(notifications, Names.notifications) }
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

    /// activityLog, transactions, settings and posts: {key, value, timestamp, metadata} entries.
    private mutating func entries(_ array: BSONIterator, _ table: T, _ id: Int64) throws {
        try each(array) { entry, index in
            let e = try lookup(entry, Names.entry)
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

private func megabytes(_ bytes: Int) -> String {
    let mb = Double(bytes) / 1_048_576
    return mb.rounded() == mb ? "\(Int(mb)) MB" : String(format: "%.1f MB", mb)
}

/// Runs `body`, prefixing the path of any rejection with `field`.
private func within<R>(_ field: String, _ body: () throws -> R) throws -> R {
    do { return try body() } catch let reason as RejectReason { throw reason.inside(field) }
}

/// Finds each of `names` among the elements of a document; a missing one is a rejection.
private func lookup(_ doc: BSONIterator, _ names: [StaticString]) throws -> [BSONIterator] {
    var found = [BSONIterator?](repeating: nil, count: names.count)
    var it = doc
    var next = 0
    while it.next() {
        // Documents usually hold their fields in the expected order: try that one first.
        if next < names.count, found[next] == nil, it.keyIs(names[next]) {
            found[next] = it
            next += 1
            continue
        }
        for i in names.indices where found[i] == nil && it.keyIs(names[i]) {
            found[i] = it
            break
        }
    }
    return try names.indices.map { i in
        guard let element = found[i] else { throw RejectReason("is missing", at: "\(names[i])") }
        return element
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

private func article(_ type: BSONType) -> String {
    switch type {
    case .array, .int32, .int64, .objectId, .undefined: "an \(type.name)"
    default: "a \(type.name)"
    }
}

extension BSONIterator {
    fileprivate func fail(_ name: StaticString?, expected: String) -> RejectReason {
        RejectReason("is \(article(type)), expected \(expected)", at: name.map { "\($0)" })
    }

    fileprivate func int64(_ name: StaticString) throws -> Int64 {
        if let v = integer { return v }
        if type == .double { throw RejectReason("is \(displayValue), expected an integer", at: "\(name)") }
        throw fail(name, expected: "an integer")
    }

    fileprivate func finite(_ name: StaticString) throws -> Double {
        guard let v = number else { throw fail(name, expected: "a number") }
        guard v.isFinite else { throw RejectReason("is \(v), expected a finite number", at: "\(name)") }
        return v
    }

    /// A string's UTF-8 bytes; invalid UTF-8 or an embedded NUL is a rejection.
    fileprivate func string(_ name: StaticString?) throws -> UnsafeRawBufferPointer {
        guard let bytes = utf8 else { throw fail(name, expected: "a string") }
        guard BSON.isValidUTF8(bytes) else {
            throw RejectReason("is not valid UTF-8 (or contains a NUL byte)", at: name.map { "\($0)" })
        }
        return bytes
    }

    fileprivate func date(_ name: StaticString) throws -> Int64 {
        guard let v = dateTimeMillis else { throw fail(name, expected: "a date") }
        guard BinaryCopyWriter.timestampRangeMillis.contains(v) else {
            throw RejectReason("is a date out of range (\(v) ms from 1970; PostgreSQL's timestamptz holds 4713 BC to 294276 AD)", at: "\(name)")
        }
        return v
    }

    fileprivate func boolean(_ name: StaticString) throws -> Bool {
        guard let v = bool else { throw fail(name, expected: "a bool") }
        return v
    }

    fileprivate func document(_ name: StaticString) throws -> BSONIterator {
        guard type == .document, let c = children else { throw fail(name, expected: "an object") }
        return c
    }

    fileprivate func array(_ name: StaticString) throws -> BSONIterator {
        guard type == .array, let c = children else { throw fail(name, expected: "an array") }
        return c
    }
}
