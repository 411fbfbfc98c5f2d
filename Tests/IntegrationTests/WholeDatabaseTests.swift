import Foundation
import Mongo
import TestSupport
import Testing
import UsersFixtures

/// A whole database in one command: `init` writes a mapping per collection, `start --mappings`
/// runs a directory of them, `start --all-collections` and `start --source-dump` infer what no
/// file names; each collection is a pipeline of one job, resumable and verifiable as any.
@Suite(.serialized) struct WholeDatabaseTests {
    static let tables = ["orders", "orders_items", "orders_items_parts", "bios"]

    /// A biography: a `name` whose `aka` one in ten has, and (`born`) a birth date.
    static func bio(_ i: Int, born: Bool = true) -> BSONDocument {
        let doc = BSONDocument()
        doc.writer.append("_id", Int32(i))
        doc.writer.appendDocument("name") { n in
            n.append("first", "F\(i)")
            n.append("last", "L\(i)")
            if i % 10 == 3 { n.append("aka", "A\(i)") }
        }
        if born { doc.writer.append("born", dateTimeMillis: -1_000_000_000_000 + Int64(i) * 86_400_000) }
        return doc
    }

    /// orders (200) and bios (60) in the sandbox's database, and an empty collection.
    static func seed(_ sandbox: Sandbox) throws -> (orders: [BSONDocument], bios: [BSONDocument]) {
        var rng = SplitMix64(seed: 7)
        let orders = (0..<200).map { Orders.document($0, rng: &rng) }
        try Orders.insert(sandbox, orders)
        let bios = (0..<60).map { bio($0) }
        try sandbox.mongo.collection(database: sandbox.mongoDatabase, name: "bios").insertMany(bios)
        let create = BSONDocument()
        create.writer.append("create", "empty")
        try sandbox.mongo.runCommand(create, database: sandbox.mongoDatabase)
        return (orders, bios)
    }

