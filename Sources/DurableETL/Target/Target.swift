import ETLCore
import Foundation
import Logging
import Synchronization
import Postgres

/// The target schema: the pipelines' tables and the engine's own (`etl_migrations`,
/// `etl_checkpoints`), each keyed by pipeline so that several pipelines share one schema.
public struct Target: Sendable {
    public let url: String
    public let schema: String
    /// Sessions a stage of the run is done with, which the next stage takes instead of
    /// connecting again: the plan's session goes to a loader, the loaders' to the final step,
    /// a worker's partition's to its next partition and to the job's final step. Shared by
    /// every target of this process with the same URL and schema, however it was made. A
    /// connection costs an authentication and a backend's start, 6 ms on this project's
    /// machine and far more across a network.
    private let released: ReleasedSessions

    public init(url: String, schema: String) {
        self.url = url
        self.schema = schema
        released = ReleasedSessions.shared(url: url, schema: schema)
    }

    /// A session another stage released, if any.
    func takeReleased() -> PGConnection? { released.take() }

    /// How many released sessions wait for a taker.
    var idleSessions: Int { released.count }

    /// A session another stage released, or a new one.
    func releasedOrConnect() throws -> PGConnection { try takeReleased() ?? connect() }

    /// Hands `db` to the next stage, if it is idle, with the session state `connect` gave it
    /// (never a session that changed its settings).
    func release(_ db: PGConnection) { released.put(db) }

    /// Opens sessions, each on its own thread, until `count` released ones wait for takers:
    /// side by side, each an authentication (7 ms here with SCRAM) and across a network round
    /// trips, rather than one after another when a stage needs them. One that fails is left
    /// to the stage, which connects and says why.
    func openAside(upTo count: Int) -> Threads.Started {
        let target = self
        return Threads.start(count: count - idleSessions, name: "connect") { _ in
            // Under those released after use: a stage takes a session that worked first.
            if let db = try? target.connect() { target.released.put(db, under: true) }
        }
    }

    /// A connection whose unqualified names resolve in the target schema (and only there).
    public func connect(connectTimeout: Int? = nil) throws -> PGConnection {
        let db = try connectTimeout.map { try PGConnection(url: url, connectTimeout: $0) } ?? PGConnection(url: url)
        try db.query("SELECT set_config('search_path', $1, false)", [quoteIdentifier(schema)])
        return db
    }

    /// A connection for a command's steps (`JobError.connecting` says what a failure means). A
    /// server still starting up or recovering after a restart is waited for (up to `startupWait`
    /// seconds), so that a `resume` run right after a PostgreSQL restart does not fail at once.
    public func connectWaiting(startupWait: Double = 60, logger: Logger? = nil, pipeline: String? = nil) throws -> PGConnection {
        var said = false
        do {
            return try Retry.within(startupWait, every: 0.25).run(stop: nil, isRetryable: { ($0 as? PGError)?.isServerStartingUp == true }, onRetry: { _ in
                if !said, let logger {
                    logger.notice("PostgreSQL is starting up or recovering; waiting for it to accept connections",
                                  metadata: (pipeline.map { ["pipeline": "\($0)"] } ?? [:]).merging(["for at most": "\(Int(startupWait)) s"]) { a, _ in a })
                    said = true
                }
            }, body: { _ in try connect() })
        } catch {
            throw JobError.connecting(error)
        }
    }

    /// The engine's bookkeeping. One row per committed batch, written in the batch's own
    /// transaction, so it exists exactly when the batch's rows do.
    static let engineTables = [
        """
        CREATE TABLE etl_checkpoints (
            pipeline text NOT NULL,
            job_id text NOT NULL,
            batch_id bigint NOT NULL,
            documents_loaded integer NOT NULL,
            rows jsonb NOT NULL,
            set_aside jsonb NOT NULL,
            committed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (pipeline, job_id, batch_id)
        )
        """,
    ]

