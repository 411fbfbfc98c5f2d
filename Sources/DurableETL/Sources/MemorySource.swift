import ETLCore
import Foundation
import Mongo
import Queue
import Synchronization

/// Documents held in memory, for the engine's own tests: extract → queue → load → checkpoint
/// → resume without a MongoDB server. A position is `{"index": n}`, the count of documents
/// read. A process that resumes a job on it registers the same documents under the same
/// name first (`register`); the identity records their count and checksum, so other
/// documents are refused like another file would be.
public final class MemorySource: Source {
    public let name: String
    public let collection: SourceCollection
    private let storage: [[UInt8]]
    private let keeps: Bool

    /// `keepsDocuments`: whether the queue may leave batches here (as for a plain file) rather
    /// than copy them.
    public init(name: String, documents: [[UInt8]], keepsDocuments: Bool = false) {
        self.name = name
        storage = documents
        keeps = keepsDocuments
        collection = SourceCollection(database: "memory", collection: name)
    }

    private static let registry = Mutex<[String: MemorySource]>([:])

    /// Makes `source` the one a recorded job named `source.name` reopens.
    public static func register(_ source: MemorySource) {
        registry.withLock { $0[source.name] = source }
    }

    public var description: String { "the in-memory source \(name)" }

    /// The registered source `name`, as a command would name another source.
    public struct Choice: SourceChoice {
        public let name: String

        public init(name: String) { self.name = name }

        public var option: String { "--memory" }
        public var impliedCollection: SourceCollection? { SourceCollection(database: "memory", collection: name) }

        public func source(_ settings: JobSettings, collection: SourceCollection) -> any Source {
            MemorySource.registry.withLock { $0[name] } ?? MemorySource(name: name, documents: [])
        }
    }

    public struct Identity: SourceIdentity, Equatable {
        public static let kind = "memory"
        public var memoryName: String
        public var count: Int
        public var checksum: UInt32

        public var names: SourceCollection { SourceCollection(database: "memory", collection: memoryName) }
        public var location: String { "memory \(memoryName)" }

        public func differences(from given: Identity, locationNamed: Bool) -> [IdentityDifference] {
            self == given ? [] : [IdentityDifference("in-memory documents", "\(memoryName): \(count) (\(checksum))", "\(given.memoryName): \(given.count) (\(given.checksum))")]
        }

        public func reopen(_ settings: JobSettings, collection: SourceCollection) -> any Source {
            MemorySource.registry.withLock { $0[memoryName] } ?? MemorySource(name: memoryName, documents: [])
        }

        public func status(at position: [UInt8]?, extractionFinished: Bool) -> SourceStatus { SourceStatus() }
    }

    public func identity() throws -> any SourceIdentity {
        Identity(memoryName: name, count: storage.count, checksum: BatchIntegrity.checksum(storage))
    }

    public func check(allowEmpty: Bool) throws -> Int64? {
        if storage.isEmpty && !allowEmpty {
            throw JobError(.noInput, "\(description) holds no document; add --allow-empty to run on it anyway")
        }
        return Int64(storage.count)
    }

    public func checkExists() throws {}

    public func open(after position: [UInt8]?, batchSize: Int32) throws -> any DocumentCursor {
        Cursor(storage, from: try Self.index(position))
    }

    public func position(after batch: [[UInt8]], previous: [UInt8]?) throws -> [UInt8] {
        Self.encode(try Self.index(previous) + batch.count)
    }

    public var keepsDocuments: Bool { keeps }

    /// Changes to in-memory documents are what the test registers as `<name>-changes`: a
    /// source of `Change` envelopes.
    public func changeStreamStart() throws -> ChangeStreamStart { .token([]) }

    public func changes(from start: ChangeStreamStart, follow: Bool, stop: StopToken) throws -> any Source {
        Self.registry.withLock { $0[name + "-changes"] } ?? MemorySource(name: name + "-changes", documents: [])
    }

    public func documents(from start: [UInt8]?, to end: [UInt8], batch: UInt64, check: ([UInt8]) throws -> Void) throws -> [UInt8] {
        let (first, last) = (try Self.index(start), try Self.index(end))
        guard first < last, last <= storage.count else { throw JobError(.ioError, "batch \(batch) lies outside \(description)") }
        let payload = storage[first..<last].flatMap { $0 }
        try check(payload)
        return payload
    }

    static func encode(_ index: Int) -> [UInt8] {
        let document = BSONDocument()
        document.writer.append("index", Int64(index))
        return document.bytes
    }

    static func index(_ position: [UInt8]?) throws -> Int {
        guard let position else { return 0 }
        guard let value = position.withUnsafeBytes({ bytes -> Int64? in
            guard var it = BSONIterator(document: bytes), it.find("index") else { return nil }
            return it.integer
        }) else { throw JobError(.ioError, "the queue's position is not an index; \(JobError.untrustedState)") }
        return Int(value)
    }

    private final class Cursor: DocumentCursor {
        let documents: [[UInt8]]
        var index: Int
        let start: Int

        init(_ documents: [[UInt8]], from index: Int) {
            self.documents = documents
            self.index = index
            start = index
        }

        var position: [UInt8]? { index > start ? MemorySource.encode(index) : nil }

        func next() throws -> [UInt8]? {
            guard index < documents.count else { return nil }
            defer { index += 1 }
            return documents[index]
        }
    }
}
