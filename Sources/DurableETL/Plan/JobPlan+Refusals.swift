import Foundation

/// The refusals of commands about a recorded job that are not a plan's steps: a pipeline
/// this etl-job does not know, and those of a job split into partitions (its plan, its
/// workers, a sync after it). Each is stated here once, whoever finds it.
extension JobPlan {
    /// Whose job runs a pipeline: a state directory's, the target's job split into
    /// partitions, or one such job by its id.
    public enum RecordedBy: Sendable {
        case stateDirectory(String)
        case target
        case partitionedJob(String)
    }

    /// A job runs a pipeline this etl-job does not know (no built-in, no mapping given).
    public static func unknownPipeline(_ pipeline: String, of job: RecordedBy) -> JobError {
        let runs = switch job {
        case .stateDirectory(let directory): "the job in \(directory) runs the pipeline '\(pipeline)'"
        case .target: "the target's job split into partitions runs the pipeline '\(pipeline)'"
        case .partitionedJob(let id): "job \(id) loads the \(pipeline) pipeline"
        }
        let advice = if case .partitionedJob = job { "; name its mapping with --mapping" } else { "" }
        return JobError(.usage, runs + ", which this etl-job does not know" + advice)
    }

    /// A command names a pipeline the state directory's job does not run.
    public static func noSuchPipeline(_ pipeline: String, in directory: String, runs pipelines: [String]) -> JobError {
        JobError(.usage, "the job in \(directory) has no pipeline '\(pipeline)'; it runs \(pipelines.joined(separator: ", "))")
    }

    /// There is no job in the state directory for `command` to continue.
    static func noJob(_ command: String, in directory: String) -> JobError {
        JobError(.usage, "there is no job to \(command) in \(directory); run 'etl-job start'")
    }

    // MARK: A job split into partitions

    /// A row of `etl_partitioned_jobs` that cannot be read.
    static func damagedPartitionedJob(_ id: String?, unreadable: Bool = true) -> JobError {
        JobError(.software, "the row of job \(id ?? "?") in etl_partitioned_jobs is damaged" + (unreadable ? " (its identity or settings cannot be read)" : ""))
    }

    /// `start --partitions` on a source the split found empty.
    static func nothingToSplit(_ source: String) -> JobError {
        JobError(.noInput, "\(source) holds no document to split into partitions")
    }

    /// `start` on tables an unfinished job split into partitions owns.
    static func partitionedJobHeld(_ pipeline: String, _ held: (job: String, done: Int, partitions: Int)) -> JobError {
        JobError(.busy, "the target holds job \(held.job) of the \(pipeline) pipeline, split into partitions (\(held.done) of \(held.partitions) done); "
            + "run 'etl-job worker' to finish it, or 'etl-job start --fresh' to discard it and empty its tables")
    }

    /// `sync` after a job split into partitions that the workers have not finished.
    static func partitionedJobUnfinished(_ id: String, _ pipeline: String) -> JobError {
        JobError(.busy, "job \(id) of the \(pipeline) pipeline, split into partitions, is not finished; run 'etl-job worker' until it is "
            + "(etl-job status --partitions shows it), then sync")
    }

    /// `worker` on a schema that holds no job split into partitions.
    static func noPartitionedJob(schema: String) -> JobError {
        JobError(.noInput, "schema \(schema) of the target holds no job split into partitions; plan one with 'etl-job start --partitions N'")
    }

    /// A worker whose source or target differs from those of the unfinished job it would load.
    static func partitionedJobMismatch(_ id: String, pipeline: String, count: Int, _ differences: [IdentityDifference]) -> JobError {
        JobError(.usage, "the target holds job \(id) of the \(pipeline) pipeline, unfinished, which reads another source or loads another target: "
            + differences.map { "\($0.field) \($0.recorded) (this worker: \($0.given))" }.joined(separator: ", ")
            + "; run this worker with the job's source, or discard the job with 'etl-job start --partitions \(count) --fresh'")
    }

    /// A partition's run that ended before the partition was loaded.
    static func partitionStopped(_ partition: Int, pipeline: String) -> JobError {
        JobError(.failed, "stopped before partition \(partition) of \(pipeline) was loaded; another worker (or this one, run again) loads the rest")
    }

    /// The final step of a job split into partitions: the set-aside limit over all of them.
    static func partitionedSetAside(_ limit: SetAsideLimit, pipeline: String, loaded: Int64, setAside: Int64) -> JobError? {
        guard let failure = limit.failure(loaded: loaded, setAside: setAside, list: "etl-job status --partitions --rejected",
                                          accept: "etl-job worker --max-set-aside N") else { return nil }
        return JobError(.dataError, "the job of \(pipeline) is loaded but not finished: \(failure)")
    }
}
