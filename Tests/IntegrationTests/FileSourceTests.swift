import Foundation
import Mongo
import Testing
import DurableETL
import TestSupport
import Users
import UsersFixtures

/// Mongodump files as the source (`--source-file`), and foreign keys added after the load.
@Suite(.serialized) struct FileSourceTests {
    static let keys = 14

    /// Writes `users` generated users (and the bad-input corpus) as a mongodump file.
    static func dump(_ sandbox: Sandbox, users: Int, name: String = "users.bson", badInput: Bool = false) throws -> String {
        try FileManager.default.createDirectory(atPath: sandbox.stateDirectory + "-files", withIntermediateDirectories: true)
        let path = sandbox.stateDirectory + "-files/" + name
        let result = try Sandbox.runBinary(["seed", "--users", String(users), "--output", path] + (badInput ? ["--bad-input"] : []))
        #expect(result.status == 0, "\(result.stderr)")
        return path
    }

    static func primaryKeysInPlace(_ sandbox: Sandbox, schema: String = "public") throws -> Int {
        Int(try sandbox.db().query("""
            SELECT count(*) FROM pg_constraint WHERE contype = 'p' AND connamespace = $1::regnamespace AND conrelid::regclass::text NOT LIKE '%etl\\_%'
            """, ["\"\(schema)\""]).rows[0][0]!)!
    }

    static func foreignKeysInPlace(_ sandbox: Sandbox, schema: String = "public") throws -> Int {
        Int(try sandbox.db().query("""
            SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated AND connamespace = $1::regnamespace
              AND conrelid::regclass::text NOT LIKE '%etl\\_%'
            """, ["\"\(schema)\""]).rows[0][0]!)!
    }

