import Foundation
import Mongo
import Testing
import DurableETL
import TestSupport
import Users
import UsersFixtures

/// Reads a binary COPY stream back into text rows, using the schema's column types.
func decodeCopy(_ bytes: [UInt8], table: TableSpec) -> [[String]] {
    var offset = 19
    func int<T: FixedWidthInteger>(_: T.Type) -> T {
        defer { offset += MemoryLayout<T>.size }
        return bytes.withUnsafeBytes { T(bigEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }
    var rows: [[String]] = []
    while true {
        let fields = int(Int16.self)
        if fields == -1 { break }
        #expect(Int(fields) == table.columns.count)
        var row: [String] = []
        for column in table.columns {
            let length = Int(int(Int32.self))
            let start = offset
            switch column.type {
            case "bigint": row.append(String(int(Int64.self)))
            case "integer": row.append(String(int(Int32.self)))
            case "boolean": row.append(bytes[start] == 1 ? "true" : "false"); offset += 1
            case "timestamptz":
                let millis = int(Int64.self) / 1000 + 946_684_800_000
                row.append(isoMillis(millis))
            case "jsonb":
                #expect(bytes[start] == 1)
                row.append(String(decoding: bytes[(start + 1)..<(start + length)], as: UTF8.self)); offset += length
            default:
                row.append(String(decoding: bytes[start..<(start + length)], as: UTF8.self)); offset += length
            }
            #expect(offset == start + length)
        }
        rows.append(row)
    }
    return rows
}

/// `2024-03-01T12:00:00.123Z` from milliseconds since the Unix epoch, exactly.
func isoMillis(_ millis: Int64) -> String {
    let seconds = millis.quotientAndRemainder(dividingBy: 1000)
    let whole = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(seconds.quotient)))
    let fraction = String(1000 + seconds.remainder).dropFirst()
    return whole.dropLast() + "." + fraction + "Z"
}

func rows(_ r: MappedRows, _ table: String) -> [[String]] {
    let index = UsersMapping.tableNames.firstIndex(of: table)!
    return decodeCopy(r.tables[index].finished(), table: UsersMapping.tables[index])
}

/// 2024-03-01T12:00:00.123Z and a few days after.
let t0: Int64 = 1_709_294_400_123
let t0Text = "2024-03-01T12:00:00.123Z"

func entry(_ w: BSONWriter, _ key: String, _ k: String, _ v: String, _ ms: Int64, _ meta: String) {
    w.appendDocument(key) { e in
        e.append("key", k)
        e.append("value", v)
        e.append("timestamp", dateTimeMillis: ms)
        e.append("metadata", meta)
    }
}

