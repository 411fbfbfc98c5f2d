import Foundation
import Mongo
import Testing
import DurableETL
import TestSupport
import UsersFixtures

/// A value two documents hold (a username, an email, a message id) is kept by the one with
/// the smaller `_id`, whichever loads first: the same rows and the same set-aside documents
/// from a file in any order, in one batch or many, from several workers, and from MongoDB.
@Suite(.serialized) struct RepeatedValueTests {
    /// Users 1…200 and documents that repeat values, most of them before their keeper in the
    /// file; `kept` names, for each document to set aside, the `_id` that keeps its value.
    static func documents() -> (documents: [BSONDocument], kept: [String: String]) {
        // The file order: `early`, then users 1…200, then `late`.
        let g = UserGenerator(seed: 11)
        func user(_ id: Int64, username: String? = nil, email: String? = nil, messageId: String? = nil) -> BSONDocument {
            g.document(id: id) { element, w in
                switch element.key {
                case "username" where username != nil: w.append("username", username!)
                case "email" where email != nil: w.append("email", email!)
                case "messages" where messageId != nil:
                    w.appendArray("messages") { a in
                        a.appendDocument("0") { d in
                            d.append("id", messageId!); d.append("from", "a@example.com"); d.append("to", "b@example.com")
                            d.append("subject", "s"); d.append("body", "b"); d.append("timestamp", dateTimeMillis: 0); d.append("read", false)
                            d.appendArray("attachments") { _ in }
                        }
                    }
                default: return false
                }
                return true
            }
        }
        let owner = (100...200).first { id in
            g.document(id: Int64(id)).withUnsafeBytes { BSONIterator.element(in: $0, at: ["messages"])?.elementCount ?? 0 } > 0
        }!
        let firstMessage = "msg\(owner)_0"
        let early: [BSONDocument] = [
            user(600, username: "shared-name"),                      // displaced by 500 (username)
            user(700, email: "shared@example.com"),                  // displaced by 500 (email)
            user(650, username: "other-name"),                       // keeps it: 300 loses on its email
            user(900, username: "triple"),                           // three share "triple": 800 keeps it
            user(950, messageId: firstMessage),                      // before its owner in the file
        ]
        let late: [BSONDocument] = [
            user(500, username: "shared-name", email: "shared@example.com"), // one document colliding with two others
            user(300, username: "other-name", email: g.username(of: 5) + "@example.com"),
            user(850, username: "triple"),
            user(800, username: "triple"),
        ]
        let users = (1...200).map { g.document(id: Int64($0)) }
        let kept = ["600": "500", "700": "500", "300": "5", "900": "800", "850": "800", "950": String(owner)]
        return (early + users + late, kept)
    }

    /// What a schema's checkpoints set aside: `_id` → reason.
    static func setAside(_ sandbox: Sandbox, schema: String) throws -> [String: String] {
        let rows = try sandbox.db().execute("SELECT e->>'id', e->>'reason' FROM \"\(schema)\".etl_checkpoints, jsonb_array_elements(set_aside) e").rows
        return Dictionary(rows.map { ($0[0]!, $0[1]!) }, uniquingKeysWith: { $0 + " | " + $1 })
    }

    @Test func theSmallerIdKeepsARepeatedValueWhicheverDocumentLoadsFirst() throws {
        let sandbox = try Sandbox()
        let (documents, kept) = Self.documents()
        let bytes = documents.flatMap { $0.withUnsafeBytes { Array($0) } }
        try FileManager.default.createDirectory(atPath: sandbox.stateDirectory + "-files", withIntermediateDirectories: true)
        defer { for suffix in ["-files", "-one", "-many", "-plan", "-b", "-c", "-mongo"] { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + suffix) } }
        let file = sandbox.stateDirectory + "-files/users.bson"
        #expect(FileManager.default.createFile(atPath: file, contents: Data(bytes)))

        // One batch (the document order within it), and batches of 3 loading at once, killed
        // in the transaction of a batch that displaces documents (the last ones), then resumed.
        for (schema, flags) in [("one", ["--batch-size", "1000"]), ("many", ["--batch-size", "3"])] {
            let base = ["--postgres-url", sandbox.postgresURL, "--target-schema", schema, "--state-dir", sandbox.stateDirectory + "-" + schema,
                        "--max-set-aside", "100"]
            var run = try sandbox.run(["start", "--source-file", file] + base + flags, environment: schema == "many" ? ["ETL_CRASH_AT": "copied:69"] : [:])
            if schema == "many" {
                #expect(run.signaled && run.status == 9, "\(run.stderr)")
                run = try sandbox.run(["resume"] + base)
            }
            #expect(run.status == 0, "\(run.stderr)")
        }
        // Three partitions loaded by two workers at once.
        let planned = try sandbox.run(["start", "--source-file", file, "--postgres-url", sandbox.postgresURL, "--target-schema", "parts",
                                       "--partitions", "3", "--batch-size", "5", "--state-dir", sandbox.stateDirectory + "-plan"])
        #expect(planned.status == 0, "\(planned.stderr)")
        let b = try PartitionTests.worker(sandbox, "b", schema: "parts", ["--max-set-aside", "100"])
        let c = try PartitionTests.worker(sandbox, "c", schema: "parts", ["--max-set-aside", "100"])
        for result in [try b.wait(), try c.wait()] { #expect(result.status == 0, "\(result.stderr)") }
        // MongoDB, read in _id order: each keeper loads first.
        try sandbox.users.insertMany(documents)
        let mongo = try sandbox.job("start", ["--target-schema", "mongo", "--state-dir", sandbox.stateDirectory + "-mongo", "--max-set-aside", "100"])
        #expect(mongo.status == 0, "\(mongo.stderr)")

        let reference = try Self.setAside(sandbox, schema: "one")
        #expect(Set(reference.keys) == Set(kept.keys), "\(reference)")
        for (id, keeper) in kept {
            // Of three sharing a value, the reason may name the one that held it when this one was set aside.
            let named = keeper == "800" ? ["800", "850"] : [keeper]
            #expect(named.contains { reference[id]?.contains("which _id \($0) also has and keeps") == true }, "\(id): \(reference[id] ?? "not set aside")")
        }
        let rows = try sandbox.checksums(schema: "one")
        #expect(try sandbox.db().execute("SELECT array_agg(id ORDER BY id)::text FROM one.users WHERE id > 200").rows[0][0] == "{500,650,800}")
        for schema in ["many", "parts", "mongo"] {
            #expect(try sandbox.checksums(schema: schema) == rows, "\(schema): the same rows")
            // The same documents set aside, for the same reasons (up to the keeper a reason names, above).
            let reasons = { (all: [String: String]) in all.mapValues { $0.components(separatedBy: ", which _id")[0] } }
            #expect(reasons(try Self.setAside(sandbox, schema: schema)) == reasons(reference), "\(schema)")
        }
        // verify knows the displaced documents are set aside.
        let verified = try sandbox.run(["verify", "--source-file", file, "--postgres-url", sandbox.postgresURL, "--target-schema", "many",
                                        "--state-dir", sandbox.stateDirectory + "-many"])
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
        #expect(verified.stdout.contains("OK: source and target agree"), "\(verified.stdout)")
    }
}