    /// `root/<database>/orders.bson`, `bios.bson.gz` (gzip), a system collection, and an
    /// `admin` database as mongodump of a whole server writes it.
    static func dump(_ sandbox: Sandbox, at root: String, orders: [BSONDocument], bios: [BSONDocument]) throws {
        let database = root + "/" + sandbox.mongoDatabase
        try FileManager.default.createDirectory(atPath: database, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/admin", withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: database + "/orders.bson", contents: Data(orders.flatMap(\.bytes))))
        #expect(FileManager.default.createFile(atPath: database + "/bios.bson", contents: Data(bios.flatMap(\.bytes))))
        let gzip = Process()
        gzip.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        gzip.arguments = ["gzip", database + "/bios.bson"]
        try gzip.run()
        gzip.waitUntilExit()
        #expect(gzip.terminationStatus == 0)
        let view = BSONDocument()
        view.writer.append("_id", "\(sandbox.mongoDatabase).recent")
        #expect(FileManager.default.createFile(atPath: database + "/system.views.bson", contents: Data(view.bytes)))
        #expect(FileManager.default.createFile(atPath: root + "/admin/system.version.bson", contents: Data(view.bytes)))
    }

    @Test func aWholeDatabaseLoadsInOneCommandLiveAndFromADumpDirectory() throws {
        let sandbox = try Sandbox()
        let (orders, bios) = try Self.seed(sandbox)
        let base = sandbox.stateDirectory
        defer { for suffix in ["-mappings", "-dump", "-moved", "-fromdump", "-a", "-b", "-c", "-d"] { try? FileManager.default.removeItem(atPath: base + suffix) } }
        func state(_ name: String, _ schema: String) -> [String] {
            ["--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL, "--database", sandbox.mongoDatabase,
             "--state-dir", base + "-" + name, "--target-schema", schema]
        }

        // init: one mapping per collection, the empty one skipped and said so.
        let mappings = base + "-mappings"
        let wrote = try sandbox.run(["init", "--output-dir", mappings] + state("a", "x"))
        #expect(wrote.status == 0, "\(wrote.stderr)")
        #expect(wrote.stderr.contains("\(sandbox.mongoDatabase).empty is empty"), "\(wrote.stderr)")
        #expect(wrote.stderr.contains("run 'etl-job start --mappings \(mappings)'"), "\(wrote.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: mappings).sorted() == ["bios.json", "orders.json"])
        let written = try String(contentsOfFile: mappings + "/orders.json", encoding: .utf8)
        try "{}".write(toFile: mappings + "/bios.json", atomically: true, encoding: .utf8)
        let again = try sandbox.run(["init", "--output-dir", mappings] + state("a", "x"))
        #expect(again.status == 64 && again.stderr.contains("exist; nothing was written: add --force"), "\(again.stderr)")
        #expect(try String(contentsOfFile: mappings + "/bios.json", encoding: .utf8) == "{}", "nothing overwritten")
        #expect(try sandbox.run(["init", "--output-dir", mappings, "--force"] + state("a", "x")).status == 0)
        #expect(try String(contentsOfFile: mappings + "/orders.json", encoding: .utf8) == written)
        #expect(try String(contentsOfFile: mappings + "/bios.json", encoding: .utf8).contains("\"name_aka\""))

        // Live: the directory of mappings, and every collection inferred, one command each.
        let mapped = try sandbox.run(["start", "--mappings", mappings] + state("a", "mapped"))
        #expect(mapped.status == 0, "\(mapped.stderr)")
        let expected = try sandbox.checksums(tables: Self.tables, schema: "mapped")
        #expect(try sandbox.counts(tables: ["orders", "bios"], schema: "mapped") == ["orders": 200, "bios": 60])
        #expect(try sandbox.run(["verify", "--state-dir", base + "-a", "--postgres-url", sandbox.postgresURL]).status == 0)
        let inferred = try sandbox.run(["start", "--all-collections"] + state("b", "inferred"))
        #expect(inferred.status == 0, "\(inferred.stderr)")
        #expect(inferred.stderr.contains("no mapping names \(sandbox.mongoDatabase).orders: inferred one"), "\(inferred.stderr)")
        #expect(try sandbox.checksums(tables: Self.tables, schema: "inferred") == expected)
        // The inferred pipelines are the job's: sync applies the collections' changes with them.
        try sandbox.mongo.collection(database: sandbox.mongoDatabase, name: "bios").insertMany((60..<65).map { Self.bio($0) })
        let synced = try sandbox.run(["sync"] + state("b", "inferred"))
        #expect(synced.status == 0, "\(synced.stderr)")
        #expect(try sandbox.counts(tables: ["bios"], schema: "inferred") == ["bios": 65])
        #expect(try sandbox.run(["verify"] + state("b", "inferred")).status == 0)

        // A dump directory with the mappings, killed and resumed from where the dump moved to.
        let dump = base + "-dump"
        try Self.dump(sandbox, at: dump, orders: orders, bios: bios)
        let killed = try sandbox.run(["start", "--source-dump", dump, "--mappings", mappings, "--batch-size", "40"] + state("c", "dumped"),
                                     environment: ["ETL_CRASH_AT": "committed:2"])
        #expect(killed.signaled, "\(killed.stderr)")
        try FileManager.default.moveItem(atPath: dump, toPath: base + "-moved")
        let resumed = try sandbox.run(["resume", "--source-dump", base + "-moved", "--state-dir", base + "-c", "--postgres-url", sandbox.postgresURL])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try sandbox.checksums(tables: Self.tables, schema: "dumped") == expected)
        let verified = try sandbox.run(["verify", "--state-dir", base + "-c", "--source-dump", base + "-moved", "--postgres-url", sandbox.postgresURL])
        #expect(verified.status == 0, "\(verified.stdout)\(verified.stderr)")
        let status = try JSON.object(try sandbox.run(["status", "--json", "--state-dir", base + "-c"]).stdout)
        let files = ((status["pipelines"] as? [[String: Any]]) ?? []).compactMap { $0["sourceFile"] as? String }.sorted()
        #expect(files == ["\(base)-dump/\(sandbox.mongoDatabase)/bios.bson.gz", "\(base)-dump/\(sandbox.mongoDatabase)/orders.bson"], "each pipeline its file, as recorded: \(status)")

        // The dump alone: init writes what the live database gave, start infers the same tables.
        let fromDump = base + "-fromdump"
        let dumpedInit = try sandbox.run(["init", "--source-dump", base + "-moved", "--output-dir", fromDump])
        #expect(dumpedInit.status == 0, "\(dumpedInit.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: fromDump).sorted() == ["bios.json", "orders.json"], "system collections and admin left out")
        let alone = try sandbox.run(["start", "--source-dump", base + "-moved", "--postgres-url", sandbox.postgresURL, "--state-dir", base + "-d", "--target-schema", "alone"])
        #expect(alone.status == 0, "\(alone.stderr)")
        #expect(try sandbox.checksums(tables: Self.tables, schema: "alone") == expected)
    }

