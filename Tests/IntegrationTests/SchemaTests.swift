import Foundation
import Postgres
import Testing
import DurableETL
import TestSupport
import Users
import UsersFixtures

@Suite(.serialized) struct SchemaTests {
    /// DATA.md's tables, written out independently of Schema.swift.
    static let expected: [String: [String]] = [
        "users": ["id bigint", "username character varying", "email character varying", "first_name character varying",
                  "last_name character varying", "age integer", "created_at timestamp with time zone", "updated_at timestamp with time zone"],
        "addresses": ["id bigint", "user_id bigint", "street character varying", "city character varying", "state character varying",
                      "zip_code character varying", "country character varying", "coordinates jsonb"],
        "profiles": ["id bigint", "user_id bigint", "bio character varying", "interests jsonb", "skills jsonb"],
        "education": ["id bigint", "profile_id bigint", "institution character varying", "degree character varying", "year integer",
                      "description character varying"],
        "experience": ["id bigint", "profile_id bigint", "company character varying", "position character varying",
                       "duration character varying", "description character varying"],
        "preferences": ["id bigint", "user_id bigint", "language character varying", "timezone character varying", "notifications jsonb"],
        "settings": ["id bigint", "preference_id bigint", "key character varying", "value character varying",
                     "timestamp timestamp with time zone", "metadata character varying"],
        "activity_log": ["id bigint", "user_id bigint", "key character varying", "value character varying",
                         "timestamp timestamp with time zone", "metadata character varying"],
        "transactions": ["id bigint", "user_id bigint", "key character varying", "value character varying",
                         "timestamp timestamp with time zone", "metadata character varying"],
        "messages": ["id character varying", "user_id bigint", "from character varying", "to character varying",
                     "subject character varying", "body character varying", "timestamp timestamp with time zone", "read boolean"],
        "attachments": ["id bigint", "message_id character varying", "name character varying", "size integer", "file_type character varying"],
        "social_media": ["id bigint", "user_id bigint", "connections jsonb"],
        "posts": ["id bigint", "social_media_id bigint", "key character varying", "value character varying",
                  "timestamp timestamp with time zone", "metadata character varying"],
        "groups": ["id character varying", "social_media_id bigint", "name character varying", "joined timestamp with time zone"],
        "large_data": ["id bigint", "user_id bigint", "blob1 character varying", "blob2 character varying", "blob3 character varying",
                       "blob4 character varying", "blob5 character varying"],
    ]

    static let parents: [String: String] = [
        "addresses": "user_id -> users", "profiles": "user_id -> users", "education": "profile_id -> profiles",
        "experience": "profile_id -> profiles", "preferences": "user_id -> users", "settings": "preference_id -> preferences",
        "activity_log": "user_id -> users", "transactions": "user_id -> users", "messages": "user_id -> users",
        "attachments": "message_id -> messages", "social_media": "user_id -> users", "posts": "social_media_id -> social_media",
        "groups": "social_media_id -> social_media", "large_data": "user_id -> users",
    ]

