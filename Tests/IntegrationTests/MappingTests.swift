import Foundation
import Mongo
import TestSupport
import Testing
import UsersFixtures

/// Collections unlike users, described by mapping files that `init` infers.
@Suite(.serialized) struct MappingTests {
    static let tables = ["orders", "orders_items", "orders_items_parts"]

    @Test func initInfersTheTypesAndAKilledLoadResumesToExactlyTheUninterruptedRows() throws {
        let sandbox = try Sandbox()
        try Orders.seed(sandbox, count: 300)
        let file = sandbox.stateDirectory + "-orders.json"
        defer { try? FileManager.default.removeItem(atPath: file) }
        let inferred = try sandbox.job("init", ["--collection", "orders", "--sample", "100", "--output", file])
        #expect(inferred.status == 0, "\(inferred.stderr)")
        // Written after the mapping was inferred: a document whose qty the mapping's column
        // cannot hold (its default policy, evolve, adds a variant column for it).
        try Orders.insert(sandbox, Orders.document(300, badQuantity: true))
        let mapping = try JSON.object(try String(contentsOfFile: file, encoding: .utf8))
        let columns = Dictionary(uniqueKeysWithValues: (mapping["columns"] as! [[String: Any]]).map { ($0["column"] as! String, $0) })
        #expect(columns["id"]?["type"] as? String == "text" && columns["id"]?["key"] as? Bool == true, "ObjectId _id → text")
        #expect(columns["total"]?["type"] as? String == "numeric", "Decimal128 → numeric")
        #expect(columns["amount"]?["type"] as? String == "numeric", "int32 and double → numeric, the widest exact type")
        #expect(columns["customer_name"]?["type"] as? String == "text", "a stable object is flattened")
        #expect(columns["attrs"]?["type"] as? String == "jsonb", "an object whose keys vary → jsonb")
        #expect(columns["tags"]?["type"] as? String == "text[]")
        #expect(columns["note"]?["nullable"] as? Bool == true, "absent from some documents → nullable")
        let items = try #require((mapping["children"] as? [[String: Any]])?.first)
        #expect(items["table"] as? String == "orders_items")
        let itemColumns = Dictionary(uniqueKeysWithValues: (items["columns"] as! [[String: Any]]).map { ($0["column"] as! String, $0["type"] as! String) })
        #expect(itemColumns["qty"] == "bigint", "int32 and int64 → bigint")
        #expect((items["children"] as? [[String: Any]])?.first?["table"] as? String == "orders_items_parts", "two levels of arrays")
        #expect((mapping["notes"] as? [String: String])?["items[].qty"]?.contains("int32") == true)

        var arguments = sandbox.connectionArguments
        let state = arguments.firstIndex(of: "--state-dir")! + 1
        func run(_ command: String, schema: String, crashAt: String? = nil, unmapped: String? = nil) throws -> JobResult {
            arguments[state] = sandbox.stateDirectory + "-" + schema
            let batches = ["start", "resume"].contains(command) ? ["--batch-size", "40"] : []
            return try sandbox.run([command] + arguments + ["--mapping", file, "--target-schema", schema] + batches + (unmapped.map { ["--unmapped", $0] } ?? []),
                                   environment: crashAt.map { ["ETL_CRASH_AT": $0] } ?? [:])
        }
        defer { for s in ["straight", "killed"] { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-" + s) } }
        let straight = try run("start", schema: "straight")
        #expect(straight.status == 0, "\(straight.stderr)")
        var result = try run("start", schema: "killed", crashAt: "copied:2")
        #expect(result.signaled, "\(result.stderr)")
        var runs = 1
        for crash in ["committed:1", "enqueued:2", nil] where result.status != 0 || result.signaled {
            result = try run("resume", schema: "killed", crashAt: crash)
            runs += 1
        }
        #expect(result.status == 0 && !result.signaled, "\(result.stderr)")
        #expect(runs >= 3)
        let expected = try sandbox.checksums(tables: Self.tables, schema: "straight")
        #expect(try sandbox.checksums(tables: Self.tables, schema: "killed") == expected)
        #expect(try sandbox.counts(tables: Self.tables, schema: "killed")["orders"] == 301, "the document whose qty is a string loads too")
        let variant = try sandbox.db().execute("SELECT qty, qty__text FROM killed.orders_items WHERE qty__text IS NOT NULL").rows
        #expect(variant.map { [$0[0], $0[1]] } == [[nil, "two"]], "its qty in the variant column: \(variant)")
        let verify = try run("verify", schema: "killed")
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        let status = try run("status", schema: "killed")
        #expect(status.stdout.contains("set aside    0 documents"), "\(status.stdout)")
        #expect(status.stdout.contains("items[].qty") && status.stdout.contains("evolved into orders_items.qty__text"), "\(status.stdout)")

        // With the policy that sets such a document aside, it is set aside naming the field.
        let strict = try run("start", schema: "strict", unmapped: "set-aside")
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-strict") }
        #expect(strict.status == 0, "\(strict.stderr)")
        #expect(try sandbox.counts(tables: Self.tables, schema: "strict")["orders"] == 300, "one document of 301 does not fit")
        arguments[state] = sandbox.stateDirectory + "-strict"
        let listed = try sandbox.run(["status", "--rejected"] + arguments)
        #expect(listed.stdout.contains("_id { \"$oid\" : "), "\(listed.stdout)")
        #expect(listed.stdout.contains("field 'items[1].qty' is a string, expected an integer"), "\(listed.stdout)")
    }

    @Test func aChangedMappingIsRefusedOnResumeWithWhatChanged() throws {
        let sandbox = try Sandbox()
        try Orders.seed(sandbox, count: 120)
        let file = sandbox.stateDirectory + "-orders.json"
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try sandbox.job("init", ["--collection", "orders", "--output", file]).status == 0)
        let killed = try sandbox.job("start", ["--mapping", file, "--batch-size", "20"], environment: ["ETL_CRASH_AT": "committed:2"])
        #expect(killed.signaled)
        let original = try String(contentsOfFile: file, encoding: .utf8)
        try original.replacingOccurrences(of: "\"double precision\"", with: "\"numeric\"").write(toFile: file, atomically: true, encoding: .utf8)
        let refused = try sandbox.job("resume", ["--mapping", file])
        #expect(refused.status == 64, "\(refused.stderr)")
        #expect(refused.stderr.contains("the mapping of pipeline orders changed since the job started: - price double precision"), "\(refused.stderr)")
        #expect(refused.stderr.contains("+ price numeric"), "\(refused.stderr)")
        let resumed = try sandbox.job("resume")
        #expect(resumed.status == 0, "without --mapping, resume runs the mapping the job recorded: \(resumed.stderr)")
        #expect(try sandbox.job("verify").status == 0)
        try original.write(toFile: file + ".original", atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file + ".original") }
        let again = try sandbox.job("migrate", ["--mapping", file + ".original"])
        #expect(again.status == 0 && again.stdout.contains("schema is up to date"), "DDL runs once: \(again.stdout)\(again.stderr)")
        let altered = try sandbox.job("start", ["--mapping", file, "--fresh", "--yes"])
        #expect(altered.status == 70, "\(altered.stderr)")
        #expect(altered.stderr.contains("orders_items.price is double precision, expected numeric"), "an existing table is refused, not altered: \(altered.stderr)")
    }

