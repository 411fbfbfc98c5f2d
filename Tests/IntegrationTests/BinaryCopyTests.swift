import DurableETL
import Foundation
import Mongo
import Postgres
import TestSupport
import Testing

/// The binary COPY encoders that mapped collections need, checked by PostgreSQL itself: each
/// value is COPYed in binary and read back as text.
@Suite(.serialized) struct BinaryCopyTests {
    /// Decimal128 values as libbson writes them, and how PostgreSQL prints the numeric.
    static let decimals: [(String, String)] = [
        ("0", "0"), ("-0", "0"), ("12.50", "12.50"), ("-123.45", "-123.45"), ("0.0012", "0.0012"), ("0.00001", "0.00001"),
        ("1.23E+5", "123000"), ("1E-7", "0.0000001"), ("9999.9999", "9999.9999"), ("10000", "10000"),
        ("1234567890123456789012345678901234", "1234567890123456789012345678901234"),
        ("-1.000000000000000000000000000000000E+6144", "-1" + String(repeating: "0", count: 6144)),
        ("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"),
    ]

    @Test func everyEncoderIsReadBackByPostgreSQLAsWritten() throws {
        let sandbox = try Sandbox()
        let db = try sandbox.db()
        try db.execute("""
            CREATE TABLE v (n numeric, d float8, u uuid, b bytea, t text[], i int8[], e text[], z numeric[], x text)
            """)
        var w = BinaryCopyWriter()
        for (decimal, _) in Self.decimals {
            w.beginRow(fields: 9)
            let encoded = w.numeric(decimal)
            #expect(encoded, "\(decimal)")
            w.float8(-2.5e-300)
            let uuid: [UInt8] = (0..<16).map { UInt8($0 * 17) }
            uuid.withUnsafeBytes { w.uuid($0) }
            ([0, 255, 10] as [UInt8]).withUnsafeBytes { w.bytea($0) }
            w.array(elementOID: BinaryCopyWriter.OID.text, count: 3) { w, i in i == 1 ? w.null() : w.text(["a,b", "", "ü\"q"][i]) }
            w.array(elementOID: BinaryCopyWriter.OID.int8, count: 2) { w, i in w.int8(i == 0 ? Int64.min : 7) }
            w.array(elementOID: BinaryCopyWriter.OID.text, count: 0) { _, _ in }
            w.array(elementOID: BinaryCopyWriter.OID.numeric, count: 1) { w, _ in _ = w.numeric(decimal) }
            w.text(decimal)
        }
        try db.copyIn("v", columns: ["n", "d", "u", "b", "t", "i", "e", "z", "x"], binary: w.bytes, BinaryCopyWriter.trailer)
        let rows = try db.execute("SELECT x, n::text, d::text, u::text, b::text, t::text, i::text, e::text, z::text FROM v").rows
        let printed = Dictionary(uniqueKeysWithValues: rows.map { ($0[0]!, Array($0.dropFirst())) })
        for (decimal, expected) in Self.decimals {
            let row = try #require(printed[decimal])
            #expect(row[0] == expected, "numeric \(decimal)")
            #expect(row[7] == "{\(expected)}", "numeric[] \(decimal)")
        }
        let first = try #require(rows.first)
        #expect(Array(first[2...7]) == [
            "-2.5e-300", "00112233-4455-6677-8899-aabbccddeeff", "\\x00ff0a", "{\"a,b\",NULL,\"ü\\\"q\"}",
            "{-9223372036854775808,7}", "{}",
        ])
    }

    @Test func anyBSONValueBecomesJSONThatJsonbReadsBack() throws {
        let doc = BSONDocument()
        let w = doc.writer
        w.append("a", Int32(1))
        w.append("b", 2.5)
        w.append("c", "x\"y\u{1}ü")
        w.appendArray("d") { list in
            list.append("0", true)
            list.appendNull("1")
            list.appendDocument("2") { $0.append("e", dateTimeMillis: 1_700_000_000_123) }
        }
        w.append("f", decimal128: "12.340")
        w.append("g", objectId: (0..<12).map { UInt8($0) })
        w.append("h", binary: (0..<16).map { UInt8($0 * 17) }, subtype: 4)
        w.append("i", binary: [0, 255, 10])
        w.append("j", Int64.max)
        w.append("k", dateTimeMillis: -1)
        let sandbox = try Sandbox()
        let db = try sandbox.db()
        try db.execute("CREATE TABLE j (v jsonb)")
        let json = try doc.withUnsafeBytes { bytes -> String in
            var rows = BinaryCopyWriter()
            rows.beginRow(fields: 1)
            try rows.jsonb { j in try j.document(bytes) }
            try db.copyIn("j", columns: ["v"], binary: rows.bytes, BinaryCopyWriter.trailer)
            return try db.execute("SELECT v::text FROM j").rows[0][0]!
        }
        #expect(json == #"{"a": 1, "b": 2.5, "c": "x\"y\u0001ü", "d": [true, null, {"e": "2023-11-14T22:13:20.123Z"}], "f": 12.340, "g": "000102030405060708090a0b", "h": "00112233-4455-6677-8899-aabbccddeeff", "i": "AP8K", "j": 9223372036854775807, "k": "1969-12-31T23:59:59.999Z"}"#)

        let bad = BSONDocument()
        bad.writer.appendDocument("k") { $0.append("n", Double.nan) }
        bad.withUnsafeBytes { bytes in
            var rows = BinaryCopyWriter()
            #expect(throws: RejectReason.self) { try rows.jsonb { j in try j.document(bytes) } }
            do { try rows.jsonb { j in try j.document(bytes) } } catch {
                #expect("\(error)" == "field 'k.n' is nan, which JSON cannot hold")
            }
        }
    }

    /// extjson: Relaxed Extended JSON text, compact, member order kept, every type MongoDB tells
    /// apart told apart; PostgreSQL stores it as written and reads it as JSON.
    @Test func anyBSONValueBecomesRelaxedExtendedJSONTextInItsOwnOrder() throws {
        let doc = BSONDocument()
        let w = doc.writer
        w.append("z", Int32(1))
        w.append("a", Int64.max)
        w.append("b", 2.5)
        w.append("c", "x\"y\u{1}ü")
        w.appendArray("d") { list in
            list.append("0", true)
            list.appendNull("1")
            list.appendDocument("2") { $0.append("e", dateTimeMillis: 1_700_000_000_123) }
        }
        w.append("f", decimal128: "12.340")
        w.append("g", objectId: (0..<12).map { UInt8($0) })
        w.append("h", binary: (0..<16).map { UInt8($0 * 17) }, subtype: 4)
        w.append("i", binary: [0, 255, 10])
        w.append("k", dateTimeMillis: -1)
        w.append("n", Double.nan)
        w.append("o", -Double.infinity)
        w.append("s", "000102030405060708090a0b")
        let sandbox = try Sandbox()
        let db = try sandbox.db()
        try db.execute("CREATE TABLE x (v text)")
        try doc.withUnsafeBytes { bytes in
            var rows = BinaryCopyWriter()
            rows.beginRow(fields: 1)
            let it = try #require(BSONIterator(document: bytes))
            try rows.jsonText { j in
                j.raw("{")
                var child = it
                var first = true
                while child.next() {
                    if !first { j.raw(",") }
                    first = false
                    j.raw("\"" + child.key + "\":")
                    try j.extendedValue(child)
                }
                j.raw("}")
            }
            try db.copyIn("x", columns: ["v"], binary: rows.bytes, BinaryCopyWriter.trailer)
        }
        let text = try db.execute("SELECT v FROM x").rows[0][0]!
        #expect(text == #"{"z":1,"a":9223372036854775807,"b":2.5,"c":"x\"y\u0001ü","d":[true,null,{"e":{"$date":"2023-11-14T22:13:20.123Z"}}],"#
            + #""f":{"$numberDecimal":"12.340"},"g":{"$oid":"000102030405060708090a0b"},"#
            + #""h":{"$binary":{"base64":"ABEiM0RVZneImaq7zN3u/w==","subType":"04"}},"i":{"$binary":{"base64":"AP8K","subType":"00"}},"#
            + #""k":{"$date":{"$numberLong":"-1"}},"n":{"$numberDouble":"NaN"},"o":{"$numberDouble":"-Infinity"},"s":"000102030405060708090a0b"}"#)
        #expect(try db.execute("SELECT v::jsonb->'g'->>'$oid', v::jsonb->>'s' FROM x").rows[0] == ["000102030405060708090a0b", "000102030405060708090a0b"],
                "JSON PostgreSQL reads; the ObjectId and the string of its hex stay different values")
    }

    @Test func notANumberIsRefused() {
        var w = BinaryCopyWriter()
        for text in ["", "-", "1.2.3", "abc", "1E", "1E+999999", ".", "١٢"] {
            let encoded = w.numeric(text)
            #expect(!encoded, "\(text)")
        }
    }

    @Test func decimal128ReadsBackAsTheSameDecimalText() throws {
        let doc = BSONDocument()
        for (i, (decimal, _)) in Self.decimals.enumerated() { #expect(doc.writer.append(String(i), decimal128: decimal)) }
        try doc.withUnsafeBytes { bytes in
            var it = try #require(BSONIterator(document: bytes))
            var i = 0
            while it.next() {
                var w = BinaryCopyWriter()
                let text = try #require(it.decimal128String)
                let encoded = w.numeric(text)
                #expect(encoded, "\(Self.decimals[i].0) → \(text)")
                i += 1
            }
            #expect(i == Self.decimals.count)
        }
    }
}
