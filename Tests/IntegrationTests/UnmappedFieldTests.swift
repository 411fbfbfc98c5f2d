import Foundation
import Mongo
import Testing
import TestSupport
import UsersFixtures

/// Fields a mapping does not name: a mapping inferred from a sample that never saw them,
/// loaded with each policy (evolve, keep, set-aside, drop), killed while it evolves, kept in
/// sync while a writer brings new fields, loaded by two workers, and the users pipeline's
/// refusals; `verify` proving each, and `etl_unmapped` / `etl_mappings` recording it.
@Suite(.serialized) struct UnmappedFieldTests {
    /// A collection whose sample (`init --sample`) sees only plain documents (even `_id`s):
    /// name, an integer age and an array of items. The rare documents (odd `_id`s), written after
    /// `init`, bring what the mapping does not name.
    enum Customers {
        static let collection = "customers"
        static let plainIds = Array(stride(from: 0, to: 400, by: 2))
        /// A new scalar.
        static let loyalty = [11, 13, 111, 211, 311, 391]
        /// A new object (`address.city`, `address.zip`).
        static let address = [51, 151, 251]
        /// A new array of objects.
        static let orders = [71, 271]
        /// A new key inside the entries of an existing child table (`items[].color`).
        static let color = [91, 93, 191, 291]
        /// An integer field holding a string.
        static let stringAge = [131]
        static var rareIds: [Int] { (loyalty + address + orders + color + stringAge).sorted() }
        static var documents: Int { plainIds.count + rareIds.count }

        static func document(_ i: Int) -> BSONDocument {
            let doc = BSONDocument()
            let w = doc.writer
            w.append("_id", Int32(i))
            w.append("name", "c\(i)")
            if stringAge.contains(i) { w.append("age", "forty") } else { w.append("age", Int32(20 + i % 50)) }
            w.appendArray("items") { items in
                if color.contains(i) {
                    items.appendDocument("0") { $0.append("sku", "s0"); $0.append("qty", Int32(1)); $0.append("color", "red\(i)") }
                } else {
                    for j in 0..<(i % 3) { items.appendDocument(String(j)) { $0.append("sku", "s\(j)"); $0.append("qty", Int32(j + 1)) } }
                }
            }
            if loyalty.contains(i) { w.append("loyalty", Int32(i)) }
            if address.contains(i) { w.appendDocument("address") { $0.append("city", "City\(i)"); $0.append("zip", "Z\(i)") } }
            if orders.contains(i) {
                w.appendArray("orders") { list in
                    for k in 0..<2 { list.appendDocument(String(k)) { $0.append("number", Int32(i * 10 + k)); $0.append("total", 1.5 * Double(k)) } }
                }
            }
            return doc
        }

        static func insert(_ sandbox: Sandbox, _ ids: [Int]) throws {
            try sandbox.mongo.collection(database: sandbox.mongoDatabase, name: collection).insertMany(ids.map(document))
        }

