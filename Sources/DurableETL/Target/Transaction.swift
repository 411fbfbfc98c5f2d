import Postgres

/// How a transaction ends when its work returns: committed, or rolled back (a read that wants
/// one snapshot and leaves nothing behind).
enum TransactionEnd {
    case commit
    case rollback
}

extension PGConnection {
    /// Runs `body` in a transaction of this session: ended as `end` says when it returns,
    /// rolled back when it throws. (A batch's load, which measures and fences each statement
    /// of its transaction, is written out in `Loader.loadOnce`.)
    @discardableResult
    func withTransaction<R>(isolation: String? = nil, end: TransactionEnd = .commit, _ body: () throws -> R) throws -> R {
        try execute(isolation.map { "BEGIN ISOLATION LEVEL \($0)" } ?? "BEGIN")
        do {
            let result = try body()
            switch end {
            case .commit: try execute("COMMIT")
            case .rollback: _ = try? execute("ROLLBACK")
            }
            return result
        } catch {
            _ = try? execute("ROLLBACK")
            throw error
        }
    }
}
