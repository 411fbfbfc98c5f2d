import ETLCore
import Foundation
import Mongo

/// Where a pipeline's documents come from: a MongoDB collection, a mongodump file, or (for
/// the engine's own tests) documents in memory. The engine reads every source through this
/// protocol alone; a new kind of source is one file that implements it (and its
/// `SourceIdentity`), plus a line in `SourceKinds.all`.
///
/// Positions are opaque bytes to everyone but the source: the queue stores the position
/// after each batch in the batch's own LMDB transaction, and a resume reopens the source
/// there.
public protocol Source: AnyObject, Sendable {
    /// The database and collection the documents belong to (for a file, labels only).
    var collection: SourceCollection { get }
    /// The source in a message: "the collection sample_db.users", "the source file /data/users.bson".
    var description: String { get }
    /// What the job records of the source and compares on resume; never a credential and
    /// never a connection (at most a file's head is read).
    func identity() throws -> any SourceIdentity
    /// Refuses a source that does not exist (exit 66) or, unless `allowEmpty`, holds nothing;
    /// returns its document count when it is known without reading it.
    func check(allowEmpty: Bool) throws -> Int64?
    /// Refuses a source that no longer exists (exit 66), as a resume or verify must.
    func checkExists() throws
    /// The documents after `position` (from the start when nil), in source order.
    func open(after position: [UInt8]?, batchSize: Int32) throws -> any DocumentCursor
    /// The position after `batch`, documents read in order after `previous`.
    func position(after batch: [[UInt8]], previous: [UInt8]?) throws -> [UInt8]
    /// True when a batch's documents stay durable in the source and can be read again by their
    /// extent (a plain file): the queue then keeps the extent and a checksum, not the bytes.
    var keepsDocuments: Bool { get }
    /// The documents between two positions, for batch `batch` the queue left in the source,
    /// checked by `check` against what the queue recorded (which throws `DamagedBatch`).
    func documents(from start: [UInt8]?, to end: [UInt8], batch: UInt64, check: ([UInt8]) throws -> Void) throws -> [UInt8]
    /// Whether an error of this source is worth retrying (the server away for a moment).
    func isTransient(_ error: any Error) -> Bool
    /// Where its change stream stands now, for a later `sync` to start from; `.unavailable`
    /// with the reason when this source has none.
    func changeStreamStart() throws -> ChangeStreamStart
    /// The source of this source's changes after `start` (what `changeStreamStart` gave):
    /// `Change` envelopes in stream order, each position the stream's own. It ends when it has
    /// caught up with the changes made before it was opened, unless `follow`; a cursor that
    /// waits for changes ends when `stop` is requested.
    func changes(from start: ChangeStreamStart, follow: Bool, stop: StopToken) throws -> any Source
    /// The source's unique indexes besides `_id`'s (what `init` carries into a mapping); none
    /// when the source cannot tell.
    func uniqueIndexes() throws -> [UniqueIndex]
    /// How large the source is, for a message, when its document count is unknown (a file's bytes).
    var sizeDescription: String? { get }
    /// At most `count` ranges that cover the source in order, of about equal size, for a job
    /// whose workers load one range each; and how they were found, in words.
    func partitions(_ count: Int) throws -> (ranges: [SourcePartition], method: String)
    /// The same source reading only `partition` (one of `partitions`), positions as the whole
    /// source's: a batch of a partition is the same whichever worker cuts it.
    func restricted(to partition: SourcePartition) throws -> any Source
}

/// A range of a source, for a job split into partitions: bounds only the source reads (a
/// file's offsets, a collection's `_id`s), nil at the source's start or end, and how many
/// documents the plan counted there, when it could.
public struct SourcePartition: Sendable, Equatable {
    public var lower: [UInt8]?
    public var upper: [UInt8]?
    public var documents: Int64?

    public init(lower: [UInt8]?, upper: [UInt8]?, documents: Int64?) {
        (self.lower, self.upper, self.documents) = (lower, upper, documents)
    }
}

/// A unique index of a source: its name and its key's field paths, in order.
public struct UniqueIndex: Sendable, Equatable {
    public let name: String
    public let fields: [String]
    /// A partial index (`partialFilterExpression`) holds only some documents, which no table
    /// constraint can say.
    public let partial: Bool

    public init(name: String, fields: [String], partial: Bool) {
        (self.name, self.fields, self.partial) = (name, fields, partial)
    }
}

extension Source {
    public var keepsDocuments: Bool { false }

    public func uniqueIndexes() throws -> [UniqueIndex] { [] }

    public var sizeDescription: String? { nil }

    public func partitions(_ count: Int) throws -> (ranges: [SourcePartition], method: String) {
        throw JobError(.usage, "\(description) cannot be split into partitions; load it without --partitions")
    }

    public func restricted(to partition: SourcePartition) throws -> any Source {
        throw JobError(.usage, "\(description) cannot be split into partitions")
    }

    public func documents(from start: [UInt8]?, to end: [UInt8], batch: UInt64, check: ([UInt8]) throws -> Void) throws -> [UInt8] {
        throw JobError(.failed, "\(description) does not keep a batch's documents for the queue")
    }