    @Test func migrateCreatesExactlyTheFifteenTablesWithTheirColumnsAndKeys() throws {
        let sandbox = try Sandbox()
        let result = try sandbox.job("migrate")
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("applied 8 migration"), "the engine's checkpoints (and their columns for changes), its writers, its partitions (and their change stream start), its mappings in force and unmapped fields, the users tables and their unique columns")
        let db = try sandbox.db()
        let tables = try db.execute("""
            SELECT table_name FROM information_schema.tables
            WHERE table_schema = 'public' AND table_name NOT LIKE 'etl\\_%' ORDER BY 1
            """).rows.map { $0[0]! }
        #expect(tables == Self.expected.keys.sorted())
        for (table, columns) in Self.expected {
            let actual = try db.query("""
                SELECT column_name || ' ' || data_type, is_nullable FROM information_schema.columns
                WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position
                """, [table]).rows
            #expect(actual.map { $0[0]! } == columns, "\(table)")
            #expect(actual.allSatisfy { $0[1] == "NO" }, "\(table): every column NOT NULL")
            let primaryKey = try db.query("""
                SELECT a.attname FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
                WHERE c.conrelid = $1::regclass AND c.contype = 'p'
                """, ["\"\(table)\""]).rows.map { $0[0]! }
            #expect(primaryKey == ["id"], "\(table)")
            let foreignKeys = try db.query("""
                SELECT a.attname || ' -> ' || c.confrelid::regclass::text, c.confdeltype FROM pg_constraint c
                JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
                WHERE c.conrelid = $1::regclass AND c.contype = 'f'
                """, ["\"\(table)\""]).rows
            #expect(foreignKeys.map { $0[0]! } == (Self.parents[table].map { [$0] } ?? []), "\(table)")
            #expect(foreignKeys.allSatisfy { $0[1] == "c" }, "\(table): ON DELETE CASCADE")
            let unique = try db.query("""
                SELECT c.conname || ' (' || a.attname || ')' FROM pg_constraint c
                JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
                WHERE c.conrelid = $1::regclass AND c.contype = 'u' ORDER BY 1
                """, ["\"\(table)\""]).rows.map { $0[0]! }
            #expect(unique == (table == "users" ? ["users_email_key (email)", "users_username_key (username)"] : []), "\(table)")
        }
        let bookkeeping = try db.execute("SELECT to_regclass('etl_checkpoints') IS NOT NULL, to_regclass('etl_migrations') IS NOT NULL").rows[0]
        #expect(bookkeeping == ["t", "t"])
    }

    @Test func migrateIsIdempotent() throws {
        let sandbox = try Sandbox()
        #expect(try sandbox.job("migrate").status == 0)
        let second = try sandbox.job("migrate")
        #expect(second.status == 0)
        #expect(second.stdout.contains("schema is up to date"))
        #expect(try sandbox.db().execute("SELECT pipeline || ':' || version FROM etl_migrations ORDER BY 1").rows.map { $0[0]! }
            == ["etl-job:1", "etl-job:2", "etl-job:3", "etl-job:4", "etl-job:5", "etl-job:6", "users:1", "users:2"])
    }

    /// A target and a state directory left by etl-job 0.1 (bookkeeping without a pipeline
    /// column, a queue at the top of the state directory): `start` refuses the old queue,
    /// `start --fresh` discards it, and the bookkeeping is upgraded to the users pipeline's.
    @Test func aTargetAndStateOfVersion01AreUpgradedOrRefusedNeverMisread() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 50)
        #expect(try sandbox.job("migrate").status == 0)
        try sandbox.db().execute("""
            DROP TABLE etl_migrations, etl_checkpoints, etl_writers, etl_partitions, etl_partitioned_jobs, etl_mappings, etl_unmapped;
            CREATE TABLE etl_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
            INSERT INTO etl_migrations (version, name) VALUES (1, '15 users tables and checkpoints');
            CREATE TABLE etl_checkpoints (job_id text NOT NULL, batch_id bigint NOT NULL, documents_loaded integer NOT NULL,
                rows jsonb NOT NULL, set_aside jsonb NOT NULL, committed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (job_id, batch_id));
            INSERT INTO etl_checkpoints (job_id, batch_id, documents_loaded, rows, set_aside) VALUES ('old', 1, 0, '{}', '[]');
            """)
        try FileManager.default.createDirectory(atPath: sandbox.stateDirectory, withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: sandbox.stateDirectory + "/data.mdb", contents: Data(count: 8192)))
        let refused = try sandbox.job("start")
        #expect(refused.status == 64 && refused.stderr.contains("holds a queue of etl-job 0.1"), "\(refused.stderr)")
        let fresh = try sandbox.job("start", ["--fresh", "--yes"])
        #expect(fresh.status == 0, "\(fresh.stderr)")
        #expect(!FileManager.default.fileExists(atPath: sandbox.stateDirectory + "/data.mdb"))
        let db = try sandbox.db()
        #expect(try db.execute("SELECT pipeline || ':' || version FROM etl_migrations ORDER BY 1").rows.map { $0[0]! } == ["etl-job:1", "etl-job:2", "etl-job:3", "etl-job:4", "etl-job:5", "etl-job:6", "users:1", "users:2"])
        #expect(try db.execute("SELECT DISTINCT pipeline FROM etl_checkpoints").rows.map { $0[0]! } == ["users"])
        #expect(try sandbox.counts()["users"] == 50)
        #expect(try sandbox.job("verify").status == 0)
    }

    /// A target whose users tables an earlier version made (no UNIQUE on username and email):
    /// `start` adds the constraints when the rows allow it, and otherwise refuses in one line,
    /// exit 70, naming the values more than one user has, changing nothing.
    @Test func uniqueUsernameAndEmailAreAddedToAnEarlierTargetOnlyWhenItsRowsAllowIt() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 40)
        #expect(try sandbox.job("start").status == 0)
        let db = try sandbox.db()
        func makeEarlier() throws {
            try db.execute("""
                ALTER TABLE users DROP CONSTRAINT users_username_key, DROP CONSTRAINT users_email_key;
                DELETE FROM etl_migrations WHERE pipeline = 'users' AND version = 2
                """)
        }
        try makeEarlier()
        try db.execute("UPDATE users SET username = 'twin', email = 'twin@example.com' WHERE id IN (3, 5)")
        let other = ["--target-schema", "public", "--state-dir", sandbox.stateDirectory + "-2"]
        let refused = try sandbox.job("migrate", other)
        #expect(refused.status == 70, "\(refused.stderr)")
        #expect(refused.stderr.split(separator: "\n").count == 1, "\(refused.stderr)")
        #expect(refused.stderr.contains("users.username holds values that more than one user has ('twin')"), "\(refused.stderr)")
        #expect(try db.execute("SELECT count(*) FROM users WHERE username = 'twin'").rows[0][0] == "2", "no row changed")
        #expect(try db.execute("SELECT count(*) FROM etl_migrations WHERE pipeline = 'users' AND version = 2").rows[0][0] == "0")
        try db.execute("UPDATE users SET username = 'twin' || id, email = 'twin' || id || '@example.com' WHERE id IN (3, 5)")
        let added = try sandbox.job("migrate", other)
        #expect(added.status == 0, "\(added.stderr)")
        #expect(try db.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'users'::regclass AND contype = 'u'").rows[0][0] == "2")
    }

    /// `start --dry-run` checks everything a start checks and prints what it would do, writing
    /// nothing: no state directory, no schema, no table, no row emptied; a refusal is the one
    /// a start gives, with its exit code.
    @Test func aDryRunPrintsThePlanAndWritesNothing() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 30)
        let schema = ["--target-schema", "dry"]
        let planned = try sandbox.job("start", schema + ["--dry-run"])
        #expect(planned.status == 0, "\(planned.stderr)")
        for expected in ["dry run of start; nothing was written", "migrate     checkpoints;", "users tables; users unique username and email",
                         "none exists yet; the migration creates them", "load        30 documents from the collection"] {
            #expect(planned.stdout.contains(expected), "\(expected): \(planned.stdout)")
        }
        #expect(!FileManager.default.fileExists(atPath: sandbox.stateDirectory), "no state directory")
        #expect(try sandbox.db().execute("SELECT to_regnamespace('dry') IS NULL").rows[0][0] == "t", "no schema")

        #expect(try sandbox.job("start").status == 0)
        let refused = try sandbox.job("start", ["--dry-run"])
        #expect(refused.status == 64 && refused.stderr.contains("already finished"), "\(refused.stderr)")
        let fresh = try sandbox.job("start", ["--dry-run", "--fresh"])
        #expect(fresh.status == 0, "\(fresh.stderr)")
        #expect(fresh.stdout.contains("discard     the job in") && fresh.stdout.contains("empty       the 15 tables of users"), "\(fresh.stdout)")
        #expect(fresh.stdout.contains("migrate     nothing: the schema is up to date"), "\(fresh.stdout)")
        #expect(try sandbox.counts()["users"] == 30, "nothing emptied")
        #expect(try sandbox.status()["complete"] as? Bool == true, "the job is still there")
    }

    /// Killed after the run named its pipelines and before the queue recorded the job: status
    /// says so, and resume starts the job on the source and schema the start was given.
    @Test func aRunKilledBeforeItsQueueRecordedTheJobIsStartedByResume() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 120)
        let killed = try sandbox.job("start", ["--target-schema", "planned"], environment: ["ETL_CRASH_AT": "planned"])
        #expect(killed.signaled, "\(killed.stderr)")
        let status = try sandbox.job("status")
        #expect(status.status == 0 && status.stdout.contains("not started: the run was stopped before this pipeline recorded its job"), "\(status.stdout)\(status.stderr)")
        #expect(try sandbox.status()["job"] is NSNull)
        let resumed = try sandbox.run(["resume", "--postgres-url", sandbox.postgresURL, "--mongodb-url", Services.mongoURL,
                                       "--state-dir", sandbox.stateDirectory])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try sandbox.counts(schema: "planned")["users"] == 120)
        #expect(try sandbox.job("verify").status == 0)
    }

    /// Another schema (a name that needs quoting), a kill mid-COPY, a resume that takes the
    /// recorded schema: exactly the rows of an uninterrupted run, and nothing in public.
    @Test func usersLoadIntoAnotherSchemaThroughKillAndResume() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 600)
        let schema = "Staging Area"
        let killed = try sandbox.job("start", ["--target-schema", schema, "--batch-size", "100"], environment: ["ETL_CRASH_AT": "copied:3"])
        #expect(killed.signaled, "\(killed.stderr)")
        let resumed = try sandbox.job("resume")
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let straightState = sandbox.stateDirectory + "-straight"
        defer { try? FileManager.default.removeItem(atPath: straightState) }
        var arguments = sandbox.connectionArguments
        arguments[arguments.firstIndex(of: "--state-dir")! + 1] = straightState
        let straight = try sandbox.run(["start"] + arguments + ["--target-schema", "straight"])
        #expect(straight.status == 0, "\(straight.stderr)")
        #expect(try sandbox.checksums(schema: schema) == (try sandbox.checksums(schema: "straight")))
        #expect(try sandbox.counts(schema: schema)["users"] == 600)
        #expect(try sandbox.tableCount() == 0, "nothing is written to public")
        #expect(try sandbox.job("verify").status == 0, "verify takes the recorded schema")
        let other = try sandbox.job("status", ["--target-schema", "public"])
        #expect(other.status == 64 && other.stderr.contains("target schema is 'public' but the job was started on 'Staging Area'"), "\(other.stderr)")
    }
}

