import CLMDB
import Foundation
import Synchronization

/// An LMDB error code with the library's own message.
public struct LMDBError: Error, CustomStringConvertible, Sendable {
    public let code: Int32
    public let context: String
    /// The context says everything already (found by our own checks, not by LMDB).
    let complete: Bool

    public init(code: Int32, context: String, complete: Bool = false) {
        self.code = code
        self.context = context
        self.complete = complete
    }

    public var description: String { complete ? context : "\(context): \(String(cString: mdb_strerror(code)))" }

    /// A key or table that does not exist (yet: a queue still being created reads so).
    public var isNotFound: Bool { code == MDB_NOTFOUND }
    /// What a queue without a recorded job reads as.
    public static let notFound = LMDBError(code: MDB_NOTFOUND, context: "no job recorded")

    /// The state files cannot be written or trusted: a full or read-only disk, an I/O error,
    /// damaged pages. The job must stop (exit 74) rather than retry.
    public var isStorageFailure: Bool {
        [ENOSPC, EIO, EROFS, EDQUOT, MDB_CORRUPTED, MDB_PAGE_NOTFOUND, MDB_INVALID, MDB_VERSION_MISMATCH, MDB_BAD_TXN].contains(code)
    }

    static func check(_ code: Int32, _ context: @autoclosure () -> String) throws {
        if code != 0 { throw LMDBError(code: code, context: context()) }
    }
}

/// One LMDB environment (a directory holding `data.mdb` and `lock.mdb`).
///
/// Every transaction of this process goes through one lock: a write transaction must stay on
/// its thread, and growing the map requires that no transaction of the process is open.
/// Transactions are short (one batch's bookkeeping), so the lock costs nothing measurable.
///
/// LMDB forbids opening one environment twice in a process (closing the second breaks the
/// first's locks), so each directory may have one instance at a time: a second open throws.
/// The handle is closed exactly once, in `deinit`; a failed open closes it before `self` exists.
/// The LMDB this process runs with, as `major.minor.patch`.
public var lmdbVersion: String {
    var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
    _ = mdb_version(&major, &minor, &patch)
    return "\(major).\(minor).\(patch)"
}

final class LMDBEnvironment: @unchecked Sendable {
    // Safe: `env` is used only inside `transaction`, which holds `lock`.
    private let env: OpaquePointer
    private let lock = NSLock()
    private let readOnly: Bool
    private let dbis: [String: MDB_dbi]
    private let registryKey: String
    private let directory: String
    /// Closed by `close()` (guarded by `lock`): every later transaction is refused.
    private var closed = false

    private static let open = Mutex<Set<String>>([])

    init(directory: String, databases: [String], initialMapSize: Int, readOnly: Bool) throws {
        let key = URL(fileURLWithPath: directory).resolvingSymlinksInPath().standardizedFileURL.path
        guard Self.open.withLock({ $0.insert(key).inserted }) else {
            throw LMDBError(code: EBUSY, context: "the queue in \(directory) is already open in this process")
        }
        var env: OpaquePointer?
        do {
            try LMDBError.check(mdb_env_create(&env), "cannot create an LMDB environment")
            try Self.configure(env!, directory: directory, databases: databases, initialMapSize: initialMapSize, readOnly: readOnly)
            self.dbis = try Self.openDatabases(env!, databases, readOnly: readOnly)
        } catch {
            if let env { mdb_env_close(env) }
            Self.open.withLock { _ = $0.remove(key) }
            throw error
        }
        self.env = env!
        self.readOnly = readOnly
        self.registryKey = key
        self.directory = directory
    }

    deinit { close() }

    /// Closes the environment, once, so that this process may open the directory again
    /// though something still holds this instance (a thread that is ending).
    func close() {
        lock.withLock {
            guard !closed else { return }
            closed = true
            mdb_env_close(env)
            Self.open.withLock { _ = $0.remove(registryKey) }
        }
    }