    public func isTransient(_ error: any Error) -> Bool { false }

    public func changeStreamStart() throws -> ChangeStreamStart {
        .unavailable("\(description) has no change stream")
    }

    public func changes(from start: ChangeStreamStart, follow: Bool, stop: StopToken) throws -> any Source {
        throw JobError(.usage, "\(description) has no change stream")
    }
}

/// Where a job's change stream starts: recorded by `start` before the first document is read.
public enum ChangeStreamStart: Sendable, Equatable, Codable {
    /// The stream's resume token (as the server gave it).
    case token([UInt8])
    /// The server's operation time, when no token could be had.
    case operationTime(seconds: UInt32, increment: UInt32)
    /// The source has no change stream, and why (a file; a standalone server).
    case unavailable(String)
}

/// Documents in source order.
public protocol DocumentCursor: AnyObject {
    /// The next document, or nil at the end of the source.
    func next() throws -> [UInt8]?
    /// The position after the last document returned; nil before the first.
    var position: [UInt8]? { get }
}

/// What a job records of its source, compared by every later command so that one pointed
/// elsewhere is refused instead of quietly mixing two jobs. Encoded into the job's identity
/// record (flat, beside the target's fields).
public protocol SourceIdentity: Codable, Sendable {
    /// The kind's name in records.
    static var kind: String { get }
    /// The database and collection recorded (for a file, labels only).
    var names: SourceCollection { get }
    /// Where the source is, in a message: "MongoDB 127.0.0.1:57017", "file /data/users.bson".
    var location: String { get }
    /// Each way `given` (of the same kind) differs from this record, its collection included.
    /// `locationNamed`: whether the command named where the source is; when it did not,
    /// only what it names is compared.
    func differences(from given: Self, locationNamed: Bool) -> [IdentityDifference]
    /// The recorded source, opened again for a command, with the collection it names.
    func reopen(_ settings: JobSettings, collection: SourceCollection) -> any Source
    /// What `status` shows of the source at the queue's position.
    func status(at position: [UInt8]?, extractionFinished: Bool) -> SourceStatus
    /// The keys of `status --json` this kind fills (`SourceStatus.json`).
    static var statusKeys: [String] { get }
}

extension SourceIdentity {
    public static var statusKeys: [String] { [] }

    /// Differences from a given identity of any kind: another kind is one difference.
    func differences(fromAny given: any SourceIdentity, locationNamed: Bool) -> [IdentityDifference] {
        guard let same = given as? Self else { return [IdentityDifference("source", location, given.location)] }
        return differences(from: same, locationNamed: locationNamed)
    }
}

extension SourceCollection {
    /// The database and collection where `given` differs from this one.
    public func differences(from given: SourceCollection) -> [IdentityDifference] {
        (database == given.database ? [] : [IdentityDifference("database", database, given.database)])
            + (collection == given.collection ? [] : [IdentityDifference("collection", collection, given.collection)])
    }
}

/// One way a command's settings differ from what a job recorded.
public struct IdentityDifference: Sendable, Equatable {
    public let field: String
    public let recorded: String
    public let given: String

    public init(_ field: String, _ recorded: String, _ given: String) {
        self.field = field
        self.recorded = recorded
        self.given = given
    }
}

/// What `status` shows of a source: members of `status --json` (every kind gives the keys of
/// `SourceKinds.statusKeys`, null where it has nothing), how much of it is read, and lines of text.
public struct SourceStatus: Sendable {
    public var json: [String: (any Sendable)?] = [:]
    /// The share of the source read (0...1), when the source knows it.
    public var fractionRead: Double?
    /// The text `status` prints on its own line(s), e.g. `source file  /data/users.bson`.
    public var lines: [String] = []
    /// What is read so far, in words: "54 % of the file read".
    public var progress: String?

    public init() {}
}

/// Every kind of source a job can record. A record without a `sourceKind` (etl-job 0.3 and
/// earlier) is the first kind that can decode it.
public enum SourceKinds {
    public static let all: [any SourceIdentity.Type] = [BSONFileSource.Identity.self, MongoCollectionSource.Identity.self, MemorySource.Identity.self]

    /// The keys of `status --json` that sources give: every kind's, so that a pipeline shows
    /// each (null where its source has nothing).
    public static var statusKeys: [String] { all.flatMap { $0.statusKeys } }

    /// The source a command names for `collection`, or else the default (the collection on
    /// the MongoDB server of `settings`).
    public static func source(_ settings: JobSettings, collection: SourceCollection) -> any Source {
        settings.source.choice?.source(settings, collection: collection)
            ?? MongoCollectionSource(url: settings.mongoURL, collection: collection, batchSize: settings.cursorBatchSize)
    }

    static func decode(kind: String?, from decoder: any Decoder) throws -> any SourceIdentity {
        if let kind {
            guard let type = all.first(where: { $0.kind == kind }) else {
                throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "unknown source kind '\(kind)'"))
            }
            return try type.init(from: decoder)
        }
        var failure: (any Error)?
        for type in all {
            do { return try type.init(from: decoder) } catch { failure = error }
        }
        throw failure!
    }
}

