import CLibPQ
import ETLCore
import Foundation

/// An error from libpq or the server: the SQLSTATE (when the server sent one) and its message.
public struct PGError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable {
        /// The URL cannot be a connection string (syntax, an invalid option value).
        case malformedURL
        /// Could not connect or authenticate.
        case connection
        /// The connection broke during a command: the outcome of an open transaction is unknown.
        case connectionLost
        /// The server rejected a statement or its data.
        case server
    }

    public let kind: Kind
    public let sqlState: String?
    public let message: String
    /// The server's detail (`Key (email)=(a@example.com) already exists.`), also in `message`.
    public var detail: String?
    /// The table and the constraint a violation names (the server's `t` and `n` fields).
    public var table: String?
    public var constraint: String?
    /// The error came from COMMIT (the transaction did not commit, or its fate is unknown).
    public private(set) var atCommit = false

    public init(kind: Kind, sqlState: String? = nil, message: String) {
        self.kind = kind
        self.sqlState = sqlState
        self.message = message
    }

    public func failingCommit() -> PGError {
        var copy = self
        copy.atCommit = true
        return copy
    }

    public var description: String {
        sqlState.map { "\(message) (SQLSTATE \($0))" } ?? message
    }

    /// A connection refused because the server is starting up or recovering (SQLSTATE 57P03,
    /// which libpq gives only as text when connecting): it accepts connections once ready.
    public var isServerStartingUp: Bool {
        kind == .connection && ["the database system is starting up", "the database system is in recovery mode",
                                "the database system is not yet accepting connections"].contains { message.contains($0) }
    }

    /// What the job does about an error, by SQLSTATE. The one table of it: the longest
    /// matching prefix wins; a state not listed stops the job.
    public enum Disposition: Sendable, Equatable {
        /// The rows caused it: isolate the documents at fault and set them aside.
        case documentsAtFault
        /// The server or the network: retry the transaction with the stop-aware backoff.
        case transient
        /// Anything else (a changed target, missing rights, a bug): stop the job, exit 70.
        case fatal
    }

    static let dispositions: [(sqlState: String, Disposition)] = [
        ("22", .documentsAtFault),   // data exception: a value the column cannot hold
        ("23", .documentsAtFault),   // integrity constraint: a duplicate key, a CHECK
        ("54", .documentsAtFault),   // program limit: a key too large for its index
        ("08", .transient),          // connection exception
        ("08P01", .fatal),           // protocol violation: a COPY the target's columns do not match
        ("40001", .transient),       // serialization failure
        ("40P01", .transient),       // deadlock detected
        ("53", .transient),          // insufficient resources (disk full, out of memory, too many connections)
        ("57P01", .transient),       // admin shutdown
        ("57P02", .transient),       // crash shutdown
        ("57P03", .transient),       // cannot connect now (starting up)
        ("57014", .transient),       // query canceled (by a stop, or a statement timeout)
    ]

    public var disposition: Disposition {
        // A full disk does not pass in a retry's seconds: someone must free space.
        if isDiskFull { return .fatal }
        switch kind {
        case .malformedURL: return .fatal
        case .connection, .connectionLost: return .transient
        case .server:
            guard let sqlState else { return .fatal }
            let match = Self.dispositions.filter { sqlState.hasPrefix($0.sqlState) }.max { $0.sqlState.count < $1.sqlState.count }
            return match?.1 ?? .fatal
        }
    }

    /// Worth retrying the whole transaction.
    public var isTransient: Bool { disposition == .transient }

    /// The server's disk is full: SQLSTATE 53100 (a table or index could not grow), or the
    /// PANIC of a WAL write that failed, after which the server restarts.
    public var isDiskFull: Bool { sqlState == "53100" || message.contains("No space left on device") }

    /// Caused by the rows, not by the server.
    public var isDataError: Bool { disposition == .documentsAtFault }
}

/// Cancels the statement running on one connection (`PQcancel`); safe from any thread.
public final class PGCanceller: @unchecked Sendable {
    // Safe: libpq documents PQcancel as thread-safe on a PGcancel object; it is freed once.
    private let handle: OpaquePointer