    private static func configure(
        _ env: OpaquePointer, directory: String, databases: [String], initialMapSize: Int, readOnly: Bool
    ) throws {
        try LMDBError.check(mdb_env_set_maxdbs(env, MDB_dbi(databases.count)), "mdb_env_set_maxdbs")
        try LMDBError.check(mdb_env_set_mapsize(env, initialMapSize), "mdb_env_set_mapsize")
        // MDB_NOTLS: read transactions are not tied to a thread (Swift tasks move between threads).
        let flags = UInt32(MDB_NOTLS) | (readOnly ? UInt32(MDB_RDONLY) : 0)
        try LMDBError.check(mdb_env_open(env, directory, flags, 0o644), "cannot open the queue in \(directory)")
        try checkNotTruncated(env, directory: directory)
    }

    /// A data file shorter than its last used page would make the first read of that page
    /// a SIGBUS: refuse it before any page is touched.
    private static func checkNotTruncated(_ env: OpaquePointer, directory: String) throws {
        var info = MDB_envinfo()
        var stat = MDB_stat()
        try LMDBError.check(mdb_env_info(env, &info), "cannot read the queue's header in \(directory)")
        try LMDBError.check(mdb_env_stat(env, &stat), "cannot read the queue's header in \(directory)")
        let path = directory + "/data.mdb"
        let needed = (UInt64(info.me_last_pgno) + 1) * UInt64(stat.ms_psize)
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? UInt64) ?? 0
        if size < needed {
            throw LMDBError(
                code: MDB_CORRUPTED, context: "the queue file \(path) is \(size) bytes but its pages reach \(needed): it was truncated",
                complete: true)
        }
    }

    private static func openDatabases(_ env: OpaquePointer, _ names: [String], readOnly: Bool) throws -> [String: MDB_dbi] {
        var txn: OpaquePointer?
        try LMDBError.check(mdb_txn_begin(env, nil, readOnly ? UInt32(MDB_RDONLY) : 0, &txn), "cannot begin a queue transaction")
        var dbis: [String: MDB_dbi] = [:]
        do {
            for name in names {
                var dbi: MDB_dbi = 0
                try LMDBError.check(
                    mdb_dbi_open(txn, name, readOnly ? 0 : UInt32(MDB_CREATE), &dbi),
                    "cannot open the queue's \(name) table")
                dbis[name] = dbi
            }
        } catch {
            mdb_txn_abort(txn)
            throw error
        }
        // mdb_txn_commit frees the transaction whatever it returns: never abort it afterwards.
        try LMDBError.check(mdb_txn_commit(txn), "cannot commit a queue transaction")
        return dbis
    }

    func dbi(_ name: String) -> MDB_dbi { dbis[name]! }

    var mapSize: Int {
        lock.withLock {
            guard !closed else { return 0 }
            var info = MDB_envinfo()
            mdb_env_info(env, &info)
            return info.me_mapsize
        }
    }

    /// Runs `body` in one transaction and commits it. A write that fills the map grows the
    /// map (doubling) and runs `body` again from the start.
    func transaction<R>(write: Bool, _ body: (LMDBTransaction) throws -> R) throws -> R {
        lock.lock()
        defer { lock.unlock() }
        guard !closed else { throw LMDBError(code: EBADF, context: "the queue in \(directory) is closed", complete: true) }
        while true {
            let txn = try begin(write: write)
            let result: R
            do {
                result = try body(LMDBTransaction(handle: txn, env: self))
            } catch let error as LMDBError where error.code == MDB_MAP_FULL && write {
                mdb_txn_abort(txn)
                try grow()
                continue
            } catch {
                mdb_txn_abort(txn)
                throw error
            }
            // mdb_txn_commit frees the transaction whatever it returns: never abort it afterwards.
            let rc = mdb_txn_commit(txn)
            if rc == MDB_MAP_FULL && write {
                try grow()
                continue
            }
            try LMDBError.check(storageCode(rc), "cannot write the queue in \(directory)")
            return result
        }
    }

    /// LMDB reports a short write as EIO; when the filesystem is (nearly) full, that is
    /// ENOSPC, which says what to do about it.
    private func storageCode(_ rc: Int32) -> Int32 {
        guard rc == EIO else { return rc }
        var fs = statvfs()
        guard statvfs(directory, &fs) == 0 else { return rc }
        return UInt64(fs.f_bavail) * UInt64(fs.f_frsize) < 4 << 20 ? ENOSPC : rc
    }

    private func begin(write: Bool) throws -> OpaquePointer {
        var txn: OpaquePointer?
        var rc = mdb_txn_begin(env, nil, write ? 0 : UInt32(MDB_RDONLY), &txn)
        if rc == MDB_MAP_RESIZED {
            // Another process grew the map: adopt its size.
            mdb_env_set_mapsize(env, 0)
            rc = mdb_txn_begin(env, nil, write ? 0 : UInt32(MDB_RDONLY), &txn)
        }
        try LMDBError.check(rc, "cannot begin a queue transaction")
        return txn!
    }

    private func grow() throws {
        var info = MDB_envinfo()
        mdb_env_info(env, &info)
        try LMDBError.check(mdb_env_set_mapsize(env, info.me_mapsize * 2), "cannot grow the queue's map")
    }
}