/// A source named on the command line in place of the default MongoDB collection (a
/// mongodump file): `start` reads it, and a resume may name it again (a moved file).
public protocol SourceChoice: Sendable {
    /// The flag that names it, for messages ("--source-file").
    var option: String { get }
    /// The database and collection it names by itself, if any (mongodump's `db/coll.bson`).
    var impliedCollection: SourceCollection? { get }
    /// It names a source for each pipeline (a dump directory's files), not one pipeline's.
    var namesEachPipeline: Bool { get }
    func source(_ settings: JobSettings, collection: SourceCollection) -> any Source
}

extension SourceChoice {
    public var namesEachPipeline: Bool { false }
}

/// What a command says about where documents come from: each nil when it says nothing.
public struct SourceRequest: Sendable {
    public var database: String?
    public var collection: String?
    public var choice: (any SourceChoice)?

    public init(database: String? = nil, collection: String? = nil, choice: (any SourceChoice)? = nil) {
        self.database = database
        self.collection = collection
        self.choice = choice
    }

    /// The command names the source's database or collection.
    public var namesCollection: Bool { database != nil || collection != nil }
}

extension SourceRequest {
    /// Refuses (exit 64) what the command says about the source when it cannot apply to
    /// `pipelines`: a database or collection names that of one built-in pipeline, a source
    /// of another kind that of one pipeline. `ofJob`: they are a recorded job's, not this run's.
    public func refuse(for pipelines: [any DocumentMapping], ofJob: Bool) throws {
        let builtIn = pipelines.filter { $0.definition == nil }.count
        if let refusal = JobPlan.refusal(of: planRequest, builtIn: builtIn, pipelines: pipelines.count, ofJob: ofJob) { throw refusal }
    }

    var planRequest: JobPlan.Request { JobPlan.Request(namesCollection: namesCollection, option: choice?.namesEachPipeline == true ? nil : choice?.option) }
}

/// What a job moves from where to where, recorded when it starts (never a credential).
/// Stored as JSON in the queue: the source's fields, `sourceKind`, `pipeline` and the target's.
public struct JobIdentity: Codable, Sendable {
    public var pipeline: String
    public var source: any SourceIdentity
    public var targetHost: String
    public var targetPort: String
    public var targetDatabase: String
    public var targetSchema: String

    public init(pipeline: String, source: any SourceIdentity, targetHost: String, targetPort: String, targetDatabase: String, targetSchema: String) {
        self.pipeline = pipeline
        self.source = source
        self.targetHost = targetHost
        self.targetPort = targetPort
        self.targetDatabase = targetDatabase
        self.targetSchema = targetSchema
    }

    private enum Keys: String, CodingKey {
        case pipeline, sourceKind, targetHost, targetPort, targetDatabase, targetSchema
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Keys.self)
        pipeline = try c.decode(String.self, forKey: .pipeline)
        source = try SourceKinds.decode(kind: try c.decodeIfPresent(String.self, forKey: .sourceKind), from: decoder)
        targetHost = try c.decode(String.self, forKey: .targetHost)
        targetPort = try c.decode(String.self, forKey: .targetPort)
        targetDatabase = try c.decode(String.self, forKey: .targetDatabase)
        targetSchema = try c.decode(String.self, forKey: .targetSchema)
    }

    public func encode(to encoder: any Encoder) throws {
        try source.encode(to: encoder)
        var c = encoder.container(keyedBy: Keys.self)
        try c.encode(pipeline, forKey: .pipeline)
        try c.encode(type(of: source).kind, forKey: .sourceKind)
        try c.encode(targetHost, forKey: .targetHost)
        try c.encode(targetPort, forKey: .targetPort)
        try c.encode(targetDatabase, forKey: .targetDatabase)
        try c.encode(targetSchema, forKey: .targetSchema)
    }

    /// The record as the queue stores it.
    public func encoded() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array(try encoder.encode(self))
    }

    /// A queue's record; nil when there is none, or it cannot be read.
    public static func decode(_ bytes: [UInt8]?) -> JobIdentity? {
        bytes.flatMap { try? JSONDecoder().decode(JobIdentity.self, from: Data($0)) }
    }

    /// Each field where `given` differs: the pipeline, the source (its kind, where it is
    /// unless `sourceLocationNamed` is false, its database and collection), and the target.
    public func differences(from given: JobIdentity, sourceLocationNamed: Bool = true) -> [IdentityDifference] {
        var found: [IdentityDifference] = []
        if pipeline != given.pipeline { found.append(.init("pipeline", pipeline, given.pipeline)) }
        found += source.differences(fromAny: given.source, locationNamed: sourceLocationNamed)
        for (name, path) in [("target host", \JobIdentity.targetHost), ("target port", \.targetPort),
                             ("target database", \.targetDatabase), ("target schema", \.targetSchema)]
        where self[keyPath: path] != given[keyPath: path] {
            found.append(.init(name, self[keyPath: path], given[keyPath: path]))
        }
        return found
    }
}