    /// The engine's later bookkeeping: a batch of changes records what it removed and the
    /// source position (a change stream's resume token) it reached, with its rows.
    static let engineMigrations = [
        Migration(version: 1, name: "checkpoints", statements: engineTables),
        Migration(version: 2, name: "checkpoints of changes", statements: [
            "ALTER TABLE etl_checkpoints ADD COLUMN documents_deleted integer NOT NULL DEFAULT 0, ADD COLUMN position bytea",
        ]),
        // The run that last took each pipeline's target lock, so that a run which lost its
        // lock (a PostgreSQL restart) can tell whether another run wrote meanwhile.
        Migration(version: 3, name: "writers", statements: [
            "CREATE TABLE etl_writers (pipeline text PRIMARY KEY, run_id text NOT NULL, host text NOT NULL, pid integer NOT NULL, since timestamptz NOT NULL)",
        ]),
        // Jobs split into partitions (`start --partitions`), which workers on any machine claim.
        Migration(version: 4, name: "partitions", statements: PartitionTable.statements),
        // Where a job split into partitions found the change stream when it was planned, for a later sync.
        Migration(version: 5, name: "partitions' change stream start", statements: [
            "ALTER TABLE etl_partitioned_jobs ADD COLUMN change_stream_start text",
        ]),
        // Each pipeline's mapping as it evolved, and the fields its mappings did not name.
        Migration(version: 6, name: "mappings in force and unmapped fields", statements: MappingLedger.statements),
    ]

    /// The engine's own migrations, recorded under this name.
    static let enginePipeline = "etl-job"

    /// Creates the schema if missing and applies, in one transaction, the engine's and each
    /// mapping's migrations not yet applied there. Returns how many ran.
    @discardableResult
    public func migrate(_ db: PGConnection, _ mappings: [any DocumentMapping]) throws -> Int {
        try db.withTransaction {
            // Serializes concurrent migrations of the same database.
            try db.execute("SELECT pg_advisory_xact_lock(7215829043)")
            // Only when missing: CREATE SCHEMA IF NOT EXISTS needs the database's CREATE right even then.
            if try db.query("SELECT to_regnamespace($1) IS NULL", [quoteIdentifier(schema)]).rows[0][0] == "t" {
                try db.execute("CREATE SCHEMA \(quoteIdentifier(schema))")
            }
            try createOrUpgradeMigrationsTable(db, mappings)
            let applied = Set(try db.execute("SELECT pipeline || ' ' || version FROM etl_migrations").rows.compactMap { $0[0] })
            var ran = 0
            let plans = [(Self.enginePipeline, Self.engineMigrations)]
                + mappings.map { ($0.name, Self.migrations(of: $0)) }
            for (pipeline, migrations) in plans {
                for migration in migrations where !applied.contains("\(pipeline) \(migration.version)") {
                    for statement in migration.statements { try db.execute(statement) }
                    try db.query("INSERT INTO etl_migrations (pipeline, version, name) VALUES ($1, $2, $3)",
                                 [pipeline, String(migration.version), migration.name])
                    ran += 1
                }
            }
            return ran
        }
    }

    /// The names of the migrations `migrate` would apply here, read only (for `start --dry-run`).
    public func pendingMigrations(_ db: PGConnection, _ mappings: [any DocumentMapping]) throws -> [String] {
        var applied = Set<String>()
        if try db.execute("SELECT to_regclass('etl_migrations') IS NOT NULL").rows[0][0] == "t" {
            // A table of etl-job 0.1 has no pipeline column: migrate upgrades it, and its version 1 is the users tables.
            applied = Set((try? db.execute("SELECT pipeline || ' ' || version FROM etl_migrations").rows.compactMap { $0[0] }) ?? [])
        }
        let plans = [(Self.enginePipeline, Self.engineMigrations)] + mappings.map { ($0.name, Self.migrations(of: $0)) }
        return plans.flatMap { pipeline, migrations in
            migrations.filter { !applied.contains("\(pipeline) \($0.version)") }.map { "\($0.name)" }
        }
    }

    static func migrations(of mapping: any DocumentMapping) -> [Migration] {
        [Migration(version: 1, name: "\(mapping.name) tables", statements: mapping.tables.map(\.createStatement))] + mapping.migrations
    }