    init(_ handle: OpaquePointer) { self.handle = handle }

    deinit { PQfreeCancel(handle) }

    public func cancel() {
        var buffer = [CChar](repeating: 0, count: 256)
        _ = PQcancel(handle, &buffer, Int32(buffer.count))
    }
}

/// A query result, materialized as text.
public struct PGRows: Sendable {
    public let columns: [String]
    public let rows: [[String?]]
    /// Rows an INSERT, UPDATE, DELETE or COPY touched (0 for other statements).
    public var affectedRows = 0
}

/// One libpq connection; frees its `PGconn` exactly once. Use from one thread at a time.
public final class PGConnection {
    private let handle: OpaquePointer
    public let redactedURL: String

    /// Connects, giving up after `connectTimeout` seconds when the URL does not set one.
    /// How this process's sessions are named in `pg_stat_activity` unless the URL names them.
    public static let defaultApplicationName = "etl-job pid \(getpid()) on \(ProcessInfo.processInfo.hostName)"

    public init(url: String, connectTimeout: Int = 5, applicationName: String = PGConnection.defaultApplicationName) throws {
        Self.registerPassword(of: url)
        redactedURL = Redact.url(url)
        var parseError: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(url, &parseError) else {
            let reason = parseError.map { String(cString: $0).trimmingTrailingNewlines } ?? "cannot parse"
            if let parseError { PQfreemem(parseError) }
            throw PGError(kind: .malformedURL, message: Redact.url("malformed PostgreSQL URL \(redactedURL): \(reason)"))
        }
        PQconninfoFree(options)
        let keys = ["dbname", "connect_timeout", "fallback_application_name"]
        let values = [url, String(connectTimeout), applicationName]
        let conn = Self.withCStrings(keys) { k in
            Self.withCStrings(values) { v in PQconnectdbParams(k, v, 1) }
        }
        guard let conn else { throw PGError(kind: .connection, message: "out of memory") }
        guard PQstatus(conn) == CONNECTION_OK else {
            let message = String(cString: PQerrorMessage(conn)).trimmingTrailingNewlines
            PQfinish(conn)
            // libpq checks option values (a port that is not a number) only when connecting.
            if message.hasPrefix("invalid ") && message.contains("connection option") {
                throw PGError(kind: .malformedURL, message: Redact.url("malformed PostgreSQL URL \(redactedURL): \(message)"))
            }
            throw PGError(kind: .connection, message: Redact.url("cannot connect to PostgreSQL at \(redactedURL): \(message)"))
        }
        handle = conn
        _ = PQsetClientEncoding(conn, "UTF8")
        PQsetNoticeProcessor(conn, { _, _ in }, nil)
    }

    deinit { PQfinish(handle) }

    /// Checks, without connecting, that libpq can read a connection string: a URL
    /// (`postgresql://…`), keyword/value pairs (`host=… dbname=…`), or empty (libpq's PG*
    /// environment and defaults). Throws `malformedURL` with libpq's reason.
    public static func checkConnectionString(_ conninfo: String) throws {
        registerPassword(of: conninfo)
        if conninfo.contains("://"), !(conninfo.hasPrefix("postgresql://") || conninfo.hasPrefix("postgres://")) {
            throw PGError(kind: .malformedURL, message: "malformed PostgreSQL URL \(Redact.url(conninfo)): it must start with postgresql:// or postgres://")
        }
        var parseError: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(conninfo, &parseError) else {
            let reason = parseError.map { String(cString: $0).trimmingTrailingNewlines } ?? "cannot parse"
            if let parseError { PQfreemem(parseError) }
            throw PGError(kind: .malformedURL, message: Redact.url("malformed PostgreSQL connection string \(Redact.url(conninfo)): \(reason)"))
        }
        PQconninfoFree(options)
    }

    /// The libpq this process runs with, as `major.minor`.
    public static var libraryVersion: String {
        let v = Int(PQlibVersion())
        return "\(v / 10_000).\(v % 10_000)"
    }

