import Queue

/// The decisions of `start` and `resume`, made from what is known before anything is
/// written: either a refusal (a `JobError`, with its exit code and message) or the steps to
/// run, in order. Pure: tested without services; `DurableJob` gathers the facts (reading
/// only) and runs the steps. Each refusal is stated here once.
public enum JobPlan {
    /// What is known of one pipeline's target before the run writes anything.
    public struct Target: Sendable, Equatable {
        public var name: String
        /// The pipeline is code, so `--database`/`--collection` may name its source.
        public var builtIn: Bool
        /// A table of the pipeline that holds rows, if any.
        public var nonEmptyTable: String?
        /// Foreign keys the pipeline declares, how many are not in place, and whether the
        /// connected role owns the tables (may drop and add them).
        public var declaredKeys: Int
        public var missingKeys: Int
        public var ownsTables: Bool

        public init(name: String, builtIn: Bool, nonEmptyTable: String? = nil, declaredKeys: Int = 0, missingKeys: Int = 0, ownsTables: Bool = true) {
            (self.name, self.builtIn, self.nonEmptyTable, self.declaredKeys, self.missingKeys, self.ownsTables)
                = (name, builtIn, nonEmptyTable, declaredKeys, missingKeys, ownsTables)
        }
    }

    /// What a command says about the source, as far as a plan needs it.
    public struct Request: Sendable, Equatable {
        public var namesCollection: Bool
        /// The flag of a source of another kind (`--source-file`), when one is named.
        public var option: String?

        public init(namesCollection: Bool = false, option: String? = nil) {
            self.namesCollection = namesCollection
            self.option = option
        }
    }

    /// One step of a plan; the executor runs them in order.
    public enum Step: Sendable, Equatable {
        /// Take the state directory's lock (exit 75 when another process holds it).
        case lockStateDirectory
        /// Take each pipeline's lock on the target (exit 75 naming the session that holds one).
        case lockTargets([String])
        /// Apply pending migrations of these pipelines and the engine.
        case migrate([String])
        /// Compare the pipelines' tables with what they write (exit 70 when they differ).
        case checkTargets([String])
        /// Remove the state directory's previous job: manifest first, then its queues.
        case discardPreviousJob
        /// Empty a pipeline's tables and checkpoints.
        case truncate(String)
        /// Put a new job's (empty) tables in the state its foreign-key mode loads them in.
        case prepareForeignKeys(String, ForeignKeyMode)
        /// Add a pipeline's missing foreign keys (a job that keeps them in place while loading).
        case addForeignKeys(String)
        /// Remove queues no manifest names (what a `start --fresh` killed while discarding leaves).
        case removeOrphanQueues([String])
        /// Write the run's manifest, naming every pipeline with its foreign-key mode.
        case writeManifest([String: ForeignKeyMode])
        /// Record a new job in a pipeline's queue.
        case createJob(String, ForeignKeyMode)
        /// Create the indexes that finding a document's rows needs.
        case createDocumentIndexes(String)
        /// Record the job of a pipeline's changes in its change queue, when it has none yet.
        case openChanges(String)
    }

    /// What a command that continues a job (resume, sync) knows of it first.
    public struct RecordedJob: Sendable {
        public var stateDirectory: String
        public var busy: JobLock.Busy?
        public var hasJob: Bool
        /// A pipeline the job runs that this etl-job does not know.
        public var unknownPipeline: String?
        /// The directory holds a worker's partitions (`etl-job worker`), not a job of its own.
        public var ofWorker: Bool

        public init(stateDirectory: String, busy: JobLock.Busy? = nil, hasJob: Bool, unknownPipeline: String? = nil, ofWorker: Bool = false) {
            self.stateDirectory = stateDirectory
            self.busy = busy
            self.hasJob = hasJob
            self.unknownPipeline = unknownPipeline
            self.ofWorker = ofWorker
        }
    }

    // MARK: Refusals

    /// Another process holds the job, there is none (`noJob` says what to run), or it runs a
    /// pipeline this etl-job does not know.
    static func refusal(of job: RecordedJob, noJob: String) -> JobError? {
        if let busy = job.busy { return Self.busy(busy) }
        if !job.hasJob, job.ofWorker {
            return JobError(.usage, "\(job.stateDirectory) is an etl-job worker's state directory: its job is split into partitions, which wait in the target "
                + "for any worker; run 'etl-job worker' (on this machine or any other), and 'etl-job status --partitions' to follow it")
        }
        guard job.hasJob else { return Self.noJob(noJob, in: job.stateDirectory) }
        if let unknown = job.unknownPipeline { return unknownPipeline(unknown, of: .stateDirectory(job.stateDirectory)) }
        return nil
    }

    /// Another process holds the state directory.
    static func busy(_ busy: JobLock.Busy) -> JobError { JobError(.busy, busy.description) }

    /// What the command says about the source that cannot apply to these pipelines.
    static func refusal(of request: Request, builtIn: Int, pipelines: Int, ofJob: Bool) -> JobError? {
        let subject = ofJob ? "this job runs" : "this run has"
        if request.namesCollection, builtIn > 1 {
            return JobError(.usage, "--database and --collection name the source of one built-in pipeline (a mapping file names its own); \(subject) several")
        }
        if let option = request.option, pipelines > 1 {
            return JobError(.usage, "\(option) names the source of one pipeline; \(subject) \(pipelines)")
        }
        return nil
    }