    /// Creates `etl_migrations` when missing (so a user without CREATE rights can run an
    /// up-to-date schema). The bookkeeping of etl-job 0.1 had no pipeline column and one
    /// pipeline: its rows are given to the mapping whose tables are all in this schema (the
    /// one 0.1 loaded); without such a mapping it is refused, never guessed.
    private func createOrUpgradeMigrationsTable(_ db: PGConnection, _ mappings: [any DocumentMapping]) throws {
        let columns = try db.execute("""
            SELECT attname FROM pg_attribute WHERE attrelid = to_regclass('etl_migrations') AND attnum > 0 AND NOT attisdropped
            """).rows.compactMap { $0[0] }
        if columns.isEmpty {
            try db.execute("""
                CREATE TABLE etl_migrations (
                    pipeline text NOT NULL, version integer NOT NULL, name text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (pipeline, version))
                """)
            return
        }
        guard !columns.contains("pipeline") else { return }
        var owner: String?
        for mapping in mappings where try mapping.tables.allSatisfy({ table in
            try db.query("SELECT to_regclass($1) IS NOT NULL", [quoteIdentifier(schema) + "." + table.quotedName]).rows[0][0] == "t"
        }) {
            owner = mapping.name
            break
        }
        guard let owner else {
            throw JobError(.software, "schema \(schema) holds the bookkeeping of etl-job 0.1 (etl_migrations has no pipeline column) "
                + "for tables none of this run's pipelines writes; load into another --target-schema, or drop etl_migrations and etl_checkpoints there")
        }
        let literal = "'" + owner.replacingOccurrences(of: "'", with: "''") + "'"
        try db.execute("""
            ALTER TABLE etl_migrations ADD COLUMN pipeline text NOT NULL DEFAULT \(literal);
            ALTER TABLE etl_migrations ALTER COLUMN pipeline DROP DEFAULT;
            ALTER TABLE etl_migrations DROP CONSTRAINT etl_migrations_pkey, ADD PRIMARY KEY (pipeline, version);
            ALTER TABLE etl_checkpoints ADD COLUMN pipeline text NOT NULL DEFAULT \(literal);
            ALTER TABLE etl_checkpoints ALTER COLUMN pipeline DROP DEFAULT;
            ALTER TABLE etl_checkpoints DROP CONSTRAINT etl_checkpoints_pkey, ADD PRIMARY KEY (pipeline, job_id, batch_id);
            INSERT INTO etl_migrations (pipeline, version, name) VALUES ('\(Self.enginePipeline)', 1, 'checkpoints');
            """)
    }

    /// Every way the target's tables differ from what `mapping` writes: a missing table or
    /// column, a column of another type or nullability, an extra NOT NULL column without a
    /// default (COPY cannot fill it). Extra nullable columns are left alone. Types are
    /// compared as PostgreSQL names them (`varchar` and `character varying` are one type).
    public func differences(_ db: PGConnection, _ mapping: any DocumentMapping) throws -> [String] {
        let names = mapping.tables.map(\.name)
        let found = try db.query("""
            SELECT c.relname, a.attname, format_type(a.atttypid, NULL), a.attnotnull AND NOT a.atthasdef, a.attnotnull
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            WHERE c.relnamespace = to_regnamespace($1) AND c.relname = ANY($2::text[]) AND a.attnum > 0 AND NOT a.attisdropped
            """, [quoteIdentifier(schema), postgresArray(names)]).rows
        var columns: [String: [String: (type: String, required: Bool, notNull: Bool)]] = [:]
        for row in found {
            columns[row[0]!, default: [:]][row[1]!] = (row[2]!, row[3] == "t", row[4] == "t")
        }
        let declared = Set(mapping.tables.flatMap { $0.columns.map(\.type) })
        let canonical = try canonicalTypes(db, Array(declared))
        var differences: [String] = []
        for table in mapping.tables {
            guard let have = columns[table.name] else {
                differences.append("table \(table.name) is missing")
                continue
            }
            for column in table.columns {
                let expected = canonical[column.type] ?? column.type
                guard let actual = have[column.name] else {
                    differences.append("\(table.name).\(column.name) is missing (expected \(expected))")
                    continue
                }
                if actual.type != expected {
                    differences.append("\(table.name).\(column.name) is \(actual.type), expected \(expected)")
                } else if column.nullable && actual.notNull {
                    differences.append("\(table.name).\(column.name) is NOT NULL, but the pipeline writes NULL there")
                }
            }
            let known = Set(table.columns.map(\.name))
            for (name, extra) in have.sorted(by: { $0.key < $1.key }) where !known.contains(name) && extra.required {
                differences.append("\(table.name).\(name) is an extra NOT NULL column without a default, which the job cannot fill")
            }
        }
        return differences
    }

    /// How PostgreSQL names each declared type (`timestamptz` → `timestamp with time zone`).
    private func canonicalTypes(_ db: PGConnection, _ types: [String]) throws -> [String: String] {
        var names: [String: String] = [:]
        for type in types {
            if let name = try? db.query("SELECT format_type($1::regtype, NULL)", [type]).rows.first?[0] { names[type] = name }
        }
        return names
    }