@Suite(.serialized) struct ConnectivityTests {
    @Test(arguments: ["start", "verify", "migrate"])
    func aWrongPostgresPortIsOneClearLineWithoutThePassword(command: String) throws {
        let sandbox = try Sandbox()
        let result = try sandbox.run([command, "--postgres-url", "postgresql://etl:TopSecret42@127.0.0.1:1/etl",
                                      "--mongodb-url", Services.mongoURL, "--state-dir", sandbox.stateDirectory])
        #expect(result.status == 69)
        #expect(result.seconds < 10)
        #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        #expect(result.stderr.hasPrefix("etl-job: error: cannot connect to PostgreSQL at postgresql://etl:***@127.0.0.1:1/etl"))
        #expect(!(result.stdout + result.stderr).contains("TopSecret42"))
    }

    @Test(arguments: ["start", "seed"])
    func aWrongMongoPortIsOneClearLineWithoutThePassword(command: String) throws {
        let sandbox = try Sandbox()
        let result = try sandbox.run([command, "--postgres-url", sandbox.postgresURL,
                                      "--mongodb-url", "mongodb://admin:TopSecret42@127.0.0.1:1/?authSource=admin",
                                      "--state-dir", sandbox.stateDirectory])
        #expect(result.status == 69)
        #expect(result.seconds < 10)
        #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        #expect(result.stderr.hasPrefix("etl-job: error: cannot reach MongoDB at mongodb://admin:***@127.0.0.1:1/"))
        #expect(!(result.stdout + result.stderr).contains("TopSecret42"))
    }