    @Test func aFileLoadKilledAtEveryStepAndResumedEqualsTheSameDocumentsLoadedFromMongoDB() throws {
        let sandbox = try Sandbox()
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-files") }
        let file = try Self.dump(sandbox, users: 1_200, badInput: true)
        let limits = ["--max-set-aside", "100", "--batch-size", "100"]

        // The reference: the same documents from MongoDB (read back from the file), keys in place throughout.
        // (one by one: the server may refuse some malformed ones, which the file load sets aside)
        let reader = try BSONFileReader(path: file)
        while let bytes = try reader.next() {
            guard let document = bytes.withUnsafeBytes({ BSONDocument(copying: $0) }) else { continue }
            try? sandbox.users.insertMany([document])
        }
        let reference = sandbox.stateDirectory + "-reference"
        defer { try? FileManager.default.removeItem(atPath: reference) }
        let loaded = try sandbox.run(["start", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL,
                                      "--database", sandbox.mongoDatabase, "--state-dir", reference, "--target-schema", "from_mongo",
                                      "--foreign-keys", "during"] + limits)
        #expect(loaded.status == 0, "\(loaded.stderr)")
        #expect(try Self.foreignKeysInPlace(sandbox, schema: "from_mongo") == Self.keys)

        // From the file, killed in each step of a batch and of the final keys, resumed each time.
        let base = ["--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory]
        let kills = ["enqueued:3", "copied:2", "committed:2", "acknowledged:3", "keys", "keysCommitted"]
        var result = try sandbox.run(["start", "--source-file", file] + base + limits, environment: ["ETL_CRASH_AT": kills[0]])
        #expect(result.signaled && result.status == 9, "killed at \(kills[0]): \(result.stderr)")
        for point in kills.dropFirst() {
            result = try sandbox.run(["resume"] + base + limits, environment: ["ETL_CRASH_AT": point])
            #expect(result.signaled && result.status == 9, "killed at \(point): \(result.stderr)")
            if point == "keys" {
                // Killed once the final step's first key committed: each key commits on its own.
                #expect(try Self.foreignKeysInPlace(sandbox) == 0, "the foreign keys come after every primary key")
                let built = try Self.primaryKeysInPlace(sandbox)
                #expect(built > 3 && built < 15, "users, messages and groups keep theirs; of the 12 built at the end, some and not all: \(built)")
                let status = try sandbox.status()
                #expect(status["finished"] as? Bool == false && status["foreignKeysInPlace"] as? Bool == false)
            }
        }
        #expect(try Self.foreignKeysInPlace(sandbox) == Self.keys, "killed after the keys' COMMIT: all of them")
        result = try sandbox.run(["resume"] + base + limits)
        #expect(result.status == 0, "\(result.stderr)")

        #expect(try sandbox.checksums() == sandbox.checksums(schema: "from_mongo"), "row for row the load from MongoDB")
        #expect(try sandbox.duplicateKeys() == 0)
        #expect(try Self.foreignKeysInPlace(sandbox) == Self.keys)
        let status = try sandbox.status()
        #expect(try Self.primaryKeysInPlace(sandbox) == 15)
        #expect(status["finished"] as? Bool == true && status["foreignKeys"] as? String == "keys-after")
        #expect(status["foreignKeysInPlace"] as? Bool == true && status["sourceFile"] as? String == file)
        #expect(status["sourceFileRead"] as? Double == 1 || status["sourceFileRead"] as? Int == 1, "the whole file was read")
        #expect((status["documentsSetAside"] as? Int ?? 0) > 0, "the malformed documents were set aside, whole")
        let verify = try sandbox.run(["verify", "--json"] + base)
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        let keys = try #require((try JSON.object(verify.stdout)["pipelines"] as? [[String: Any]])?.first?["foreignKeys"] as? [String: Any])
        #expect(keys["expected"] as? Int == Self.keys && keys["inPlace"] as? Int == Self.keys)
    }

    @Test func theKeyBuildsSessionSettingsReachPostgreSQLAndAFinalStepThatFailedResumes() throws {
        let sandbox = try Sandbox()
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-files") }
        let file = try Self.dump(sandbox, users: 300)
        let base = ["--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory]
        for (flags, says) in [(["--maintenance-work-mem", "lots"], "--maintenance-work-mem must be a size"),
                              (["--key-connections", "0"], "--key-connections must be at least 1"),
                              (["--maintenance-workers=-1"], "--maintenance-workers must be 0 or more")] {
            let refused = try sandbox.run(["start", "--source-file", file] + base + flags)
            #expect(refused.status == 64 && refused.stderr.contains(says), "\(flags): \(refused.stderr)")
        }
        // Below PostgreSQL's minimum (1 MB): the server refuses the session's setting, so the
        // final step fails after the load, saying why, and the job stays resumable.
        let failed = try sandbox.run(["start", "--source-file", file, "--maintenance-work-mem", "64kB"] + base)
        #expect(!failed.signaled && failed.status == 64, "\(failed.stderr)")
        #expect(failed.stderr.contains("maintenance_work_mem"), "\(failed.stderr)")
        #expect(!failed.stderr.contains("Fatal error") && !failed.stderr.contains("Stack"), "\(failed.stderr)")
        var status = try sandbox.status()
        #expect(status["finished"] as? Bool == false && status["foreignKeysInPlace"] as? Bool == false)
        #expect(status["documentsLoaded"] as? Int == 300)
        #expect(try Self.primaryKeysInPlace(sandbox) == 3 && Self.foreignKeysInPlace(sandbox) == 0)

        let resumed = try sandbox.run(["resume", "--key-connections", "3", "--maintenance-work-mem", "16MB", "--maintenance-workers", "1"] + base)
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stderr.contains("sessions=3"), "\(resumed.stderr)")
        status = try sandbox.status()
        #expect(status["finished"] as? Bool == true && status["foreignKeysInPlace"] as? Bool == true)
        #expect(try Self.primaryKeysInPlace(sandbox) == 15 && Self.foreignKeysInPlace(sandbox) == Self.keys)
        #expect(try sandbox.duplicateKeys() == 0)
        #expect(try sandbox.run(["verify"] + base).status == 0)
    }

    @Test func aCompressedFileLoadsTheSameRowsThroughAKill() throws {
        let sandbox = try Sandbox()
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-files") }
        let plain = try Self.dump(sandbox, users: 600)
        let compressed = try Self.dump(sandbox, users: 600, name: "users.bson.gz")
        let size = { (path: String) in (try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0 }
        #expect(try size(compressed) < size(plain) / 2, "it is compressed")
        let base = ["--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory, "--batch-size", "50"]
        var result = try sandbox.run(["start", "--source-file", plain] + base)
        #expect(result.status == 0, "\(result.stderr)")
        let expected = try sandbox.checksums()
        result = try sandbox.run(["start", "--fresh", "--yes", "--source-file", compressed] + base, environment: ["ETL_CRASH_AT": "committed:4"])
        #expect(result.signaled, "\(result.stderr)")
        result = try sandbox.run(["resume"] + base)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try sandbox.checksums() == expected)
        let verify = try sandbox.run(["verify", "--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }

    @Test func aResumeOnAnotherFileIsRefusedAndOnTheSameFileMovedIsNot() throws {
        let sandbox = try Sandbox()
        let directory = sandbox.stateDirectory + "-files"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = try Self.dump(sandbox, users: 300)
        let base = ["--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory, "--batch-size", "50"]
        let killed = try sandbox.run(["start", "--source-file", file] + base, environment: ["ETL_CRASH_AT": "committed:2"])
        #expect(killed.signaled)

        var bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        bytes[100] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: directory + "/changed.bson"))
        var result = try sandbox.run(["resume", "--source-file", directory + "/changed.bson"] + base)
        #expect(result.status == 64 && result.stderr.contains("source file's first MiB"), "\(result.stderr)")
        bytes[100] ^= 0xFF
        try (bytes + bytes.prefix(1_000)).write(to: URL(fileURLWithPath: directory + "/longer.bson"))
        result = try sandbox.run(["resume", "--source-file", directory + "/longer.bson"] + base)
        #expect(result.status == 64 && result.stderr.contains("source file size"), "\(result.stderr)")
        result = try sandbox.run(["resume"] + base + ["--database", "elsewhere"])
        #expect(result.status == 64 && result.stderr.contains("database is 'elsewhere'"), "\(result.stderr)")

        try FileManager.default.moveItem(atPath: file, toPath: directory + "/moved.bson")
        result = try sandbox.run(["resume"] + base)
        #expect(result.status == 66 && result.stderr.contains("does not exist"), "the recorded path is gone: \(result.stderr)")
        result = try sandbox.run(["resume", "--source-file", directory + "/moved.bson"] + base)
        #expect(result.status == 0, "the same file at another path: \(result.stderr)")
        #expect(try sandbox.counts()["users"] == 300)
    }

    /// From a plain file the queue keeps each batch's extent and checksum, not its bytes: a file
    /// changed beyond its first MiB (so that size and head still match) after the job queued a
    /// batch is caught when the batch is read back, and nothing of it loads.
    @Test func aFileChangedUnderAQueuedBatchStopsTheJobAndLoadsNoneOfIt() throws {
        let sandbox = try Sandbox()
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-files") }
        let file = try Self.dump(sandbox, users: 400)
        let base = ["--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory]
        let run = ["--batch-size", "20", "--max-pending", "100", "--workers", "1"]
        var result = try sandbox.run(["start", "--source-file", file] + base + run, environment: ["ETL_CRASH_AT": "committed:1"])
        #expect(result.signaled)
        #expect(try sandbox.status()["extractionFinished"] as? Bool == true, "every batch is queued")
        let queueSize = try FileManager.default.attributesOfItem(atPath: sandbox.stateDirectory + "/users/data.mdb")[.size] as? Int ?? 0
        let fileSize = try FileManager.default.attributesOfItem(atPath: file)[.size] as? Int ?? 0
        #expect(queueSize < fileSize / 2, "the queue holds extents, not the documents (\(queueSize) bytes for a \(fileSize)-byte file)")

        let handle = try #require(FileHandle(forUpdatingAtPath: file))
        let offset = UInt64(fileSize - 20_000)
        try handle.seek(toOffset: offset)
        let original = try #require(try handle.read(upToCount: 1))
        try handle.seek(toOffset: offset)
        try handle.write(contentsOf: Data([original[0] ^ 0x20]))
        result = try sandbox.run(["resume"] + base)
        #expect(result.status == 65 && result.stderr.contains("changed since the job read it"), "\(result.stderr)")
        let loaded = try sandbox.counts()["users"] ?? 0
        #expect(loaded < 400)

        try handle.seek(toOffset: offset)
        try handle.write(contentsOf: original)
        try handle.close()
        result = try sandbox.run(["resume"] + base)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try sandbox.counts()["users"] == 400)
        #expect(try sandbox.run(["verify"] + base).status == 0)
    }

    @Test func aTruncatedOrDamagedFileIsAnErrorNamingTheOffsetNeverASilentStop() throws {
        let sandbox = try Sandbox()
        let directory = sandbox.stateDirectory + "-files"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = try Self.dump(sandbox, users: 50)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        // Where the last document starts: walk the lengths.
        var offset = 0, last = 0
        while offset < bytes.count {
            last = offset
            offset += Int(bytes[offset]) | Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2]) << 16 | Int(bytes[offset + 3]) << 24
        }
        let base = ["--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory]

        try bytes.prefix(bytes.count - 10).write(to: URL(fileURLWithPath: directory + "/truncated.bson"))
        var result = try sandbox.run(["start", "--source-file", directory + "/truncated.bson"] + base)
        #expect(result.status == 65, "\(result.stderr)")
        #expect(result.stderr.contains("ends inside the document at offset \(last)"), "\(result.stderr)")
        // The job is tied to the file as it is: a whole copy is a new job, not a resume.
        #expect(result.stderr.contains("a whole copy is another source") && !result.stderr.contains("resume"), "\(result.stderr)")
        #expect(try sandbox.status()["finished"] as? Bool != true)
        let scan = try sandbox.run(["scan", "--source-file", directory + "/truncated.bson"])
        #expect(scan.status == 65 && scan.stderr.contains("offset \(last)"), "\(scan.stderr)")

        var damaged = bytes
        damaged[last] = 0x01
        damaged[last + 3] = 0x7F
        try damaged.write(to: URL(fileURLWithPath: directory + "/damaged.bson"))
        result = try sandbox.run(["start", "--fresh", "--yes", "--source-file", directory + "/damaged.bson"] + base)
        #expect(result.status == 65 && result.stderr.contains("no document at offset \(last)"), "\(result.stderr)")

        let gz = try Self.dump(sandbox, users: 50, name: "users.bson.gz")
        let compressed = try Data(contentsOf: URL(fileURLWithPath: gz))
        try compressed.prefix(compressed.count / 2).write(to: URL(fileURLWithPath: directory + "/truncated.bson.gz"))
        result = try sandbox.run(["start", "--fresh", "--yes", "--source-file", directory + "/truncated.bson.gz"] + base)
        #expect(result.status == 65 && result.stderr.contains("truncated"), "\(result.stderr)")

        FileManager.default.createFile(atPath: directory + "/empty.bson", contents: Data())
        result = try sandbox.run(["start", "--fresh", "--yes", "--source-file", directory + "/empty.bson"] + base)
        #expect(result.status == 66 && result.stderr.contains("--allow-empty"), "\(result.stderr)")
        result = try sandbox.run(["start", "--fresh", "--yes", "--source-file", directory + "/missing.bson"] + base)
        #expect(result.status == 66 && result.stderr.contains("does not exist"), "\(result.stderr)")
        for output in [result.stdout, result.stderr] { #expect(!output.contains("Fatal error") && !output.contains("Stack")) }
    }

    /// Documents damaged inside, their framing intact (what other BSON tools refuse as "unknown
    /// BSON type" or "invalid length or type code"): each is set aside naming the byte, with
    /// nothing of it loaded; init learns nothing from them; verify agrees.
    @Test func aDocumentDamagedInsideIsSetAsideNamingTheByteNeverLoadedWithFieldsMissing() throws {
        let sandbox = try Sandbox()
        let directory = sandbox.stateDirectory + "-files"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = try Self.dump(sandbox, users: 200)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
        var starts: [Int] = []
        var offset = 0
        while offset < bytes.count {
            starts.append(offset)
            offset += Int(bytes[offset]) | Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2]) << 16 | Int(bytes[offset + 3]) << 24
        }
        /// Where `pattern` starts inside document `index`, from the document's first byte.
        func locate(_ index: Int, _ pattern: [UInt8]) -> Int {
            (starts[index]..<starts[index + 1]).first { Array(bytes[$0..<($0 + pattern.count)]) == pattern }! - starts[index]
        }
        // _id 1: an element of unknown type in the middle; _id 2: a key that lost its NUL;
        // _id 3: an unknown type inside profile.education[0].
        let age = locate(0, [0x10] + Array("age".utf8) + [0])
        bytes[starts[0] + age] = 0xAA
        let firstName = locate(1, [0x02] + Array("firstName".utf8) + [0])
        bytes[starts[1] + firstName + 10] = UInt8(ascii: "X")
        let year = locate(2, [0x10] + Array("year".utf8) + [0])
        bytes[starts[2] + year] = 0xAA
        let damaged = directory + "/people.bson"
        try Data(bytes).write(to: URL(fileURLWithPath: damaged))

        let mapping = directory + "/users.json"
        let inferred = try sandbox.run(["init", "--source-file", damaged, "--output", mapping])
        #expect(inferred.status == 0, "\(inferred.stderr)")
        #expect(inferred.stderr.contains("3 sampled documents of \(sandbox.name)-files.people are damaged BSON"), "\(inferred.stderr)")
        let text = try String(contentsOfFile: mapping, encoding: .utf8)
        #expect(!text.contains("\"nullable\""), "a damaged document teaches init nothing: every field is in every whole document")

        let base = ["--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory]
        let result = try sandbox.run(["start", "--source-file", damaged, "--max-set-aside", "3"] + base)
        #expect(result.status == 0, "\(result.stderr)")
        let counts = try sandbox.counts()
        #expect(counts["users"] == 197 && counts["addresses"] == 197 && counts["profiles"] == 197)
        #expect(try sandbox.db().execute("SELECT count(*) FROM users WHERE id IN (1, 2, 3)").rows[0][0] == "0", "nothing of a damaged document loads")
        let listed = try sandbox.run(["status", "--rejected", "--json", "--state-dir", sandbox.stateDirectory])
        let documents = try #require((try JSON.object(listed.stdout))["documents"] as? [[String: Any]])
        let reasons = Dictionary(uniqueKeysWithValues: documents.map { ($0["_id"] as! String, $0["reason"] as! String) })
        #expect(reasons["1"]?.hasPrefix("damaged BSON at byte \(age) of the document (after 'lastName')") == true, "\(reasons)")
        #expect(reasons["2"]?.hasPrefix("damaged BSON at byte \(firstName) of the document") == true, "\(reasons)")
        #expect(reasons["3"]?.hasPrefix("damaged BSON at byte \(year) of the document") == true, "\(reasons)")
        #expect(reasons["3"]?.contains("inside 'profile.education[0]'") == true, "\(reasons)")
        let verify = try sandbox.run(["verify"] + base)
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")

        // The inferred mapping sets the same documents aside.
        let mapped = try sandbox.run(["start", "--source-file", damaged, "--mapping", mapping, "--max-set-aside", "3",
                                      "--target-schema", "mapped", "--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory + "-mapped"])
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-mapped") }
        #expect(mapped.status == 0, "\(mapped.stderr)")
        #expect(try sandbox.db().execute("SELECT count(*) FROM mapped.people").rows[0][0] == "197")
    }

    @Test func rowsWithoutTheirParentStopTheFinalKeysStepUntilRemoved() throws {
        let sandbox = try Sandbox()
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-files") }
        let file = try Self.dump(sandbox, users: 200)
        let base = ["--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory]
        var result = try sandbox.run(["start", "--source-file", file] + base, environment: ["ETL_CRASH_AT": "keys"])
        #expect(result.signaled)
        let text = try sandbox.run(["status"] + base)
        #expect(text.stdout.contains("keys         child tables' primary keys and the foreign keys built after the load, when it completes (not in place yet)"), "\(text.stdout)")
        let pending = try sandbox.run(["verify", "--json"] + base)
        #expect(pending.status == 0, "keys the job has yet to add are not a mismatch: \(pending.stdout)")

        // Something else writes a row whose parent is not there.
        try sandbox.db().execute("""
            CREATE TEMP TABLE orphan AS SELECT * FROM addresses LIMIT 1;
            UPDATE orphan SET id = id + 1000000, user_id = 99999999;
            INSERT INTO addresses SELECT * FROM orphan
            """)
        result = try sandbox.run(["resume"] + base)
        #expect(result.status == 65, "\(result.stderr)")
        #expect(result.stderr.contains("addresses_user_id_fkey") && result.stderr.contains("99999999"), "\(result.stderr)")
        #expect(try Self.foreignKeysInPlace(sandbox) == 0, "all the keys or none")
        #expect(try sandbox.status()["finished"] as? Bool == false)

        try sandbox.db().execute("DELETE FROM addresses WHERE user_id = 99999999")
        result = try sandbox.run(["resume"] + base)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try Self.foreignKeysInPlace(sandbox) == Self.keys)
        #expect(try sandbox.run(["status"] + base).stdout.contains("keys         child tables' primary keys and the foreign keys built after the load"))
        #expect(try sandbox.run(["verify"] + base).stdout.contains("foreign keys 14 of 14 in place"))

        // Keys dropped by hand after the job finished: verify says so and fails.
        try sandbox.db().execute("ALTER TABLE posts DROP CONSTRAINT posts_social_media_id_fkey")
        let missing = try sandbox.run(["verify"] + base)
        #expect(missing.status == 65 && missing.stdout.contains("missing: posts(social_media_id) -> social_media"), "\(missing.stdout)")
    }

    @Test func keysDuringTheLoadAreInPlaceWhileItRuns() throws {
        let sandbox = try Sandbox()
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-files") }
        let file = try Self.dump(sandbox, users: 300)
        let base = ["--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory, "--batch-size", "50"]
        var result = try sandbox.run(["start", "--foreign-keys", "during", "--source-file", file] + base, environment: ["ETL_CRASH_AT": "committed:3"])
        #expect(result.signaled)
        #expect(try Self.foreignKeysInPlace(sandbox) == Self.keys)
        result = try sandbox.run(["resume"] + base)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try sandbox.status()["foreignKeys"] as? String == "during")

        result = try sandbox.run(["start", "--fresh", "--yes", "--foreign-keys", "sometimes", "--source-file", file] + base)
        #expect(result.status == 64 && result.stderr.contains("valid modes: after, during"), "\(result.stderr)")
    }

    /// `--keys after` (the default) and `--keys during` give the same rows and set the same
    /// documents aside, for the same reasons: the bad-input corpus (a reused username, email,
    /// message id, group id among them) and an `_id` repeated further on in the file. The
    /// primary keys that follow from `_id` are absent while the load runs and all in place
    /// after it, through a kill inside the final step.
    @Test func keysAfterTheLoadGiveTheSameRowsAndSetAsideAsKeysDuring() throws {
        let sandbox = try Sandbox()
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-files") }
        let original = try Self.dump(sandbox, users: 900, badInput: true)
        // The file again with user 5 repeated at its end (as a second copy of it in a merged dump).
        let reader = try BSONFileReader(path: original)
        var bytes: [UInt8] = []
        var repeated: [UInt8]?
        while let document = try reader.next() {
            bytes += document
            if repeated == nil, document.withUnsafeBytes({ BSONSequence.displayId($0) }) == "5" { repeated = document }
        }
        let file = sandbox.stateDirectory + "-files/repeated.bson"
        #expect(FileManager.default.createFile(atPath: file, contents: Data(bytes + (try #require(repeated)))))
        func load(_ schema: String, _ extra: [String], crash: String? = nil) throws -> JobResult {
            try sandbox.run(["start", "--source-file", file, "--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory + "-" + schema,
                             "--target-schema", schema, "--batch-size", "60", "--max-set-aside", "100"] + extra,
                            environment: crash.map { ["ETL_CRASH_AT": $0] } ?? [:])
        }
        defer { for s in ["during", "after"] { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-" + s) } }
        #expect(try load("during", ["--keys", "during", "--workers", "1"]).status == 0)
        let killed = try load("after", [], crash: "copied:4")
        #expect(killed.signaled, "\(killed.stderr)")
        #expect(try Self.primaryKeysInPlace(sandbox, schema: "after") == 3, "only the keys taken from the documents' data while loading")
        let resumeAfter = ["resume", "--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory + "-after", "--max-set-aside", "100"]
        var result = try sandbox.run(resumeAfter, environment: ["ETL_CRASH_AT": "keys"])
        #expect(result.signaled, "killed inside the final step: \(result.stderr)")
        let built = try Self.primaryKeysInPlace(sandbox, schema: "after")
        #expect(built > 3 && built < 15, "killed after the final step's first key: some of its keys in place, not all (\(built))")
        result = try sandbox.run(resumeAfter)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try Self.primaryKeysInPlace(sandbox, schema: "after") == 15 && Self.primaryKeysInPlace(sandbox, schema: "during") == 15)
        #expect(try sandbox.checksums(schema: "after") == sandbox.checksums(schema: "during"), "row for row")
        func rejected(_ schema: String) throws -> [String] {
            let listed = try JSON.object(try sandbox.run(["status", "--rejected", "--json", "--state-dir", sandbox.stateDirectory + "-" + schema]).stdout)
            return ((listed["documents"] as? [[String: Any]]) ?? []).map { "\($0["_id"] ?? "?"): \($0["reason"] ?? "?")" }.sorted()
        }
        let during = try rejected("during")
        #expect(during.count >= 18 && during.contains { $0.hasPrefix("5: ") && $0.contains("users_pkey") }, "\(during)")
        #expect(try rejected("after") == during)
        let verify = try sandbox.run(["verify", "--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory + "-after"])
        #expect(verify.status == 0 && !verify.stdout.contains("primary keys"), "\(verify.stdout)\(verify.stderr)")
        // verify finds the copy of the repeated _id that was loaded, whichever mode loaded it.
        let verifyDuring = try sandbox.run(["verify", "--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory + "-during"])
        #expect(verifyDuring.status == 0, "\(verifyDuring.stdout)\(verifyDuring.stderr)")
        let status = try sandbox.run(["status", "--state-dir", sandbox.stateDirectory + "-after"])
        #expect(status.stdout.contains("keys         child tables' primary keys and the foreign keys built after the load\n"), "\(status.stdout)")
    }
}
