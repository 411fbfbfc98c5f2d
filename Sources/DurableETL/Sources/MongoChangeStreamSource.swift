import ETLCore
import Foundation
import Mongo

extension MongoCollectionSource {
    /// Where the collection's change stream stands now: a resume token when the stream gives
    /// one at once, else the cluster's operation time read just before opening it (replaying
    /// from there repeats a few changes, which applying changes makes harmless).
    public func changeStreamStart() throws -> ChangeStreamStart {
        let client = try connected()
        let hello: (setName: String?, operationTime: MongoTimestamp?)
        do {
            hello = try client.hello()
        } catch {
            return .unavailable("MongoDB at \(client.redactedURL) did not answer 'hello' (\(error))")
        }
        guard hello.setName != nil else { return .unavailable(Self.standalone(client.servers)) }
        let stream = try client.collection(database: collection.database, name: collection.collection)
            .watch(resumeAfter: nil, startAt: nil, maxAwaitMS: 10, batchSize: 1)
        if try stream.next() == nil, let token = stream.resumeToken { return .token(token) }
        guard let time = hello.operationTime else { return .unavailable("MongoDB at \(client.redactedURL) gave no operation time") }
        return .operationTime(seconds: time.seconds, increment: time.increment)
    }

    static func standalone(_ servers: String) -> String {
        "the MongoDB server \(servers) is not a replica set member, so it has no change stream; run it as a replica set (a single-node one will do)"
    }

    public func changes(from start: ChangeStreamStart, follow: Bool, stop: StopToken) throws -> any Source {
        MongoChangeStreamSource(collectionSource: self, start: start, follow: follow, stop: stop)
    }
}

/// A collection's change stream as a source of `Change`s, in stream order. A position is
/// `{"t": <resume token>, "ct": <cluster time>}` after a change. Opened, it reads up to the
/// cluster time of that moment and ends (a catch-up run), or on until a stop (`follow`),
/// giving a position-only change from time to time on a quiet stream, so that its
/// position is committed before the server's history moves past it.
final class MongoChangeStreamSource: Source {
    let snapshot: MongoCollectionSource
    let start: ChangeStreamStart
    let follow: Bool
    let stop: StopToken
    /// How long a quiet stream waits before its position is committed, with the time it was
    /// seen quiet: the lag `status` shows (the time since the target last provably equalled
    /// the source) stays under this on a quiet source, and a later sync starts from there.
    static let keepalive: Double = 5

    init(collectionSource: MongoCollectionSource, start: ChangeStreamStart, follow: Bool, stop: StopToken) {
        snapshot = collectionSource
        self.start = start
        self.follow = follow
        self.stop = stop
    }

    var collection: SourceCollection { snapshot.collection }
    var description: String { "the change stream of \(snapshot.description)" }

    func identity() throws -> any SourceIdentity { try snapshot.identity() }
    func check(allowEmpty: Bool) throws -> Int64? { nil }
    func checkExists() throws {}

    func open(after position: [UInt8]?, batchSize: Int32) throws -> any DocumentCursor {
        let client = try MongoClient(url: snapshot.url)
        let hello = try client.hello()
        guard hello.setName != nil else { throw JobError(.usage, "cannot sync: " + MongoCollectionSource.standalone(client.servers)) }
        let token = try position.map(Self.token) ?? { if case .token(let token) = start { return token } else { return nil } }()
        var startAt: MongoTimestamp?
        if token == nil, case .operationTime(let seconds, let increment) = start { startAt = MongoTimestamp(seconds: seconds, increment: increment) }
        let stream: MongoChangeStream
        do {
            stream = try client.collection(database: collection.database, name: collection.collection)
                .watch(resumeAfter: token, startAt: startAt, maxAwaitMS: 500, batchSize: batchSize)
        } catch let error as MongoError {
            throw failure(error)
        }
        return Cursor(source: self, stream: stream, until: follow ? nil : hello.operationTime, client: client)
    }

    func position(after batch: [[UInt8]], previous: [UInt8]?) throws -> [UInt8] {
        for envelope in batch.reversed() {
            if let position = envelope.withUnsafeBytes({ raw in Change.parse(raw)?.position.map { Array(raw[$0]) } }) { return position }
        }
        return previous ?? []
    }

    func isTransient(_ error: any Error) -> Bool { (error as? MongoError)?.isTransient == true }

    /// What a failure of the stream means for the job: its history lost (re-run the snapshot),
    /// a stored token it cannot read, or (transient ones) a server away, which the scan retries.
    func failure(_ error: MongoError) -> any Error {
        if error.isChangeStreamHistoryLost {
            return ChangeStreamHistoryLost(lost: "\(description) no longer holds the job's position (\(error)): changes made since are lost to it")
        }
        if error.isFailedToParse {
            return JobError(.ioError, "\(description) cannot resume from the job's stored position (\(error)); \(JobError.untrustedState)")
        }
        if error.code == 40573 { return JobError(.usage, "cannot sync: " + MongoCollectionSource.standalone(snapshot.collection.database)) }
        return error
    }