        /// Seeds the plain documents, infers a mapping from a small sample of them, then writes
        /// the rare documents: the mapping never saw what they bring.
        static func seedAndInfer(_ sandbox: Sandbox, policy: String? = nil) throws -> String {
            try insert(sandbox, plainIds)
            let file = sandbox.stateDirectory + "-customers.json"
            let inferred = try sandbox.job("init", ["--collection", collection, "--sample", "50", "--output", file])
            #expect(inferred.status == 0, "\(inferred.stderr)")
            let text = try String(contentsOfFile: file, encoding: .utf8)
            #expect(text.contains(#""unmapped": "evolve""#), "init writes the default policy: \(text)")
            for absent in ["loyalty", "address", "orders", "color"] { #expect(!text.contains(absent), "the sample never saw \(absent): \(text)") }
            #expect(text.contains(#"{"field": "age", "column": "age", "type": "integer"}"#), "\(text)")
            if let policy {
                try text.replacingOccurrences(of: #""unmapped": "evolve""#, with: #""unmapped": "\#(policy)""#).write(toFile: file, atomically: true, encoding: .utf8)
            }
            try insert(sandbox, rareIds)
            return file
        }
    }

    /// Fields that change shape after the sample: an array a child table reads that is once a
    /// string and once an object, an object the mapping flattens that is once a string, then
    /// holds a new key. Evolve sets none of them aside: the array's other shapes go to variants
    /// of the child table, the string where an object was to a column of its own (the object's
    /// columns nullable), the new key to a new column; verify proves every value is held.
    @Test func fieldsThatChangeShapeAreHeldByVariantsAndNothingIsSetAside() throws {
        let sandbox = try Sandbox()
        let collection = sandbox.mongo.collection(database: sandbox.mongoDatabase, name: "shapes")
        func document(_ i: Int, _ body: (BSONWriter) -> Void = { _ in }) -> BSONDocument {
            let doc = BSONDocument()
            doc.writer.append("_id", Int32(i))
            body(doc.writer)
            return doc
        }
        func plain(_ w: BSONWriter, _ i: Int) {
            w.appendDocument("customer") { $0.append("name", "c\(i)"); $0.append("tier", Int32(i % 3)) }
            w.appendArray("items") { $0.appendDocument("0") { $0.append("sku", "s\(i)") } }
        }
        try collection.insertMany((0..<60).map { i in document(i) { plain($0, i) } })
        let file = sandbox.stateDirectory + "-shapes.json"
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try sandbox.job("init", ["--collection", "shapes", "--output", file]).status == 0)
        try collection.insertMany([
            document(100) { w in w.appendDocument("customer") { $0.append("name", "c100"); $0.append("tier", Int32(1)) }; w.append("items", "none") },
            document(101) { w in w.appendDocument("customer") { $0.append("name", "c101"); $0.append("tier", Int32(1)) }
                w.appendDocument("items") { $0.append("sku", "lone") } },
            document(102) { w in w.append("customer", "anonymous"); w.appendArray("items") { _ in } },
            document(103) { w in w.appendDocument("customer") { $0.append("name", "c103"); $0.append("tier", Int32(2)); $0.append("email", "e@x") }
                w.appendArray("items") { $0.appendDocument("0") { $0.append("sku", "s103") } } },
        ])
        let started = try sandbox.job("start", ["--mapping", file, "--batch-size", "20"])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(try Self.rejected(sandbox).isEmpty, "a change of shape sets nothing aside")
        #expect(try Self.rows(sandbox, "SELECT id, customer, customer_name, customer_tier, customer_email, items__text, items__jsonb FROM shapes WHERE id >= 100 ORDER BY id") == [
            ["100", "NULL", "c100", "1", "NULL", "none", "NULL"],
            ["101", "NULL", "c101", "1", "NULL", "NULL", #"{"sku": "lone"}"#],
            ["102", "anonymous", "NULL", "NULL", "NULL", "NULL", "NULL"],
            ["103", "NULL", "c103", "2", "e@x", "NULL", "NULL"],
        ])
        #expect(try Self.rows(sandbox, "SELECT count(*) FROM shapes_items WHERE shapes_id >= 100") == [["1"]], "only 103's array has entries")
        let mapping = try sandbox.job("mapping")
        #expect(mapping.status == 0, "\(mapping.stderr)")
        #expect(mapping.stdout.contains(#""variantOf": "shapes_items""#) && mapping.stdout.contains(#"{"field": "customer", "column": "customer", "type": "text", "nullable": true}"#),
                "\(mapping.stdout)")
        #expect(try sandbox.job("verify").status == 0)
        // A value the target lost is a difference.
        try sandbox.db().execute("UPDATE shapes SET items__text = NULL WHERE id = 100")
        #expect(try sandbox.job("verify").status == 65)
    }

    // MARK: helpers

    /// A table's columns, name → SQL type, or [:] when it does not exist.
    static func columns(_ sandbox: Sandbox, _ table: String, schema: String = "public") throws -> [String: String] {
        let rows = try sandbox.db().query("""
            SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
            WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
            """, ["\"\(schema)\".\"\(table)\""]).rows
        return Dictionary(uniqueKeysWithValues: rows.map { ($0[0]!, $0[1]!) })
    }

    /// The tables of `schema` other than the job's own bookkeeping.
    static func dataTables(_ sandbox: Sandbox, schema: String = "public") throws -> [String] {
        try sandbox.db().query("""
            SELECT tablename FROM pg_tables WHERE schemaname = $1 AND tablename NOT LIKE 'etl\\_%' ORDER BY 1
            """, [schema]).rows.map { $0[0]! }
    }

    /// Row count and checksum of `columns` of a table, independent of the columns' order in it.
    static func checksum(_ sandbox: Sandbox, _ table: String, columns: [String], schema: String = "public") throws -> String {
        let list = columns.sorted().map { "\"\($0)\"" }.joined(separator: ", ")
        let row = try sandbox.db().execute("""
            SELECT count(*), md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) FROM (SELECT \(list) FROM "\(schema)"."\(table)") r
            """).rows[0]
        return "\(row[0]!) \(row[1]!)"
    }

    /// Every table of `schema`: its columns and a checksum of its rows, column order aside.
    static func contents(_ sandbox: Sandbox, schema: String) throws -> [String: String] {
        var result: [String: String] = [:]
        for table in try dataTables(sandbox, schema: schema) {
            let columns = try Self.columns(sandbox, table, schema: schema)
            result[table] = columns.keys.sorted().map { "\($0) \(columns[$0]!)" }.joined(separator: ", ") + " | "
                + (try checksum(sandbox, table, columns: Array(columns.keys), schema: schema))
        }
        return result
    }

    /// `etl_unmapped` as path → (documents, types, outcome).
    static func unmapped(_ sandbox: Sandbox, schema: String = "public", pipeline: String = "customers") throws -> [String: (documents: Int, types: String, outcome: String)] {
        let rows = try sandbox.db().query("""
            SELECT path, documents, array_to_string(types, ','), outcome FROM "\(schema)".etl_unmapped WHERE pipeline = $1
            """, [pipeline]).rows
        return Dictionary(uniqueKeysWithValues: rows.map { ($0[0]!, (Int($0[1]!)!, $0[2]!, $0[3]!)) })
    }

    /// `etl_mappings` of the pipeline, by version.
    static func versions(_ sandbox: Sandbox, schema: String = "public") throws -> [(version: Int, batch: String?, changes: [String], definition: String)] {
        try sandbox.db().execute("""
            SELECT version, batch_id, changes, definition FROM "\(schema)".etl_mappings WHERE pipeline = 'customers' ORDER BY version
            """).rows.map { (Int($0[0]!)!, $0[1], $0[2]!.split(separator: "\n").map(String.init), $0[3]!) }
    }

    /// The tables and columns a mapping definition describes: table → column names (the key
    /// columns a child table gets from its parents included).
    static func described(_ definition: String) throws -> [String: Set<String>] {
        var tables: [String: Set<String>] = [:]
        func walk(_ table: [String: Any], keys: [String]) {
            let name = table["table"] as! String
            let columns = (table["columns"] as? [[String: Any]] ?? []).map { $0["column"] as! String }
            tables[name] = Set(keys + columns)
            let parentKeys = keys.isEmpty ? [name + "_" + ((table["columns"] as! [[String: Any]]).first { $0["key"] as? Bool == true }!["column"] as! String)]
                : keys.dropLast() + [name + "_position"]
            for child in table["children"] as? [[String: Any]] ?? [] { walk(child, keys: parentKeys + ["position"]) }
        }
        walk(try JSON.object(definition), keys: [])
        return tables
    }

    /// The mapping in force is what the target holds: versions numbered 1, 2, … with no gap,
    /// version 1 the mapping as given, each later one recorded by a batch, every change made once;
    /// the latest version's tables and columns exactly those of the target.
    static func expectConsistentVersions(_ sandbox: Sandbox, schema: String = "public", _ comment: Comment = "") throws {
        let versions = try Self.versions(sandbox, schema: schema)
        guard let latest = versions.last else { return }
        #expect(versions.map(\.version) == Array(1...versions.count), "\(comment) \(versions.map(\.version))")
        #expect(versions.first?.changes == ["as given"] && versions.first?.batch == nil, "\(comment) \(versions.first!)")
        #expect(versions.dropFirst().allSatisfy { $0.batch != nil && !$0.changes.isEmpty }, "\(comment)")
        let changes = versions.flatMap(\.changes)
        #expect(Set(changes).count == changes.count, "\(comment): a change made twice: \(changes)")
        let tables = try described(latest.definition)
        #expect(Set(tables.keys) == Set(try dataTables(sandbox, schema: schema)), "\(comment)")
        for (table, columns) in tables {
            #expect(Set(try Self.columns(sandbox, table, schema: schema).keys) == columns, "\(comment): \(table)")
        }
    }

    /// The `_id`s set aside and their reasons (`status --rejected --json`).
    static func rejected(_ sandbox: Sandbox) throws -> [String: String] {
        let listed = try JSON.object(try sandbox.job("status", ["--rejected", "--json"]).stdout)
        let documents = listed["documents"] as? [[String: Any]] ?? []
        return Dictionary(uniqueKeysWithValues: documents.map { ($0["_id"] as! String, $0["reason"] as! String) })
    }

    static func rows(_ sandbox: Sandbox, _ sql: String) throws -> [[String]] {
        try sandbox.db().execute(sql).rows.map { $0.map { $0 ?? "NULL" } }
    }

    static func verifyJSON(_ sandbox: Sandbox, _ extra: [String] = []) throws -> (status: Int32, report: [String: Any]) {
        let result = try sandbox.job("verify", ["--json"] + extra)
        let document = try JSON.object(result.stdout)
        #expect(document["schemaVersion"] as? Int == 2, "\(result.stdout)")
        return (result.status, (document["pipelines"] as? [[String: Any]])?.first ?? [:])
    }

    /// The rest-column objects `keep` writes (jsonb), by `_id`.
    static let restObjects: [(Int, String)] =
        Customers.loyalty.map { ($0, #"{"loyalty": \#($0)}"#) }
        + Customers.address.map { ($0, #"{"address": {"city": "City\#($0)", "zip": "Z\#($0)"}}"#) }
        + Customers.orders.map { ($0, #"{"orders": [{"number": \#($0 * 10), "total": 0.0}, {"number": \#($0 * 10 + 1), "total": 1.5}]}"#) }

    // MARK: the four policies

    @Test func aMappingInferredFromASampleEvolvesToHoldRareFieldsAndVerifyProvesIt() throws {
        let sandbox = try Sandbox()
        let file = try Customers.seedAndInfer(sandbox)
        defer { try? FileManager.default.removeItem(atPath: file) }
        // One loader: each batch is transformed after the one before committed, so which
        // documents met a field before the mapping held it is known (the first batch holding it).
        let started = try sandbox.job("start", ["--mapping", file, "--batch-size", "40", "--workers", "1"])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(started.stdout.contains("documents loaded  \(Customers.documents)"), "nothing set aside: \(started.stdout)")
        #expect(started.stderr.contains("the mapping now holds fields it did not name"), "\(started.stderr)")

        // New nullable columns, a child table, a variant column: named as init would.
        #expect(try Self.columns(sandbox, "customers") == [
            "id": "integer", "name": "text", "age": "integer", "loyalty": "integer", "address_city": "text", "address_zip": "text", "age__text": "text",
        ])
        #expect(try Self.columns(sandbox, "customers_items") == ["customers_id": "integer", "position": "integer", "sku": "text", "qty": "integer", "color": "text"])
        #expect(try Self.columns(sandbox, "customers_orders") == ["customers_id": "integer", "position": "integer", "number": "integer", "total": "double precision"])
        #expect(try Self.rows(sandbox, """
            SELECT column_name, is_nullable FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'customers' ORDER BY column_name
            """) == [["address_city", "YES"], ["address_zip", "YES"], ["age", "YES"], ["age__text", "YES"], ["id", "NO"], ["loyalty", "YES"], ["name", "NO"]],
            "new columns are nullable; the column with a variant too")
        #expect(try Self.rows(sandbox, """
            SELECT confrelid::regclass::text FROM pg_constraint WHERE contype = 'f' AND conrelid = 'customers_orders'::regclass
            """) == [["customers"]], "the new child table's foreign key to its parent")

        // Exactly the values, in exactly the documents that hold them.
        #expect(try Self.rows(sandbox, "SELECT id, loyalty FROM customers WHERE loyalty IS NOT NULL ORDER BY id") == Customers.loyalty.map { ["\($0)", "\($0)"] })
        #expect(try Self.rows(sandbox, "SELECT id, address_city, address_zip FROM customers WHERE address_city IS NOT NULL OR address_zip IS NOT NULL ORDER BY id")
            == Customers.address.map { ["\($0)", "City\($0)", "Z\($0)"] })
        #expect(try Self.rows(sandbox, "SELECT customers_id, position, number, total FROM customers_orders ORDER BY 1, 2")
            == Customers.orders.flatMap { i in [["\(i)", "0", "\(i * 10)", "0"], ["\(i)", "1", "\(i * 10 + 1)", "1.5"]] })
        #expect(try Self.rows(sandbox, "SELECT customers_id, position, sku, qty, color FROM customers_items WHERE color IS NOT NULL ORDER BY 1")
            == Customers.color.map { ["\($0)", "0", "s0", "1", "red\($0)"] })
        #expect(try Self.rows(sandbox, "SELECT id, coalesce(age::text, 'NULL'), age__text FROM customers WHERE age IS NULL OR age__text IS NOT NULL ORDER BY id")
            == [["131", "NULL", "forty"]], "the string in the variant column, the integer column NULL in that row only")
        #expect(try sandbox.counts(tables: ["customers", "customers_items", "customers_orders"])
            == ["customers": Customers.documents, "customers_items": Customers.plainIds.reduce(0) { $0 + $1 % 3 } + Customers.rareIds.reduce(0) { $0 + (Customers.color.contains($1) ? 1 : $1 % 3) },
                "customers_orders": 2 * Customers.orders.count])

        // Each path once, with where it went and the documents that met it before the mapping held
        // it: those of the first batch of 40 (in _id order) that holds it.
        let order = (Customers.plainIds + Customers.rareIds).sorted()
        func firstBatchHolders(_ holders: [Int]) -> Int {
            let batch = order.firstIndex(where: holders.contains)! / 40
            return order[(batch * 40)..<min(order.count, batch * 40 + 40)].filter(holders.contains).count
        }
        let ledger = try Self.unmapped(sandbox)
        #expect(Set(ledger.keys) == ["loyalty", "address", "orders", "items[].color", "age"], "\(ledger)")
        #expect(ledger["loyalty"].map { [$0.documents == firstBatchHolders(Customers.loyalty), $0.types == "int32", $0.outcome == "evolved into customers.loyalty"] } == [true, true, true],
                "\(String(describing: ledger["loyalty"]))")
        #expect(ledger["loyalty"]?.documents == 2, "11 and 13 are in the first batch")
        #expect(ledger["address"].map { [$0.documents == firstBatchHolders(Customers.address), $0.types == "object",
                                         $0.outcome == "evolved into customers.address_city, customers.address_zip"] } == [true, true, true],
                "\(String(describing: ledger["address"]))")
        #expect(ledger["orders"].map { [$0.documents == firstBatchHolders(Customers.orders), $0.types == "array", $0.outcome == "evolved into customers_orders"] }
            == [true, true, true], "\(String(describing: ledger["orders"]))")
        #expect(ledger["items[].color"].map { [$0.documents == firstBatchHolders(Customers.color), $0.types == "string",
                                               $0.outcome == "evolved into customers_items.color"] } == [true, true, true],
                "\(String(describing: ledger["items[].color"]))")
        #expect(ledger["age"].map { [$0.documents == 1, $0.types == "string", $0.outcome == "evolved into customers.age__text"] } == [true, true, true],
                "\(String(describing: ledger["age"]))")

        // The versions: as given, then one per batch that changed it.
        try Self.expectConsistentVersions(sandbox)
        let versions = try Self.versions(sandbox)
        #expect(versions.flatMap(\.changes).sorted() == [
            "address.city → customers.address_city text", "address.zip → customers.address_zip text", "age (text values) → customers.age__text text",
            "as given", "items[].color → customers_items.color text", "loyalty → customers.loyalty integer", "orders[] → child table customers_orders",
        ], "\(versions.map(\.changes))")
        let job = try sandbox.status()["job"] as? String
        #expect(try Self.rows(sandbox, "SELECT DISTINCT job_id FROM etl_mappings") == [[job ?? "?"]])

        let verify = try sandbox.job("verify")
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        #expect(verify.stdout.contains("customers_orders          4          4"), "the new child table is compared: \(verify.stdout)")
        let (status, report) = try Self.verifyJSON(sandbox)
        #expect(status == 0 && report["unheld"] as? Int == 0 && (report["targetDifferences"] as? [Any])?.isEmpty == true
            && report["droppedByPolicy"] as? Int == 0, "\(report)")
    }

    @Test func theKeepPolicyHoldsRareFieldsInTheRestColumnAsJsonbAndChangesNoTable() throws {
        let sandbox = try Sandbox()
        let file = try Customers.seedAndInfer(sandbox, policy: "keep")
        defer { try? FileManager.default.removeItem(atPath: file) }
        let started = try sandbox.job("start", ["--mapping", file, "--batch-size", "40", "--max-set-aside", "1"])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(started.stdout.contains("documents loaded  \(Customers.documents - 1)"), "\(started.stdout)")

        // No DDL beyond the rest column of each table: no version recorded.
        #expect(try Self.columns(sandbox, "customers") == ["id": "integer", "name": "text", "age": "integer", "_rest": "jsonb"])
        #expect(try Self.columns(sandbox, "customers_items") == ["customers_id": "integer", "position": "integer", "sku": "text", "qty": "integer", "_rest": "jsonb"])
        #expect(try Self.dataTables(sandbox) == ["customers", "customers_items"])
        #expect(try Self.rows(sandbox, "SELECT count(*) FROM etl_mappings") == [["0"]])

        // Exactly the fields no column names, nested as in the document; NULL elsewhere.
        let expected = Self.restObjects.map { "(\($0.0), '\($0.1)'::jsonb)" }.joined(separator: ", ")
        #expect(try Self.rows(sandbox, """
            SELECT coalesce(c.id, e.id), c._rest::text, e.rest::text FROM customers c FULL JOIN (VALUES \(expected)) e(id, rest) ON e.id = c.id
            WHERE c._rest IS DISTINCT FROM e.rest
            """) == [], "each _rest is exactly the document's unnamed fields")
        #expect(try Self.rows(sandbox, "SELECT count(*) FROM customers WHERE _rest IS NOT NULL") == [["\(Self.restObjects.count)"]])
        #expect(try Self.rows(sandbox, "SELECT customers_id, position, _rest->>'color', (SELECT count(*) FROM jsonb_object_keys(_rest)) FROM customers_items WHERE _rest IS NOT NULL ORDER BY 1")
            == Customers.color.map { ["\($0)", "0", "red\($0)", "1"] })
        #expect(try Self.rows(sandbox, "SELECT _rest FROM customers WHERE id = 51") == [[#"{"address": {"zip": "Z51", "city": "City51"}}"#]])

        // A string where an integer column is: keep has no variant column, so its document is set aside.
        #expect(try Self.rejected(sandbox) == ["131": "field 'age' is a string, expected an integer"])

        let ledger = try Self.unmapped(sandbox)
        #expect(ledger.mapValues { "\($0.documents) \($0.outcome)" } == [
            "loyalty": "\(Customers.loyalty.count) kept in _rest", "address": "\(Customers.address.count) kept in _rest",
            "orders": "\(Customers.orders.count) kept in _rest", "items[].color": "\(Customers.color.count) kept in _rest",
        ], "every document holding each field counted")

        let verify = try sandbox.job("verify")
        #expect(verify.status == 0, "the policy is the mapping file's, so verify reads the rest columns: \(verify.stdout)\(verify.stderr)")
        #expect(verify.stdout.contains("OK: source and target agree"), "\(verify.stdout)")
        // A tampered rest column is a difference.
        try sandbox.db().execute(#"UPDATE customers SET _rest = '{"loyalty": 12}' WHERE id = 11"#)
        let tampered = try sandbox.job("verify")
        #expect(tampered.status == 65 && tampered.stdout.contains("differing ids: 11"), "\(tampered.stdout)")
    }

    @Test func theSetAsidePolicySetsAsideEachDocumentWithARareFieldNamingItAndLoadsTheOthers() throws {
        let sandbox = try Sandbox()
        let file = try Customers.seedAndInfer(sandbox)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let started = try sandbox.job("start", ["--mapping", file, "--batch-size", "40", "--unmapped", "set-aside", "--max-set-aside", "100%"])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(started.stdout.contains("documents loaded  \(Customers.plainIds.count)"), "\(started.stdout)")

        let rejected = try Self.rejected(sandbox)
        #expect(Set(rejected.keys) == Set(Customers.rareIds.map(String.init)), "\(rejected)")
        func reason(_ ids: [Int], _ text: String) {
            for id in ids { #expect(rejected[String(id)]?.contains(text) == true, "\(id): \(rejected[String(id)] ?? "not set aside")") }
        }
        reason(Customers.loyalty, "field 'loyalty' is not in the mapping (an int32; the mapping's policy for unmapped fields is set-aside)")
        reason(Customers.address, "field 'address' is not in the mapping (")
        reason(Customers.orders, "field 'orders' is not in the mapping (an array; the mapping's policy for unmapped fields is set-aside)")
        reason(Customers.color, "field 'items[].color' is not in the mapping (a string; the mapping's policy for unmapped fields is set-aside)")
        reason(Customers.stringAge, "field 'age' is a string, expected an integer")
        // (An object is "an object": the reason said "a object" until article(_:) knew the type's name.)
        reason(Customers.address, "field 'address' is not in the mapping (an object; the mapping's policy for unmapped fields is set-aside)")

        #expect(try Self.rows(sandbox, "SELECT count(*), min(id), max(id), count(*) FILTER (WHERE id % 2 = 1) FROM customers") == [["200", "0", "398", "0"]])
        #expect(try Self.columns(sandbox, "customers") == ["id": "integer", "name": "text", "age": "integer"], "no DDL")
        #expect(try Self.dataTables(sandbox) == ["customers", "customers_items"])
        #expect(try Self.rows(sandbox, "SELECT count(*) FROM etl_mappings") == [["0"]])
        #expect(try Self.unmapped(sandbox).mapValues { "\($0.documents) \($0.outcome)" } == [
            "loyalty": "\(Customers.loyalty.count) document set aside", "address": "\(Customers.address.count) document set aside",
            "orders": "\(Customers.orders.count) document set aside", "items[].color": "\(Customers.color.count) document set aside",
        ])
        let status = try sandbox.status()
        #expect(status["documentsSetAside"] as? Int == Customers.rareIds.count, "\(status)")

        let verify = try sandbox.job("verify", ["--unmapped", "set-aside"])
        #expect(verify.status == 0, "the set-aside documents are not expected: \(verify.stdout)\(verify.stderr)")
    }

    @Test func theDropPolicyLoadsWithoutRareFieldsAndVerifyAcceptsAndReportsWhatWasLeftOut() throws {
        let sandbox = try Sandbox()
        let file = try Customers.seedAndInfer(sandbox)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let started = try sandbox.job("start", ["--mapping", file, "--batch-size", "40", "--unmapped", "drop", "--max-set-aside", "1"])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(started.stdout.contains("documents loaded  \(Customers.documents - 1)"), "\(started.stdout)")
        #expect(try Self.rejected(sandbox) == ["131": "field 'age' is a string, expected an integer"])
        #expect(try Self.columns(sandbox, "customers") == ["id": "integer", "name": "text", "age": "integer"])
        #expect(try Self.columns(sandbox, "customers_items") == ["customers_id": "integer", "position": "integer", "sku": "text", "qty": "integer"])
        #expect(try Self.dataTables(sandbox) == ["customers", "customers_items"])
        #expect(try Self.rows(sandbox, "SELECT count(*) FROM etl_mappings") == [["0"]])
        #expect(try Self.rows(sandbox, "SELECT id, name, age FROM customers WHERE id IN (11, 51, 71, 91) ORDER BY id")
            == [["11", "c11", "31"], ["51", "c51", "21"], ["71", "c71", "41"], ["91", "c91", "61"]], "their other fields load")
        #expect(try Self.rows(sandbox, "SELECT sku, qty FROM customers_items WHERE customers_id = 91") == [["s0", "1"]])
        #expect(try Self.unmapped(sandbox).mapValues { "\($0.documents) \($0.types) \($0.outcome)" } == [
            "loyalty": "\(Customers.loyalty.count) int32 dropped", "address": "\(Customers.address.count) object dropped",
            "orders": "\(Customers.orders.count) array dropped", "items[].color": "\(Customers.color.count) string dropped",
        ])

        // verify without --unmapped: the target's etl_unmapped says these were dropped on purpose.
        let verify = try sandbox.job("verify")
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        let leftOut = Customers.loyalty.count + Customers.address.count + Customers.orders.count + Customers.color.count
        #expect(verify.stdout.contains("documents with fields left out by the drop policy: \(leftOut) (address, items[].color, loyalty, orders)"), "\(verify.stdout)")
        let (status, report) = try Self.verifyJSON(sandbox)
        #expect(status == 0 && report["agrees"] as? Bool == true, "\(report)")
        #expect(report["droppedByPolicy"] as? Int == leftOut && report["droppedPaths"] as? [String] == ["address", "items[].color", "loyalty", "orders"]
            && report["unheld"] as? Int == 0, "\(report)")

        // A field written after the load was dropped by no run: asked to hold every field the
        // mapping does not name (--unmapped evolve over the job's drop), verify says no column
        // holds it, while the fields the job dropped stay accepted (etl_unmapped says so).
        let late = BSONDocument()
        late.writer.append("_id", Int32(1001))
        late.writer.append("name", "late")
        late.writer.append("age", Int32(5))
        late.writer.appendArray("items") { _ in }
        late.writer.append("referrer", "r1")
        try sandbox.mongo.collection(database: sandbox.mongoDatabase, name: Customers.collection).insertMany([late])
        let after = try Self.verifyJSON(sandbox, ["--unmapped", "evolve"])
        #expect(after.status == 65, "\(after.report)")
        #expect(after.report["unheld"] as? Int == 1 && (after.report["firstUnheld"] as? [String])?.first?.contains("field 'referrer'") == true, "\(after.report)")
    }

    /// A field no mapping file can name (a key with a dot in it): evolve cannot hold it, so its
    /// document is set aside, and none of its rows may be loaded.
    @Test func aDocumentWithAFieldEvolveCannotHoldIsSetAsideAndNoneOfItsRowsLoad() throws {
        let sandbox = try Sandbox()
        let file = try Customers.seedAndInfer(sandbox)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let dotted = Customers.document(1001)
        dotted.writer.append("a.b", Int32(1))
        try sandbox.mongo.collection(database: sandbox.mongoDatabase, name: Customers.collection).insertMany([dotted])
        let started = try sandbox.job("start", ["--mapping", file, "--batch-size", "40", "--max-set-aside", "1"])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(try Self.rejected(sandbox) == ["1001": "field 'a.b' is not in the mapping, and the mapping could not be changed to hold it"])
        #expect(started.stdout.contains("documents loaded  \(Customers.documents)"), "\(started.stdout)")
        #expect(try Self.unmapped(sandbox)["a.b"].map { "\($0.documents) \($0.outcome)" } == "1 document set aside")
        // (Its rows were transformed with the batch's before it was set aside: they must not be COPYed.)
        #expect(try Self.rows(sandbox, "SELECT count(*) FROM customers WHERE id = 1001") == [["0"]], "a document set aside has no row")
        #expect(try Self.rows(sandbox, "SELECT count(*) FROM customers_items WHERE customers_id = 1001") == [["0"]], "nor child rows")
        let verify = try sandbox.job("verify")
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }

    /// `--unmapped` given to `start` is the job's policy: a resume without it must not load the
    /// rest of the job with the mapping file's policy (evolve), half kept in `_rest`, half in
    /// new columns.
    @Test func aJobStartedWithAnUnmappedPolicyKeepsItWhenResumedWithoutTheOption() throws {
        let sandbox = try Sandbox()
        let file = try Customers.seedAndInfer(sandbox)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let killed = try sandbox.job("start", ["--mapping", file, "--batch-size", "40", "--unmapped", "keep", "--max-set-aside", "1"],
                                     environment: ["ETL_CRASH_AT": "committed:2"])
        #expect(killed.signaled, "\(killed.stderr)")
        #expect(try Self.rows(sandbox, "SELECT count(_rest) > 0 FROM customers") == [["t"]], "the first batches kept fields in _rest")
        let resumed = try sandbox.job("resume", ["--max-set-aside", "1"])
        // Either refused (the policy differs from the job's) or resumed with the job's policy: never a mix.
        #expect(resumed.status == 0 || resumed.status == 64, "\(resumed.stderr)")
        if resumed.status == 64 {
            #expect(resumed.stderr.contains("keep"), "the refusal names the job's policy: \(resumed.stderr)")
            #expect(try sandbox.job("resume", ["--unmapped", "keep", "--max-set-aside", "1"]).status == 0)
        }
        // BUG (product): resume without --unmapped ran the file's policy (evolve): new columns and
        // versions after a run that kept fields in _rest; verify then fails with either policy.
        #expect(try Self.rows(sandbox, "SELECT count(*) FROM etl_mappings") == [["0"]], "no evolution in a keep job")
        #expect(try Self.columns(sandbox, "customers") == ["id": "integer", "name": "text", "age": "integer", "_rest": "jsonb"])
        #expect(try Self.rows(sandbox, "SELECT count(*) FROM customers WHERE _rest IS NOT NULL") == [["\(Self.restObjects.count)"]])
        #expect(try Self.unmapped(sandbox).values.allSatisfy { $0.outcome == "kept in _rest" })
        let verify = try sandbox.job("verify", ["--unmapped", "keep"])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }

    // MARK: kills, verify, sync, workers

    @Test func anEvolutionKilledBeforeItsCommitLeavesNoColumnNorVersionAndResumeEqualsAnUninterruptedRun() throws {
        let sandbox = try Sandbox()
        let file = try Customers.seedAndInfer(sandbox)
        defer { try? FileManager.default.removeItem(atPath: file) }
        var arguments = sandbox.connectionArguments
        let state = arguments.firstIndex(of: "--state-dir")! + 1
        func run(_ command: String, schema: String, crashAt: String? = nil) throws -> JobResult {
            arguments[state] = sandbox.stateDirectory + "-" + schema
            let extra = command == "start" ? ["--mapping", file, "--batch-size", "40"] : []
            return try sandbox.run([command] + arguments + ["--target-schema", schema] + extra, environment: crashAt.map { ["ETL_CRASH_AT": $0] } ?? [:])
        }
        defer { for s in ["straight", "killed"] { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-" + s) } }
        let straight = try run("start", schema: "straight")
        #expect(straight.status == 0, "\(straight.stderr)")

        // Killed in the first evolution: its DDL and its versions go with the transaction.
        let first = try run("start", schema: "killed", crashAt: "evolved:1")
        #expect(first.signaled && first.status == 9, "killed at the crash point: \(first.status) \(first.stderr)")
        #expect(try Self.columns(sandbox, "customers", schema: "killed") == ["id": "integer", "name": "text", "age": "integer"], "no new column")
        #expect(try Self.dataTables(sandbox, schema: "killed") == ["customers", "customers_items"], "no new table")
        #expect(try Self.rows(sandbox, "SELECT count(*) FROM killed.etl_mappings") == [["0"]], "no version recorded")
        #expect(try Self.rows(sandbox, "SELECT count(*) FROM killed.etl_unmapped") == [["0"]], "no count recorded")

        // Killed again in an evolution of the resume (the second it reaches, when there is one).
        let second = try run("resume", schema: "killed", crashAt: "evolved:2")
        #expect(second.signaled, "the resume evolves the mapping again, and is killed in its second evolution: \(second.stderr)")
        try Self.expectConsistentVersions(sandbox, schema: "killed", "after the second kill")
        let resumed = try run("resume", schema: "killed")
        #expect(resumed.status == 0 && !resumed.signaled, "\(resumed.stderr)")

        // Every table, its columns and rows, equals the uninterrupted run's.
        let expected = try Self.contents(sandbox, schema: "straight")
        #expect(Set(expected.keys) == ["customers", "customers_items", "customers_orders"])
        #expect(try Self.contents(sandbox, schema: "killed") == expected)
        try Self.expectConsistentVersions(sandbox, schema: "straight", "straight")
        try Self.expectConsistentVersions(sandbox, schema: "killed", "killed")
        // Exactly one set of new columns: the same changes, each made once.
        #expect(try Set(Self.versions(sandbox, schema: "killed").flatMap(\.changes)) == Set(Self.versions(sandbox, schema: "straight").flatMap(\.changes)))
        let (a, b) = (try Self.unmapped(sandbox, schema: "straight"), try Self.unmapped(sandbox, schema: "killed"))
        #expect(a.mapValues { "\($0.types) \($0.outcome)" } == b.mapValues { "\($0.types) \($0.outcome)" }, "\(a) \(b)")
        for (path, entry) in b { #expect(entry.documents >= 1, "\(path) \(entry)") }
        let verify = try run("verify", schema: "killed")
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }

    @Test func verifyFailsWhenAColumnHoldingSourceDataIsDroppedByHandOrAFieldIsHeldNowhere() throws {
        let sandbox = try Sandbox()
        let file = try Customers.seedAndInfer(sandbox)
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try sandbox.job("start", ["--mapping", file, "--batch-size", "40"]).status == 0)
        #expect(try sandbox.job("verify").status == 0)

        // A document written after the load, with a field the mapping in force does not name.
        let late = Customers.document(1001)
        late.writer.appendDocument("vip") { $0.append("level", Int32(3)) }
        try sandbox.mongo.collection(database: sandbox.mongoDatabase, name: Customers.collection).insertMany([late])
        let unheld = try sandbox.job("verify")
        #expect(unheld.status == 65, "\(unheld.stdout)")
        #expect(unheld.stdout.contains("documents with a field no column holds: 1  ✗") && unheld.stdout.contains("_id 1001: field 'vip' (object)"), "\(unheld.stdout)")
        // (its row is missing too: the load never saw it)
        let deleteLate = BSONDocument()
        deleteLate.writer.append("delete", Customers.collection)
        deleteLate.writer.appendArray("deletes") { $0.appendDocument("0") { $0.appendDocument("q") { $0.append("_id", Int32(1001)) }; $0.append("limit", Int32(1)) } }
        try sandbox.mongo.runCommand(deleteLate, database: sandbox.mongoDatabase)
        #expect(try sandbox.job("verify").status == 0)

        // A column an evolution added, dropped by hand: verify names it.
        try sandbox.db().execute("ALTER TABLE customers_items DROP COLUMN color")
        let dropped = try sandbox.job("verify")
        #expect(dropped.status == 65, "\(dropped.stdout)\(dropped.stderr)")
        #expect(dropped.stdout.contains("customers_items.color is missing (expected text)"), "\(dropped.stdout)")
        let (status, report) = try Self.verifyJSON(sandbox)
        #expect(status == 65 && report["targetDifferences"] as? [String] == ["customers_items.color is missing (expected text)"], "\(report)")
        // And a column of the mapping as given.
        try sandbox.db().execute("ALTER TABLE customers_items ADD COLUMN color text")
        #expect(try sandbox.job("verify").status == 65, "the colors are gone")
        try sandbox.db().execute("ALTER TABLE customers DROP COLUMN name")
        let given = try Self.verifyJSON(sandbox)
        #expect(given.status == 65 && (given.report["targetDifferences"] as? [String])?.contains("customers.name is missing (expected text)") == true, "\(given.report)")
    }

    /// A writer that, until SIGTERM, brings what the snapshot's mapping does not name: a new
    /// scalar, a new object, pushes to a new array of objects, a new key in existing child
    /// entries, a string where an integer was (and back), new documents with all of them, deletes.
    static let newFieldsWriter = #"""
        import json, random, signal, sys, time
        import pymongo
        stopping = False
        def stop(*_):
            global stopping
            stopping = True
        signal.signal(signal.SIGTERM, stop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        c = pymongo.MongoClient(sys.argv[1])[sys.argv[2]]["customers"]
        r = random.Random(int(sys.argv[3]))
        rate = float(sys.argv[4])
        ids = [d["_id"] for d in c.find({}, {"_id": 1})]
        ops = ["scalar", "object", "array", "childkey", "type", "fix", "insert", "delete", "plain"]
        n, serial, counts = 0, 0, {}
        while not stopping:
            op, i = r.choice(ops), r.choice(ids)
            try:
                if op == "scalar": c.update_one({"_id": i}, {"$set": {"loyalty": r.randint(1, 1000)}})
                elif op == "object": c.update_one({"_id": i}, {"$set": {"address": {"city": "C%d" % r.randint(1, 9), "zip": "Z%d" % n}}})
                elif op == "array": c.update_one({"_id": i}, {"$push": {"orders": {"number": n, "total": 2.5}}})
                elif op == "childkey": c.update_one({"_id": i, "items.0": {"$exists": True}}, {"$set": {"items.0.color": "c%d" % n}})
                elif op == "type": c.update_one({"_id": i}, {"$set": {"age": "age%d" % n}})
                elif op == "fix": c.update_one({"_id": i, "age": {"$type": "string"}}, {"$set": {"age": 33}})
                elif op == "plain": c.update_one({"_id": i}, {"$set": {"name": "n%d" % n}})
                elif op == "delete":
                    c.delete_one({"_id": i})
                    ids.remove(i)
                elif op == "insert":
                    serial += 1
                    new = 100000 + serial
                    c.insert_one({"_id": new, "name": "w", "age": 5, "items": [{"sku": "a", "qty": 1, "color": "blue"}], "loyalty": 7,
                                  "address": {"city": "W", "zip": "W1"}, "orders": [{"number": 1, "total": 1.0}]})
                    ids.append(new)
            except pymongo.errors.PyMongoError:
                counts["error"] = counts.get("error", 0) + 1
                time.sleep(0.1)
                continue
            counts[op] = counts.get(op, 0) + 1
            n += 1
            time.sleep(1.0 / rate)
        print(json.dumps({"operations": n, "counts": counts}))
        """#

    @Test func syncKilledWhileAWriterBringsNewFieldsEndsEqualToAFreshSnapshotWithEachNewColumnOnce() throws {
        let sandbox = try Sandbox()
        try Customers.insert(sandbox, Customers.plainIds)
        let file = sandbox.stateDirectory + "-customers.json"
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try sandbox.job("init", ["--collection", Customers.collection, "--output", file]).status == 0)
        let snapshot = try sandbox.job("start", ["--mapping", file, "--batch-size", "40"])
        #expect(snapshot.status == 0, "\(snapshot.stderr)")
        #expect(try Self.dataTables(sandbox) == ["customers", "customers_items"])

        let writer = try RunningJob(executable: Services.packageRoot.appendingPathComponent("var/venv/bin/python").path,
                                    arguments: ["-c", Self.newFieldsWriter, Services.mongoURL, sandbox.mongoDatabase, "7", "60"], environment: [:])
        let arguments = ["--batch-size", "10", "--flush-timeout", "0.3", "--max-set-aside", "100%"]
        // Killed in the transaction of its first evolution, then at random moments.
        let evolving = try sandbox.launch(["sync", "--follow"] + sandbox.connectionArguments + arguments, environment: ["ETL_CRASH_AT": "evolved:1"])
        let diedAtThePoint = eventually(15) { !evolving.isRunning }
        if !diedAtThePoint { evolving.signal(SIGKILL) }
        let killed = try evolving.wait()
        #expect(diedAtThePoint && killed.signaled, "sync reached an evolution and died there: \(killed.stderr)")
        try Self.expectConsistentVersions(sandbox, "after the kill in an evolution")
        var rng = SplitMix64(seed: 34)
        for round in 0..<4 {
            let follow = try sandbox.launch(["sync", "--follow"] + sandbox.connectionArguments + arguments)
            Thread.sleep(forTimeInterval: 0.8 + Double(rng.next() % 1_200) / 1_000)
            follow.signal(SIGKILL)
            let result = try follow.wait()
            #expect(result.signaled, "round \(round): \(result.status) \(result.stderr)")
        }
        writer.signal(SIGTERM)
        let written = try writer.wait()
        let summary = try JSON.object(written.stdout.split(separator: "\n").last.map(String.init) ?? "")
        #expect((summary["operations"] as? Int ?? 0) > 100, "\(written.stdout) \(written.stderr)")
        let caughtUp = try sandbox.job("sync", ["--max-set-aside", "100%"])
        #expect(caughtUp.status == 0, "\(caughtUp.stderr)")

        let verify = try sandbox.job("verify")
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        #expect(try Self.rejected(sandbox).isEmpty, "every version fits the mapping in force")
        try Self.expectConsistentVersions(sandbox, "synced")
        #expect(try Self.dataTables(sandbox) == ["customers", "customers_items", "customers_orders"])
        let customers = try Self.columns(sandbox, "customers")
        #expect(Set(customers.keys) == ["id", "name", "age", "age__text", "loyalty", "address_city", "address_zip"], "each new column once: \(customers)")
        #expect(Set(try Self.columns(sandbox, "customers_items").keys) == ["customers_id", "position", "sku", "qty", "color"])

        // A fresh snapshot of the final source with the same mapping file: the same rows in
        // every column it has; columns it lacks (a variant no document needs any more) are NULL.
        let freshState = sandbox.stateDirectory + "-fresh"
        defer { try? FileManager.default.removeItem(atPath: freshState) }
        let fresh = try sandbox.run(["start", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL, "--database", sandbox.mongoDatabase,
                                     "--state-dir", freshState, "--target-schema", "fresh", "--mapping", file, "--max-set-aside", "100%"])
        #expect(fresh.status == 0, "\(fresh.stderr)")
        let synced = try Self.dataTables(sandbox)
        for table in try Self.dataTables(sandbox, schema: "fresh") {
            #expect(synced.contains(table), "\(table)")
            let (mine, theirs) = (try Self.columns(sandbox, table), try Self.columns(sandbox, table, schema: "fresh"))
            for (column, type) in theirs { #expect(mine[column] == type, "\(table).\(column): \(type) in fresh, \(mine[column] ?? "missing") synced") }
            #expect(try Self.checksum(sandbox, table, columns: Array(theirs.keys)) == Self.checksum(sandbox, table, columns: Array(theirs.keys), schema: "fresh"),
                    "\(table) equals the fresh snapshot's")
            for extra in Set(mine.keys).subtracting(theirs.keys) {
                #expect(try Self.rows(sandbox, "SELECT count(\"\(extra)\") FROM \"\(table)\"") == [["0"]], "\(table).\(extra) holds nothing the source has")
            }
        }
    }

    @Test func twoWorkersMeetingTheSameNewFieldsInBothPartitionsEvolveOneMappingInForce() throws {
        let sandbox = try Sandbox()
        try Customers.insert(sandbox, Customers.plainIds)
        let file = sandbox.stateDirectory + "-customers.json"
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try sandbox.job("init", ["--collection", Customers.collection, "--sample", "50", "--output", file]).status == 0)
        // In both halves of the _ids: the same new scalar, object, array of objects, child key and variant.
        let both = Array(stride(from: 1, to: 400, by: 6))
        let extra = both.map { i -> BSONDocument in
            let doc = BSONDocument()
            let w = doc.writer
            w.append("_id", Int32(i))
            w.append("name", "c\(i)")
            if i % 5 == 0 { w.append("age", "s\(i)") } else { w.append("age", Int32(i)) }
            w.appendArray("items") { $0.appendDocument("0") { $0.append("sku", "s"); $0.append("qty", Int32(1)); $0.append("color", "k\(i)") } }
            w.append("loyalty", Int32(i))
            w.appendDocument("address") { $0.append("city", "C\(i)") }
            w.appendArray("orders") { $0.appendDocument("0") { $0.append("number", Int32(i)) } }
            return doc
        }
        try sandbox.mongo.collection(database: sandbox.mongoDatabase, name: Customers.collection).insertMany(extra)
        let total = Customers.plainIds.count + both.count

        defer { for n in ["a", "b", "none"] { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-" + n) } }
        func worker(_ name: String) throws -> RunningJob {
            try sandbox.launch(["worker", "--partitions", "2", "--mapping", file, "--batch-size", "20", "--postgres-url", sandbox.postgresURL,
                                "--mongodb-url", Services.mongoURL, "--target-schema", "parts", "--state-dir", sandbox.stateDirectory + "-" + name])
        }
        let (a, b) = (try worker("a"), try worker("b"))
        let (ra, rb) = (try a.wait(), try b.wait())
        #expect(ra.status == 0 && rb.status == 0, "\(ra.stderr)\n\(rb.stderr)")
        let partitions = try PartitionTests.partitions(sandbox, schema: "parts")
        #expect(partitions.parts.count == 2 && partitions.parts.allSatisfy { $0["state"] as? String == "done" && ($0["documents"] as? Int ?? 0) > 0 },
                "both partitions loaded: \(partitions.parts)")
        #expect(partitions.job["finished"] as? Bool == true)

        #expect(try Self.dataTables(sandbox, schema: "parts") == ["customers", "customers_items", "customers_orders"])
        #expect(try Self.columns(sandbox, "customers", schema: "parts") == [
            "id": "integer", "name": "text", "age": "integer", "age__text": "text", "loyalty": "integer", "address_city": "text",
        ], "each new column once, no second variant")
        #expect(try Self.columns(sandbox, "customers_items", schema: "parts") == ["customers_id": "integer", "position": "integer", "sku": "text", "qty": "integer", "color": "text"])
        #expect(try Self.columns(sandbox, "customers_orders", schema: "parts") == ["customers_id": "integer", "position": "integer", "number": "integer"])
        try Self.expectConsistentVersions(sandbox, schema: "parts")
        #expect(try Self.rows(sandbox, "SELECT count(*), count(loyalty), count(address_city), count(age__text) FROM parts.customers")
            == [["\(total)", "\(both.count)", "\(both.count)", "\(both.filter { $0 % 5 == 0 }.count)"]])
        #expect(try Self.rows(sandbox, "SELECT count(*), count(color) FROM parts.customers_items WHERE customers_id % 2 = 1") == [["\(both.count)", "\(both.count)"]])
        #expect(try Self.rows(sandbox, "SELECT count(*) FROM parts.customers_orders") == [["\(both.count)"]])
        let ledger = try Self.unmapped(sandbox, schema: "parts")
        #expect(Set(ledger.keys) == ["loyalty", "address", "orders", "items[].color", "age"], "\(ledger)")
        #expect(ledger.values.allSatisfy { $0.outcome.hasPrefix("evolved into ") && $0.documents >= 1 }, "\(ledger)")

        let verified = try sandbox.run(["verify", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL, "--target-schema", "parts",
                                        "--state-dir", sandbox.stateDirectory + "-none"])
        #expect(verified.status == 0, "\(verified.stdout)\(verified.stderr)")
    }

    // MARK: the users pipeline

    @Test func theUsersPipelineRefusesEvolveAndKeepAndRecordsAnExtraFieldAsDropped() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 60)
        for policy in ["evolve", "keep"] {
            let refused = try sandbox.job("start", ["--unmapped", policy])
            #expect(refused.status == 64, "\(refused.stderr)")
            #expect(refused.stderr.split(separator: "\n").count == 1
                && refused.stderr.contains("the users pipeline cannot follow the unmapped-field policy '\(policy)'"), "\(refused.stderr)")
            #expect(!FileManager.default.fileExists(atPath: sandbox.stateDirectory), "nothing written")
        }
        // Fields the 15 tables do not name: at the top, inside an object, inside array entries.
        let command = BSONDocument()
        command.writer.append("update", "users")
        command.writer.appendArray("updates") { updates in
            updates.appendDocument("0") { u in
                u.appendDocument("q") { $0.append("_id", Int64(3)) }
                u.appendDocument("u") { $0.appendDocument("$set") { $0.appendDocument("vip") { $0.append("level", Int32(3)) }; $0.append("profile.nickname", "Trey") } }
            }
            updates.appendDocument("1") { u in
                u.appendDocument("q") { $0.append("_id", Int64(5)) }
                u.appendDocument("u") { $0.appendDocument("$set") { $0.appendDocument("vip") { $0.append("level", Int32(1)) } } }
            }
        }
        try sandbox.mongo.runCommand(command, database: sandbox.mongoDatabase)
        let started = try sandbox.job("start", ["--batch-size", "20"])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(started.stdout.contains("documents loaded  60"), "dropped, the documents load: \(started.stdout)")
        #expect(try Self.unmapped(sandbox, pipeline: "users").mapValues { "\($0.documents) \($0.types) \($0.outcome)" } == [
            "vip": "2 object dropped", "profile.nickname": "1 string dropped",
        ])
        let verify = try sandbox.job("verify")
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        #expect(verify.stdout.contains("documents with fields left out by the drop policy: 2 (profile.nickname, vip)"), "\(verify.stdout)")

        // With set-aside, the same two documents are set aside naming the field.
        let aside = try sandbox.run(["start", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL, "--database", sandbox.mongoDatabase,
                                     "--target-schema", "aside", "--unmapped", "set-aside", "--max-set-aside", "2", "--state-dir", sandbox.stateDirectory + "-aside"])
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-aside") }
        #expect(aside.status == 0, "\(aside.stderr)")
        #expect(try Self.rows(sandbox, "SELECT count(*) FROM aside.users") == [["58"]])
    }
}
