import Mongo

/// Malformed documents to mix into a normal dataset, each with what a person should read
/// when it is set aside, and a few unusual but valid ones that must load.
public struct BadDocument {
    public let id: Int64?
    public let displayId: String
    public let kind: String
    /// Words the set-aside reason must contain; nil for a document that must load.
    public let reason: String?
    public let document: BSONDocument
    /// A MongoDB server validates this on insert (invalid UTF-8), so a source may not hold it.
    public var sourceMayRefuse = false
}

extension UserGenerator {
    /// User `id` with the top-level field `key` removed and `edit` applied (it may append a replacement).
    public func document(id: Int64, without key: String, _ edit: (BSONWriter) -> Void = { _ in }) -> BSONDocument {
        let out = document(id: id) { element, _ in element.key == key }
        edit(out.writer)
        return out
    }

    /// User `id` rewritten element by element: `rewrite` writes its own version of an element
    /// (or nothing) and returns true, or returns false to keep the element as it is.
    public func document(id: Int64, rewriting rewrite: (BSONIterator, BSONWriter) -> Bool) -> BSONDocument {
        let out = BSONDocument()
        document(id: id).withUnsafeBytes { raw in
            var it = BSONIterator(document: raw)!
            while it.next() {
                if !rewrite(it, out.writer) { it.append(to: out.writer, as: it.key) }
            }
        }
        return out
    }

    /// Whether user `id` has at least one message (and so a message id another user could repeat).
    func hasMessages(_ id: Int64) -> Bool { arrayLength(id, "messages") > 0 }
    func hasGroups(_ id: Int64) -> Bool { arrayLength(id, "socialMedia", "groups") > 0 }

    private func arrayLength(_ id: Int64, _ path: StaticString...) -> Int {
        document(id: id).withUnsafeBytes { BSONIterator.element(in: $0, at: path)?.elementCount ?? 0 }
    }
}