    func foreignKeyExists(_ db: PGConnection, _ table: TableSpec, _ key: TableSpec.ForeignKey) throws -> Bool {
        try db.query("""
            SELECT count(*) > 0 FROM pg_constraint c
            WHERE c.contype = 'f' AND c.convalidated AND c.conrelid = to_regclass($1) AND c.confrelid = to_regclass($2)
              AND ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(attnum, i)
                        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum ORDER BY k.i) = $3::text[]
            """, [quoteIdentifier(schema) + "." + table.quotedName, quoteIdentifier(schema) + "." + quoteIdentifier(key.table),
                  postgresArray(key.columns)]).rows[0][0] == "t"
    }

    /// Changes the tables of `old` into those of `new`, which only adds to them (tables,
    /// nullable columns, NOT NULL dropped from a column that gained a variant), inside the
    /// caller's transaction. A new table gets its foreign key and the indexes that changes
    /// need at once when the pipeline's keys are in place (a sync, `--keys during`);
    /// otherwise the final step adds them with the others. A new table's name is free (the
    /// mapping was told which the schema holds); a column that is there already (one a job
    /// `start --fresh` replaced added) is kept if it is what `new` writes, and refused otherwise.
    func evolve(_ db: PGConnection, from old: any DocumentMapping, to new: any DocumentMapping) throws {
        let before = Dictionary(old.tables.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let keysInPlace = try missingForeignKeys(db, old).isEmpty && missingPrimaryKeys(db, old).isEmpty
        var created: [TableSpec] = []
        for table in new.tables {
            guard let was = before[table.name] else {
                try db.execute(table.createStatement)
                created.append(table)
                continue
            }
            let had = Dictionary(was.columns.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
            for column in table.columns {
                if let existing = had[column.name] {
                    if column.nullable && !existing.nullable {
                        try db.execute("ALTER TABLE \(table.quotedName) ALTER COLUMN \(quoteIdentifier(column.name)) DROP NOT NULL")
                    }
                } else {
                    try db.execute("ALTER TABLE \(table.quotedName) ADD COLUMN IF NOT EXISTS \(quoteIdentifier(column.name)) \(column.type)")
                }
            }
        }
        if keysInPlace {
            for table in created {
                for key in table.foreignKeys where try !foreignKeyExists(db, table, key) { try db.execute(table.addConstraint(key)) }
            }
            let indexes = created.flatMap { table in table.changeIndexes.map { (table, $0) } }
            for (table, index) in indexes {
                try db.execute("CREATE INDEX IF NOT EXISTS \(quoteIdentifier(index.name)) ON \(table.quotedName) (\(index.columns.map(quoteIdentifier).joined(separator: ", ")))")
            }
        }
        let differences = try differences(db, new)
        guard differences.isEmpty else {
            throw JobError(.software, "the \(new.name) pipeline's tables cannot be changed to hold the fields its mapping does not name: "
                + differences.prefix(3).joined(separator: "; ") + "; drop or rename what is in the way, or choose another --unmapped policy")
        }
    }

    /// Removes every row of the documents whose keys `keys` holds (a binary array of the
    /// mapping's key type), in every table of `mapping`, children first. Returns the rows
    /// removed. Runs inside the caller's transaction.
    @discardableResult
    public func deleteDocuments(_ db: PGConnection, _ mapping: any DocumentMapping, keys: [UInt8]) throws -> Int {
        try deleteDocuments(mapping) { try db.query($0, binary: [keys]) }.reduce(0, +)
    }

    /// The same for keys as PostgreSQL prints them; returns the rows removed per table, in
    /// `mapping.tables` order.
    func deleteDocuments(_ db: PGConnection, _ mapping: any DocumentMapping, printedKeys keys: [String]) throws -> [Int] {
        try deleteDocuments(mapping) { try db.query($0, [postgresArray(keys)]) }
    }

    /// Runs each table's `deleteDocumentsStatement` with `run`, children first; rows removed per table.
    private func deleteDocuments(_ mapping: any DocumentMapping, _ run: (String) throws -> PGRows) throws -> [Int] {
        var removed = Array(repeating: 0, count: mapping.tables.count)
        for (t, table) in mapping.tables.enumerated().reversed() { removed[t] = try run(table.deleteDocumentsStatement).affectedRows }
        return removed
    }

    /// Creates the indexes that replacing and deleting documents' rows needs (`changeIndexes`),
    /// where missing. Returns how many it created.
    @discardableResult
    public func createDocumentIndexes(_ db: PGConnection, _ mapping: any DocumentMapping) throws -> Int {
        var created = 0
        for table in mapping.tables {
            for index in table.changeIndexes {
                let exists = try db.query("SELECT to_regclass($1) IS NOT NULL", [quoteIdentifier(schema) + "." + quoteIdentifier(index.name)])
                guard exists.rows[0][0] != "t" else { continue }
                try db.execute("CREATE INDEX \(quoteIdentifier(index.name)) ON \(table.quotedName) (\(index.columns.map(quoteIdentifier).joined(separator: ", ")))")
                created += 1
            }
        }
        return created
    }

    /// The first of `mapping`'s tables that holds a row; tables that do not exist yet hold none.
    public func firstNonEmptyTable(_ db: PGConnection, _ mapping: any DocumentMapping) throws -> String? {
        // Two round trips, not two per table: which tables exist, then the first of them with a row.
        let qualified = mapping.tables.map { quoteIdentifier(schema) + "." + $0.quotedName }
        let existing = Set(try db.query("SELECT n FROM unnest($1::text[]) n WHERE to_regclass(n) IS NOT NULL", [postgresArray(qualified)]).rows.compactMap { $0[0] })
        let tables = zip(mapping.tables, qualified).filter { existing.contains($0.1) }.map(\.0)
        guard !tables.isEmpty else { return nil }
        let firstWithARow = tables.indices.map { "WHEN EXISTS (SELECT 1 FROM \(tables[$0].quotedName)) THEN \($0)" }.joined(separator: " ")
        return try db.execute("SELECT CASE \(firstWithARow) END").rows[0][0].flatMap(Int.init).map { tables[$0].name }
    }

    /// Empties `mapping`'s tables and its checkpoints (for `start --fresh`). With `given` (the
    /// mapping the job is given, when `mapping` is a version batches evolved from it): first
    /// drops what the evolution added, its child tables and columns, so that the target is
    /// the given mapping's again, and forgets the versions.
    public func truncate(_ db: PGConnection, _ mapping: any DocumentMapping, given: (any DocumentMapping)? = nil) throws {
        try db.withTransaction {
            let evolved = mapping
            var mapping = mapping
            if let given {
                let kept = Dictionary(given.tables.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
                // Children first: a table is dropped before the table its foreign key references.
                for table in mapping.tables.reversed() {
                    guard let was = kept[table.name] else {
                        try db.execute("DROP TABLE IF EXISTS \(table.quotedName)")
                        continue
                    }
                    for column in table.columns where !was.columns.contains(where: { $0.name == column.name }) {
                        try db.execute("ALTER TABLE \(table.quotedName) DROP COLUMN IF EXISTS \(quoteIdentifier(column.name))")
                    }
                }
                mapping = given
            }
            // Tables that are all empty already (a first run, or emptied by hand) are left as
            // they are: TRUNCATE would give each a new file, fsynced at COMMIT, for nothing.
            let anyRow = mapping.tables.map { "EXISTS (SELECT 1 FROM \($0.quotedName))" }.joined(separator: " OR ")
            if try db.execute("SELECT \(anyRow)").rows[0][0] == "t" {
                try db.execute("TRUNCATE \(mapping.tables.map(\.quotedName).joined(separator: ", "))")
            }
            // A column a variant made nullable is NOT NULL again, as the given mapping has it.
            for table in given == nil ? [] : mapping.tables {
                guard let was = evolved.tables.first(where: { $0.name == table.name }) else { continue }
                for column in table.columns where !column.nullable && was.columns.contains(where: { $0.name == column.name && $0.nullable }) {
                    try db.execute("ALTER TABLE \(table.quotedName) ALTER COLUMN \(quoteIdentifier(column.name)) SET NOT NULL")
                }
            }
            try db.query("DELETE FROM etl_checkpoints WHERE pipeline = $1", [mapping.name])
            try db.query("DELETE FROM etl_partitioned_jobs WHERE pipeline = $1", [mapping.name])
            try MappingLedger.clear(db, pipeline: mapping.name)
        }
    }
}
