import Postgres

/// One target table: its columns (the first is the primary key) and its parent, if any.
public struct Table: Sendable {
    public struct Column: Sendable {
        public let name: String
        public let type: String
    }

    public let name: String
    public let columns: [Column]
    /// (column, parent table): a foreign key to the parent's primary key, ON DELETE CASCADE.
    public let parent: (column: String, table: String)?

    init(_ name: String, _ columns: [(String, String)], parent: (String, String)? = nil) {
        self.name = name
        self.columns = columns.map { Column(name: $0.0, type: $0.1) }
        self.parent = parent.map { (column: $0.0, table: $0.1) }
    }

    public var quotedName: String { quote(name) }
    public var quotedColumns: [String] { columns.map { quote($0.name) } }

    var createStatement: String {
        var lines = columns.map { "\(quote($0.name)) \($0.type) NOT NULL" }
        lines.append("PRIMARY KEY (\(quote(columns[0].name)))")
        if let parent {
            lines.append("FOREIGN KEY (\(quote(parent.column))) REFERENCES \(quote(parent.table)) ON DELETE CASCADE")
        }
        return "CREATE TABLE \(quotedName) (\n    " + lines.joined(separator: ",\n    ") + "\n)"
    }
}

func quote(_ identifier: String) -> String { "\"\(identifier)\"" }

/// The 15 tables of shared/DATA.md, in an order that satisfies the foreign keys.
public enum Schema {
    static let v = "varchar", ts = "timestamptz", big = "bigint", int = "integer", json = "jsonb"

    public static let tables: [Table] = [
        Table("users", [("id", big), ("username", v), ("email", v), ("first_name", v), ("last_name", v),
                        ("age", int), ("created_at", ts), ("updated_at", ts)]),
        Table("addresses", [("id", big), ("user_id", big), ("street", v), ("city", v), ("state", v),
                            ("zip_code", v), ("country", v), ("coordinates", json)], parent: ("user_id", "users")),
        Table("profiles", [("id", big), ("user_id", big), ("bio", v), ("interests", json), ("skills", json)],
              parent: ("user_id", "users")),
        Table("education", [("id", big), ("profile_id", big), ("institution", v), ("degree", v), ("year", int),
                            ("description", v)], parent: ("profile_id", "profiles")),
        Table("experience", [("id", big), ("profile_id", big), ("company", v), ("position", v), ("duration", v),
                             ("description", v)], parent: ("profile_id", "profiles")),
        Table("preferences", [("id", big), ("user_id", big), ("language", v), ("timezone", v),
                              ("notifications", json)], parent: ("user_id", "users")),
        Table("settings", [("id", big), ("preference_id", big), ("key", v), ("value", v), ("timestamp", ts),
                           ("metadata", v)], parent: ("preference_id", "preferences")),
        Table("activity_log", [("id", big), ("user_id", big), ("key", v), ("value", v), ("timestamp", ts),
                               ("metadata", v)], parent: ("user_id", "users")),
        Table("transactions", [("id", big), ("user_id", big), ("key", v), ("value", v), ("timestamp", ts),
                               ("metadata", v)], parent: ("user_id", "users")),
        Table("messages", [("id", v), ("user_id", big), ("from", v), ("to", v), ("subject", v), ("body", v),
                           ("timestamp", ts), ("read", "boolean")], parent: ("user_id", "users")),
        Table("attachments", [("id", big), ("message_id", v), ("name", v), ("size", int), ("file_type", v)],
              parent: ("message_id", "messages")),
        Table("social_media", [("id", big), ("user_id", big), ("connections", json)], parent: ("user_id", "users")),
        Table("posts", [("id", big), ("social_media_id", big), ("key", v), ("value", v), ("timestamp", ts),
                        ("metadata", v)], parent: ("social_media_id", "social_media")),
        Table("groups", [("id", v), ("social_media_id", big), ("name", v), ("joined", ts)],
              parent: ("social_media_id", "social_media")),
        Table("large_data", [("id", big), ("user_id", big), ("blob1", v), ("blob2", v), ("blob3", v), ("blob4", v),
                             ("blob5", v)], parent: ("user_id", "users")),
    ]

