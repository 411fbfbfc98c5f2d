import ETLCore
import Foundation
import Mongo
import Postgres
import Queue

/// A refusal or a failure the user can act on: printed as one line, never as a trace.
/// Each kind has its exit code (sysexits.h where one fits; see docs/reference/exit-codes.md).
public struct JobError: Error, CustomStringConvertible {
    public enum Kind: Sendable {
        /// 64: a bad flag or URL, or a refusal that says what to run instead.
        case usage
        /// 65: the data did not allow the job to succeed (too many documents set aside; verify found differences).
        case dataError
        /// 66: the source collection does not exist or holds nothing.
        case noInput
        /// 69: a service cannot be reached, or the state directory cannot be used.
        case unavailable
        /// 74: the state files cannot be read or written (disk full, damaged files).
        case ioError
        /// 70: the target or the server refused the job itself (a changed table, an unexpected SQLSTATE).
        case software
        /// 75: another run holds the state directory or the target.
        case busy
        /// 1: anything else; the run stays resumable.
        case failed
    }

    public let kind: Kind
    public let description: String

    public init(_ kind: Kind, _ description: String) {
        self.kind = kind
        self.description = description
    }

    /// A queue that cannot be opened or read: damaged or unwritable state files are exit 74
    /// with what to do; anything else (permissions, a path under a file) is 69.
    public static func queue(_ error: any Error, _ directory: String) -> JobError {
        if let error = error as? LMDBError, error.isStorageFailure {
            return classify(error)
        }
        return JobError(.unavailable, "cannot use the queue in \(directory): \(error)")
    }

    /// A connection to the target that failed: a malformed URL is a usage error (exit 64), a
    /// server that cannot be reached unavailable (69).
    public static func connecting(_ error: any Error) -> JobError {
        if let error = error as? PGError, error.kind == .malformedURL { return JobError(.usage, error.message) }
        return JobError(.unavailable, "\(error)")
    }

    private static func fileFailure(_ error: CocoaError) -> String {
        let path = (error.userInfo[NSFilePathErrorKey] as? String) ?? (error.userInfo[NSURLErrorKey] as? URL)?.path
        let reason = (error.userInfo[NSUnderlyingErrorKey] as? NSError).map { String(cString: strerror(Int32($0.code))) }
        return "a file operation failed" + (path.map { " on \($0)" } ?? "") + ": " + (reason ?? "code \(error.code.rawValue)")
            + "; fix it (or remove that path by hand), then run the command again"
    }

    public static let untrustedState = "the state files cannot be trusted: move the state directory aside and run "
        + "'etl-job start --fresh' to load again (the target's etl_checkpoints table records what was committed)"

    /// Any error of a run as the user sees it: a `JobError` as it is; a PostgreSQL error the
    /// job cannot get past, or state files it cannot write or trust, with their own exit
    /// codes; anything else as a failure. Wrapped errors (a pipeline's, several workers')
    /// are opened, and the most serious kind decides the exit code.
    public static func classify(_ error: any Error) -> JobError {
        switch error {
        case let error as JobError:
            return error
        case let error as PipelineError:
            return classify(error.underlying)
        case let error as ChangeStreamHistoryLost:
            return JobError(.dataError, error.description)
        case let error as ETLErrors:
            let all = error.errors.map(classify)
            let worst = all.max { $0.kind.severity < $1.kind.severity }!
            var seen = Set<String>()
            let distinct = all.map(\.description).filter { seen.insert($0).inserted }
            return JobError(worst.kind, distinct.joined(separator: "; "))
        case let error as PGError where error.isDiskFull:
            return JobError(.ioError, "the target PostgreSQL has no space left on its disk (No space left on device, SQLSTATE 53100); "
                + "free space on its server (or grow the volume), start PostgreSQL again if it stopped, then \(GoOn.advice): "
                + "every batch committed stays, and the rest loads once")
        case let error as PGError where error.sqlState == "25006":
            return JobError(.software, "PostgreSQL refused the job: the target is read-only (\(error)); point --postgres-url at a primary "
                + "that accepts writes, with a role whose transactions are not read-only (default_transaction_read_only)")
        case let error as PGError where error.disposition == .fatal && error.kind == .server:
            return JobError(.software, "PostgreSQL refused the job: \(error)")
        case let error as LMDBError where error.isStorageFailure:
            if error.code == ENOSPC || error.code == EDQUOT {
                return JobError(.ioError, "\(error); the queue is unchanged since its last transaction: free space, then \(GoOn.advice)")
            }
            return JobError(.ioError, "\(error); \(untrustedState)")
        case let error as StateFileError:
            return JobError(.ioError, "\(error)")
        case let error as CocoaError:
            // A file operation of Foundation: its path and the system's reason, never the domain.
            return JobError(.ioError, fileFailure(error))
        case let error as DamagedBatch:
            return JobError(.ioError, "\(error); \(untrustedState)")
        case let error as MongoError:
            switch error.kind {
            case .badInput: return JobError(.usage, error.message)
            case .damagedState: return JobError(.ioError, "\(error); \(untrustedState)")
            case .refused: return JobError(.unavailable, "MongoDB refused: \(error)")
            case .transient: return JobError(.failed, "\(error)")
            }
        default:
            return JobError(.failed, "\(error)")
        }
    }
}

