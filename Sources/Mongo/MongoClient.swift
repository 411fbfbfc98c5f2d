import CMongoc
import ETLCore
import Synchronization

/// An error reported by libmongoc, with its domain, code and message, and what kind of
/// failure it is: the one table of it (`Kind`), so that no caller reads the message text.
public struct MongoError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        /// The network or the server's state (a restart, an election, a timeout): worth retrying.
        case transient
        /// The server says no (authentication, authorization, an invalid command): not worth retrying.
        case refused
        /// What the job stored for the source cannot be used (a damaged position).
        case damagedState
        /// What the user gave cannot be used (a malformed URL).
        case badInput
    }

    public let domain: UInt32
    public let code: UInt32
    public let message: String
    private let explicitKind: Kind?

    init(_ error: bson_error_t) {
        domain = error.domain
        code = error.code
        message = withUnsafeBytes(of: error.message) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        explicitKind = nil
    }

    public init(message: String, kind: Kind) {
        domain = 0
        code = 0
        self.message = message
        explicitKind = kind
    }

    public var description: String { message }

    /// Server error codes that mean "try again" (MongoDB's retryable and network error codes).
    static let transientServerCodes: Set<UInt32> = [
        6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 43, 134, 150,
    ]

    public var kind: Kind {
        if let explicitKind { return explicitKind }
        switch domain {
        case MONGOC_ERROR_STREAM.rawValue, MONGOC_ERROR_SERVER_SELECTION.rawValue, MONGOC_ERROR_PROTOCOL.rawValue:
            return .transient
        case MONGOC_ERROR_CLIENT.rawValue:
            return code == MONGOC_ERROR_CLIENT_AUTHENTICATE.rawValue ? .refused : .transient
        case MONGOC_ERROR_CURSOR.rawValue:
            return .transient
        default:
            return Self.transientServerCodes.contains(code) ? .transient : .refused
        }
    }

    public var isTransient: Bool { kind == .transient }

    /// The server's "namespace not found" (code 26; older servers send only the text), as for
    /// a collection that does not exist.
    public var isNamespaceNotFound: Bool { code == 26 || message == "ns not found" }
}

private let initializeDriver: Void = {
    // The driver logs warnings of its own to stderr (some during mongoc_init, such as
    // "Falling back to malloc for counters"); our errors carry what matters.
    mongoc_log_set_handler(nil, nil)
    mongoc_init()
}()

/// A connection pool to one deployment; use it from one thread at a time.
public final class MongoClient {
    let handle: OpaquePointer
    public let redactedURL: String
    /// The deployment's hosts as the URL lists them (`host:port,host:port`), without credentials.
    public let servers: String

