import ETLCore
import Foundation
import Logging
import Synchronization
import Postgres

/// The keys of a pipeline's tables: which are missing, and dropping and adding them around a load.
extension Target {
    /// The foreign keys `mapping` declares that are not in place in the target (matched by
    /// their tables and columns, whatever their names).
    public func missingForeignKeys(_ db: PGConnection, _ mapping: any DocumentMapping) throws -> [(table: TableSpec, key: TableSpec.ForeignKey)] {
        var missing: [(TableSpec, TableSpec.ForeignKey)] = []
        for table in mapping.tables {
            for key in table.foreignKeys where try !foreignKeyExists(db, table, key) {
                missing.append((table, key))
            }
        }
        return missing
    }

    /// The primary keys `--keys after` builds after the load that are not in place.
    public func missingPrimaryKeys(_ db: PGConnection, _ mapping: any DocumentMapping) throws -> [TableSpec] {
        try tablesWithoutPrimaryKey(db, mapping, among: mapping.keysBuiltAfter)
    }

    /// The tables of `mapping` (or of `among`) that exist without a primary key.
    public func tablesWithoutPrimaryKey(_ db: PGConnection, _ mapping: any DocumentMapping, among: [TableSpec]? = nil) throws -> [TableSpec] {
        try (among ?? mapping.tables).filter { table in
            try db.query("SELECT count(*) = 0 FROM pg_constraint WHERE contype = 'p' AND conrelid = to_regclass($1)",
                         [quoteIdentifier(schema) + "." + table.quotedName]).rows[0][0] == "t"
        }
    }

    /// Builds the missing primary keys (with `primaryKeys`) and adds the missing foreign keys
    /// of `mapping`, as pg_restore does: the primary keys first, largest table first, over
    /// `build.connections` sessions at once; then every foreign key declared `NOT VALID` in
    /// one short transaction and validated, again over several sessions (validating takes
    /// only a share lock on the referenced table, so keys to one parent check at once, where
    /// `ADD FOREIGN KEY` would wait for each other). Each key commits on its own, fenced by
    /// the run's lock, and `committed` follows each; a kill leaves some keys in place, and the
    /// next call adds the rest. A row without its parent fails the step with the constraint
    /// and key it names. Returns how many primary and foreign keys were added.
    @discardableResult
    public func addKeys(_ db: PGConnection, _ mapping: any DocumentMapping, primaryKeys: Bool, build: KeyBuild = KeyBuild(),
                        fence: @escaping @Sendable (PGConnection) throws -> Void = { _ in },
                        committed: @escaping @Sendable () -> Void = {}) throws -> (primary: Int, foreign: Int) {
        let tables = primaryKeys ? try largestFirst(db, try missingPrimaryKeys(db, mapping)) : []
        let missing = try missingForeignKeys(db, mapping)
        guard !tables.isEmpty || !missing.isEmpty else { return (0, 0) }
        let sessions = KeySessions(target: self, first: db, build: build, fence: fence, committed: committed)
        try sessions.run(tables.map(\.addPrimaryKey))
        var validations: [String] = []
        try db.withTransaction {
            try fence(db)
            for (table, key) in missing {
                let name = table.constraintName(key)
                let declared = try db.query("SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2",
                                            [quoteIdentifier(schema) + "." + table.quotedName, name]).rows
                if declared.isEmpty { try db.execute(table.addConstraint(key) + " NOT VALID") }
                validations.append("ALTER TABLE \(table.quotedName) VALIDATE CONSTRAINT \(quoteIdentifier(name))")
            }
        }
        try sessions.run(validations)
        return (tables.count, missing.count)
    }

    /// Whether the connected role owns (or is a member of the owner of) every table of
    /// `mapping` (true where there are none yet, as before the schema exists).
    public func ownsTables(_ db: PGConnection, _ mapping: any DocumentMapping) throws -> Bool {
        try db.query("""
            SELECT bool_and(pg_has_role(c.relowner, 'USAGE')) FROM pg_class c
            WHERE c.relnamespace = to_regnamespace($1) AND c.relname = ANY($2::text[])
            """, [quoteIdentifier(schema), postgresArray(mapping.tables.map(\.name))]).rows[0][0] != "f"
    }

    /// Drops the foreign keys of `mapping` that are in place and, with `primaryKeys`, the
    /// primary keys `--keys after` builds after the load (for a load that adds them after;
    /// only on empty tables, where adding them back costs nothing).
    public func dropKeys(_ db: PGConnection, _ mapping: any DocumentMapping, primaryKeys: Bool) throws {
        try db.withTransaction {
            for table in mapping.tables {
                let names = try db.query("""
                    SELECT conname FROM pg_constraint WHERE contype = 'f' AND conrelid = to_regclass($1)
                      AND confrelid = ANY(ARRAY(SELECT to_regclass(quote_ident($2) || '.' || quote_ident(t)) FROM unnest($3::text[]) t))
                    """, [quoteIdentifier(schema) + "." + table.quotedName, schema, postgresArray(table.foreignKeys.map(\.table))]).rows
                for row in names {
                    try db.execute("ALTER TABLE \(table.quotedName) DROP CONSTRAINT \(quoteIdentifier(row[0]!))")
                }
            }
            // After the foreign keys: a primary key they reference cannot be dropped before them.
            for table in primaryKeys ? mapping.keysBuiltAfter : [] {
                let names = try db.query("SELECT conname FROM pg_constraint WHERE contype = 'p' AND conrelid = to_regclass($1)",
                                         [quoteIdentifier(schema) + "." + table.quotedName]).rows
                for row in names {
                    try db.execute("ALTER TABLE \(table.quotedName) DROP CONSTRAINT \(quoteIdentifier(row[0]!))")
                }
            }
        }
    }

    /// `tables` by their size on disk, largest first: the longest builds start first, so that
    /// the sessions finish together.
    private func largestFirst(_ db: PGConnection, _ tables: [TableSpec]) throws -> [TableSpec] {
        guard tables.count > 1 else { return tables }
        let sizes = try db.query("""
            SELECT t, coalesce(pg_relation_size(to_regclass(quote_ident($1) || '.' || quote_ident(t))), 0)
            FROM unnest($2::text[]) t
            """, [schema, postgresArray(tables.map(\.name))]).rows
        let size = Dictionary(sizes.map { ($0[0]!, Int64($0[1]!) ?? 0) }, uniquingKeysWith: { a, _ in a })
        return tables.enumerated().sorted { (size[$0.element.name] ?? 0, -$0.offset) > (size[$1.element.name] ?? 0, -$1.offset) }.map(\.element)
    }
}
