import Foundation

/// A mongodump output directory (`--source-dump`): `mongodump --out DIR [--gzip]` writes
/// `DIR/<database>/<collection>.bson` (or `.bson.gz`) with `<collection>.metadata.json[.gz]`
/// beside it. Each collection is a pipeline reading its own file through `BSONFileSource`;
/// this type only finds the files.
public struct BSONDumpDirectory: Sendable {
    /// The directory of the database's files (`DIR/<database>`, or DIR itself when it holds them).
    public let databaseDirectory: String
    public let database: String

    /// Finds the database in `path`: the directory itself when it holds `.bson` files, else
    /// its one subdirectory that does (or `database`'s). Refused (exit 66 or 64) naming what
    /// is there instead.
    public init(path: String, database: String?) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw JobError(.noInput, "--source-dump \(path): no such directory (mongodump --out DIR writes DIR/<database>/<collection>.bson)")
        }
        let root = URL(fileURLWithPath: path).standardizedFileURL
        if !Self.collectionFiles(in: root.path).isEmpty, database == nil || database == root.lastPathComponent {
            (databaseDirectory, self.database) = (root.path, root.lastPathComponent)
            return
        }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        let databases = entries.sorted().filter { !Self.collectionFiles(in: root.appendingPathComponent($0).path).isEmpty }
        if let database {
            guard databases.contains(database) else {
                throw JobError(.noInput, "the dump \(path) holds no database \(database)"
                    + (databases.isEmpty ? "" : "; its databases: \(databases.joined(separator: ", "))"))
            }
            (databaseDirectory, self.database) = (root.appendingPathComponent(database).path, database)
            return
        }
        // mongodump of a whole server writes admin (users, roles, versions) beside the data.
        let data = databases.filter { !["admin", "config", "local"].contains($0) }
        guard data.count == 1 else {
            throw JobError(data.isEmpty ? .noInput : .usage, data.isEmpty
                ? "the dump \(path) holds no collection file (<database>/<collection>.bson or .bson.gz)"
                : "the dump \(path) holds several databases (\(data.joined(separator: ", "))); choose one with --database")
        }
        (databaseDirectory, self.database) = (root.appendingPathComponent(data[0]).path, data[0])
    }

    /// The collections of the database, sorted; system collections (`system.views`,
    /// `system.users`, …) left out.
    public func collections() -> [SourceCollection] {
        Self.collectionFiles(in: databaseDirectory).keys.sorted().map { SourceCollection(database: database, collection: $0) }
    }

    /// The file of `collection`: the `.bson` or `.bson.gz` the dump holds, else where a `.bson`
    /// would be (a source that then says it does not exist).
    public func path(of collection: String) -> String {
        Self.collectionFiles(in: databaseDirectory)[collection]
            ?? URL(fileURLWithPath: databaseDirectory).appendingPathComponent(collection + ".bson").path
    }

    /// The collection files of a directory by collection name.
    static func collectionFiles(in directory: String) -> [String: String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [:] }
        var files: [String: String] = [:]
        for name in names.sorted() {
            for suffix in [".bson", ".bson.gz"] where name.hasSuffix(suffix) {
                let collection = String(name.dropLast(suffix.count))
                guard !collection.isEmpty, !collection.hasPrefix("system."), files[collection] == nil else { continue }
                files[collection] = URL(fileURLWithPath: directory).appendingPathComponent(name).path
            }
        }
        return files
    }

    /// `--source-dump DIR`: each pipeline reads its collection's file of the dump.
    public struct Choice: SourceChoice {
        public let dump: BSONDumpDirectory

        public init(_ dump: BSONDumpDirectory) { self.dump = dump }

        public var option: String { "--source-dump" }
        public var namesEachPipeline: Bool { true }
        public var impliedCollection: SourceCollection? { nil }

        public func source(_ settings: JobSettings, collection: SourceCollection) -> any Source {
            BSONFileSource(path: dump.path(of: collection.collection), collection: SourceCollection(database: dump.database, collection: collection.collection))
        }
    }
}
