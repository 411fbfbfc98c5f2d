import CLibPQ
import ETLCore

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

    /// Worth retrying the whole transaction: the connection broke, or the server rolled the
    /// transaction back for reasons of its own (class 40: serialization, deadlock; class 57:
    /// shutdown, admin termination; class 08: connection).
    public var isTransient: Bool {
        guard kind == .server else { return kind != .malformedURL }
        guard let sqlState else { return false }
        return ["40", "57", "08", "53"].contains(String(sqlState.prefix(2)))
    }

    /// Class 23 (integrity constraint), 22 (data exception): caused by the rows, not by the server.
    public var isDataError: Bool {
        guard kind == .server, let sqlState else { return false }
        return sqlState.hasPrefix("23") || sqlState.hasPrefix("22")
    }
}

/// A query result, materialized as text.
public struct PGRows: Sendable {
    public let columns: [String]
    public let rows: [[String?]]
}

/// One libpq connection; frees its `PGconn` exactly once. Use from one thread at a time.
public final class PGConnection {
    private let handle: OpaquePointer
    public let redactedURL: String

    /// Connects, giving up after `connectTimeout` seconds when the URL does not set one.
    public init(url: String, connectTimeout: Int = 5, applicationName: String = "etl-job") throws {
        redactedURL = Redact.url(url)
        var parseError: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(url, &parseError) else {
            let reason = parseError.map { String(cString: $0).trimmingTrailingNewlines } ?? "cannot parse"
            if let parseError { PQfreemem(parseError) }
            throw PGError(kind: .malformedURL, message: "malformed PostgreSQL URL \(redactedURL): \(reason)")
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
                throw PGError(kind: .malformedURL, message: "malformed PostgreSQL URL \(redactedURL): \(message)")
            }
            throw PGError(kind: .connection, message: "cannot connect to PostgreSQL at \(redactedURL): \(message)")
        }
        handle = conn
        _ = PQsetClientEncoding(conn, "UTF8")
        PQsetNoticeProcessor(conn, { _, _ in }, nil)
    }

    deinit { PQfinish(handle) }

    public var isHealthy: Bool { PQstatus(handle) == CONNECTION_OK }

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

    /// Streams `parts`, which together form a binary COPY stream, into `table`.
    public func copyIn(_ table: String, columns: [String], binary parts: [UInt8]...) throws {
        let sql = "COPY \(table) (\(columns.joined(separator: ", "))) FROM STDIN (FORMAT binary)"
        let start = PQexec(handle, sql)
        guard PQresultStatus(start) == PGRES_COPY_IN else { _ = try rows(of: start); return }
        PQclear(start)
        for part in parts {
            let sent = part.withUnsafeBytes { raw -> Int32 in
                raw.withMemoryRebound(to: CChar.self) { PQputCopyData(handle, $0.baseAddress, Int32($0.count)) }
            }
            guard sent == 1 else { throw connectionError() }
        }
        guard PQputCopyEnd(handle, nil) == 1 else { throw connectionError() }
        // COPY reports its outcome in one result, then a NULL.
        var failure: (any Error)?
        while let result = PQgetResult(handle) {
            do { _ = try rows(of: result) } catch { failure = failure ?? error }
        }
        if let failure { throw failure }
    }

    private func rows(of result: OpaquePointer?) throws -> PGRows {
        guard let result else { throw connectionError() }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_EMPTY_QUERY, PGRES_COPY_IN:
            return PGRows(columns: [], rows: [])
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
            throw PGError(kind: .server, sqlState: state, message: message)
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