    @Test(arguments: [
        (["--mongodb-url", "http://u:TopSecret42@h"], "malformed MongoDB URL http://u:***@h"),
        (["--postgres-url", "mysql://u:TopSecret42@h/db"], "malformed PostgreSQL URL mysql://u:***@h/db"),
        (["--postgres-url", "postgresql://u:TopSecret42@h:notaport/db"], "malformed PostgreSQL URL postgresql://u:***@h:notaport/db"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--workers", "many"], "many"),
    ])
    func badFlagsAndURLsExit64WithOneLine(arguments: [String], message: String) throws {
        let sandbox = try Sandbox()
        let result = try sandbox.run(["start", "--state-dir", sandbox.stateDirectory] + arguments)
        #expect(result.status == 64, "\(result.stderr)")
        // One line of error; a flag the parser refuses adds where help is.
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1 || (lines.count == 2 && lines[1] == "See 'etl-job start --help'."), "\(result.stderr)")
        #expect(result.stderr.contains(message), "\(result.stderr)")
        #expect(!result.stderr.contains("TopSecret42"))
    }

    @Test func theEnvironmentAndDotEnvAreUsedInThatOrderAfterFlags() throws {
        let sandbox = try Sandbox()
        let dotenv = sandbox.stateDirectory + ".env"
        try "POSTGRES_URL=postgresql://etl:FromDotEnv@127.0.0.1:2/etl\nMONGODB_URL=\"\(Services.mongoURL)\"\n"
            .write(toFile: dotenv, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: dotenv) }
        let base = ["migrate", "--env-file", dotenv]
        let fromFile = try sandbox.run(base)
        #expect(fromFile.stderr.contains("127.0.0.1:2/etl"), "\(fromFile.stderr)")
        let fromEnv = try sandbox.run(base, environment: ["POSTGRES_URL": "postgresql://etl:FromEnv@127.0.0.1:3/etl"])
        #expect(fromEnv.stderr.contains("127.0.0.1:3/etl"), "\(fromEnv.stderr)")
        let fromFlag = try sandbox.run(base + ["--postgres-url", sandbox.postgresURL],
                                       environment: ["POSTGRES_URL": "postgresql://etl:FromEnv@127.0.0.1:3/etl"])
        #expect(fromFlag.status == 0, "\(fromFlag.stderr)")
        #expect(!(fromFile.stderr + fromEnv.stderr).contains("FromDotEnv") && !fromEnv.stderr.contains("FromEnv@"))
    }

    @Test func aMissingServiceIsAFailureNotASkip() {
        #expect(throws: Services.Missing.self) { try Services.postgres("postgresql://etl:etl@127.0.0.1:1/etl") }
        #expect(throws: Services.Missing.self) { try Services.mongo("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500") }
    }
}

@Suite(.serialized) struct SeedTests {
    @Test func seedStoresExactlyTheGeneratorsDocuments() throws {
        let sandbox = try Sandbox()
        let result = try sandbox.run(["seed", "--users", "300", "--seed", "7", "--drop", "--database", sandbox.mongoDatabase,
                                      "--mongodb-url", Services.mongoURL])
        #expect(result.status == 0, "\(result.stderr)")
        let generator = UserGenerator(seed: 7)
        let cursor = try sandbox.users.scanById(afterIdElement: nil, batchSize: 100)
        var id: Int64 = 0
        while let doc = try cursor.next() {
            id += 1
            #expect(Array(doc) == generator.document(id: id).bytes, "user \(id)")
        }
        #expect(id == 300)
        // --drop makes a second seed replace, not add.
        #expect(try sandbox.run(["seed", "--users", "10", "--drop", "--database", sandbox.mongoDatabase, "--mongodb-url", Services.mongoURL]).status == 0)
        #expect(try sandbox.users.estimatedCount() == 10)
    }
}