    /// Parses `url` and prepares a client. Connections are made lazily, so call `ping()`
    /// to find out whether the server answers.
    public init(url: String, serverSelectionTimeoutMS: Int32 = 5000) throws {
        _ = initializeDriver
        Secrets.register(url: url)
        redactedURL = Redact.url(url)
        var error = bson_error_t()
        guard let uri = mongoc_uri_new_with_error(url, &error) else {
            throw MongoError(message: Redact.url("malformed MongoDB URL \(redactedURL): \(MongoError(error).message)"), kind: .badInput)
        }
        defer { mongoc_uri_destroy(uri) }
        Secrets.register(mongoc_uri_get_password(uri).map { String(cString: $0) })
        servers = Self.hostList(uri)
        if !url.contains("serverSelectionTimeoutMS") {
            mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, serverSelectionTimeoutMS)
        }
        if !url.contains("connectTimeoutMS") {
            mongoc_uri_set_option_as_int32(uri, MONGOC_URI_CONNECTTIMEOUTMS, min(serverSelectionTimeoutMS, 5000))
        }
        guard let client = mongoc_client_new_from_uri_with_error(uri, &error) else {
            throw MongoError(message: "malformed MongoDB URL \(redactedURL): \(MongoError(error).message)", kind: .badInput)
        }
        mongoc_client_set_error_api(client, 2)
        handle = client
    }

    deinit { mongoc_client_destroy(handle) }

    private static func hostList(_ uri: OpaquePointer) -> String {
        var hosts: [String] = []
        var host = mongoc_uri_get_hosts(uri)
        while let h = host {
            let name = withUnsafeBytes(of: h.pointee.host_and_port) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            hosts.append(name)
            host = UnsafePointer(h.pointee.next)
        }
        return hosts.isEmpty ? (mongoc_uri_get_service(uri).map { String(cString: $0) } ?? "") : hosts.joined(separator: ",")
    }

    /// The names of the collections of `database`, sorted.
    public func collectionNames(database: String) throws -> [String] {
        let db = mongoc_client_get_database(handle, database)
        defer { mongoc_database_destroy(db) }
        var error = bson_error_t()
        guard let names = mongoc_database_get_collection_names_with_opts(db, nil, &error) else { throw MongoError(error) }
        defer { bson_strfreev(names) }
        var result: [String] = []
        var i = 0
        while let name = names[i] {
            result.append(String(cString: name))
            i += 1
        }
        return result.sorted()
    }

    /// Round-trips a `ping` to the server.
    public func ping() throws {
        let command = BSONDocument()
        command.writer.append("ping", Int32(1))
        try runCommand(command, database: "admin")
    }

    /// Drops a whole database; one that does not exist is not an error.
    public func dropDatabase(_ name: String) throws {
        let database = mongoc_client_get_database(handle, name)
        defer { mongoc_database_destroy(database) }
        var error = bson_error_t()
        guard mongoc_database_drop_with_opts(database, nil, &error) else { throw MongoError(error) }
    }

    /// Runs a database command and throws the server's error, if any.
    public func runCommand(_ command: BSONDocument, database: String) throws {
        var error = bson_error_t()
        guard mongoc_client_command_simple(handle, database, command.handle, nil, nil, &error) else {
            throw MongoError(error)
        }
    }

    public func collection(database: String, name: String) -> MongoCollection {
        MongoCollection(client: self, database: database, handle: mongoc_client_get_collection(handle, database, name))
    }
}

public final class MongoCollection {
    private let client: MongoClient  // keeps the client alive as long as the collection
    let database: String
    let handle: OpaquePointer

    init(client: MongoClient, database: String, handle: OpaquePointer) {
        self.client = client
        self.database = database
        self.handle = handle
    }

    deinit { mongoc_collection_destroy(handle) }