    /// A command whose source or target differs from what the job recorded.
    public static func mismatch(pipeline: String, stateDirectory: String, _ differences: [IdentityDifference]) -> JobError? {
        guard !differences.isEmpty else { return nil }
        let list = differences.map { "\($0.field) is '\($0.given)' but the job was started on '\($0.recorded)'" }
        return JobError(.usage, "the \(pipeline) job in \(stateDirectory) moves another collection or target: "
            + list.joined(separator: "; ") + "; use the same settings, or another --state-dir")
    }

    /// A new job's key mode: as asked, else `keysAfter` (primary keys that follow from the
    /// document's key built after the load, foreign keys added after it) when the role may
    /// drop and add keys: it owns the tables, or they do not exist yet. A role that does not
    /// own tables whose foreign keys are in place loads `during`; one that does not own
    /// tables without them, `after` (their primary keys stay).
    static func foreignKeyMode(_ target: Target, requested: ForeignKeyMode?) throws(JobError) -> ForeignKeyMode {
        if requested == .during { return .during }
        guard !target.ownsTables else { return requested ?? .keysAfter }
        let refusal = JobError(.usage, "loading with the keys after the load drops the tables' keys and adds them after it, which needs a role that owns "
            + "the \(target.name) pipeline's tables; use --keys during --foreign-keys during, or run as their owner")
        if target.declaredKeys > 0, target.missingKeys < target.declaredKeys {
            if requested != nil { throw refusal }
            return .during
        }
        if requested == .keysAfter { throw refusal }
        return .after
    }

    // MARK: Start

    public struct StartFacts: Sendable {
        public var stateDirectory: String
        public var busy: JobLock.Busy?
        public var fresh: Bool
        /// The job the state directory holds: nil when none, else whether it finished.
        public var existingJobFinished: Bool?
        public var request: Request
        public var targets: [Target]
        public var requestedForeignKeys: ForeignKeyMode?
        /// Where the new job is recorded: in the state directory (its manifest and queues), or
        /// in the target, split into partitions that workers load (`start --partitions`).
        public var recordedIn: JobRecord = .stateDirectory

        public init(stateDirectory: String, busy: JobLock.Busy? = nil, fresh: Bool, existingJobFinished: Bool? = nil,
                    request: Request = Request(), targets: [Target], requestedForeignKeys: ForeignKeyMode? = nil) {
            self.stateDirectory = stateDirectory
            self.busy = busy
            self.fresh = fresh
            self.existingJobFinished = existingJobFinished
            self.request = request
            self.targets = targets
            self.requestedForeignKeys = requestedForeignKeys
        }
    }

    public enum JobRecord: Sendable, Equatable {
        case stateDirectory
        case partitions
    }

    /// A new run: refused when the state directory holds a job or a target table holds rows,
    /// unless `fresh`, which discards the job and empties the tables (after every lock is held).
    public static func start(_ facts: StartFacts) throws(JobError) -> [Step] {
        if let busy = facts.busy { throw Self.busy(busy) }
        if !facts.fresh, let finished = facts.existingJobFinished {
            throw JobError(.usage, finished
                ? "the job in \(facts.stateDirectory) already finished; use 'etl-job start --fresh' to run again from scratch"
                : "the state directory \(facts.stateDirectory) holds an unfinished job; run 'etl-job resume' (or 'etl-job start --fresh' to discard it)")
        }
        if let refusal = refusal(of: facts.request, builtIn: facts.targets.filter(\.builtIn).count, pipelines: facts.targets.count, ofJob: false) {
            throw refusal
        }
        if !facts.fresh, let full = facts.targets.first(where: { $0.nonEmptyTable != nil }) {
            throw JobError(.usage, "the target table \(full.nonEmptyTable!) already holds rows; use 'etl-job start --fresh' to empty the \(full.name) pipeline's tables first")
        }
        var modes: [String: ForeignKeyMode] = [:]
        for target in facts.targets { modes[target.name] = try foreignKeyMode(target, requested: facts.requestedForeignKeys) }
        let names = facts.targets.map(\.name)
        var steps: [Step] = [.lockTargets(names), .lockStateDirectory, .migrate(names), .checkTargets(names)]
        if facts.fresh { steps += [.discardPreviousJob] + names.map(Step.truncate) }
        // The tables are empty here: their foreign keys go before the load, or come after it.
        steps += names.map { .prepareForeignKeys($0, modes[$0]!) }
        steps.append(.removeOrphanQueues(names))
        // The manifest first: a run killed before every queue exists is completed by resume.
        if facts.recordedIn == .stateDirectory { steps += [.writeManifest(modes)] + names.map { .createJob($0, modes[$0]!) } }
        return steps
    }

    // MARK: Changes

    public struct ChangesFacts: Sendable {
        public var job: RecordedJob
        public var pipelines: [ChangesPipeline]

