import CMongoc

/// A MongoDB timestamp (a cluster time): seconds since the Unix epoch and an ordinal.
public struct MongoTimestamp: Sendable, Equatable, Comparable, Codable {
    public var seconds: UInt32
    public var increment: UInt32

    public init(seconds: UInt32, increment: UInt32) {
        self.seconds = seconds
        self.increment = increment
    }

    public static func < (a: MongoTimestamp, b: MongoTimestamp) -> Bool {
        (a.seconds, a.increment) < (b.seconds, b.increment)
    }
}

extension BSONIterator {
    /// A BSON timestamp element's value.
    public var timestamp: MongoTimestamp? {
        guard type == .timestamp else { return nil }
        var copy = self
        return copy.withRaw { raw in
            var seconds: UInt32 = 0, increment: UInt32 = 0
            bson_iter_timestamp(raw, &seconds, &increment)
            return MongoTimestamp(seconds: seconds, increment: increment)
        }
    }
}

extension BSONWriter {
    public func append(_ key: String, timestamp: MongoTimestamp) {
        _ = bson_append_timestamp(handle, key, Int32(key.utf8.count), timestamp.seconds, timestamp.increment)
    }
}

extension MongoError {
    /// The server no longer holds the stream's history from the position asked for
    /// (ChangeStreamHistoryLost 286, ChangeStreamFatalError 280, CappedPositionLost 136).
    public var isChangeStreamHistoryLost: Bool { [286, 280, 136].contains(code) && domain != 0 }
    /// The server cannot read what it was given (FailedToParse 9, BadValue 2), such as a
    /// resume token that is not one.
    public var isFailedToParse: Bool { [9, 2].contains(code) && domain != 0 }
}

extension MongoClient {
    /// Runs a command and returns the server's reply.
    public func command(_ command: BSONDocument, database: String) throws -> BSONDocument {
        var error = bson_error_t()
        let reply = BSONDocument.Storage()
        defer { reply.destroy() }
        guard mongoc_client_command_simple(handle, database, command.handle, nil, reply.pointer, &error) else {
            throw MongoError(error)
        }
        return reply.copy()
    }

    /// What `hello` says a job needs: the replica set's name (nil on a standalone server,
    /// which has no change stream) and the cluster's current time.
    public func hello() throws -> (setName: String?, operationTime: MongoTimestamp?) {
        let command = BSONDocument()
        command.writer.append("hello", Int32(1))
        let reply = try self.command(command, database: "admin")
        return reply.withUnsafeBytes { bytes in
            var setName: String?
            var time: MongoTimestamp?
            guard var it = BSONIterator(document: bytes) else { return (nil, nil) }
            while it.next() {
                if it.keyIs("setName"), let name = it.utf8 { setName = String(decoding: name, as: UTF8.self) }
                if it.keyIs("operationTime") { time = it.timestamp }
            }
            return (setName, time)
        }
    }
}

extension MongoCollection {
    /// The collection's change stream: events after `resumeAfter` (a resume token), or from
    /// `startAt` (a cluster time, inclusive), or from now; each with the document as it is now
    /// (`fullDocument: updateLookup`, null when it has been deleted since).
    public func watch(resumeAfter token: [UInt8]?, startAt: MongoTimestamp?, maxAwaitMS: Int32, batchSize: Int32) throws -> MongoChangeStream {
        let options = BSONDocument()
        let w = options.writer
        w.append("fullDocument", "updateLookup")
        w.append("maxAwaitTimeMS", Int64(maxAwaitMS))
        w.append("batchSize", batchSize)
        if let token, let document = token.withUnsafeBytes({ BSONDocument(copying: $0) }) {
            w.append("resumeAfter", document: document)
        } else if let startAt {
            w.append("startAtOperationTime", timestamp: startAt)
        }
        let pipeline = BSONDocument()
        let stream = MongoChangeStream(collection: self, handle: mongoc_collection_watch(handle, pipeline.handle, options.handle))
        try stream.checkError()
        return stream
    }
}

/// One change stream; each event is borrowed until the next call. libmongoc resumes it
/// by itself once after a network error; any other failure is thrown.
public final class MongoChangeStream {
    private let collection: MongoCollection
    private let handle: OpaquePointer

    init(collection: MongoCollection, handle: OpaquePointer) {
        self.collection = collection
        self.handle = handle
    }

    deinit { mongoc_change_stream_destroy(handle) }

    /// The next event, or nil when the server had none within the wait (or the error).
    public func next() throws -> UnsafeRawBufferPointer? {
        var event: OpaquePointer?
        if mongoc_change_stream_next(handle, &event), let event {
            let data = UnsafeRawPointer(bson_get_data(event)!)
            return UnsafeRawBufferPointer(start: data, count: Int(data.loadUnaligned(as: Int32.self).littleEndian))
        }
        try checkError()
        return nil
    }

    /// Where the stream stands: after the last event returned, or after the last batch
    /// when it brought none (a copy; libmongoc overwrites its own on the next call).
    public var resumeToken: [UInt8]? {
        guard let token = mongoc_change_stream_get_resume_token(handle) else { return nil }
        let data = UnsafeRawPointer(bson_get_data(token)!)
        return Array(UnsafeRawBufferPointer(start: data, count: Int(data.loadUnaligned(as: Int32.self).littleEndian)))
    }

    func checkError() throws {
        var error = bson_error_t()
        var reply: OpaquePointer?
        if mongoc_change_stream_error_document(handle, &error, &reply) { throw MongoError(error) }
    }
}