    /// Documents in ascending `_id` order, starting after the `_id` held by `afterIdElement`
    /// (a document `{"_id": value}`), or from the beginning when it is nil; within a range
    /// when `from` (inclusive) or `before` (exclusive) name an `_id` the same way.
    ///
    /// Binary `_id`s sort by length, then subtype, then bytes in MongoDB; servers differ (the
    /// bundled wire server sorts them by length and bytes and compares ranges by bytes alone).
    /// So a binary position or bound asks the server for every binary `_id`, and this side
    /// weighs them in MongoDB's order (`BinaryIdWindow`): which documents a range holds never
    /// depends on the server, and ranges that meet at a binary `_id` share no document.
    ///
    /// A server that compares and sorts binaries as MongoDB does (`ordersBinaryLikeMongoDB`, asked
    /// once per process) bounds them itself, from the `_id` index; `binaryOnServer` decides
    /// instead (tests).
    public func scanById(afterIdElement: [UInt8]?, from lower: [UInt8]? = nil, before upper: [UInt8]? = nil, batchSize: Int32,
                         binaryOnServer: Bool? = nil) throws -> MongoCursor {
        let filter = BSONDocument()
        let anyBinary = [afterIdElement ?? lower, upper].contains { $0?.withUnsafeBytes { BinaryId(idOf: $0) } != nil }
        let onServer = !anyBinary || (binaryOnServer ?? ordersBinaryLikeMongoDB())
        var (from, before, position): (BinaryId?, BinaryId?, BinaryId?) = (nil, nil, nil)
        var clauses: [(BSONWriter) -> Void] = []
        if let afterIdElement {
            let (clause, binary) = try Self.idClause(afterIdElement, operator: "$gt", types: BSONType.typeAliasesSorting(after:), what: "extract position",
                                                     binaryOnServer: onServer)
            clauses.append(clause)
            position = binary
        } else if let lower {
            let (clause, binary) = try Self.idClause(lower, operator: "$gte", types: BSONType.typeAliasesSorting(after:), what: "partition bound",
                                                     binaryOnServer: onServer)
            clauses.append(clause)
            from = binary
        }
        if let upper {
            let (clause, binary) = try Self.idClause(upper, operator: "$lt", types: BSONType.typeAliasesSorting(before:), what: "partition bound",
                                                     binaryOnServer: onServer)
            clauses.append(clause)
            before = binary
        }
        let window = BinaryIdWindow(from: from, before: before, skipThrough: position,
                                    positionExists: try position != nil && contains(idElement: afterIdElement!))
        if clauses.count == 1 {
            clauses[0](filter.writer)
        } else if clauses.count > 1 {
            filter.writer.appendArray("$and") { and in
                for (i, clause) in clauses.enumerated() { and.appendDocument(String(i)) { clause($0) } }
            }
        }
        let options = BSONDocument()
        options.writer.appendDocument("sort") { $0.append("_id", Int32(1)) }
        options.writer.append("batchSize", batchSize)
        guard let cursor = mongoc_collection_find_with_opts(handle, filter.handle, options.handle, nil) else {
            throw MongoError(message: "could not open a cursor", kind: .transient)
        }
        return MongoCursor(collection: self, handle: cursor, window: window.isEmpty ? nil : window)
    }

    /// Whether the server compares binary values in queries, and sorts them, as MongoDB does:
    /// by length, then subtype, then bytes. Asked once per process and deployment with four
    /// literal values (`$documents`; where the server has no `$documents`, one document of
    /// the collection replaced by them); a server that cannot say is taken not to.
    public func ordersBinaryLikeMongoDB() -> Bool {
        if let known = BinaryOrder.known.withLock({ $0[client.servers] }) { return known }
        let answer = (try? BinaryOrder.probe(self)) ?? false
        BinaryOrder.known.withLock { $0[client.servers] = answer }
        return answer
    }

    /// Binary values of a literal pipeline's `v`, in the order the server returns them.
    fileprivate func literalBinaries(_ stages: (BSONWriter, Int) -> Void, values: [BinaryId]) throws -> [BinaryId] {
        func run(_ pipeline: BSONDocument, onDatabase: Bool) throws -> [BinaryId] {
            let cursor: OpaquePointer?
            if onDatabase {
                let db = mongoc_client_get_database(client.handle, database)
                defer { mongoc_database_destroy(db) }
                cursor = mongoc_database_aggregate(db, pipeline.handle, nil, nil)
            } else {
                cursor = mongoc_collection_aggregate(handle, MONGOC_QUERY_NONE, pipeline.handle, nil, nil)
            }
            guard let cursor else { throw MongoError(message: "could not open an aggregation", kind: .transient) }
            let results = MongoCursor(collection: self, handle: cursor)
            var found: [BinaryId] = []
            while let document = try results.next() {
                guard var it = BSONIterator(document: document), it.find("v"), let value = it.binary else { continue }
                found.append(BinaryId(value))
            }
            return found
        }
        func literal(_ writer: BSONWriter, _ key: String, _ value: BinaryId) { writer.append(key, binary: value.bytes, subtype: value.subtype) }
        let documents = BSONDocument()
        documents.writer.appendArray("pipeline") { stage in
            stage.appendDocument("0") { $0.appendArray("$documents") { list in
                for (i, value) in values.enumerated() { list.appendDocument(String(i)) { literal($0, "v", value) } }
            } }
            stages(stage, 1)
        }
        do {
            return try run(documents, onDatabase: true)
        } catch {
            let projected = BSONDocument()
            projected.writer.appendArray("pipeline") { stage in
                stage.appendDocument("0") { $0.append("$limit", Int32(1)) }
                stage.appendDocument("1") { $0.appendDocument("$project") { p in
                    p.append("_id", Int32(0))
                    p.appendDocument("v") { $0.appendArray("$literal") { list in
                        for (i, value) in values.enumerated() { literal(list, String(i), value) }
                    } }
                } }
                stage.appendDocument("2") { $0.append("$unwind", "$v") }
                stages(stage, 3)
            }
            return try run(projected, onDatabase: false)
        }
    }