    /// Registers the password a connection string holds with `Secrets`, as libpq's own
    /// parser reads it, and as the URL's user-info writes it (for strings libpq refuses).
    public static func registerPassword(of url: String) {
        Secrets.register(url: url)
        guard let found = options(of: url) else { return }
        Secrets.register(found["password"], visible: [found["user"], found["dbname"]])
    }

    /// The host, port and database a connection string names (nil where it names none),
    /// read with libpq's parser, without connecting.
    public static func named(in url: String) -> (host: String?, port: String?, database: String?) {
        let found = options(of: url) ?? [:]
        return (found["host"], found["port"], found["dbname"])
    }

    /// The options a connection string sets, as `PQconninfoParse` reads them; nil when it cannot.
    private static func options(of url: String) -> [String: String]? {
        guard let options = PQconninfoParse(url, nil) else { return nil }
        defer { PQconninfoFree(options) }
        var found: [String: String] = [:]
        var option = options
        while let keyword = option.pointee.keyword {
            if let value = option.pointee.val { found[String(cString: keyword)] = String(cString: value) }
            option += 1
        }
        return found
    }

    /// Where this connection went, as libpq resolved it (URL, PG* variables, defaults).
    public var server: (host: String, port: String, database: String) {
        (String(cString: PQhost(handle)), String(cString: PQport(handle)), String(cString: PQdb(handle)))
    }

    /// A handle that cancels the statement running on this connection, from any thread.
    public func canceller() -> PGCanceller? {
        PQgetCancel(handle).map(PGCanceller.init)
    }

    public var isHealthy: Bool { PQstatus(handle) == CONNECTION_OK }

    /// Healthy, and in no transaction: a session another user may take over as it is.
    public var isIdle: Bool { isHealthy && PQtransactionStatus(handle) == PQTRANS_IDLE }

    /// Whether the server has not ended this session meanwhile, read without waiting: a
    /// server that restarts or terminates a backend says so, then closes the socket, and
    /// `isHealthy` learns of it only at the next statement.
    public var isOpen: Bool {
        // What is waiting is read (a notice, a notification, the server's last words) until
        // nothing is, or the end of the stream is.
        for _ in 0..<8 {
            var ready = pollfd(fd: PQsocket(handle), events: Int16(POLLIN), revents: 0)
            guard ready.fd >= 0, isHealthy else { return false }
            guard poll(&ready, 1, 0) > 0 else { return true }
            guard PQconsumeInput(handle) == 1 else { return false }
        }
        return isHealthy
    }

    /// Waits up to `seconds` for a notification on a channel this session LISTENs to (sent by
    /// any session's NOTIFY, delivered when its transaction commits); true when one came,
    /// every one received so far consumed. False at the timeout or when the session broke.
    public func waitForNotification(seconds: Double) -> Bool {
        func drained() -> Bool {
            guard PQconsumeInput(handle) == 1 else { return false }
            var any = false
            while let notification = PQnotifies(handle) {
                PQfreemem(notification)
                any = true
            }
            return any
        }
        if drained() { return true }
        var ready = pollfd(fd: PQsocket(handle), events: Int16(POLLIN), revents: 0)
        guard ready.fd >= 0, poll(&ready, 1, Int32(seconds * 1000)) > 0 else { return false }
        return drained()
    }

    /// Runs one or more statements without parameters.
    @discardableResult
    public func execute(_ sql: String) throws -> PGRows {
        try rows(of: PQexec(handle, sql))
    }

    /// Runs one statement with text parameters ($1, $2, …).
    @discardableResult
    public func query(_ sql: String, _ parameters: [String?]) throws -> PGRows {
        let result = Self.withOptionalCStrings(parameters) { values in
            PQexecParams(handle, sql, Int32(parameters.count), nil, values, nil, nil, 0)
        }
        return try rows(of: result)
    }