    static func token(_ position: [UInt8]) throws -> [UInt8] {
        guard let token = position.withUnsafeBytes({ raw -> [UInt8]? in
            guard var it = BSONIterator(document: raw), it.find("t"), let bytes = it.documentBytes else { return nil }
            return Array(bytes)
        }) else { throw JobError(.ioError, "the queue's position is not a change stream position; \(JobError.untrustedState)") }
        return token
    }

    static func position(token: [UInt8], time: MongoTimestamp?) -> [UInt8] {
        let position = BSONDocument()
        if let document = token.withUnsafeBytes({ BSONDocument(copying: $0) }) { position.writer.append("t", document: document) }
        if let time { position.writer.append("ct", timestamp: time) }
        return position.bytes
    }

    /// Events as changes; ends at the first quiet moment or the first event after `until`
    /// (a catch-up), or when a stop is requested.
    private final class Cursor: DocumentCursor {
        let source: MongoChangeStreamSource
        let stream: MongoChangeStream
        let until: MongoTimestamp?
        let client: MongoClient
        private(set) var position: [UInt8]?
        private var ended = false
        private var lastGiven = Date()

        init(source: MongoChangeStreamSource, stream: MongoChangeStream, until: MongoTimestamp?, client: MongoClient) {
            self.source = source
            self.stream = stream
            self.until = until
            self.client = client
        }

        func next() throws -> [UInt8]? {
            while !ended, !source.stop.isStopRequested {
                let event: UnsafeRawBufferPointer?
                do {
                    event = try stream.next()
                } catch let error as MongoError {
                    throw source.failure(error)
                }
                // The server answered (a getMore waits at most maxAwaitMS): a quiet stream is waited on, not wedged.
                Liveness.progressed()
                if let event, let change = try change(event) { return give(change) }
                if event != nil { continue }
                // A quiet moment: every change made before the run began is read.
                if source.follow, Date().timeIntervalSince(lastGiven) < MongoChangeStreamSource.keepalive { continue }
                if !source.follow { ended = true }
                guard let token = stream.resumeToken else { continue }
                let quiet = MongoChangeStreamSource.position(token: token, time: nil)
                if quiet == position { continue }
                return give(Change(mode: nil, id: nil, position: quiet, time: Date().timeIntervalSince1970))
            }
            return nil
        }

        private func give(_ change: Change) -> [UInt8] {
            position = change.position ?? position
            lastGiven = Date()
            return change.encoded
        }

        /// The change an event makes to the documents' rows; nil for an event past `until`
        /// (which ends this catch-up before it).
        private func change(_ event: UnsafeRawBufferPointer) throws -> Change? {
            guard var it = BSONIterator(document: event) else { throw JobError(.failed, "\(source.description) gave an event that is not a document") }
            var operation = "", token: [UInt8]?, time: MongoTimestamp?, wall: Int64?, id: [UInt8]?, document: [UInt8]?
            while it.next() {
                if it.keyIs("operationType"), let text = it.utf8 { operation = String(decoding: text, as: UTF8.self) }
                else if it.keyIs("_id"), let bytes = it.documentBytes { token = Array(bytes) }
                else if it.keyIs("clusterTime") { time = it.timestamp }
                else if it.keyIs("wallTime") { wall = it.dateTimeMillis }
                else if it.keyIs("documentKey"), let bytes = it.documentBytes { id = bytes.withUnsafeBytes(BSONSequence.idElement) }
                else if it.keyIs("fullDocument"), let bytes = it.documentBytes { document = Array(bytes) }
            }
            if let until, let time, time > until {
                ended = true
                return nil
            }
            let position = token.map { MongoChangeStreamSource.position(token: $0, time: time) }
            // When the change was made: the event's wall time in milliseconds where the server
            // gives it (MongoDB 6.0 and later), else its cluster time's whole seconds.
            let at = wall.map { Double($0) / 1000 } ?? time.map { Double($0.seconds) }
            switch operation {
            case "insert", "update", "replace":
                // No full document: it has been deleted since the event.
                if let document { return Change.replace(document, position: position, time: at) }
                return Change(mode: .delete, id: id, position: position, time: at)
            case "delete":
                return Change(mode: .delete, id: id, position: position, time: at)
            case "drop", "rename", "dropDatabase", "invalidate":
                throw JobError(.noInput, "the collection \(source.collection.database).\(source.collection.collection) was dropped or renamed "
                    + "(a '\(operation)' event in its change stream): there is nothing left to follow; re-run the snapshot with 'etl-job start --fresh'")
            default:
                return Change(mode: nil, id: nil, position: position, time: at)
            }
        }
    }
}