    /// Whether a document has the `_id` held by `element` (`{"_id": value}`).
    func contains(idElement element: [UInt8]) throws -> Bool {
        guard let filter = element.withUnsafeBytes({ BSONDocument(copying: $0) }) else {
            throw MongoError(message: "the stored extract position is not a BSON document", kind: .damagedState)
        }
        let options = BSONDocument()
        options.writer.append("limit", Int64(1))
        options.writer.appendDocument("projection") { $0.append("_id", Int32(1)) }
        guard let cursor = mongoc_collection_find_with_opts(handle, filter.handle, options.handle, nil) else {
            throw MongoError(message: "could not open a cursor", kind: .transient)
        }
        return try MongoCursor(collection: self, handle: cursor).next() != nil
    }

    /// The filter `_id <op> value`, for `value` held by `element` (`{"_id": value}`): `$gt`,
    /// `$gte` and `$lt` compare within one type only ({_id: {$gt: 5}} skips "abc"), so the
    /// types that sort on the asked side (`types`) are asked for by type. A binary value the
    /// server is not to compare (`binaryOnServer` false) is asked for as every binary _id, and
    /// returned for the caller to compare.
    private static func idClause(_ element: [UInt8], operator op: String, types: (BSONType) -> [String], what: String,
                                 binaryOnServer: Bool) throws -> (clause: (BSONWriter) -> Void, binary: BinaryId?) {
        try element.withUnsafeBytes { bytes in
            guard var it = BSONIterator(document: bytes), it.next() else {
                throw MongoError(message: "the stored \(what) is not a BSON document", kind: .damagedState)
            }
            let copy = Array(bytes)
            let binary = binaryOnServer ? nil : it.binary.map(BinaryId.init)
            let others = types(it.type)
            let clause: (BSONWriter) -> Void = { writer in
                copy.withUnsafeBytes { raw in
                    var it = BSONIterator(document: raw)!
                    _ = it.next()
                    writer.appendArray("$or") { or in
                        if binary != nil {
                            or.appendDocument("0") { $0.appendDocument("_id") { $0.append("$type", "binData") } }
                        } else {
                            or.appendDocument("0") { $0.appendDocument("_id") { range in it.append(to: range, as: op) } }
                        }
                        if !others.isEmpty {
                            or.appendDocument("1") { $0.appendDocument("_id") { t in
                                t.appendArray("$type") { list in for (i, alias) in others.enumerated() { list.append(String(i), alias) } }
                            } }
                        }
                    }
                }
            }
            return (clause, binary)
        }
    }

