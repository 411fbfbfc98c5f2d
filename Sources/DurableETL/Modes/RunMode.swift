import ETLCore
import Postgres
import Queue

/// What a run does with the pipelines it prepared: the one place that says how the modes of
/// the engine differ. Extraction, the queue and the batch's transaction (`Loader.loadOnce`)
/// are the same in every mode; a mode chooses how its batches are cut and applied, what a
/// batch's transaction records besides its rows, and the run's final step (the set-aside
/// limit, the keys built after the load, and where "finished" is recorded).
public enum RunMode: Sendable, Equatable {
    /// A snapshot of the source (`start`, `resume`): documents appended; at its end the
    /// set-aside limit is weighed, the keys are added, and the queue records the job finished.
    case snapshot
    /// A sync's changes (`sync`): documents replaced or deleted, one batch in flight per
    /// pipeline (two batches touching one document never commit out of order); it never
    /// finishes, and its end weighs the limit over the changes this run applied.
    case changes
    /// One partition of a job split among workers (`worker`): batches cut by count alone (so
    /// that every worker cuts the partition alike), the transaction of its last batch marks
    /// the partition done in the target; the limit and the keys are the job's final step, once
    /// every partition is done (`DurableJob.finishIfDone`).
    case partition(PartitionRef)

    /// The queue holds changes (`Change` envelopes: replace or delete) rather than documents to append.
    var appliesChanges: Bool { self == .changes }

    /// The workers of a pipeline given `share` of the run's budget.
    func workers(share: Int) -> Int { appliesChanges ? 1 : share }

    /// How the mode cuts its batches, from the run's settings.
    func bucket(_ config: BucketConfig, workers: Int) -> BucketConfig {
        var config = config
        config.workers = workers
        if case .partition = self { config.cutsByCountOnly = true }
        return config
    }

    /// What a batch's transaction writes besides its rows and checkpoint, named for the
    /// load's trace: in a partition, the partition marked done when this batch is its last.
    func inBatchTransaction(pipeline: String, batch: UInt64, queue: DurableQueue) -> (name: String, write: (PGConnection) throws -> Void)? {
        guard case .partition(let partition) = self else { return nil }
        return ("UPDATE etl_partitions (done, if this batch is the partition's last)", { db in
            try PartitionTable.markDoneIfLast(db, partition, pipeline: pipeline, batch: batch, queue: queue)
        })
    }

    /// Why the run fails on the documents it set aside, or nil: the limit as the mode weighs
    /// it (a partition's are weighed over the whole job, in its final step).
    func setAsideFailure(_ limit: SetAsideLimit, status: QueueStatus, before: QueueStatus?) -> String? {
        switch self {
        case .snapshot:
            return limit.failure(loaded: status.documentsLoaded, setAside: status.documentsSetAside)
        case .changes:
            let applied = status.documentsLoaded + status.documentsDeleted - (before.map { $0.documentsLoaded + $0.documentsDeleted } ?? 0)
            let setAside = status.documentsSetAside - (before?.documentsSetAside ?? 0)
            return limit.failure(changesApplied: applied, setAside: setAside)
        case .partition:
            return nil
        }
    }
}

extension DurableJob {
    /// The final step of a pipeline's run, as its mode has it. A run of changes never
    /// finishes (the source changes on): only the set-aside limit can fail it. A snapshot or a
    /// partition finishes when everything is loaded and the limit holds: the keys that go in
    /// after the load are added, then the queue records the job finished.
    func end(_ mode: RunMode, _ job: PipelineJob, _ queue: DurableQueue, _ lock: TargetLock, before: QueueStatus?, stopped: Bool) throws -> PipelineReport {
        guard var status = try queue.status() else {
            throw JobError(.failed, "the \(mode.appliesChanges ? "change queue" : "queue") of \(job.name) lost its job")
        }
        var failure: String?
        if mode.appliesChanges {
            failure = mode.setAsideFailure(settings.maxSetAside, status: status, before: before)
        } else if status.isComplete && !stopped {
            failure = mode.setAsideFailure(settings.maxSetAside, status: status, before: before)
            if failure == nil {
                // The final step of a job that adds its keys after the load: each key commits on
                // its own, so a kill leaves some of them, and resume (which comes back here) adds the rest.
                if let keys = status.foreignKeys.flatMap(ForeignKeyMode.init), keys.foreignKeysAfter {
                    try lock.regain()
                    try addKeysAfterLoad(job, try job.releasedOrConnect(), keys, fence: lock.fence)
                }
                try queue.markFinished()
                status = try queue.status() ?? status
            }
        }
        return withMappingInForce(PipelineReport(name: job.name, tables: job.mapping.tables.map(\.name), status: status, failure: failure), job)
    }

    /// The keys of a job that adds them after its load, in its final step (a snapshot's or a
    /// job split into partitions').
    func addKeysAfterLoad(_ job: PipelineJob, _ db: PGConnection, _ keys: ForeignKeyMode,
                          fence: @escaping @Sendable (PGConnection) throws -> Void) throws {
        try addForeignKeys(job, db, primaryKeys: keys == .keysAfter, fence: fence)
        CrashPoint.keysCommitted.reach()
    }
}
