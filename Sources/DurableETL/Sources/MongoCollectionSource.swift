import ETLCore
import Foundation
import Mongo

/// A MongoDB collection, read in `_id` order. A position is `{"_id": value}` of the last
/// document read; a scan resumes after it in BSON's comparison order, across types too.
///
/// Each `open` makes its own client (libmongoc clients are not shared between threads),
/// pings the server and maps its errors like every other connection of the job.
public final class MongoCollectionSource: Source {
    public let collection: SourceCollection
    let url: String
    let batchSize: Int32
    /// The `_id`s this source reads, for a partition of a job: from `lower` (inclusive) to
    /// before `upper`, each `{"_id": value}`; nil for the collection's start or end.
    let lower: [UInt8]?
    let upper: [UInt8]?

    public convenience init(url: String, collection: SourceCollection, batchSize: Int32 = 500) {
        self.init(url: url, collection: collection, batchSize: batchSize, lower: nil, upper: nil)
    }

    private init(url: String, collection: SourceCollection, batchSize: Int32, lower: [UInt8]?, upper: [UInt8]?) {
        self.url = url
        self.collection = collection
        self.batchSize = batchSize
        (self.lower, self.upper) = (lower, upper)
    }

    public var description: String {
        let whole = "the collection \(collection.database).\(collection.collection)"
        guard lower != nil || upper != nil else { return whole }
        return "the _ids " + (lower.map { "from \(Self.display($0)) " } ?? "") + (upper.map { "before \(Self.display($0)) " } ?? "") + "of " + whole
    }

    /// A bound's `_id`, as a message shows it.
    static func display(_ element: [UInt8]) -> String {
        element.withUnsafeBytes { bytes in
            guard var it = BSONIterator(document: bytes), it.next() else { return "?" }
            return it.displayValue
        }
    }

    /// What a job records: the deployment's hosts (never its credentials) and the collection.
    public struct Identity: SourceIdentity, Equatable {
        public static let kind = "mongodb"
        public var sourceServers: String
        public var database: String
        public var collection: String

        init(sourceServers: String, database: String, collection: String) {
            (self.sourceServers, self.database, self.collection) = (sourceServers, database, collection)
        }

        private enum Keys: String, CodingKey { case sourceServers, database, collection }

        /// A run manifest of etl-job 0.3 records the collection without its servers.
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            sourceServers = try c.decodeIfPresent(String.self, forKey: .sourceServers) ?? ""
            database = try c.decode(String.self, forKey: .database)
            collection = try c.decode(String.self, forKey: .collection)
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(sourceServers, forKey: .sourceServers)
            try c.encode(database, forKey: .database)
            try c.encode(collection, forKey: .collection)
        }

        public var names: SourceCollection { SourceCollection(database: database, collection: collection) }

        public var location: String { "MongoDB \(sourceServers)" }

        public func differences(from given: Identity, locationNamed: Bool) -> [IdentityDifference] {
            let server = locationNamed && sourceServers != given.sourceServers
                ? [IdentityDifference("source server", sourceServers, given.sourceServers)] : []
            return server + names.differences(from: given.names)
        }

        public func reopen(_ settings: JobSettings, collection: SourceCollection) -> any Source {
            MongoCollectionSource(url: settings.mongoURL, collection: collection, batchSize: settings.cursorBatchSize)
        }