extension JobError.Kind {
    /// Which of several errors decides the exit code: what the user must fix before any retry
    /// (storage, the target) over what a resume may get past.
    var severity: Int {
        switch self {
        case .failed: 0
        case .dataError: 1
        case .unavailable: 2
        case .busy: 3
        case .noInput: 4
        case .usage: 5
        case .software: 6
        case .ioError: 7
        }
    }
}

/// At most how many documents a run may set aside before it fails: a count or a percentage
/// of the documents read. A run that loads nothing while setting documents aside always fails.
public enum SetAsideLimit: Sendable, Equatable, CustomStringConvertible {
    case count(Int64)
    case percent(Double)

    public static let `default` = SetAsideLimit.percent(1)

    /// `N` or `N%`.
    public init?(_ text: String) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.hasSuffix("%") {
            guard let p = Double(trimmed.dropLast()), p >= 0, p <= 100 else { return nil }
            self = .percent(p)
        } else {
            guard let n = Int64(trimmed), n >= 0 else { return nil }
            self = .count(n)
        }
    }

    /// The largest number of documents allowed out of `read`.
    public func allowed(of read: Int64) -> Int64 {
        switch self {
        case .count(let n): n
        case .percent(let p): Int64((Double(read) * p / 100).rounded(.down))
        }
    }

    public var description: String {
        switch self {
        case .count(let n): "\(n)"
        case .percent(let p): p == p.rounded() ? "\(Int(p))%" : "\(p)%"
        }
    }

    /// Why a run that loaded `loaded` and set aside `setAside` documents failed, or nil.
    /// `list` and `accept`: the commands that list them and that accept them.
    public func failure(loaded: Int64, setAside: Int64, list: String = "etl-job status --rejected",
                        accept: String = "etl-job resume --max-set-aside N") -> String? {
        guard setAside > 0 else { return nil }
        if loaded == 0 {
            return "every document read (\(setAside)) was set aside and none was loaded; list them with '\(list)'"
        }
        let allowed = allowed(of: loaded + setAside)
        guard setAside > allowed else { return nil }
        let limit = if case .percent = self { "\(allowed) (\(self) of \(loaded + setAside) documents read)" } else { "\(allowed)" }
        return "\(setAside) documents were set aside, more than the limit of \(limit); list them with "
            + "'\(list)'. Everything else is loaded; to accept them, run '\(accept)'"
    }

    /// Why a run of changes that applied `applied` changes and set `setAside` documents aside
    /// failed, or nil.
    func failure(changesApplied applied: Int64, setAside: Int64) -> String? {
        let allowed = allowed(of: applied + setAside)
        guard setAside > allowed else { return nil }
        return "\(setAside) of the \(applied + setAside) changes this run applied set their document aside, more than the limit of "
            + "\(allowed) (--max-set-aside \(self)); list them with 'etl-job status --rejected'. "
            + "Every other change is applied; a document set aside loads with its next change once the source fixes it"
    }
}
