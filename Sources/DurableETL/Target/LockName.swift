/// The name of an advisory lock on the target, stated once for its two uses: joined here to
/// take the lock, and as a SQL expression (its values then being column expressions) to find
/// the lock in `pg_locks`.
struct LockName {
    enum Piece {
        case text(String)
        case value(String)
    }

    let pieces: [Piece]

    /// A writer's lock (`TargetLock`): one pipeline, or one partition's lease, in one schema.
    static func writer(_ name: LockName, schema: Piece) -> LockName {
        LockName(pieces: [.text("etl-job ")] + name.pieces + [.text(" "), schema])
    }

    static func writer(_ pipeline: Piece, schema: Piece) -> LockName {
        writer(LockName(pieces: [pipeline]), schema: schema)
    }

    /// What a partition's lease is called (the pipeline part of its writer's lock).
    static func lease(pipeline: Piece, partition: Piece, job: Piece) -> LockName {
        LockName(pieces: [pipeline, .text(" partition "), partition, .text(" of job "), job])
    }

    var string: String {
        pieces.map { piece in
            switch piece {
            case .text(let text), .value(let text): text
            }
        }.joined()
    }

    var sql: String {
        pieces.map { piece in
            switch piece {
            case .text(let text): "'" + text.replacingOccurrences(of: "'", with: "''") + "'"
            case .value(let expression): expression
            }
        }.joined(separator: " || ")
    }
}
