import Foundation
import Synchronization

/// Named moments at which the process can be made to die with SIGKILL, for crash tests:
/// `ETL_CRASH_AT=committed:3` kills the process the third time a batch has committed in
/// PostgreSQL (before the queue records it). Without the variable, `reach()` is one load.
public enum CrashPoint: String, CaseIterable, Sendable {
    /// A run's manifest was written; no queue recorded its job yet.
    case planned
    /// A batch was written to the queue.
    case enqueued
    /// A batch's rows were COPYed; its transaction is still open.
    case copied
    /// A batch changed its tables to hold fields its mapping did not name (and recorded the
    /// mapping in force); its transaction is still open.
    case evolved
    /// A batch's transaction committed; the queue does not know yet.
    case committed
    /// A batch was marked done in the queue.
    case acknowledged
    /// The final step committed its first key (the others are not all in place yet).
    case keys
    /// The keys added after the load all committed; the job is not marked finished yet.
    case keysCommitted
    /// A worker marked its partition done; it has not looked for the next one yet.
    case partitionDone
    /// A plan of partitions made its preparations (tables migrated, keys dropped); it has not
    /// recorded its job yet.
    case prepared
    /// A re-snapshot recorded that it began (its first step, the shadow's snapshot); nothing
    /// is loaded into the shadow schema yet.
    case resnapshotBegan
    /// The shadow's snapshot finished; the re-snapshot has not recorded its next step yet.
    case shadowLoaded
    /// The shadow caught up with the change stream; the swap is not recorded yet.
    case shadowCaughtUp
    /// The swap committed in the target; the state directory still describes the old job.
    case swapCommitted
    /// The state directory describes the new snapshot; the old tables are not dropped yet.
    case stateSwitched
    /// The old tables are dropped; the re-snapshot's record is not removed yet.
    case oldDropped

    private static let armed: (point: CrashPoint, count: Int)? = {
        guard let spec = ProcessInfo.processInfo.environment["ETL_CRASH_AT"] else { return nil }
        let parts = spec.split(separator: ":")
        guard let point = parts.first.flatMap({ CrashPoint(rawValue: String($0)) }) else { return nil }
        return (point, parts.count > 1 ? Int(parts[1]) ?? 1 : 1)
    }()

    private static let hits = Mutex(0)

    public func reach() {
        guard let armed = Self.armed, armed.point == self else { return }
        let n = Self.hits.withLock { count -> Int in
            count += 1
            return count
        }
        if n >= armed.count { kill(getpid(), SIGKILL) }
    }
}