    /// `count` ranges of `_id` with about as many documents each, from `$bucketAuto` (which
    /// sorts every `_id` on the server, across types in BSON order): each bucket's lowest
    /// `_id` (as `{"_id": value}`) and its document count. Binary lowest `_id`s are put in
    /// MongoDB's order where the server sorted them otherwise (their counts then unknown), so
    /// that the ranges they bound, weighed in that order by `scanById`, never overlap.
    public func idBuckets(_ count: Int) throws -> [(lowest: [UInt8], documents: Int64?)] {
        let buckets = try serverBuckets(count)
        let found = buckets.indices.dropFirst().compactMap { i in buckets[i].lowest.withUnsafeBytes { BinaryId(idOf: $0) }.map { (i, $0) } }
        let (binary, ids) = (found.map(\.0), found.map(\.1))
        guard ids != ids.sorted() else { return buckets.map { ($0.lowest, $0.documents) } }
        let order = ids.indices.sorted { ids[$0] < ids[$1] }
        var result: [(lowest: [UInt8], documents: Int64?)] = buckets.map { ($0.lowest, $0.documents) }
        for (slot, k) in zip(binary, order) { result[slot] = (buckets[binary[k]].lowest, nil) }
        // The bucket before the first binary bound now ends elsewhere too.
        if let first = binary.first { result[first - 1].documents = nil }
        return result
    }

    private func serverBuckets(_ count: Int) throws -> [(lowest: [UInt8], documents: Int64)] {
        let pipeline = BSONDocument()
        pipeline.writer.appendArray("pipeline") { stages in
            stages.appendDocument("0") { $0.appendDocument("$bucketAuto") { b in
                b.append("groupBy", "$_id")
                b.append("buckets", Int32(count))
            } }
        }
        guard let cursor = mongoc_collection_aggregate(handle, MONGOC_QUERY_NONE, pipeline.handle, nil, nil) else {
            throw MongoError(message: "could not open an aggregation", kind: .transient)
        }
        let results = MongoCursor(collection: self, handle: cursor)
        var buckets: [(lowest: [UInt8], documents: Int64)] = []
        while let document = try results.next() {
            guard var it = BSONIterator(document: document), it.find("_id"), var bounds = it.children, bounds.find("min") else {
                throw MongoError(message: "the server's $bucketAuto gave a bucket without its bounds", kind: .badInput)
            }
            let lowest = BSONDocument()
            bounds.append(to: lowest.writer, as: "_id")
            var counted = BSONIterator(document: document)!
            let documents = counted.find("count") ? counted.integer ?? 0 : 0
            buckets.append((lowest.bytes, documents))
        }
        return buckets
    }

    public func insertMany(_ documents: [BSONDocument]) throws {
        guard !documents.isEmpty else { return }
        var pointers: [OpaquePointer?] = documents.map { $0.handle }
        var error = bson_error_t()
        let ok = pointers.withUnsafeMutableBufferPointer { buf in
            buf.baseAddress!.withMemoryRebound(to: Optional<OpaquePointer>.self, capacity: buf.count) {
                mongoc_collection_insert_many(handle, $0, buf.count, nil, nil, &error)
            }
        }
        guard ok else { throw MongoError(error) }
    }

    /// Drops the collection; a collection that does not exist is not an error.
    public func drop() throws {
        var error = bson_error_t()
        if !mongoc_collection_drop_with_opts(handle, nil, &error) {
            let e = MongoError(error)
            if e.isNamespaceNotFound { return }
            throw e
        }
    }

    /// The collection's document count from its metadata (no scan), for progress and ETA.
    public func estimatedCount() throws -> Int64 {
        var error = bson_error_t()
        let n = mongoc_collection_estimated_document_count(handle, nil, nil, nil, &error)
        guard n >= 0 else { throw MongoError(error) }
        return n
    }
}

/// A server-side cursor. Each document is borrowed until the next call to `next()`.
public final class MongoCursor {
    private let collection: MongoCollection
    private let handle: OpaquePointer
    /// Which binary `_id`s this scan keeps, weighed here (see `scanById`).
    private var window: BinaryIdWindow?

    init(collection: MongoCollection, handle: OpaquePointer, window: BinaryIdWindow? = nil) {
        self.collection = collection
        self.handle = handle
        self.window = window
    }

    deinit { mongoc_cursor_destroy(handle) }