/// A transaction handle, valid only inside `LMDBEnvironment.transaction`.
struct LMDBTransaction {
    let handle: OpaquePointer
    let env: LMDBEnvironment

    func get(_ db: String, _ key: [UInt8]) throws -> UnsafeRawBufferPointer? {
        try key.withUnsafeBytes { k in
            var keyVal = MDB_val(mv_size: k.count, mv_data: UnsafeMutableRawPointer(mutating: k.baseAddress))
            var value = MDB_val()
            let rc = mdb_get(handle, env.dbi(db), &keyVal, &value)
            if rc == MDB_NOTFOUND { return nil }
            try LMDBError.check(rc, "cannot read the queue's \(db) table")
            return UnsafeRawBufferPointer(start: value.mv_data, count: value.mv_size)
        }
    }

    func put(_ db: String, _ key: [UInt8], _ value: [UInt8]) throws {
        try value.withUnsafeBytes { try put(db, key, $0) }
    }

    func put(_ db: String, _ key: [UInt8], _ value: UnsafeRawBufferPointer) throws {
        try key.withUnsafeBytes { k in
            var keyVal = MDB_val(mv_size: k.count, mv_data: UnsafeMutableRawPointer(mutating: k.baseAddress))
            var val = MDB_val(mv_size: value.count, mv_data: UnsafeMutableRawPointer(mutating: value.baseAddress))
            try LMDBError.check(mdb_put(handle, env.dbi(db), &keyVal, &val, 0), "cannot write the queue's \(db) table")
        }
    }

    /// Deletes `key`; a missing key is not an error.
    func delete(_ db: String, _ key: [UInt8]) throws {
        try key.withUnsafeBytes { k in
            var keyVal = MDB_val(mv_size: k.count, mv_data: UnsafeMutableRawPointer(mutating: k.baseAddress))
            let rc = mdb_del(handle, env.dbi(db), &keyVal, nil)
            if rc != MDB_NOTFOUND { try LMDBError.check(rc, "cannot delete from the queue's \(db) table") }
        }
    }

    func count(_ db: String) throws -> Int {
        var stat = MDB_stat()
        try LMDBError.check(mdb_stat(handle, env.dbi(db), &stat), "cannot count the queue's \(db) table")
        return stat.ms_entries
    }

    /// Visits entries in key order, starting at the first key; `body` returns false to stop.
    func forEach(_ db: String, _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Bool) throws {
        var cursor: OpaquePointer?
        try LMDBError.check(mdb_cursor_open(handle, env.dbi(db), &cursor), "cannot read the queue's \(db) table")
        defer { mdb_cursor_close(cursor) }
        var key = MDB_val()
        var value = MDB_val()
        var op = MDB_FIRST
        while true {
            let rc = mdb_cursor_get(cursor, &key, &value, op)
            if rc == MDB_NOTFOUND { return }
            try LMDBError.check(rc, "cannot read the queue's \(db) table")
            let more = try body(
                UnsafeRawBufferPointer(start: key.mv_data, count: key.mv_size),
                UnsafeRawBufferPointer(start: value.mv_data, count: value.mv_size))
            if !more { return }
            op = MDB_NEXT
        }
    }

    /// The first key of a table, or nil when it is empty.
    func firstKey(_ db: String) throws -> [UInt8]? {
        var first: [UInt8]?
        try forEach(db) { key, _ in
            first = Array(key)
            return false
        }
        return first
    }
}
