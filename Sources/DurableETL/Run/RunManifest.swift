import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue

/// The pipelines a state directory's run holds, written before their queues.
public struct RunManifest: Codable, Sendable {
    public var formatVersion = 1
    public var pipelines: [String]
    /// Per pipeline, the source and schema the run was started with.
    public var planned: [String: Planned]

    public struct Planned: Codable, Sendable {
        public var database: String
        public var collection: String
        public var targetSchema: String
        /// The mapping's `definition`, for a pipeline defined by data.
        public var definition: String?
        /// The source the run planned to read (its identity, as the queue records it); nil for
        /// a manifest of etl-job 0.3 that planned the default.
        public var source: (any SourceIdentity)?
        /// When the job puts its foreign keys in place.
        public var foreignKeys: ForeignKeyMode?

        init(database: String, collection: String, targetSchema: String, definition: String?, source: any SourceIdentity, foreignKeys: ForeignKeyMode?) {
            (self.database, self.collection, self.targetSchema, self.definition, self.source, self.foreignKeys)
                = (database, collection, targetSchema, definition, source, foreignKeys)
        }

        private enum Keys: String, CodingKey { case database, collection, targetSchema, definition, foreignKeys, sourceKind }

        /// The source's fields sit beside the others, as in the queue's identity record.
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            database = try c.decode(String.self, forKey: .database)
            collection = try c.decode(String.self, forKey: .collection)
            targetSchema = try c.decode(String.self, forKey: .targetSchema)
            definition = try c.decodeIfPresent(String.self, forKey: .definition)
            foreignKeys = try c.decodeIfPresent(ForeignKeyMode.self, forKey: .foreignKeys)
            // A manifest of etl-job 0.3 records no kind: its fields say which.
            if let kind = try c.decodeIfPresent(String.self, forKey: .sourceKind) {
                source = try SourceKinds.decode(kind: kind, from: decoder)
            } else {
                source = try? SourceKinds.decode(kind: nil, from: decoder)
            }
        }

        public func encode(to encoder: any Encoder) throws {
            try source?.encode(to: encoder)
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(database, forKey: .database)
            try c.encode(collection, forKey: .collection)
            try c.encode(targetSchema, forKey: .targetSchema)
            try c.encodeIfPresent(definition, forKey: .definition)
            try c.encodeIfPresent(foreignKeys, forKey: .foreignKeys)
            if let source { try c.encode(type(of: source).kind, forKey: .sourceKind) }
        }
    }

    public init(_ jobs: [PipelineJob], foreignKeys: [String: ForeignKeyMode]) throws {
        pipelines = jobs.map(\.name)
        planned = Dictionary(uniqueKeysWithValues: try jobs.map { job in
            (job.name, Planned(
                database: job.source.collection.database, collection: job.source.collection.collection, targetSchema: job.target.schema,
                definition: job.mapping.definition, source: try job.source.identity(), foreignKeys: foreignKeys[job.name]))
        })
    }

    static let file = "pipelines.json"
    /// The queue of etl-job 0.1, at the top of the state directory.
    static let legacyQueueFiles = ["data.mdb", "lock.mdb"]

    /// The manifest, or nil when the directory holds no run. A queue of the one-pipeline
    /// layout of etl-job 0.1 (`data.mdb` at the top) is refused, never reinterpreted, unless
    /// it is about to be discarded (`start --fresh`).
    public static func read(_ directory: String, discardingLegacy: Bool = false) throws -> RunManifest? {
        if !discardingLegacy, FileManager.default.fileExists(atPath: directory + "/" + legacyQueueFiles[0]) {
            throw JobError(.usage, "the state directory \(directory) holds a queue of etl-job 0.1; finish that job with etl-job 0.1, "
                + "or discard it with 'etl-job start --fresh'")
        }
        guard let data = FileManager.default.contents(atPath: directory + "/" + file) else { return nil }
        do {
            let manifest = try JSONDecoder().decode(RunManifest.self, from: data)
            guard manifest.formatVersion == 1, !manifest.pipelines.isEmpty else { throw CocoaError(.fileReadCorruptFile) }
            return manifest
        } catch {
            throw JobError(.ioError, "the run manifest \(directory)/\(file) is damaged; \(JobError.untrustedState)")
        }
    }

    /// Writes the manifest atomically (a temporary file renamed, then the directory synced).
    func write(_ directory: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try AtomicFile.write(try encoder.encode(self), to: directory + "/" + Self.file)
        } catch {
            throw JobError.queue(error, directory)
        }
    }

    /// Where the queue of `pipeline` lives in a state directory.
    public static func queueDirectory(_ directory: String, _ pipeline: String) -> String {
        directory + "/" + pipeline
    }

    /// The status recorded by `pipeline`'s queue, read without creating anything.
    public static func recordedStatus(_ directory: String, _ pipeline: String) throws -> QueueStatus? {
        let queueDirectory = queueDirectory(directory, pipeline)
        guard DurableQueue.exists(in: queueDirectory) else { return nil }
        do {
            return try DurableQueue(directory: queueDirectory, readOnly: true).status()
        } catch let error as LMDBError where error.isNotFound {
            // A queue file whose tables were never committed (a run killed as it created it): no job.
            return nil
        } catch {
            throw JobError.queue(error, queueDirectory)
        }
    }

    static func remove(_ directory: String) throws {
        try StateFiles.remove(directory + "/" + file)
    }
}