    /// The next document's bytes, or nil at the end of the results.
    public func next() throws -> UnsafeRawBufferPointer? {
        var document: OpaquePointer?
        while mongoc_cursor_next(handle, &document), let document {
            let data = UnsafeRawPointer(bson_get_data(document)!)
            let length = Int(data.loadUnaligned(as: Int32.self).littleEndian)
            let bytes = UnsafeRawBufferPointer(start: data, count: length)
            if window != nil, try !window!.keeps(bytes) { continue }
            return bytes
        }
        var error = bson_error_t()
        if mongoc_cursor_error(handle, &error) { throw MongoError(error) }
        try window?.checkPositionPassed()
        return nil
    }
}

/// A binary `_id`, ordered as MongoDB orders them: by length, then subtype, then bytes.
struct BinaryId: Comparable {
    let subtype: UInt8
    let bytes: [UInt8]

    init(_ value: (subtype: UInt8, bytes: UnsafeRawBufferPointer)) {
        (subtype, bytes) = (value.subtype, Array(value.bytes))
    }

    init(subtype: UInt8, bytes: [UInt8]) {
        (self.subtype, self.bytes) = (subtype, bytes)
    }

    /// The binary `_id` of a document; nil when its `_id` is of another type.
    init?(idOf document: UnsafeRawBufferPointer) {
        guard var it = BSONIterator(document: document), it.find("_id"), let value = it.binary else { return nil }
        self.init(value)
    }

    static func < (a: BinaryId, b: BinaryId) -> Bool {
        if a.bytes.count != b.bytes.count { return a.bytes.count < b.bytes.count }
        if a.subtype != b.subtype { return a.subtype < b.subtype }
        return a.bytes.lexicographicallyPrecedes(b.bytes)
    }
}

/// What `ordersBinaryLikeMongoDB` found, per deployment, and how it asks.
enum BinaryOrder {
    static let known = Mutex<[String: Bool]>([:])

    /// Values MongoDB orders p < q < s < r: by length first (p, one byte of 0xff, before q),
    /// then subtype (r, subtype 5, after s), then bytes. Compared by bytes alone, or by length
    /// and bytes, they come in another order, and other values lie between q and r.
    static let (p, q, r, s) = (BinaryId(subtype: 0, bytes: [0xff]), BinaryId(subtype: 0, bytes: [0, 0]),
                               BinaryId(subtype: 5, bytes: [0, 0]), BinaryId(subtype: 0, bytes: [0xff, 0xff]))

    /// MongoDB's answers: the four sorted, and those `$gt` q and `$lt` r.
    static func isMongoDBs(sorted: [BinaryId], between: [BinaryId]) -> Bool {
        sorted == [p, q, s, r] && between == [s]
    }

    static func probe(_ collection: MongoCollection) throws -> Bool {
        let values = [s, r, q, p]
        let sorted = try collection.literalBinaries({ stage, at in
            stage.appendDocument(String(at)) { $0.appendDocument("$sort") { $0.append("v", Int32(1)) } }
        }, values: values)
        let between = try collection.literalBinaries({ stage, at in
            stage.appendDocument(String(at)) { $0.appendDocument("$match") { m in m.appendDocument("v") { range in
                range.append("$gt", binary: q.bytes, subtype: q.subtype)
                range.append("$lt", binary: r.bytes, subtype: r.subtype)
            } } }
        }, values: values)
        return isMongoDBs(sorted: sorted, between: between)
    }
}

/// The binary `_id`s a scan keeps of the every-binary-`_id` answer it asked for, in the
/// server's order: those in [`from`, `before`) in MongoDB's order, after `skipThrough`.
struct BinaryIdWindow {
    let from: BinaryId?
    let before: BinaryId?
    /// The extract position: the leading binary `_id`s up to it were read before.
    private(set) var skipThrough: BinaryId?
    /// Whether the position's document still exists: then the leading documents are skipped
    /// through it, whatever order the server sorts binaries in. Otherwise (deleted since) those
    /// sorting at or before it in MongoDB's order are, which is exact only where the server
    /// sorts them that way: a binary `_id` out of that order then stops the scan.
    let positionExists: Bool
    private let checksOrder: Bool
    private var previous: BinaryId?

