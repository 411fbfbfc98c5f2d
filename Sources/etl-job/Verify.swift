import ArgumentParser
import DurableETL
import ETLCore
import Foundation
import Queue

struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the target against the source: counts, missing and unexpected keys, row contents.",
        discussion: "Exits 0 only when every table of every pipeline holds exactly the rows its source documents give, less the documents the job set aside.")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup(title: "Job") var pipelines: PipelineOptions

    @Flag(help: "Print JSON for scripts.")
    var json = false

    @Option(name: .customLong("unmapped"), help: ArgumentHelp(
        "Check with another unmapped-field policy than the one the job recorded (evolve: every field not dropped by a run must be held).",
        valueName: "policy"))
    var unmapped: UnmappedPolicy?

    func run() async throws {
        try await reportingErrors {
            var resolved = try connection.resolved()
            resolved.unmapped = unmapped
            let given = resolved
            _ = try connection.makeLogger()
            let reports = try await Threads.blocking(name: "verify") { try verifyAll(given) }
            if json {
                struct Document: Encodable {
                    let schemaVersion = JSONOutput.schemaVersion
                    let etlJob = JSONOutput.stamp
                    let agrees: Bool
                    let pipelines: [Verifier.Report]
                }
                let document = Document(agrees: reports.allSatisfy(\.agrees), pipelines: reports)
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                print(String(decoding: try encoder.encode(document), as: UTF8.self))
            } else {
                print(reports.map { reports.count > 1 ? "pipeline \($0.pipeline)\n\($0.render())" : $0.render() }.joined(separator: "\n\n"))
            }
            if !reports.allSatisfy(\.agrees) { throw ExitCode(65) }
        }
    }

    /// Verifies each pipeline of the job in the state directory (or those named; without a job
    /// there, the target's latest job split into partitions of each pipeline, else the given
    /// pipelines) against the source and target it recorded.
    private func verifyAll(_ settings: JobSettings) throws -> [Verifier.Report] {
        let directory = settings.stateDirectory
        let given = try pipelines.mappings()
        guard let manifest = try RunManifest.read(directory) else {
            // A job split into partitions keeps its record in the target, not in a state directory.
            let partitioned = try RecordedPartitionedJob.latest(settings).filter { pipelines.names.isEmpty || pipelines.names.contains($0.pipeline) }
            if !partitioned.isEmpty {
                let resolve = Pipelines.resolver(given: try pipelines.mapping.load())
                return try partitioned.map { job in
                    guard let mapping = try resolve(job.pipeline, job.definition) else {
                        throw JobPlan.unknownPipeline(job.pipeline, of: .target)
                    }
                    return try verify(mapping, settings, recorded: (job.identity, job.setAside, nil), keysPending: job.keysPending)
                }
            }
            try settings.source.refuse(for: given, ofJob: false)
            return try given.map { try verify($0, settings, recorded: (nil, [:], nil)) }
        }
        var names = manifest.pipelines
        if !pipelines.names.isEmpty {
            if let unknown = pipelines.names.first(where: { !manifest.pipelines.contains($0) }) {
                throw JobPlan.noSuchPipeline(unknown, in: directory, runs: manifest.pipelines)
            }
            names = pipelines.names
        }
        let resolve = Pipelines.resolver(given: try pipelines.mapping.load())
        let mappings = try names.map { name in
            guard let mapping = try resolve(name, manifest.planned[name]?.definition) else {
                throw JobPlan.unknownPipeline(name, of: .stateDirectory(directory))
            }
            return mapping
        }
        try settings.source.refuse(for: mappings, ofJob: true)
        return try mappings.map { try verify($0, settings, recorded: try recordedJob(RunManifest.queueDirectory(directory, $0.name))) }
    }

    private func verify(_ mapping: any DocumentMapping, _ settings: JobSettings, recorded: (identity: JobIdentity?, setAside: [String: Int], status: QueueStatus?),
                        keysPending: Bool = false) throws -> Verifier.Report {
        var job = PipelineJob(mapping: mapping, settings: settings, recorded: recorded.identity)
        let db = try job.connectPostgres()
        try job.refuseMismatch(recorded: recorded.identity, current: job.identity(db))
        // What the tables hold now: the mapping as the job's batches evolved it.
        job = try job.inForce(db)
        let mapping = job.mapping
        try job.source.checkExists()
        try PipelineJob.refuseUnfollowablePolicy([mapping], settings)
        // Fields a run dropped on purpose (its policy then) are not missing.
        let dropped = Set(try MappingLedger.summaries(db, pipeline: mapping.name).filter { $0.outcome == UnmappedPolicy.drop.outcome }.map(\.path))
        let verifier = Verifier(
            db: db, mapping: mapping, source: try job.source.open(after: nil, batchSize: settings.cursorBatchSize), setAside: Set(recorded.setAside.keys), setAsideCounts: recorded.setAside,
            maxDocumentBytes: settings.maxDocumentBytes, droppedByJob: dropped)
        var report = try verifier.run(progress: { n in Console.standardError.status("\(mapping.name): verified \(n) documents") },
                                      differences: try job.target.differences(db, mapping))
        Console.standardError.endStatus()
        let pending = keysPending || recorded.status.map { $0.finishedAt == nil && ($0.foreignKeys.flatMap(ForeignKeyMode.init)?.foreignKeysAfter ?? false) } ?? false
        report.foreignKeys = try Verifier.checkForeignKeys(db, job.target, mapping, pending: pending)
        return report
    }

    /// What a pipeline's queue recorded: its identity, and the documents set aside now (by
    /// the snapshot, unless a change since replaced or deleted them, and by the changes).
    private func recordedJob(_ directory: String) throws -> (identity: JobIdentity?, setAside: [String: Int], status: QueueStatus?) {
        guard DurableQueue.exists(in: directory) else { return (nil, [:], nil) }
        do {
            let queue = try DurableQueue(directory: directory, readOnly: true)
            let setAside = try SetAsideNow.read(queue, changes: directory + "/changes")
            return (JobIdentity.decode(try queue.identity), setAside.reduce(into: [:]) { $0[$1.documentId, default: 0] += 1 }, try queue.status())
        } catch let error as JobError {
            throw error
        } catch {
            throw JobError.queue(error, directory)
        }
    }
}