    /// `status` knows a mapped pipeline as it knows a built-in one: its own name in a
    /// refusal, its tables in load order (parents first), not alphabetically.
    @Test func statusOfAMappedJobNamesItsPipelineAndListsItsTablesInLoadOrder() throws {
        let sandbox = try Sandbox()
        try Orders.seed(sandbox, count: 40)
        let file = sandbox.stateDirectory + "-orders.json"
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try sandbox.job("init", ["--collection", "orders", "--output", file]).status == 0)
        // Child tables named so that alphabetical order is not load order.
        let renamed = try String(contentsOfFile: file, encoding: .utf8)
            .replacingOccurrences(of: "\"orders_items_parts\"", with: "\"a_parts\"").replacingOccurrences(of: "\"orders_items\"", with: "\"b_items\"")
        try renamed.write(toFile: file, atomically: true, encoding: .utf8)
        let started = try sandbox.job("start", ["--mapping", file])
        #expect(started.status == 0, "\(started.stderr)")
        let status = try sandbox.job("status")
        let lines = status.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        let tables = lines.drop { $0 != "rows per table" }.dropFirst().map { String($0.split(separator: " ")[0]) }
        #expect(tables == ["orders", "b_items", "a_parts"], "\(status.stdout)")
        let refused = try sandbox.job("status", ["--target-schema", "other"])
        #expect(refused.status == 64 && refused.stderr.contains("the orders job in") && refused.stderr.contains("target schema is 'other'"), "\(refused.stderr)")
        #expect(!refused.stderr.contains("users"), "\(refused.stderr)")
    }

    @Test(arguments: [
        (#"{"formatVersion": 2}"#, "$.formatVersion: is 2; this etl-job reads format version 1"),
        (#"{"formatVersion": 1, "source": {"database": "d", "collection": "c"}, "table": "t", "columns": [{"field": "_id", "column": "id", "type": "text"}]}"#,
         "$.columns: the root table needs a key"),
        (#"{"formatVersion": 1, "source": {"database": "d", "collection": "c"}, "table": "t", "columns": [{"field": "_id", "column": "id", "type": "text", "key": true}, {"field": "a", "column": "a", "type": "strng"}]}"#,
         "$.columns[1].type: unknown type 'strng'; valid types: integer, bigint"),
        (#"{"formatVersion": 1, "source": {"database": "d", "collection": "c"}, "table": "t", "columns": [{"field": "_id", "column": "id", "type": "text", "key": true}, {"field": "a", "column": "id", "type": "text"}]}"#,
         "$.columns[1].column: duplicate column 'id' in table t"),
        (#"{"formatVersion": 1, "source": {"database": "d", "collection": "c"}, "table": "t", "columns": [{"field": "_id", "column": "id", "type": "text", "key": true}], "children": [{"field": "xs", "table": "u", "columns": [{"field": "y", "column": "position", "type": "integer"}]}]}"#,
         "$.children[0].columns[0].column: duplicate column 'position' in table u (a key column the child table gets from its parent)"),
        (#"{"formatVersion": 1, "source": {"database": "d"}, "table": "t", "columns": []}"#, "$.source.collection: is missing"),
        (#"{"formatVersion": 1, "source": {"database": "d", "collection": "c"}, "table": "t", "columns": [{"field": "_id", "column": "id", "type": "text", "key": true}], "unique": [["id", "nope"]]}"#,
         "$.unique[0][1]: 'nope' names no column of table t"),
        (#"{"formatVersion": 1, "sorce": {}}"#, "$.sorce: unknown member"),
        ("{not json", "$: not valid JSON"),
    ])
    func anInvalidMappingFileIsRefusedWithTheJSONPathOfTheProblem(json: String, problem: String) throws {
        let file = NSTemporaryDirectory() + "etl-bad-mapping-\(UUID().uuidString).json"
        try json.write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let result = try Sandbox.runBinary(["start", "--mapping", file, "--state-dir", file + "-state"])
        #expect(result.status == 64, "\(result.stderr)")
        #expect(result.stderr.contains("mapping file \(file): \(problem)"), "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: file + "-state"))
    }

    /// The built-in pipeline and a mapped collection in one run: both load at once into one
    /// target, status shows each and their sum, one Ctrl-C stops both, resume finishes both.
    @Test func usersAndAMappedCollectionRunTogetherAndStopAndResumeTogether() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 300)
        try Orders.seed(sandbox, count: 200)
        let file = sandbox.stateDirectory + "-orders.json"
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try sandbox.job("init", ["--collection", "orders", "--output", file]).status == 0)
        try sandbox.slowCommits(seconds: 0.1)
        let job = try sandbox.launch(["start"] + sandbox.connectionArguments
            + ["--pipeline", "users", "--mapping", file, "--batch-size", "20", "--workers", "2"])
        #expect(eventually(20) { (try? sandbox.status()["documentsLoaded"] as? Int).flatMap { $0 } ?? 0 > 0 })
        job.signal(SIGINT)
        let stopped = try job.wait()
        #expect(stopped.status == 130, "\(stopped.stderr)")
        let status = try sandbox.job("status")
        #expect(status.stdout.contains("pipeline     users") && status.stdout.contains("pipeline     orders"), "\(status.stdout)")
        #expect(status.stdout.contains("all 2 pipelines:"), "\(status.stdout)")
        let resumed = try sandbox.run(["resume", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL,
                                       "--state-dir", sandbox.stateDirectory])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stdout.contains("pipeline          users") && resumed.stdout.contains("pipeline          orders"))
        #expect(try sandbox.counts()["users"] == 300)
        #expect(try sandbox.counts(tables: Self.tables)["orders"] == 200)
        let verify = try sandbox.run(["verify", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL,
                                      "--state-dir", sandbox.stateDirectory])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }

    /// _ids MongoDB tells apart stay apart: documents with the same members in another order,
    /// an ObjectId and the string of its hex, an integer and the string of its digits. `init`
    /// gives such a key the type extjson (Relaxed Extended JSON text, member order kept); every
    /// document loads, `verify` agrees, a set-aside record names its _id in its own order, and
    /// sync replaces and deletes the one document a change names, never its twin.
    @Test func idsMongoDBTellsApartGetAnExtendedJSONKeyThatKeepsThemDistinct() throws {
        let sandbox = try Sandbox()
        let collection = sandbox.mongo.collection(database: sandbox.mongoDatabase, name: "mixed")
        let oid = (0..<12).map { UInt8($0 * 17) }
        let hex = oid.map { String(format: "%02x", $0) }.joined()
        func document(_ i: Int, _ id: (BSONWriter) -> Void, v: Int32? = nil) -> BSONDocument {
            let doc = BSONDocument()
            id(doc.writer)
            doc.writer.append("v", v ?? Int32(i))
            doc.writer.appendArray("lines") { $0.appendDocument("0") { $0.append("v", Int32(i)) } }
            return doc
        }
        var documents = (0..<8).flatMap { i in [
            document(2 * i) { $0.appendDocument("_id") { $0.append("region", "eu"); $0.append("n", Int32(i)) } },
            document(2 * i + 1) { $0.appendDocument("_id") { $0.append("n", Int32(i)); $0.append("region", "eu") } },
        ] }
        documents += [
            document(20) { $0.append("_id", objectId: oid) }, document(21) { $0.append("_id", hex) },
            document(22) { $0.append("_id", Int32(7)) }, document(23) { $0.append("_id", "7") },
            document(24) { $0.appendDocument("_id") { $0.append("a", Int32(1)); $0.appendDocument("b") { $0.append("x", Int32(1)); $0.append("y", Int32(2)) } } },
            document(25) { $0.appendDocument("_id") { $0.append("a", Int32(1)); $0.appendDocument("b") { $0.append("y", Int32(2)); $0.append("x", Int32(1)) } } },
        ]
        // The twin of {region: eu, n: 0} whose v is not an integer: set aside, named in its order.
        let bad = BSONDocument()
        bad.writer.appendDocument("_id") { $0.append("n", Int32(9)); $0.append("region", "eu") }
        bad.writer.append("v", "not a number")
        try collection.insertMany(documents + [document(30) { $0.appendDocument("_id") { $0.append("region", "eu"); $0.append("n", Int32(9)) } }])
        let file = sandbox.stateDirectory + "-mixed.json"
        defer { try? FileManager.default.removeItem(atPath: file) }
        let proposed = try sandbox.job("init", ["--collection", "mixed", "--output", file])
        #expect(proposed.status == 0, "\(proposed.stderr)")
        let mapping = try JSON.object(try String(contentsOfFile: file, encoding: .utf8))
        #expect((mapping["columns"] as? [[String: Any]])?.first?["type"] as? String == "extjson", "\(mapping)")
        try collection.insertMany([bad])
        // set-aside: a value its column cannot hold sets the document aside (evolve would add a variant column).
        let started = try sandbox.job("start", ["--mapping", file, "--max-set-aside", "1", "--unmapped", "set-aside"])
        #expect(started.status == 0, "\(started.stderr)")
        let loaded = documents.count + 1
        #expect(try sandbox.counts(tables: ["mixed", "mixed_lines"]) == ["mixed": loaded, "mixed_lines": loaded])
        #expect(try sandbox.job("verify").status == 0)
        let db = try sandbox.db()
        let ids = Set(try db.execute("SELECT id FROM mixed").rows.map { $0[0]! })
        for expected in [#"{"region":"eu","n":3}"#, #"{"n":3,"region":"eu"}"#, #"{"$oid":"\#(hex)"}"#, "\"\(hex)\"", "7", #""7""#,
                         #"{"a":1,"b":{"x":1,"y":2}}"#, #"{"a":1,"b":{"y":2,"x":1}}"#] {
            #expect(ids.contains(expected), "\(expected) in \(ids.sorted())")
        }
        #expect(try db.execute(#"SELECT v FROM mixed WHERE id = '{"n":3,"region":"eu"}'"#).rows.map { $0[0]! } == ["7"])
        #expect(try db.execute("SELECT count(*) FROM mixed WHERE (id::jsonb)->>'region' = 'eu'").rows[0][0] == "17", "queryable as jsonb")
        let listed = try JSON.object(try sandbox.job("status", ["--rejected", "--json"]).stdout)
        let rejected = (listed["documents"] as? [[String: Any]])?.compactMap { $0["_id"] as? String } ?? []
        #expect(rejected.count == 1 && rejected[0].replacingOccurrences(of: " ", with: "") == #"{"n":9,"region":"eu"}"#, "\(rejected)")

        // A change to one twin replaces (or deletes) its rows only.
        func twin(_ w: BSONWriter, _ n: Int32) { w.appendDocument("_id") { $0.append("n", n); $0.append("region", "eu") } }
        let replace = BSONDocument()
        replace.writer.append("update", "mixed")
        replace.writer.appendArray("updates") { updates in
            updates.appendDocument("0") { update in
                update.appendDocument("q") { twin($0, 3) }
                update.appendDocument("u") { $0.append("v", Int32(70)); $0.appendArray("lines") { $0.appendDocument("0") { $0.append("v", Int32(70)) } } }
            }
        }
        try sandbox.mongo.runCommand(replace, database: sandbox.mongoDatabase)
        let delete = BSONDocument()
        delete.writer.append("delete", "mixed")
        delete.writer.appendArray("deletes") { deletes in
            deletes.appendDocument("0") { $0.appendDocument("q") { twin($0, 4) }; $0.append("limit", Int32(1)) }
        }
        try sandbox.mongo.runCommand(delete, database: sandbox.mongoDatabase)
        let synced = try sandbox.job("sync", ["--max-set-aside", "1"])
        #expect(synced.status == 0, "\(synced.stderr)")
        #expect(try db.execute(#"SELECT v FROM mixed WHERE id = '{"n":3,"region":"eu"}'"#).rows.map { $0[0]! } == ["70"])
        #expect(try db.execute(#"SELECT v FROM mixed WHERE id = '{"region":"eu","n":3}'"#).rows.map { $0[0]! } == ["6"])
        #expect(try db.execute(#"SELECT count(*) FROM mixed WHERE id IN ('{"n":4,"region":"eu"}', '{"region":"eu","n":4}')"#).rows[0][0] == "1")
        #expect(try sandbox.counts(tables: ["mixed", "mixed_lines"]) == ["mixed": loaded - 1, "mixed_lines": loaded - 1])
        #expect(try sandbox.job("verify").status == 0)
    }

    /// MongoDB's unique indexes become the table's UNIQUE constraints: one on a field is
    /// `"unique": true` on its column, a compound one a group of the table's `unique`; a partial
    /// index and one on an array are left out, the notes saying why. From a mongodump file the
    /// indexes come from the `.metadata.json` beside it, and a document colliding with another
    /// on a unique column is set aside naming the constraint and the value.
    @Test func uniqueIndexesBecomeUniqueConstraintsLiveAndFromADump() throws {
        let sandbox = try Sandbox()
        let accounts = sandbox.mongo.collection(database: sandbox.mongoDatabase, name: "accounts")
        func account(_ i: Int, email: String? = nil) -> BSONDocument {
            let doc = BSONDocument()
            doc.writer.append("_id", Int32(i))
            doc.writer.append("email", email ?? "a\(i)@example.com")
            doc.writer.append("region", ["eu", "us"][i % 2])
            doc.writer.append("number", Int32(i / 2))
            doc.writer.append("code", "c\(i)")
            doc.writer.appendArray("tags") { $0.append("0", "t\(i)") }
            return doc
        }
        try accounts.insertMany((0..<30).map { account($0) })
        let create = BSONDocument()
        create.writer.append("createIndexes", "accounts")
        create.writer.appendArray("indexes") { list in
            list.appendDocument("0") { $0.appendDocument("key") { $0.append("email", Int32(1)) }; $0.append("name", "email_1"); $0.append("unique", true) }
            list.appendDocument("1") { i in
                i.appendDocument("key") { $0.append("region", Int32(1)); $0.append("number", Int32(1)) }
                i.append("name", "region_1_number_1"); i.append("unique", true)
            }
            list.appendDocument("2") { i in
                i.appendDocument("key") { $0.append("code", Int32(1)) }; i.append("name", "code_1"); i.append("unique", true)
                i.appendDocument("partialFilterExpression") { $0.appendDocument("code") { $0.append("$exists", true) } }
            }
            list.appendDocument("3") { $0.appendDocument("key") { $0.append("tags", Int32(1)) }; $0.append("name", "tags_1"); $0.append("unique", true) }
        }
        try sandbox.mongo.runCommand(create, database: sandbox.mongoDatabase)
        let file = sandbox.stateDirectory + "-accounts.json"
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try sandbox.job("init", ["--collection", "accounts", "--output", file]).status == 0)
        let mapping = try JSON.object(try String(contentsOfFile: file, encoding: .utf8))
        let columns = Dictionary(uniqueKeysWithValues: (mapping["columns"] as! [[String: Any]]).map { ($0["column"] as! String, $0) })
        #expect(columns["email"]?["unique"] as? Bool == true, "\(mapping)")
        #expect(columns["code"]?["unique"] == nil && columns["tags"]?["unique"] == nil)
        #expect((mapping["unique"] as? [[String]]) == [["region", "number"]], "\(mapping)")
        let notes = (mapping["notes"] as? [String: String])?["(unique indexes)"] ?? ""
        #expect(notes.contains("code_1: partial") && notes.contains("tags_1: on an array"), "\(notes)")
        #expect(try sandbox.job("start", ["--mapping", file]).status == 0)
        let constraints = try sandbox.db().execute("SELECT conname FROM pg_constraint WHERE conrelid = 'accounts'::regclass AND contype = 'u' ORDER BY 1")
        #expect(constraints.rows.map { $0[0]! } == ["accounts_email_key", "accounts_region_number_key"])
        #expect(try sandbox.job("verify").status == 0)

        // A dump of the same collection, its metadata beside it, one document reusing an email.
        let directory = sandbox.stateDirectory + "-dump"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let bytes = (0..<30).flatMap { account($0).bytes } + account(30, email: "a3@example.com").bytes
        #expect(FileManager.default.createFile(atPath: directory + "/accounts.bson", contents: Data(bytes)))
        let metadata = #"{"indexes":[{"v":{"$numberInt":"2"},"key":{"_id":{"$numberInt":"1"}},"name":"_id_"},"#
            + #"{"v":{"$numberInt":"2"},"key":{"email":{"$numberInt":"1"}},"name":"email_1","unique":true}],"uuid":"00","collectionName":"accounts"}"#
        #expect(FileManager.default.createFile(atPath: directory + "/accounts.metadata.json", contents: Data(metadata.utf8)))
        let fromDump = directory + "/mapping.json"
        #expect(try sandbox.run(["init", "--source-file", directory + "/accounts.bson", "--output", fromDump]).status == 0)
        let dumped = try JSON.object(try String(contentsOfFile: fromDump, encoding: .utf8))
        #expect((dumped["columns"] as! [[String: Any]]).first { $0["column"] as? String == "email" }?["unique"] as? Bool == true, "\(dumped)")
        let state = ["--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory + "-dumpstate", "--target-schema", "dumped"]
        let loaded = try sandbox.run(["start", "--mapping", fromDump, "--source-file", directory + "/accounts.bson", "--max-set-aside", "1"] + state)
        #expect(loaded.status == 0, "\(loaded.stderr)")
        let listed = try JSON.object(try sandbox.run(["status", "--rejected", "--json", "--state-dir", sandbox.stateDirectory + "-dumpstate"]).stdout)
        let rejected = (listed["documents"] as? [[String: Any]]) ?? []
        #expect(rejected.count == 1 && (rejected.first?["reason"] as? String)?.contains(
            #"duplicate key value violates unique constraint "accounts_email_key": Key (email)=(a3@example.com), which _id 3 also has and keeps"#) == true,
            "\(rejected)")
        #expect(try sandbox.db().execute("SELECT count(*) FROM dumped.accounts").rows[0][0] == "30")
    }

    /// The file `init` writes reads in docs/reference/mapping-file.md's order (formatVersion, source, table, columns,
    /// children, notes), one column per line, and the same collection gives the same bytes.
    @Test func initWritesTheMappingInTheReadmesOrderAndTheSameBytesEachTime() throws {
        let sandbox = try Sandbox()
        try Orders.seed(sandbox, count: 120)
        let first = sandbox.stateDirectory + "-a.json", second = sandbox.stateDirectory + "-b.json"
        defer { for f in [first, second] { try? FileManager.default.removeItem(atPath: f) } }
        #expect(try sandbox.job("init", ["--collection", "orders", "--output", first]).status == 0)
        #expect(try sandbox.job("init", ["--collection", "orders", "--output", second]).status == 0)
        let text = try String(contentsOfFile: first, encoding: .utf8)
        #expect(try String(contentsOfFile: second, encoding: .utf8) == text, "same input, same bytes")
        let positions = ["\"formatVersion\"", "\"source\"", "\"table\"", "\"columns\"", "\"children\"", "\"notes\""].map {
            text.range(of: $0)?.lowerBound
        }
        #expect(positions.allSatisfy { $0 != nil } && positions.map { $0! } == positions.map { $0! }.sorted(), "\(text)")
        let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(lines.contains(#"{"field": "_id", "column": "id", "type": "text", "key": true},"#), "\(text)")
        #expect(lines.contains(#"{"field": "note", "column": "note", "type": "text", "nullable": true},"#)
            || lines.contains(#"{"field": "note", "column": "note", "type": "text", "nullable": true}"#), "\(text)")
        #expect(lines.contains(#"{"field": "items", "table": "orders_items","#), "\(text)")
        #expect(!text.contains("[\n\n") && !lines.contains("["), "no empty array spread over lines")
        #expect(text.hasPrefix("{\n  \"formatVersion\": 1,\n  \"source\": {\"database\": ") && text.hasSuffix("}\n"))
    }

    /// Records with optional keys are flattened, rare keys as nullable columns; maps (keys that
    /// are ids, or many keys each in few documents) stay jsonb. Shown on collections shaped like
    /// the public sample data sets: biographies whose `name` has an `aka` one time in ten,
    /// theaters whose `location.address` rarely has a `street2`, customers whose
    /// `tier_and_details` is keyed by 32-hex-digit ids seen once each.
    @Test func recordsWithOptionalKeysAreFlattenedAndMapsStayJsonb() throws {
        let sandbox = try Sandbox()
        let bios = sandbox.mongo.collection(database: sandbox.mongoDatabase, name: "bios")
        try bios.insertMany((0..<60).map { WholeDatabaseTests.bio($0, born: false) })
        let theaters = sandbox.mongo.collection(database: sandbox.mongoDatabase, name: "theaters")
        try theaters.insertMany((0..<60).map { i in
            let doc = BSONDocument()
            doc.writer.append("_id", Int32(i))
            doc.writer.appendDocument("location") { l in
                l.appendDocument("address") { a in
                    a.append("street1", "\(i) Main St")
                    if i == 17 || i == 41 { a.append("street2", "Suite \(i)") }
                    a.append("city", "C\(i % 7)")
                    a.append("state", "ST")
                    a.append("zipcode", String(10_000 + i))
                }
            }
            return doc
        })
        let customers = sandbox.mongo.collection(database: sandbox.mongoDatabase, name: "customers")
        var rng = SplitMix64(seed: 22)
        try customers.insertMany((0..<60).map { i in
            let doc = BSONDocument()
            doc.writer.append("_id", Int32(i))
            doc.writer.appendDocument("tier_and_details") { t in
                for _ in 0..<(1 + i % 3) {
                    let id = (0..<2).map { _ in String(format: "%016llx", rng.next()) }.joined()
                    t.appendDocument(id) { $0.append("tier", "Gold"); $0.append("id", id) }
                }
            }
            return doc
        })
        func inferred(_ collection: String) throws -> (file: String, columns: [String: [String: Any]]) {
            let file = sandbox.stateDirectory + "-\(collection).json"
            let result = try sandbox.job("init", ["--collection", collection, "--output", file])
            #expect(result.status == 0, "\(result.stderr)")
            let mapping = try JSON.object(try String(contentsOfFile: file, encoding: .utf8))
            return (file, Dictionary(uniqueKeysWithValues: (mapping["columns"] as! [[String: Any]]).map { ($0["column"] as! String, $0) }))
        }
        let bio = try inferred("bios")
        #expect(Set(bio.columns.keys) == ["id", "name_first", "name_last", "name_aka"], "\(bio.columns.keys.sorted())")
        #expect(bio.columns["name_aka"]?["nullable"] as? Bool == true && bio.columns["name_first"]?["nullable"] == nil)
        let theater = try inferred("theaters")
        #expect(theater.columns["location_address_street2"]?["type"] as? String == "text", "\(theater.columns.keys.sorted())")
        #expect(theater.columns["location_address_street2"]?["nullable"] as? Bool == true)
        #expect(theater.columns["location_address_zipcode"]?["nullable"] == nil)
        let customer = try inferred("customers")
        #expect(customer.columns["tier_and_details"]?["type"] as? String == "jsonb", "ids as keys: a map, \(customer.columns.keys.sorted())")
        defer { for f in [bio.file, theater.file, customer.file] { try? FileManager.default.removeItem(atPath: f) } }

        let started = try sandbox.job("start", ["--mapping", bio.file, "--mapping", theater.file, "--mapping", customer.file])
        #expect(started.status == 0, "\(started.stderr)")
        let db = try sandbox.db()
        #expect(try db.execute("SELECT count(*), count(name_aka) FROM bios").rows[0] == ["60", "6"])
        #expect(try db.execute("SELECT location_address_street2 FROM theaters WHERE location_address_street2 IS NOT NULL ORDER BY id").rows.map { $0[0]! }
            == ["Suite 17", "Suite 41"])
        #expect(try db.execute("SELECT sum((SELECT count(*) FROM jsonb_object_keys(tier_and_details))) FROM customers").rows[0][0] == "120")
        #expect(try sandbox.job("verify").status == 0)
    }

    /// `init` never writes a mapping it then refuses: a file named as no pipeline can be gets a
    /// pipeline name derived from it; documents without an _id are refused in one line.
    @Test func initNamesAPipelineItCanLoadAndRefusesDocumentsWithoutAnId() throws {
        let sandbox = try Sandbox()
        let file = try FileSourceTests.dump(sandbox, users: 40, name: "10k1dup10k.bson")
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-files") }
        let mapping = sandbox.stateDirectory + "-files/mapping.json"
        let proposed = try sandbox.run(["init", "--source-file", file, "--output", mapping])
        #expect(proposed.status == 0, "\(proposed.stderr)")
        let json = try JSON.object(try String(contentsOfFile: mapping, encoding: .utf8))
        #expect(json["pipeline"] as? String == "c_10k1dup10k", "\(json)")
        let started = try sandbox.run(["start", "--mapping", mapping, "--source-file", file, "--postgres-url", sandbox.postgresURL,
                                       "--state-dir", sandbox.stateDirectory])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(started.stdout.contains("documents loaded  40"), "\(started.stdout)")

        // An oplog-like file: documents without _id.
        let withoutIds = sandbox.stateDirectory + "-files/oplog.bson"
        var bytes: [UInt8] = []
        for i in 0..<5 {
            let document = BSONDocument()
            document.writer.append("op", "i")
            document.writer.append("n", Int32(i))
            bytes += document.bytes
        }
        #expect(FileManager.default.createFile(atPath: withoutIds, contents: Data(bytes)))
        let refused = try sandbox.run(["init", "--source-file", withoutIds, "--output", mapping + "-2"])
        #expect(refused.status == 65, "\(refused.stderr)")
        #expect(refused.stderr.split(separator: "\n").count == 1 && refused.stderr.contains("none of the 5 documents sampled"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: mapping + "-2"), "nothing written")
    }

    @Test func initOnTheUsersCollectionGivesAMappingThatLoads() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 80)
        let file = sandbox.stateDirectory + "-users.json"
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try sandbox.job("init", ["--collection", "users", "--output", file]).status == 0)
        let started = try sandbox.job("start", ["--mapping", file, "--target-schema", "inferred"])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(started.stdout.contains("documents loaded  80"), "\(started.stdout)")
        let verify = try sandbox.job("verify")
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }
}