    init(from: BinaryId? = nil, before: BinaryId? = nil, skipThrough: BinaryId? = nil, positionExists: Bool = false) {
        (self.from, self.before, self.skipThrough, self.positionExists) = (from, before, skipThrough, positionExists)
        checksOrder = skipThrough != nil && !positionExists
    }

    var isEmpty: Bool { from == nil && before == nil && skipThrough == nil }

    /// The position's document, found when the scan opened, deleted before the scan reached
    /// it: what was skipped cannot be told apart from what was read before. A transient
    /// error, so that the scan reopens after the position again (and finds it gone).
    private static let positionGone = MongoError(message: "the document at the extract position was deleted while the scan reopened after it", kind: .transient)

    func checkPositionPassed() throws {
        if skipThrough != nil && positionExists { throw Self.positionGone }
    }

    mutating func keeps(_ document: UnsafeRawBufferPointer) throws -> Bool {
        guard let id = BinaryId(idOf: document) else {
            try checkPositionPassed()
            return true
        }
        if checksOrder {
            if let previous, id < previous {
                throw MongoError(message: "the server sorts binary _ids in an order other than MongoDB's (length, subtype, bytes), and the document "
                                 + "at the extract position is gone: where the scan stopped cannot be found; start again with 'etl-job start --fresh'",
                                 kind: .refused)
            }
            previous = id
        }
        if let position = skipThrough {
            if positionExists {
                if id == position { skipThrough = nil }
                return false
            }
            if id <= position { return false }
            skipThrough = nil
        }
        if let from, id < from { return false }
        if let before, id >= before { return false }
        return true
    }
}

extension BSONType {
    /// MongoDB's order of types when sorting, as `$type` aliases, bracket by bracket.
    private static let sortBrackets: [[String]] = [
        ["minKey"], ["null", "undefined"], ["double", "int", "long", "decimal"], ["symbol", "string"], ["object"],
        ["array"], ["binData"], ["objectId"], ["bool"], ["date"], ["timestamp"], ["regex"], ["maxKey"],
    ]

    private var sortBracket: Int? {
        switch self {
        case .null, .undefined: 1
        case .double, .int32, .int64, .decimal128: 2
        case .symbol, .utf8: 3
        case .document: 4
        case .array: 5
        case .binary: 6
        case .objectId: 7
        case .bool: 8
        case .dateTime: 9
        case .timestamp: 10
        case .regex: 11
        default: nil
        }
    }

    /// The `$type` aliases of every type that sorts after values of this type.
    static func typeAliasesSorting(after type: BSONType) -> [String] {
        guard let bracket = type.sortBracket else { return [] }
        return sortBrackets[(bracket + 1)...].flatMap { $0 }
    }

    /// The `$type` aliases of every type that sorts before values of this type.
    static func typeAliasesSorting(before type: BSONType) -> [String] {
        guard let bracket = type.sortBracket else { return [] }
        return sortBrackets[..<bracket].flatMap { $0 }
    }
}

public enum MongoDriver {
    /// The libmongoc this process runs with.
    public static var version: String { String(cString: mongoc_get_version()) }

    /// Debian's libmongoc initializes itself when the library loads, before `main`, and keeps
    /// its counters in a shared-memory segment, /dev/shm/mongoc-<pid>, that only
    /// `mongoc_cleanup` removes: every killed run would leak one, and a later process that gets
    /// the same pid prints a warning on stderr. Its name is removed at once instead: this
    /// process keeps the mapping (the counters go on working, and `mongoc_cleanup`'s own
    /// removal finds nothing), and nothing is left behind however the process ends. (Executing
    /// itself again with `MONGOC_DISABLE_SHM` set, as before, cost every command 16 ms.)
    public static func keepCountersOutOfSharedMemory() {
        // shm_unlink("/mongoc-<pid>"), which glibc implements as this unlink.
        _ = unlink("/dev/shm/mongoc-\(getpid())")
    }
}
