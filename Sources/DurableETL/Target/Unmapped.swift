import Foundation
import Mongo
import Postgres
import Synchronization

/// What a load does with a field its mapping does not name (a mapping file's `"unmapped"`,
/// `--unmapped` for one run). Whatever it does, the field is counted and reported.
public enum UnmappedPolicy: String, Sendable, CaseIterable, Codable {
    /// The tables change to hold it (a new column, child table or variant column), in the
    /// transaction of the batch that first meets it.
    case evolve
    /// It goes, with every other such field of its object, into the table's rest column
    /// (`_rest`, jsonb); the tables never change during the load.
    case keep
    /// The document is set aside, naming the field.
    case setAside = "set-aside"
    /// It is left out on purpose.
    case drop

    /// What happened to such a field, as reports say it.
    public var outcome: String {
        switch self {
        case .evolve: "evolved"
        case .keep: "kept in _rest"
        case .setAside: "document set aside"
        case .drop: "dropped"
        }
    }

    /// The rest column's name under `keep`.
    public static let restColumn = "_rest"
}

/// A field of one document that its mapping does not name (or a value its column cannot hold,
/// that a variant column would): where, as a person reads it (`vip.level`, `orders[].color`),
/// and its BSON type. Nulls are never noted: they hold nothing.
public struct UnmappedField: Sendable, Hashable {
    public var path: String
    public var type: BSONType

    public init(path: String, type: BSONType) {
        self.path = path
        self.type = type
    }
}

/// One path of a pipeline's unmapped fields, over every batch that met it (across runs and
/// workers: the target's `etl_unmapped` adds them up).
public struct UnmappedSummary: Sendable, Codable, Equatable {
    public var path: String
    /// Documents that held it while the mapping did not name it.
    public var documents: Int64
    /// BSON type names, sorted.
    public var types: [String]
    /// The `_id` of one such document, as `status` shows ids.
    public var exampleId: String
    /// What the load did: `evolved` (with where to), `kept in _rest`, `document set aside`, `dropped`.
    public var outcome: String
    /// When a batch first met it (UTC, from the target), once recorded.
    public var firstSeen: String?

    public init(path: String, documents: Int64, types: [String], exampleId: String, outcome: String, firstSeen: String? = nil) {
        (self.path, self.documents, self.types, self.exampleId, self.outcome, self.firstSeen) = (path, documents, types, exampleId, outcome, firstSeen)
    }
}

/// A batch's unmapped fields, added up by path: each document counts once per path.
struct UnmappedTally {
    private(set) var byPath: [String: UnmappedSummary] = [:]

    var isEmpty: Bool { byPath.isEmpty }

    mutating func add(_ fields: [UnmappedField], documentId: @autoclosure () -> String, outcome: (UnmappedField) -> String) {
        guard !fields.isEmpty else { return }
        var seen = Set<String>()
        var id: String?
        for field in fields {
            let type = field.type.name
            if seen.insert(field.path).inserted {
                if byPath[field.path] == nil {
                    id = id ?? documentId()
                    byPath[field.path] = UnmappedSummary(path: field.path, documents: 0, types: [], exampleId: id!, outcome: outcome(field))
                }
                byPath[field.path]!.documents += 1
            }
            if !byPath[field.path]!.types.contains(type) {
                byPath[field.path]!.types.append(type)
                byPath[field.path]!.types.sort()
            }
        }
    }

    /// Says where the batch's evolution put each evolved path (`evolved into …`).
    mutating func settle(_ destination: (String) -> String?) {
        for path in byPath.keys where byPath[path]!.outcome == UnmappedPolicy.evolve.outcome {
            if let where_ = destination(path) { byPath[path]!.outcome = where_ }
        }
    }

    var summaries: [UnmappedSummary] { byPath.keys.sorted().map { byPath[$0]! } }
}

/// A mapping changed to hold fields it did not name: what it is now, and what changed.
public struct Evolution: Sendable {
    public let mapping: any DocumentMapping
    /// One line per change, as reports and `etl_mappings.changes` say it
    /// (`vip.level → users.vip_level bigint`).
    public let changes: [String]
    /// Per unmapped path, where it is held now (`users.vip_level`), for `etl_unmapped`.
    public let destinations: [String: String]

    public init(mapping: any DocumentMapping, changes: [String], destinations: [String: String]) {
        (self.mapping, self.changes, self.destinations) = (mapping, changes, destinations)
    }
}

/// The mapping a pipeline's batches use now: the one the job was given, or the latest version
/// `etl_mappings` records after an evolution (version 0: as given, nothing recorded).
final class MappingInForce: Sendable {
    struct Version: Sendable {
        var number: Int
        var mapping: any DocumentMapping
    }

    private let state: Mutex<Version>

    init(_ mapping: any DocumentMapping, version: Int = 0) { state = Mutex(Version(number: version, mapping: mapping)) }

    var current: Version { state.withLock { $0 } }

    /// Takes `version` unless a later one is in force already (batches commit in any order).
    func adopt(_ version: Version) {
        state.withLock { if version.number > $0.number { $0 = version } }
    }
}

