import ETLCore
import Foundation
import Logging
import Synchronization
import Postgres

/// The sessions `Target.release` keeps for `Target.takeReleased`, one set per URL and schema.
final class ReleasedSessions: Sendable {
    // PGConnection is not Sendable: each one here is owned by the mutex, and by one taker after.
    private let idle = Mutex<[UnsafeSession]>([])

    private static let sets = Mutex<[String: ReleasedSessions]>([:])

    static func shared(url: String, schema: String) -> ReleasedSessions {
        sets.withLock { sets in
            let key = url + "\u{0}" + schema
            if let existing = sets[key] { return existing }
            let created = ReleasedSessions()
            sets[key] = created
            return created
        }
    }

    private struct UnsafeSession: @unchecked Sendable { let db: PGConnection }

    /// `under`: taken after every other (a new session, under those that worked).
    func put(_ db: PGConnection, under: Bool = false) {
        guard db.isIdle else { return }
        idle.withLock { under ? $0.insert(UnsafeSession(db: db), at: 0) : $0.append(UnsafeSession(db: db)) }
    }

    var count: Int { idle.withLock { $0.count } }

    /// A released session the server has not ended meanwhile (a restart between two stages).
    func take() -> PGConnection? {
        while let session = idle.withLock({ $0.popLast() }) {
            if session.db.isOpen && session.db.isIdle { return session.db }
        }
        return nil
    }
}