/// Orders: ObjectId `_id`s, Decimal128, two levels of nested arrays, optional fields, mixed
/// numeric types, a stable and a free-form object, empty arrays, unicode and control
/// characters.
enum Orders {
    static func seed(_ sandbox: Sandbox, count: Int) throws {
        var rng = SplitMix64(seed: 7)
        try insert(sandbox, (0..<count).map { document($0, rng: &rng) })
    }

    static func insert(_ sandbox: Sandbox, _ documents: BSONDocument...) throws {
        try insert(sandbox, documents)
    }

    static func insert(_ sandbox: Sandbox, _ documents: [BSONDocument]) throws {
        try sandbox.mongo.collection(database: sandbox.mongoDatabase, name: "orders").insertMany(documents)
    }

    static func document(_ i: Int, badQuantity: Bool = false) -> BSONDocument {
        var rng = SplitMix64(seed: UInt64(i))
        return document(i, badQuantity: badQuantity, rng: &rng)
    }

    static func document(_ i: Int, badQuantity: Bool = false, rng: inout SplitMix64) -> BSONDocument {
        let doc = BSONDocument()
        let w = doc.writer
        w.append("_id", objectId: (0..<12).map { UInt8(truncatingIfNeeded: (i >> (($0 % 4) * 8)) + $0) })
        w.append("number", Int32(i))
        w.append("total", decimal128: "\(i).\(String(format: "%02d", i % 100))")
        if i % 2 == 0 { w.append("amount", Int32(i)) } else { w.append("amount", Double(i) + 0.25) }
        w.append("placed", dateTimeMillis: 1_700_000_000_000 + Int64(i) * 60_000)
        w.appendDocument("customer") { c in
            c.append("name", "Cüstomer \"\(i)\"\t\u{1} 😀")
            c.append("email", "c\(i)@example.com")
        }
        w.appendArray("tags") { t in if i % 5 != 0 { t.append("0", "t\(i % 3)"); t.append("1", "x") } }
        let itemCount = badQuantity ? 2 : i % 4
        w.appendArray("items") { items in
            for j in 0..<itemCount {
                items.appendDocument(String(j)) { item in
                    item.append("sku", "s\(j)")
                    if badQuantity && j == 1 { item.append("qty", "two") } else if j % 2 == 0 { item.append("qty", Int32(j + 1)) } else { item.append("qty", Int64(j + 1)) }
                    item.append("price", 1.5 * Double(j))
                    item.appendArray("parts") { parts in
                        for k in 0..<(j % 3) { parts.appendDocument(String(k)) { $0.append("code", "p\(k)") } }
                    }
                }
            }
        }
        w.appendDocument("attrs") { a in
            for _ in 0..<3 { a.append("k\(rng.next() % 200)", Int32(i)) }
        }
        if i % 7 != 0 { w.append("note", "note \(i)") }
        return doc
    }
}