    /// Runs one statement whose parameters ($1, $2, …) are values in PostgreSQL's binary
    /// format (such as `BinaryCopyWriter.arrayParameter`); their types come from the statement.
    @discardableResult
    public func query(_ sql: String, binary parameters: [[UInt8]]) throws -> PGRows {
        let lengths = parameters.map { Int32($0.count) }
        let formats = [Int32](repeating: 1, count: parameters.count)
        let result = Self.withBuffers(parameters) { values in
            PQexecParams(handle, sql, Int32(parameters.count), nil, values, lengths, formats, 0)
        }
        return try rows(of: result)
    }

    /// Runs one statement with text parameters ($1 … $n) followed by parameters in
    /// PostgreSQL's binary format ($n+1 …).
    @discardableResult
    public func query(_ sql: String, _ text: [String], binary: [[UInt8]]) throws -> PGRows {
        let parameters = text.map { Array($0.utf8) + [0] } + binary
        let lengths = parameters.map { Int32($0.count) }
        let formats = text.map { _ in Int32(0) } + binary.map { _ in Int32(1) }
        let result = Self.withBuffers(parameters) { values in
            PQexecParams(handle, sql, Int32(parameters.count), nil, values, lengths, formats, 0)
        }
        return try rows(of: result)
    }

    private static func withBuffers<R>(_ buffers: [[UInt8]], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
        let copies = buffers.map { buffer -> UnsafeMutablePointer<CChar> in
            let copy = UnsafeMutablePointer<CChar>.allocate(capacity: max(1, buffer.count))
            buffer.withUnsafeBytes { UnsafeMutableRawPointer(copy).copyMemory(from: $0.baseAddress ?? UnsafeRawPointer(copy), byteCount: $0.count) }
            return copy
        }
        defer { copies.forEach { $0.deallocate() } }
        var pointers: [UnsafePointer<CChar>?] = copies.map { UnsafePointer($0) } + [nil]
        return pointers.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
    }

    /// Sends statements with text parameters at once in libpq's pipeline mode, then reads
    /// their results: one round trip for all. After a statement fails the server skips the
    /// rest, so the results stop at the first failure (their count says which one failed).
    /// A broken connection throws: which statements ran is then unknown.
    public func pipeline(_ statements: [(sql: String, parameters: [String?])]) throws -> [Result<PGRows, PGError>] {
        guard PQenterPipelineMode(handle) == 1 else { throw connectionError() }
        defer { PQexitPipelineMode(handle) }
        for (sql, parameters) in statements {
            let sent = Self.withOptionalCStrings(parameters) { values in
                PQsendQueryParams(handle, sql, Int32(parameters.count), nil, values, nil, nil, 0)
            }
            guard sent == 1 else { throw connectionError() }
        }
        guard PQpipelineSync(handle) == 1 else { throw connectionError() }
        var results: [Result<PGRows, PGError>] = []
        // Each statement's result then a NULL; a skipped one's is PIPELINE_ABORTED; last, the sync's.
        for _ in statements {
            while let result = PQgetResult(handle) {
                if PQresultStatus(result) == PGRES_PIPELINE_ABORTED {
                    PQclear(result)
                    continue
                }
                do {
                    results.append(.success(try rows(of: result)))
                } catch let error as PGError where error.kind == .server {
                    results.append(.failure(error))
                }
            }
        }
        guard let sync = PQgetResult(handle) else { throw connectionError() }
        defer { PQclear(sync) }
        guard PQresultStatus(sync) == PGRES_PIPELINE_SYNC else { throw connectionError() }
        return results
    }

    /// Streams `parts`, which together form a binary COPY stream, into `table`.
    public func copyIn(_ table: String, columns: [String], binary parts: [UInt8]...) throws {
        try copyIn([PGCopy(table: table, columns: columns, parts: parts)])
    }

