import ETLCore
import Foundation
import Queue

/// Applying the changes made to the sources after a snapshot: each pipeline's changes go
/// through a queue of their own (`<state-dir>/<pipeline>/changes`) in batches, like the
/// snapshot's documents, and each batch's rows, its set-aside documents and its checkpoint
/// row (with the source position it reached) commit in one transaction. A change replaces
/// a document's rows with those of its current version, or removes them: applying one twice
/// leaves the same rows, so changes made while the snapshot ran are simply applied again.
extension DurableJob {
    /// The name under which the snapshot's queue records where the change stream stood.
    static let changeStreamStartRecord = "change_stream_start"

    /// Applies the changes of every pipeline of the job in the state directory, from where
    /// the last run of changes stopped (the first time, from where the stream stood when the
    /// snapshot began), until they are caught up, or on until a stop when `follow`.
    public func applyChanges(
        resolve: @escaping @Sendable (String, String?) throws -> (any DocumentMapping)?, follow: Bool, stop: StopToken, observer: RunObserver? = nil
    ) async throws -> RunReport {
        var prepared = try await Threads.blocking(name: "prepare") { try prepareChanges(resolve: resolve, follow: follow, stop: stop) }
        prepared.mode = .changes
        return try await run(prepared, stop: stop, observer: observer)
    }

    /// Records where `job`'s change stream stands (`start`: as the job's plan found it), or
    /// why it has none, in the queue a sync reads it from.
    func recordChangeStreamStart(_ job: PipelineJob, _ queue: DurableQueue, start: ChangeStreamStart? = nil) throws {
        let start = start ?? Self.changeStreamStart(job, when: "started")
        try queue.record(Self.changeStreamStartRecord, Array(try JSONEncoder().encode(start)))
    }

    /// Where `job`'s change stream stands now, before the job reads a document, or why it has
    /// none (`when` the job "started", or "was planned").
    static func changeStreamStart(_ job: PipelineJob, when: String) -> ChangeStreamStart {
        do {
            return try job.source.changeStreamStart()
        } catch {
            return .unavailable("\(job.source.description) gave no change stream position when the job \(when) (\(error))")
        }
    }

    private func prepareChanges(resolve: (String, String?) throws -> (any DocumentMapping)?, follow: Bool, stop: StopToken) throws -> Prepared {
        var facts = JobPlan.ChangesFacts(job: .init(stateDirectory: settings.stateDirectory, hasJob: true))
        guard let (manifest, mappings, lock) = try recordedJob(resolve: resolve, { job in
            facts.job = job
            _ = try JobPlan.changes(facts)
        }) else { return Prepared() }
        var run = Execution(jobs: [])
        run.prepared.lock = lock
        try PipelineJob.refuseUnfollowablePolicy(mappings, settings)
        for mapping in mappings {
            let name = mapping.name
            let queue = try PipelineJob(mapping: mapping, settings: settings).openQueue()
            let recorded = JobIdentity.decode(try queue.identity)
            let job = PipelineJob(mapping: mapping, settings: settings, recorded: recorded, planned: manifest.planned[name])
            let db = try job.connectPostgres(logger: logger)
            let status = try queue.status()
            let start = try queue.recorded(Self.changeStreamStartRecord).flatMap { try? JSONDecoder().decode(ChangeStreamStart.self, from: Data($0)) }
                ?? .unavailable("the job was started by an etl-job that did not record where the change stream stood; run 'etl-job start --fresh' to start one that does")
            var pipeline = JobPlan.ChangesPipeline(
                name: name, snapshotFinished: status?.finishedAt != nil, findsDocuments: mapping.documentKeyType != nil,
                differences: recorded?.differences(from: try job.identity(db)) ?? [])
            if case .unavailable(let reason) = start { pipeline.unavailable = reason }
            facts.pipelines.append(pipeline)
            _ = try JobPlan.changes(facts)
            run.jobs.append(job.reading(try job.source.changes(from: start, follow: follow, stop: stop)))
            run.connections[name] = db
            run.snapshotJobs[name] = status?.jobId
            run.identities[name] = try job.identity(db).encoded()
        }
        try execute(try JobPlan.changes(facts), &run)
        run.releaseConnections()
        return run.prepared
    }

    /// Opens a pipeline's change queue, recording its job the first time: the snapshot's job
    /// id with `-changes`, so that its checkpoint rows never meet the snapshot's.
    func openChanges(_ run: inout Execution, _ name: String) throws {
        let job = run.job(name)
        let queue = try job.openQueue(job.changesDirectory)
        if try queue.jobId == nil {
            try queue.createJob(id: (run.snapshotJobs[name] ?? UUID().uuidString.lowercased()) + "-changes", sourceTotal: nil,
                                identity: run.identities[name] ?? [])
            logger.info("started applying the source's changes", metadata: ["pipeline": "\(name)"])
        }
        run.queues[name] = queue
    }
}

/// The change stream no longer reaches the job's position: the changes made since are lost to it.
public struct ChangeStreamHistoryLost: Error, CustomStringConvertible {
    /// What was lost, without what to do about it.
    public let lost: String

    public var description: String { lost + "; re-run the snapshot with 'etl-job start --fresh'" }
}