/// A small but complete user: two messages with attachments, to check attachment ids.
func handWrittenUser(id: Int32 = 7, edit: ((BSONWriter) -> Void)? = nil, skip: Set<String> = []) -> BSONDocument {
    let doc = BSONDocument()
    let w = doc.writer
    func field(_ name: String, _ body: () -> Void) { if !skip.contains(name) { body() } }
    field("_id") { w.append("_id", id) }
    field("username") { w.append("username", "ada_lovelace_7") }
    field("email") { w.append("email", "ada@example.com") }
    field("firstName") { w.append("firstName", "Ada") }
    field("lastName") { w.append("lastName", "Lovelace") }
    field("age") { w.append("age", Int64(36)) }
    field("createdAt") { w.append("createdAt", dateTimeMillis: t0) }
    field("updatedAt") { w.append("updatedAt", dateTimeMillis: t0 + 1) }
    field("address") {
        w.appendDocument("address") { a in
            a.append("street", "1 Main St"); a.append("city", "Boston"); a.append("state", "MA")
            a.append("zipCode", "02110"); a.append("country", "USA")
            a.appendDocument("coordinates") { c in c.append("lat", 42.5); c.append("lng", Int32(-71)) }
        }
    }
    field("profile") {
        w.appendDocument("profile") { p in
            p.append("bio", "Says \"hi\"\\n")
            p.appendArray("interests") { a in a.append("0", "math"); a.append("1", "poetry") }
            p.appendArray("skills") { a in a.append("0", "analysis") }
            p.appendArray("education") { a in
                for i in 0..<2 {
                    a.appendDocument("\(i)") { e in
                        e.append("institution", "School \(i)"); e.append("degree", "BSc")
                        e.append("year", Double(2000 + i)); e.append("description", "d\(i)")
                    }
                }
            }
            p.appendArray("experience") { a in
                a.appendDocument("0") { e in
                    e.append("company", "Analytical Engines"); e.append("position", "Programmer")
                    e.append("duration", "1842-Present"); e.append("description", "notes")
                }
            }
        }
    }
    field("preferences") {
        w.appendDocument("preferences") { p in
            p.append("language", "en"); p.append("timezone", "Europe/London")
            p.appendDocument("notifications") { n in n.append("email", true); n.append("push", false); n.append("sms", true) }
            p.appendArray("settings") { a in
                entry(a, "0", "setting_0", "abcdefghij", t0, "{}")
                entry(a, "1", "setting_1", "klmnopqrst", t0, "{}")
            }
        }
    }
    field("activityLog") { w.appendArray("activityLog") { a in entry(a, "0", "login", "success", t0, "{\"ip\": \"192.168.0.1\"}") } }
    field("transactions") { w.appendArray("transactions") { a in entry(a, "0", "refund", "12.50", t0, "{\"amount\": 12.50}") } }
    field("messages") {
        w.appendArray("messages") { a in
            for m in 0..<2 {
                a.appendDocument("\(m)") { d in
                    d.append("id", "msg7_\(m)"); d.append("from", "x@example.com"); d.append("to", "ada@example.com")
                    d.append("subject", "s\(m)"); d.append("body", "b\(m)")
                    d.append("timestamp", dateTimeMillis: t0); d.append("read", m == 0)
                    d.appendArray("attachments") { atts in
                        for k in 0..<(m + 1) {
                            atts.appendDocument("\(k)") { x in x.append("name", "f\(m)\(k)"); x.append("size", Int32(100 * (k + 1))); x.append("type", "pdf") }
                        }
                    }
                }
            }
        }
    }
    field("socialMedia") {
        w.appendDocument("socialMedia") { s in
            s.appendArray("connections") { a in a.append("0", "user1"); a.append("1", "user2") }
            s.appendArray("posts") { a in entry(a, "0", "post0", "hello", t0, "{\"likes\": 3}") }
            s.appendArray("groups") { a in
                a.appendDocument("0") { g in g.append("id", "group7_0"); g.append("name", "Poets"); g.append("joined", dateTimeMillis: t0) }
            }
        }
    }
    field("largeData") { w.appendDocument("largeData") { l in for i in 1...5 { l.append("blob\(i)", "blob-\(i)") } } }
    edit?(w)
    return doc
}