        public init(job: RecordedJob, pipelines: [ChangesPipeline] = []) {
            self.job = job
            self.pipelines = pipelines
        }
    }

    public struct ChangesPipeline: Sendable {
        public var name: String
        /// The snapshot's job finished (its documents loaded, its keys in place).
        public var snapshotFinished: Bool
        /// Why the source has no change stream to follow, if it has none.
        public var unavailable: String?
        /// The pipeline can tell a document's key from its `_id` (to replace or delete it).
        public var findsDocuments: Bool
        public var differences: [IdentityDifference]

        public init(name: String, snapshotFinished: Bool, unavailable: String? = nil, findsDocuments: Bool = true, differences: [IdentityDifference] = []) {
            self.name = name
            self.snapshotFinished = snapshotFinished
            self.unavailable = unavailable
            self.findsDocuments = findsDocuments
            self.differences = differences
        }
    }

    /// Applying the changes made to the sources since the snapshot began: only after the
    /// snapshot finished, and only for sources that have a change stream.
    public static func changes(_ facts: ChangesFacts) throws(JobError) -> [Step] {
        if let refusal = refusal(of: facts.job, noJob: "sync") { throw refusal }
        for pipeline in facts.pipelines {
            if let refusal = mismatch(pipeline: pipeline.name, stateDirectory: facts.job.stateDirectory, pipeline.differences) { throw refusal }
            guard pipeline.snapshotFinished else {
                throw JobError(.usage, "the \(pipeline.name) job in \(facts.job.stateDirectory) has not finished its snapshot; "
                    + "run 'etl-job resume' until it completes, then 'etl-job sync'")
            }
            if let reason = pipeline.unavailable {
                throw JobError(.usage, "cannot sync the \(pipeline.name) job: \(reason)")
            }
            guard pipeline.findsDocuments else {
                throw JobError(.usage, "cannot sync the \(pipeline.name) job: its pipeline cannot tell a document's key from its _id, "
                    + "so a change cannot replace or delete its rows (a mapping file's key must be its _id)")
            }
        }
        let names = facts.pipelines.map(\.name)
        return [.lockTargets(names), .migrate(names), .checkTargets(names)] + names.map(Step.createDocumentIndexes) + names.map(Step.openChanges)
    }

    // MARK: Resume

    public struct ResumeFacts: Sendable {
        public var job: RecordedJob
        public var request: Request
        public var pipelines: [ResumePipeline]

        public init(job: RecordedJob, request: Request = Request(), pipelines: [ResumePipeline] = []) {
            self.job = job
            self.request = request
            self.pipelines = pipelines
        }
    }

    public struct ResumePipeline: Sendable {
        public var target: Target
        public var state: State
        /// How the command's source and target differ from what the job recorded.
        public var differences: [IdentityDifference]

        public enum State: Sendable, Equatable {
            /// The run was killed after its manifest, before this queue recorded its job; the
            /// manifest planned this foreign-key mode (nil for a manifest of etl-job 0.3).
            case neverStarted(planned: ForeignKeyMode?)
            case finished
            /// The job's foreign-key mode (nil for a job of etl-job 0.2, which kept them in place).
            case unfinished(ForeignKeyMode?)
        }

        public init(target: Target, state: State, differences: [IdentityDifference] = []) {
            self.target = target
            self.state = state
            self.differences = differences
        }
    }

    /// The steps to continue a job (none when every pipeline finished). A pipeline that never
    /// started is started now, on a target the same checks as start's allow.
    public static func resume(_ facts: ResumeFacts) throws(JobError) -> [Step] {
        if let refusal = refusal(of: facts.job, noJob: "resume") { throw refusal }
        let targets = facts.pipelines.map(\.target)
        if let refusal = refusal(of: facts.request, builtIn: targets.filter(\.builtIn).count, pipelines: targets.count, ofJob: true) {
            throw refusal
        }
        for pipeline in facts.pipelines {
            if let refusal = mismatch(pipeline: pipeline.target.name, stateDirectory: facts.job.stateDirectory, pipeline.differences) {
                throw refusal
            }
            if case .neverStarted = pipeline.state, let table = pipeline.target.nonEmptyTable {
                throw JobError(.usage, "the \(pipeline.target.name) job never started, and the target table \(table) already holds rows; "
                    + "use 'etl-job start --fresh' to empty the pipeline's tables first")
            }
        }
        let running = facts.pipelines.filter { $0.state != .finished }
        guard !running.isEmpty else { return [] }
        let names = running.map(\.target.name)
        var steps: [Step] = [.lockTargets(names), .migrate(names), .checkTargets(names)]
        for pipeline in running {
            let name = pipeline.target.name
            switch pipeline.state {
            case .neverStarted(let planned):
                steps += [.prepareForeignKeys(name, planned ?? .during), .createJob(name, planned ?? .during)]
            case .unfinished(let mode) where !(mode ?? .during).foreignKeysAfter:
                // A job that keeps its keys in place while loading finds them there (a job of
                // etl-job 0.2 created its tables with them).
                steps.append(.addForeignKeys(name))
            default:
                break
            }
        }
        return steps
    }
}