    @Test func wholeDatabaseRefusalsAreOneLineWithTheirExitCodes() throws {
        let sandbox = try Sandbox()
        let base = sandbox.stateDirectory
        defer { for suffix in ["-two", "-m", "-none"] { try? FileManager.default.removeItem(atPath: base + suffix) } }
        let target = ["--postgres-url", sandbox.postgresURL, "--state-dir", base]
        for database in ["shop", "crm"] {
            try FileManager.default.createDirectory(atPath: "\(base)-two/\(database)", withIntermediateDirectories: true)
            #expect(FileManager.default.createFile(atPath: "\(base)-two/\(database)/orders.bson", contents: Data(Orders.document(1).bytes)))
        }
        try FileManager.default.createDirectory(atPath: base + "-none", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: base + "-m", withIntermediateDirectories: true)
        func refused(_ arguments: [String], _ code: Int32, _ text: String) throws {
            let result = try sandbox.run(arguments)
            #expect(result.status == code && result.stderr.contains(text), "\(arguments): \(result.status) \(result.stderr)")
            #expect(result.stderr.hasPrefix("etl-job: error: ") && !result.stderr.contains("\n etl-job"), "the error first: \(result.stderr)")
        }
        try refused(["start", "--source-dump", base + "-absent"] + target, 66, "no such directory")
        try refused(["start", "--source-dump", base + "-two"] + target, 64, "several databases (crm, shop); choose one with --database")
        try refused(["start", "--source-dump", base + "-two", "--database", "web"] + target, 66, "holds no database web; its databases: crm, shop")
        try refused(["start", "--source-dump", base + "-none"] + target, 66, "holds no collection file")
        try refused(["start", "--source-dump", base + "-two", "--source-file", base + "-two/shop/orders.bson"] + target, 64, "give one")
        try refused(["start", "--mappings", base + "-m"] + target, 64, "holds no mapping file")
        try refused(["start", "--mappings", base + "-absent"] + target, 64, "no such directory")
        try refused(["init", "--database", "shop", "--output", base + "-x.json"], 64, "--output writes one mapping")
        try refused(["start", "--all-collections"] + target, 64, "name the database")

        // A mapping that names a collection the dump lacks; two mappings writing one table.
        let mapping = #"{"formatVersion": 1, "source": {"database": "shop", "collection": "NAME"}, "table": "TABLE", "columns": [{"field": "_id", "column": "id", "type": "integer", "key": true}]}"#
        func write(_ file: String, _ collection: String, _ table: String) throws {
            try mapping.replacingOccurrences(of: "NAME", with: collection).replacingOccurrences(of: "TABLE", with: table)
                .write(toFile: base + "-m/" + file, atomically: true, encoding: .utf8)
        }
        try write("a.json", "clients", "clients")
        try refused(["start", "--source-dump", base + "-two", "--database", "shop", "--mappings", base + "-m"] + target, 66, "holds no collection clients, which the pipeline clients reads; its collections: orders")
        try write("b.json", "customers", "clients")
        try refused(["start", "--mappings", base + "-m"] + target, 64, "the pipelines clients and customers both write the table clients")
        #expect(!FileManager.default.fileExists(atPath: base), "no refusal wrote a state directory")
    }
}