    /// Streams several binary COPY streams, with `before` and `after` (statements without
    /// parameters, each ending in ";"), as one simple query: the server starts each COPY in
    /// the same reply that ends the one before it, so a table costs one round trip, not two
    /// (COPY cannot be pipelined, but a query string may hold several). The first error
    /// skips the rest of the string and is thrown.
    public func copyIn(_ copies: [PGCopy], before: String = "", after: String = "") throws {
        let sql = before + copies.map { "COPY \($0.table) (\($0.columns.joined(separator: ", "))) FROM STDIN (FORMAT binary);" }.joined() + after
        guard PQsendQuery(handle, sql) == 1 else { throw connectionError() }
        var next = copies.startIndex
        var failure: (any Error)?
        // One result per statement (a COPY's start, then its outcome), then a NULL.
        while let result = PQgetResult(handle) {
            guard PQresultStatus(result) == PGRES_COPY_IN else {
                do { _ = try rows(of: result) } catch { failure = failure ?? error }
                continue
            }
            PQclear(result)
            for part in next < copies.endIndex ? copies[next].parts : [] {
                let sent = part.withUnsafeBytes { raw -> Int32 in
                    raw.withMemoryRebound(to: CChar.self) { PQputCopyData(handle, $0.baseAddress, Int32($0.count)) }
                }
                guard sent == 1 else { throw connectionError() }
            }
            let error = next < copies.endIndex ? nil : "more COPY statements than streams"
            next += 1
            guard PQputCopyEnd(handle, error) == 1 else { throw connectionError() }
        }
        if let failure { throw failure }
    }

    private func rows(of result: OpaquePointer?) throws -> PGRows {
        guard let result else { throw connectionError() }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_EMPTY_QUERY, PGRES_COPY_IN:
            return PGRows(columns: [], rows: [], affectedRows: Int(String(cString: PQcmdTuples(result))) ?? 0)
        case PGRES_TUPLES_OK:
            let columns = (0..<PQnfields(result)).map { String(cString: PQfname(result, $0)) }
            let rows = (0..<PQntuples(result)).map { r in
                (0..<PQnfields(result)).map { c -> String? in
                    PQgetisnull(result, r, c) == 1 ? nil : String(cString: PQgetvalue(result, r, c))
                }
            }
            return PGRows(columns: columns, rows: rows)
        default:
            if PQstatus(handle) != CONNECTION_OK { throw connectionError() }
            let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
            let primary = PQresultErrorField(result, Int32(UInt8(ascii: "M"))).map { String(cString: $0) }
            let detail = PQresultErrorField(result, Int32(UInt8(ascii: "D"))).map { String(cString: $0) }
            let message = [primary ?? String(cString: PQresultErrorMessage(result)).trimmingTrailingNewlines, detail]
                .compactMap { $0 }.joined(separator: ": ")
            var error = PGError(kind: .server, sqlState: state, message: message)
            error.detail = detail
            error.table = PQresultErrorField(result, Int32(UInt8(ascii: "t"))).map { String(cString: $0) }
            error.constraint = PQresultErrorField(result, Int32(UInt8(ascii: "n"))).map { String(cString: $0) }
            throw error
        }
    }

    private func connectionError() -> PGError {
        let message = String(cString: PQerrorMessage(handle)).trimmingTrailingNewlines
        return PGError(kind: .connectionLost, message: "lost the connection to PostgreSQL: \(message)")
    }

    private static func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
        withOptionalCStrings(strings) { body($0) }
    }

    private static func withOptionalCStrings<R>(
        _ strings: [String?], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R
    ) -> R {
        let copies = strings.map { $0.map { strdup($0)! } }
        defer { copies.forEach { free($0) } }
        var pointers = copies.map { UnsafePointer($0) } + [nil]
        return pointers.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
    }
}

extension String {
    var trimmingTrailingNewlines: String {
        var s = self
        while s.last?.isNewline == true { s.removeLast() }
        return s
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// One table's binary COPY stream, for `PGConnection.copyIn(_:before:after:)`.
public struct PGCopy: Sendable {
    public var table: String
    public var columns: [String]
    /// Together, the stream: header, rows, trailer.
    public var parts: [[UInt8]]

    public init(table: String, columns: [String], parts: [[UInt8]]) {
        self.table = table
        self.columns = columns
        self.parts = parts
    }
}