/// The target's record of each pipeline's mapping in force (`etl_mappings`, a row per
/// version, written in the transaction of the batch that changed it) and of the fields its
/// mappings did not name (`etl_unmapped`, added to by each batch that met one), so that
/// workers on many machines agree on one mapping and add their counts up.
public enum MappingLedger {
    static let statements = [
        """
        CREATE TABLE etl_mappings (
            pipeline text NOT NULL,
            version integer NOT NULL,
            definition text NOT NULL,
            job_id text,
            batch_id bigint,
            changes text NOT NULL DEFAULT '',
            recorded_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (pipeline, version)
        )
        """,
        """
        CREATE TABLE etl_unmapped (
            pipeline text NOT NULL,
            path text NOT NULL,
            documents bigint NOT NULL,
            types text[] NOT NULL,
            example_id text NOT NULL,
            outcome text NOT NULL,
            first_seen timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (pipeline, path)
        )
        """,
    ]

    /// The key of the transaction-level lock under which one pipeline's mapping evolves:
    /// batches (of any process) that meet new fields take turns, and each sees the last one's.
    static let lockNamespace: Int32 = 0x45_54_4C_4D  // "ETLM"

    static func lock(_ db: PGConnection, pipeline: String, schema: String) throws {
        try db.query("SELECT pg_advisory_xact_lock($1, hashtext($2))", [String(lockNamespace), "\(pipeline) \(schema)"])
    }

    /// The latest recorded version of a pipeline's mapping, if it ever evolved.
    public static func latest(_ db: PGConnection, pipeline: String) throws -> (version: Int, definition: String)? {
        guard try exists(db) else { return nil }
        guard let row = try db.query("SELECT version, definition FROM etl_mappings WHERE pipeline = $1 ORDER BY version DESC LIMIT 1", [pipeline]).rows.first,
              let version = row[0].flatMap(Int.init), let definition = row[1] else { return nil }
        return (version, definition)
    }

    static func record(_ db: PGConnection, pipeline: String, version: Int, definition: String, job: String?, batch: UInt64?, changes: [String]) throws {
        try db.query("INSERT INTO etl_mappings (pipeline, version, definition, job_id, batch_id, changes) VALUES ($1, $2, $3, $4, $5, $6)",
                     [pipeline, String(version), definition, job, batch.map(String.init), changes.joined(separator: "\n")])
    }

    /// Adds a batch's counts, path by path in one order (two batches never wait on each other's rows crosswise).
    static func add(_ db: PGConnection, pipeline: String, _ summaries: [UnmappedSummary]) throws {
        guard !summaries.isEmpty else { return }
        let sorted = summaries.sorted { $0.path < $1.path }
        try db.query("""
            INSERT INTO etl_unmapped (pipeline, path, documents, types, example_id, outcome)
            SELECT $1, p, d, string_to_array(t, ','), e, o
            FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[]) AS u(p, d, t, e, o) ORDER BY p
            ON CONFLICT (pipeline, path) DO UPDATE SET documents = etl_unmapped.documents + EXCLUDED.documents,
                types = ARRAY(SELECT DISTINCT x FROM unnest(etl_unmapped.types || EXCLUDED.types) x ORDER BY 1),
                outcome = CASE WHEN EXCLUDED.outcome = 'evolved' AND etl_unmapped.outcome LIKE 'evolved%' THEN etl_unmapped.outcome ELSE EXCLUDED.outcome END
            """, [pipeline, postgresArray(sorted.map(\.path)), postgresArray(sorted.map { String($0.documents) }),
                  postgresArray(sorted.map { $0.types.joined(separator: ",") }), postgresArray(sorted.map(\.exampleId)),
                  postgresArray(sorted.map(\.outcome))])
    }

    /// A pipeline's unmapped fields as the target records them, by path.
    public static func summaries(_ db: PGConnection, pipeline: String) throws -> [UnmappedSummary] {
        guard try exists(db) else { return [] }
        return try db.query("""
            SELECT path, documents, array_to_string(types, ','), example_id, outcome, to_char(first_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
            FROM etl_unmapped WHERE pipeline = $1 ORDER BY path
            """, [pipeline]).rows.map { row in
            UnmappedSummary(path: row[0] ?? "", documents: Int64(row[1] ?? "0") ?? 0, types: (row[2] ?? "").split(separator: ",").map(String.init),
                            exampleId: row[3] ?? "", outcome: row[4] ?? "", firstSeen: row[5])
        }
    }

    /// The versions of a pipeline's mapping: (version, job, batch, when, changes).
    public static func history(_ db: PGConnection, pipeline: String) throws -> [(version: Int, job: String?, batch: String?, at: String, changes: String)] {
        guard try exists(db) else { return [] }
        return try db.query("""
            SELECT version, job_id, batch_id, to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), changes
            FROM etl_mappings WHERE pipeline = $1 ORDER BY version
            """, [pipeline]).rows.map { (Int($0[0] ?? "0") ?? 0, $0[1], $0[2], $0[3] ?? "", $0[4] ?? "") }
    }

    /// Forgets a pipeline's versions and counts (for `start --fresh`: the file given is in force again).
    static func clear(_ db: PGConnection, pipeline: String) throws {
        guard try exists(db) else { return }
        try db.query("DELETE FROM etl_mappings WHERE pipeline = $1", [pipeline])
        try db.query("DELETE FROM etl_unmapped WHERE pipeline = $1", [pipeline])
    }

    private static func exists(_ db: PGConnection) throws -> Bool {
        try db.execute("SELECT to_regclass('etl_unmapped') IS NOT NULL").rows[0][0] == "t"
    }
}