        public func status(at position: [UInt8]?, extractionFinished: Bool) -> SourceStatus { SourceStatus() }
    }

    public func identity() throws -> any SourceIdentity {
        Identity(sourceServers: try client().servers, database: collection.database, collection: collection.collection)
    }

    /// The collections of `database` on the server of `url`, sorted; system collections
    /// (`system.views`, `system.profile`, …) left out. Exit 69 when the server does not answer.
    public static func collections(url: String, database: String) throws -> [SourceCollection] {
        let probe = MongoCollectionSource(url: url, collection: SourceCollection(database: database, collection: ""))
        let client = try probe.connected()
        do {
            return try client.collectionNames(database: database).filter { !$0.hasPrefix("system.") }
                .map { SourceCollection(database: database, collection: $0) }
        } catch {
            throw JobError(.unavailable, "cannot list the collections of \(database) at \(client.redactedURL): \(error)")
        }
    }

    public func check(allowEmpty: Bool) throws -> Int64? {
        let client = try connected()
        try checkExists(client)
        let total = try? client.collection(database: collection.database, name: collection.collection).estimatedCount()
        if total == 0 && !allowEmpty {
            throw JobError(.noInput, "the collection \(collection.database).\(collection.collection) is empty; add --allow-empty to run on it anyway")
        }
        return total
    }

    public func checkExists() throws {
        try checkExists(try connected())
    }

    private func checkExists(_ client: MongoClient) throws {
        let names: [String]
        do {
            names = try client.collectionNames(database: collection.database)
        } catch {
            throw JobError(.unavailable, "cannot list the collections of \(collection.database) at \(client.redactedURL): \(error)")
        }
        guard names.contains(collection.collection) else {
            let existing = names.filter { !$0.hasPrefix("system.") }
            let shown = existing.prefix(10).joined(separator: ", ")
            let more = existing.count > 10 ? " and \(existing.count - 10) more" : ""
            throw JobError(.noInput, "the collection \(collection.database).\(collection.collection) does not exist; "
                + (existing.isEmpty ? "the database \(collection.database) holds no collection"
                   : "collections in \(collection.database): \(shown)\(more)"))
        }
    }

    public func open(after position: [UInt8]?, batchSize: Int32) throws -> any DocumentCursor {
        let client = try client()
        try ping(client)
        let cursor = try client.collection(database: collection.database, name: collection.collection)
            .scanById(afterIdElement: position, from: lower, before: upper, batchSize: batchSize)
        return Cursor(cursor)
    }

    public func position(after batch: [[UInt8]], previous: [UInt8]?) throws -> [UInt8] {
        guard let last = batch.last else { return previous ?? [] }
        guard let position = last.withUnsafeBytes(BSONSequence.idElement) else {
            throw JobError(.failed, "a document of \(description) has no _id")
        }
        return position
    }

    /// The server away for a moment: a scan reopens after the last document read.
    public func isTransient(_ error: any Error) -> Bool { (error as? MongoError)?.isTransient == true }

    /// A connection for writing (`seed`), with the same checks as every other.
    public func collectionForWriting() throws -> MongoCollection {
        try connected().collection(database: collection.database, name: collection.collection)
    }

    // MARK: Connections

    /// A client for the URL (no connection yet); a malformed URL is a usage error.
    func client() throws -> MongoClient {
        do {
            return try MongoClient(url: url)
        } catch let error as MongoError {
            throw JobError(.usage, error.message)
        }
    }

    /// The server's failure to answer, as a MongoError of its own kind (transient while the
    /// server is away), so that a scan's retry loop can wait for it.
    private func ping(_ client: MongoClient) throws {
        do {
            try client.ping()
        } catch let error as MongoError {
            throw MongoError(message: "cannot reach MongoDB at \(Redact.url(url)): \(error)", kind: error.kind == .badInput ? .badInput : error.kind)
        }
    }

    /// A client whose server answered; otherwise exit 69, naming the server.
    func connected() throws -> MongoClient {
        let client = try client()
        do {
            try ping(client)
        } catch let error as MongoError {
            throw JobError(.unavailable, error.message)
        }
        return client
    }

    /// Documents of a server-side cursor, each copied out of libmongoc's buffer.
    private final class Cursor: DocumentCursor {
        let cursor: MongoCursor
        private var last: [UInt8]?

        init(_ cursor: MongoCursor) { self.cursor = cursor }

        func next() throws -> [UInt8]? {
            let document = try cursor.next().map { Array($0) }
            if let document { last = document }
            return document
        }

        var position: [UInt8]? { last.flatMap { $0.withUnsafeBytes(BSONSequence.idElement) } }
    }
}

extension MongoCollectionSource {
    /// Ranges of `_id` with about as many documents each, from the server's `$bucketAuto` on
    /// `_id` (every server and deployment answers it, where `splitVector` needs a mongod and
    /// privileges on it; it sorts the collection's `_id`s, from the `_id` index, once).
    public func partitions(_ count: Int) throws -> (ranges: [SourcePartition], method: String) {
        let client = try connected()
        try checkExists(client)
        let buckets: [(lowest: [UInt8], documents: Int64?)]
        do {
            buckets = try client.collection(database: collection.database, name: collection.collection).idBuckets(count)
        } catch let error as MongoError {
            throw JobError(.unavailable, "cannot split \(description) into partitions ($bucketAuto on _id): \(error)")
        }
        let ranges = buckets.indices.map { i in
            SourcePartition(lower: i == 0 ? nil : buckets[i].lowest, upper: i + 1 < buckets.count ? buckets[i + 1].lowest : nil, documents: buckets[i].documents)
        }
        return (ranges, "_id ranges from the server's $bucketAuto on _id")
    }

    public func restricted(to partition: SourcePartition) throws -> any Source {
        MongoCollectionSource(url: url, collection: collection, batchSize: batchSize, lower: partition.lower, upper: partition.upper)
    }

    /// `listIndexes`: every unique index but `_id`'s, with its key's fields in order.
    public func uniqueIndexes() throws -> [UniqueIndex] {
        let client = try client()
        let command = BSONDocument()
        command.writer.append("listIndexes", collection.collection)
        let reply: BSONDocument
        do {
            reply = try client.command(command, database: collection.database)
        } catch let error as MongoError {
            throw JobError(.unavailable, "cannot list the indexes of \(description): \(error)")
        }
        return reply.withUnsafeBytes { bytes in
            guard var it = BSONIterator(document: bytes), it.find("cursor"), var cursor = it.children, cursor.find("firstBatch"),
                  var batch = cursor.children else { return [] }
            var indexes: [UniqueIndex] = []
            while batch.next() {
                guard var index = batch.children else { continue }
                var name = "", fields: [String] = [], unique = false, partial = false
                while index.next() {
                    if index.keyIs("name"), let text = index.utf8 { name = String(decoding: text, as: UTF8.self) }
                    if index.keyIs("unique") { unique = index.bool ?? (index.integer.map { $0 != 0 } ?? false) }
                    if index.keyIs("partialFilterExpression") { partial = true }
                    if index.keyIs("key"), var key = index.children {
                        while key.next() { fields.append(key.key) }
                    }
                }
                if unique, fields != ["_id"], !fields.isEmpty { indexes.append(UniqueIndex(name: name, fields: fields, partial: partial)) }
            }
            return indexes
        }
    }
}