@Suite struct TransformTests {
    @Test func aHandWrittenDocumentBecomesExactlyTheseRows() throws {
        var r = userRows()
        try handWrittenUser().withUnsafeBytes { try r.add(document: $0) }
        #expect(rows(r, "users") == [["7", "ada_lovelace_7", "ada@example.com", "Ada", "Lovelace", "36", t0Text, "2024-03-01T12:00:00.124Z"]])
        #expect(rows(r, "addresses") == [["7", "7", "1 Main St", "Boston", "MA", "02110", "USA", "{\"lat\": 42.5, \"lng\": -71.0}"]])
        #expect(rows(r, "profiles") == [["7", "7", "Says \"hi\"\\n", "[\"math\", \"poetry\"]", "[\"analysis\"]"]])
        #expect(rows(r, "education") == [
            ["70000", "7", "School 0", "BSc", "2000", "d0"], ["70001", "7", "School 1", "BSc", "2001", "d1"],
        ])
        #expect(rows(r, "experience") == [["70000", "7", "Analytical Engines", "Programmer", "1842-Present", "notes"]])
        #expect(rows(r, "preferences") == [["7", "7", "en", "Europe/London", "{\"email\": true, \"push\": false, \"sms\": true}"]])
        #expect(rows(r, "settings") == [
            ["70000", "7", "setting_0", "abcdefghij", t0Text, "{}"], ["70001", "7", "setting_1", "klmnopqrst", t0Text, "{}"],
        ])
        #expect(rows(r, "activity_log") == [["70000", "7", "login", "success", t0Text, "{\"ip\": \"192.168.0.1\"}"]])
        #expect(rows(r, "transactions") == [["70000", "7", "refund", "12.50", t0Text, "{\"amount\": 12.50}"]])
        #expect(rows(r, "messages") == [
            ["msg7_0", "7", "x@example.com", "ada@example.com", "s0", "b0", t0Text, "true"],
            ["msg7_1", "7", "x@example.com", "ada@example.com", "s1", "b1", t0Text, "false"],
        ])
        // One running index over all of the user's attachments: no collision between messages.
        #expect(rows(r, "attachments") == [
            ["70000", "msg7_0", "f00", "100", "pdf"], ["70001", "msg7_1", "f10", "100", "pdf"], ["70002", "msg7_1", "f11", "200", "pdf"],
        ])
        #expect(rows(r, "social_media") == [["7", "7", "[\"user1\", \"user2\"]"]])
        #expect(rows(r, "posts") == [["70000", "7", "post0", "hello", t0Text, "{\"likes\": 3}"]])
        #expect(rows(r, "groups") == [["group7_0", "7", "Poets", t0Text]])
        #expect(rows(r, "large_data") == [["7", "7", "blob-1", "blob-2", "blob-3", "blob-4", "blob-5"]])
        #expect(r.documents == 1)
    }

    @Test(arguments: [
        ("age", "field 'age' is missing"),
        ("address", "field 'address' is missing"),
        ("_id", "field '_id' is missing"),
    ])
    func aMissingFieldSetsTheDocumentAside(field: String, reason: String) throws {
        var r = userRows()
        try handWrittenUser(id: 1).withUnsafeBytes { try r.add(document: $0) }
        let before = UsersMapping.tableNames.map { rows(r, $0) }
        #expect(throws: (any Error).self) { try handWrittenUser(id: 2, skip: [field]).withUnsafeBytes { try r.add(document: $0) } }
        do {
            try handWrittenUser(id: 2, skip: [field]).withUnsafeBytes { try r.add(document: $0) }
        } catch {
            #expect("\(error)" == reason)
        }
        #expect(UsersMapping.tableNames.map { rows(r, $0) } == before, "a rejected document adds no row anywhere")
        #expect(r.documents == 1)
    }

    @Test func wrongTypesNameTheFieldAndTheTypes() throws {
        func reason(_ skip: String, _ edit: @escaping (BSONWriter) -> Void) -> String {
            var r = userRows()
            do {
                try handWrittenUser(edit: edit, skip: [skip]).withUnsafeBytes { try r.add(document: $0) }
                return "accepted"
            } catch {
                return "\(error)"
            }
        }
        #expect(reason("address") { $0.append("address", "12 Main St") } == "field 'address' is a string, expected an object")
        #expect(reason("username") { $0.append("username", Int32(5)) } == "field 'username' is an int32, expected a string")
        #expect(reason("age") { $0.appendNull("age") } == "field 'age' is a null, expected an integer")
        #expect(reason("age") { $0.append("age", 36.5) } == "field 'age' is 36.5, expected an integer")
        #expect(reason("email") { $0.append("email", utf8Bytes: [0x61, 0xFF, 0x62]) } == "field 'email' is not valid UTF-8 (or contains a NUL byte)")
        #expect(reason("activityLog") { w in w.appendArray("activityLog") { $0.append("0", "login") } }
            == "field 'activityLog[0]' is a string, expected an object")
        #expect(reason("profile") { w in
            w.appendDocument("profile") { p in
                p.append("bio", ""); p.appendArray("interests") { _ in }; p.appendArray("skills") { _ in }
                p.appendArray("education") { a in
                    a.appendDocument("0") { e in e.append("institution", "x"); e.append("degree", "y"); e.append("year", "1999"); e.append("description", "") }
                }
                p.appendArray("experience") { _ in }
            }
        } == "field 'profile.education[0].year' is a string, expected an integer")
    }

    @Test(arguments: [Int64.max, Int64.min, -210_866_803_200_001, 9_224_318_016_000_000])
    func aDateOutsidePostgresRangeIsSetAsideNotATrap(millis: Int64) throws {
        var r = userRows()
        let doc = handWrittenUser(edit: { $0.append("createdAt", dateTimeMillis: millis) }, skip: ["createdAt"])
        do {
            try doc.withUnsafeBytes { try r.add(document: $0) }
            Issue.record("a date of \(millis) ms was accepted")
        } catch {
            #expect("\(error)".hasPrefix("field 'createdAt' is a date out of range"), "\(error)")
        }
        #expect(r.documents == 0)
    }

    @Test(arguments: [Int64(-210_866_803_200_000), 9_224_318_015_999_999])
    func theFirstAndLastDatesPostgresHoldsLoad(millis: Int64) throws {
        var r = userRows()
        let doc = handWrittenUser(edit: { $0.append("createdAt", dateTimeMillis: millis) }, skip: ["createdAt"])
        try doc.withUnsafeBytes { try r.add(document: $0) }
        #expect(r.documents == 1)
    }

    @Test func anArrayBeyondTheIdRangeIsSetAsideNotTruncated() throws {
        var r = userRows()
        let doc = handWrittenUser(edit: { w in
            w.appendArray("activityLog") { a in for i in 0..<10_001 { entry(a, "\(i)", "login", "success", t0, "{}") } }
        }, skip: ["activityLog"])
        #expect(throws: (any Error).self) { try doc.withUnsafeBytes { try r.add(document: $0) } }
        #expect(r.documents == 0)
        #expect(rows(r, "activity_log").isEmpty)
    }

    @Test func aRepeatedMessageIdWithinADocumentIsSetAside() throws {
        var r = userRows()
        let doc = handWrittenUser(edit: { w in
            w.appendArray("messages") { a in
                for m in 0..<2 {
                    a.appendDocument("\(m)") { d in
                        d.append("id", "same"); d.append("from", "a"); d.append("to", "b"); d.append("subject", "s"); d.append("body", "b")
                        d.append("timestamp", dateTimeMillis: t0); d.append("read", true); d.appendArray("attachments") { _ in }
                    }
                }
            }
        }, skip: ["messages"])
        do {
            try doc.withUnsafeBytes { try r.add(document: $0) }
            Issue.record("accepted a repeated message id")
        } catch {
            #expect("\(error)" == "field 'messages[1].id' repeats the message id \"same\" within the document")
        }
    }
}

@Suite struct UTF8ValidationTests {
    @Test(arguments: [
        ("plain ascii, longer than one word", Array("abcdefghijklmnopq".utf8), true),
        ("multibyte after a word of ascii", Array("abcdefgh résumé ✓".utf8), true),
        ("empty", [], true),
        ("NUL after a word", Array("abcdefghij".utf8) + [0] + Array("kl".utf8), false),
        ("NUL inside the first word", [0x61, 0x00, 0x62], false),
        ("invalid continuation after a word", Array("abcdefghij".utf8) + [0xC3, 0x28], false),
        ("lone continuation byte", [0x80], false),
        ("overlong encoding", Array("abcdefgh".utf8) + [0xC0, 0xAF], false),
    ] as [(String, [UInt8], Bool)])
    func isValidUTF8(name: String, bytes: [UInt8], valid: Bool) {
        #expect(bytes.withUnsafeBytes { BSON.isValidUTF8($0) } == valid, "\(name)")
    }
}