    public static var tableNames: [String] { tables.map(\.name) }

    /// The job's bookkeeping: one row per committed batch, written in the batch's transaction.
    static let checkpointTable = """
        CREATE TABLE etl_checkpoints (
            job_id text NOT NULL,
            batch_id bigint NOT NULL,
            documents_loaded integer NOT NULL,
            rows jsonb NOT NULL,
            set_aside jsonb NOT NULL,
            committed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (job_id, batch_id)
        )
        """

    /// Migrations in order; each runs once, recorded in `etl_migrations`.
    static let migrations: [(version: Int, name: String, sql: [String])] = [
        (1, "15 users tables and checkpoints", tables.map(\.createStatement) + [checkpointTable]),
    ]

    /// Applies the migrations not yet applied, in one transaction. Returns how many ran.
    @discardableResult
    public static func migrate(_ db: PGConnection) throws -> Int {
        try db.execute("BEGIN")
        do {
            // Serializes concurrent migrations of the same database.
            try db.execute("SELECT pg_advisory_xact_lock(7215829043)")
            // Created only when missing: a user without CREATE rights can still run an up-to-date schema.
            if try db.execute("SELECT to_regclass('etl_migrations') IS NULL").rows[0][0] == "t" {
                try db.execute("""
                    CREATE TABLE etl_migrations (
                        version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())
                    """)
            }
            let applied = Set(try db.execute("SELECT version FROM etl_migrations").rows.compactMap { $0[0].flatMap(Int.init) })
            var ran = 0
            for migration in migrations where !applied.contains(migration.version) {
                for statement in migration.sql { try db.execute(statement) }
                try db.query("INSERT INTO etl_migrations (version, name) VALUES ($1, $2)",
                             [String(migration.version), migration.name])
                ran += 1
            }
            try db.execute("COMMIT")
            return ran
        } catch {
            _ = try? db.execute("ROLLBACK")
            throw error
        }
    }

    /// How information_schema names each column type the tables use.
    static let informationSchemaTypes = [
        "varchar": "character varying", "bigint": "bigint", "integer": "integer",
        "timestamptz": "timestamp with time zone", "jsonb": "jsonb", "boolean": "boolean",
    ]

    /// Every way the target's tables differ from what the pipeline writes: a missing table or
    /// column, a column of another type, an extra NOT NULL column without a default (COPY
    /// cannot fill it). Extra nullable columns are left alone.
    public static func differences(_ db: PGConnection) throws -> [String] {
        let found = try db.query("""
            SELECT table_name, column_name, data_type, is_nullable = 'NO' AND column_default IS NULL
            FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name = ANY($1::text[])
            """, ["{" + tableNames.joined(separator: ",") + "}"]).rows
        var columns: [String: [String: (type: String, required: Bool)]] = [:]
        for row in found {
            columns[row[0]!, default: [:]][row[1]!] = (row[2]!, row[3] == "t")
        }
        var differences: [String] = []
        for table in tables {
            guard let have = columns[table.name] else {
                differences.append("table \(table.name) is missing")
                continue
            }
            for column in table.columns {
                let expected = informationSchemaTypes[column.type] ?? column.type
                guard let actual = have[column.name] else {
                    differences.append("\(table.name).\(column.name) is missing (expected \(expected))")
                    continue
                }
                if actual.type != expected {
                    differences.append("\(table.name).\(column.name) is \(actual.type), expected \(expected)")
                }
            }
            let known = Set(table.columns.map(\.name))
            for (name, extra) in have.sorted(by: { $0.key < $1.key }) where !known.contains(name) && extra.required {
                differences.append("\(table.name).\(name) is an extra NOT NULL column without a default, which the job cannot fill")
            }
        }
        return differences
    }

    /// Empties the 15 tables and the checkpoints (for `start --fresh`).
    public static func truncate(_ db: PGConnection) throws {
        let names = (tables.map(\.quotedName) + ["etl_checkpoints"]).joined(separator: ", ")
        try db.execute("TRUNCATE \(names)")
    }
}