public enum BadInputCorpus {
    /// The corpus for a dataset of users 1...users (at least 100): every document replaces
    /// the user with the same `_id` (or, for non-integer `_id`s, comes in addition).
    public static func documents(users: Int, generator g: UserGenerator) -> [BadDocument] {
        precondition(users >= 100, "the corpus needs at least 100 users to mix into")
        var slots = (1...20).map { Int64($0) * Int64(users) / 21 }.makeIterator()
        var docs: [BadDocument] = []
        func bad(_ kind: String, _ reason: String?, _ make: (Int64) -> BSONDocument) {
            let id = slots.next()!
            let document = make(id)
            docs.append(BadDocument(id: id, displayId: String(id), kind: kind, reason: reason, document: document))
        }
        bad("missing field", "field 'email' is missing") { g.document(id: $0, without: "email") }
        bad("string for an object", "field 'address' is a string, expected an object") {
            g.document(id: $0, without: "address") { $0.append("address", "12 Main St, Springfield") }
        }
        bad("int for a string", "field 'username' is an int32, expected a string") {
            g.document(id: $0, without: "username") { $0.append("username", Int32(12345)) }
        }
        bad("null for a required value", "field 'age' is a null, expected an integer") {
            g.document(id: $0, without: "age") { $0.appendNull("age") }
        }
        bad("invalid UTF-8", "field 'lastName' is not valid UTF-8") {
            g.document(id: $0, without: "lastName") { $0.append("lastName", utf8Bytes: [0x53, 0x6D, 0xC3, 0x28, 0x74, 0x68]) }
        }
        docs[docs.count - 1].sourceMayRefuse = true
        bad("NUL byte in a string", "field 'firstName' is not valid UTF-8 (or contains a NUL byte)") {
            g.document(id: $0, without: "firstName") { $0.append("firstName", utf8Bytes: [0x41, 0x00, 0x42]) }
        }
        bad("array over 10,000 entries", "field 'activityLog' has more than 10000 entries") { id in
            g.document(id: id, without: "activityLog") { w in
                w.appendArray("activityLog") { a in
                    for i in 0..<10_001 {
                        a.appendDocument(String(i)) { e in
                            e.append("key", "login"); e.append("value", "success")
                            e.append("timestamp", dateTimeMillis: UserGenerator.generatedAtMillis); e.append("metadata", "{}")
                        }
                    }
                }
            }
        }
        bad("nested wrong type", "field 'profile.education' is a string, expected an array") { id in
            g.document(id: id, without: "profile") { w in
                w.appendDocument("profile") { p in
                    p.append("bio", "x"); p.appendArray("interests") { _ in }; p.appendArray("skills") { _ in }
                    p.append("education", "MIT"); p.appendArray("experience") { _ in }
                }
            }
        }
        bad("date as a string", "field 'createdAt' is a string, expected a date") {
            g.document(id: $0, without: "createdAt") { $0.append("createdAt", "2024-01-01T00:00:00Z") }
        }
        bad("non-finite coordinate", "field 'address.coordinates.lat' is nan, expected a finite number") { id in
            g.document(id: id, without: "address") { w in
                w.appendDocument("address") { a in
                    for key in ["street", "city", "state", "zipCode", "country"] { a.append(key, "x") }
                    a.appendDocument("coordinates") { c in c.append("lat", Double.nan); c.append("lng", 1.0) }
                }
            }
        }
        bad("age out of integer range", "field 'age' is 9999999999, not a 32-bit integer") {
            g.document(id: $0, without: "age") { $0.append("age", Int64(9_999_999_999)) }
        }
        bad("document of 15 MB", "the document is 15.0 MB, more than the 8 MB limit") { id in
            g.document(id: id, without: "largeData") { w in
                w.appendDocument("largeData") { l in
                    l.append("blob1", String(repeating: "x", count: 15 << 20))
                    for i in 2...5 { l.append("blob\(i)", "y") }
                }
            }
        }
        // Repeats of ids that an earlier, valid user already has: PostgreSQL's primary keys catch them.
        // The owner is a valid user: never one the corpus replaced.
        func validOwner(below id: Int64, _ has: (Int64) -> Bool) -> Int64 {
            let replaced = Set(docs.compactMap(\.id))
            return (1..<id).last { has($0) && !replaced.contains($0) }!
        }
        bad("messages.id of another user", "duplicate key value violates unique constraint \"messages_pkey\"") { id in
            let owner = validOwner(below: id, g.hasMessages)
            return g.document(id: id, without: "messages") { w in
                w.appendArray("messages") { a in
                    a.appendDocument("0") { d in
                        d.append("id", "msg\(owner)_0"); d.append("from", "a@example.com"); d.append("to", "b@example.com")
                        d.append("subject", "s"); d.append("body", "b"); d.append("timestamp", dateTimeMillis: 0); d.append("read", false)
                        d.appendArray("attachments") { _ in }
                    }
                }
            }
        }
        bad("groups.id of another user", "duplicate key value violates unique constraint \"groups_pkey\"") { id in
            let owner = validOwner(below: id, g.hasGroups)
            return g.document(id: id, without: "socialMedia") { w in
                w.appendDocument("socialMedia") { s in
                    s.appendArray("connections") { _ in }; s.appendArray("posts") { _ in }
                    s.appendArray("groups") { a in
                        a.appendDocument("0") { x in x.append("id", "group\(owner)_0"); x.append("name", "n"); x.append("joined", dateTimeMillis: 0) }
                    }
                }
            }
        }
        // The seed's unique columns: a username or an email another (valid) user already has.
        bad("username of another user", "duplicate key value violates unique constraint \"users_username_key\": Key (username)=(") { id in
            let owner = validOwner(below: id) { _ in true }
            return g.document(id: id, without: "username") { $0.append("username", g.username(of: owner)) }
        }
        bad("email of another user", "duplicate key value violates unique constraint \"users_email_key\": Key (email)=(") { id in
            let owner = validOwner(below: id) { _ in true }
            return g.document(id: id, without: "email") { $0.append("email", g.username(of: owner) + "@example.com") }
        }
        bad("messages.id too large for its index", "index row requires") { id in
            // 10,000 pseudo-random letters: PostgreSQL cannot compress them under the btree limit (SQLSTATE 54000).
            var state = UInt64(bitPattern: id) &* 0x9E37_79B9_7F4A_7C15
            let letters = (0..<10_000).map { _ -> Character in
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                return Character(UnicodeScalar(UInt8(ascii: "a") + UInt8((state >> 33) % 26)))
            }
            return g.document(id: id, without: "messages") { w in
                w.appendArray("messages") { a in
                    a.appendDocument("0") { d in
                        d.append("id", String(letters)); d.append("from", "a@example.com"); d.append("to", "b@example.com")
                        d.append("subject", "s"); d.append("body", "b"); d.append("timestamp", dateTimeMillis: 0); d.append("read", false)
                        d.appendArray("attachments") { _ in }
                    }
                }
            }
        }
        // Unusual but valid: integral double and int64 numbers.
        bad("integral double _id and int64 age (valid)", nil) { id in
            g.document(id: id) { element, w in
                switch element.key {
                case "_id": w.append("_id", Double(id))
                case "age": w.append("age", Int64(element.integer!))
                default: return false
                }
                return true
            }
        }
        // _ids of unexpected types sort after every number: a resumed scan must still reach them.
        let withStringId = g.document(id: Int64(users) + 1) { element, w in
            guard element.key == "_id" else { return false }
            w.append("_id", "user-\(users + 1)")
            return true
        }
        docs.append(BadDocument(id: nil, displayId: "\"user-\(users + 1)\"", kind: "string _id",
                                reason: "field '_id' is a string, expected an integer", document: withStringId))
        return docs
    }
}
