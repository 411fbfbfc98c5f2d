import ArgumentParser
import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue
import DurableETL

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show each pipeline's queue: pending, in flight, done, set aside, rows loaded, throughput, ETA.")

    @OptionGroup var connection: ConnectionOptions

    @Option(name: .customLong("pipeline"), help: ArgumentHelp("Show only this pipeline of the job (repeatable).", valueName: "name"))
    var only: [String] = []

    @OptionGroup(title: "Job") var mapping: MappingOptions

    @Flag(help: "Print JSON for scripts.")
    var json = false

    @Flag(help: "List the documents set aside, with their _id and reason (with --partitions: those of the target's jobs split into partitions, from their checkpoint rows).")
    var rejected = false

    @Flag(name: .customLong("with-documents"), help: "With --rejected: include each document as extended JSON.")
    var withDocuments = false

    @Flag(help: "Show the target's jobs split into partitions (read from the target alone, no state directory): each partition pending, claimed by which worker, or done, and the ETA.")
    var partitions = false

    func run() async throws {
        try await reportingErrors {
            let settings = try connection.resolved()
            _ = try connection.makeLogger()
            let urls = try connection.urlsGiven()
            if partitions {
                guard !withDocuments else {
                    throw JobError(.usage, "--with-documents is not available with --partitions: the target keeps each set-aside document's _id and reason, "
                        + "the document itself is in the source")
                }
                try await Threads.blocking(name: "status") { try showPartitions(settings) }
                return
            }
            try await Threads.blocking(name: "status") { try show(settings, urls: urls) }
        }
    }

    /// `--partitions`: the jobs split into partitions in the target schema.
    private func showPartitions(_ settings: JobSettings) throws {
        let schema = settings.targetSchema ?? JobSettings.defaultSchema
        let db: PGConnection
        do { db = try Target(url: settings.postgresURL, schema: schema).connect() } catch { throw JobError.connecting(error) }
        let jobs = try PartitionedJobStatus.read(db, schema: schema)
        if rejected {
            try printRejected(jobs, db, schema: schema)
            return
        }
        if json {
            print(JSONOutput.text(["targetSchema": schema, "jobs": jobs.map(Self.json)]))
            return
        }
        guard !jobs.isEmpty else {
            print("no job split into partitions in schema \(schema) of the target")
            return
        }
        func n(_ v: Int64) -> String { v.formatted(.number.grouping(.automatic)) }
        var lines: [String] = []
        for job in jobs {
            let done = job.partitions.filter { $0.state == .done }.count
            lines.append("job \(job.job) of \(job.pipeline): \(job.partitions.count) partitions (\(job.method)), \(done) done; "
                + (job.finishedAt.map { "finished \($0.formatted(.iso8601))" + (job.finishedBy.map { " by \($0)" } ?? "") } ?? "not finished"))
            for part in job.partitions {
                var state: String
                switch part.state {
                case .done: state = "done"
                case .claimed: state = "claimed by \(part.host ?? "?") pid \(part.pid.map(String.init) ?? "?") (PostgreSQL session \(part.session.map(String.init) ?? "?"))"
                case .pending: state = part.claims > 0 ? "pending (its last worker, \(part.host ?? "?") pid \(part.pid.map(String.init) ?? "?"), is gone)" : "pending"
                }
                let planned = part.documentsPlanned.map { " of \(n($0))" } ?? ""
                let rate = part.rate.map { String(format: ", %.0f documents/s", $0) } ?? ""
                lines.append("  partition \(part.number)  \(state): \(n(part.documents))\(planned) documents, \(n(part.rows)) rows, \(n(part.setAside)) set aside\(rate)")
            }
            let planned = job.documentsPlanned.map { " of \(n($0))" } ?? ""
            let eta = job.finishedAt == nil ? (job.etaSeconds.map { String(format: ", ETA %.0f s", $0) } ?? ", ETA unknown") : ""
            lines.append("  total \(n(job.documents))\(planned) documents\(eta)")
        }
        print(lines.joined(separator: "\n"))
    }

    private static func json(_ job: PartitionedJobStatus) -> [String: Any?] {
        [
            "job": job.job, "pipeline": job.pipeline, "method": job.method, "finished": job.finishedAt != nil,
            "finishedAt": job.finishedAt.map { $0.formatted(.iso8601) }, "finishedBy": job.finishedBy,
            "documents": job.documents, "documentsPlanned": job.documentsPlanned, "etaSeconds": job.etaSeconds,
            "partitions": job.partitions.map { part -> [String: Any?] in
                ["partition": part.number, "state": part.state.rawValue, "host": part.host, "pid": part.pid, "session": part.session,
                 "claimedAt": part.claimedAt.map { $0.formatted(.iso8601) }, "claims": part.claims, "documentsPlanned": part.documentsPlanned,
                 "documents": part.documents, "setAside": part.setAside, "rows": part.rows, "documentsPerSecond": part.rate]
            },
        ]
    }

    private func show(_ settings: JobSettings, urls: (mongo: Bool, postgres: Bool)) throws {
        let directory = settings.stateDirectory
        guard let manifest = try RunManifest.read(directory) else {
            // A worker's directory: its job is in the target.
            let none = "no job in \(directory)" + (DurableJob.holdsPartitions(directory)
                ? " (a worker's state directory: its job is split into partitions, which 'etl-job status --partitions' shows from the target)" : "")
            if rejected {
                print(json ? JSONOutput.text(["stateDirectory": directory, "documents": [Any]()]) : none)
            } else {
                print(json ? StatusView.json([], directory: directory, active: false) : none)
            }
            return
        }
        if let unknown = only.first(where: { !manifest.pipelines.contains($0) }) {
            throw JobPlan.noSuchPipeline(unknown, in: directory, runs: manifest.pipelines)
        }
        // A mapping file given again must be the one the job records.
        let resolve = Pipelines.resolver(given: try mapping.load())
        var mappings: [String: any DocumentMapping] = [:]
        for name in manifest.pipelines { mappings[name] = try resolve(name, manifest.planned[name]?.definition) }
        let active = JobLock.isHeld(directory: directory)
        var views: [StatusView] = []
        var rejectedDocuments: [(String, [SetAsideDocument])] = []
        for name in manifest.pipelines where only.isEmpty || only.contains(name) {
            let queueDirectory = RunManifest.queueDirectory(directory, name)
            do {
                guard DurableQueue.exists(in: queueDirectory) else { throw LMDBError.notFound }
                let queue = try DurableQueue(directory: queueDirectory, readOnly: true)
                let identity = JobIdentity.decode(try queue.identity)
                if let mapping = mappings[name] { try refuseMismatch(mapping, identity, settings: settings, urls: urls) }
                guard let status = try queue.status() else { throw LMDBError.notFound }
                let changes = queueDirectory + "/changes"
                if rejected { rejectedDocuments.append((name, try SetAsideNow.read(queue, changes: changes))) }
                var view = StatusView(pipeline: name, status, tables: mappings[name]?.tables.map(\.name),
                                      source: identity?.source.status(at: try queue.extractPosition, extractionFinished: status.extractionFinished),
                                      active: active)
                view.sync = try SyncView.read(changes, active: active)
                if let mapping = mappings[name] { view.readTarget(PipelineJob(mapping: mapping, settings: settings, recorded: identity)) }
                views.append(view)
            } catch let error as LMDBError where error.isNotFound {
                // A run is still creating this pipeline's queue, or was killed before it
                // recorded its job there (a resume starts it).
                views.append(StatusView.notStarted(pipeline: name, active: active))
            } catch let error where !(error is JobError) {
                let failure = JobError.queue(error, queueDirectory)
                if failure.kind == .ioError, !json { printCheckpoints(Target(url: settings.postgresURL, schema: settings.targetSchema ?? JobSettings.defaultSchema)) }
                throw failure
            }
        }
        if rejected {
            try printRejected(rejectedDocuments, directory: directory)
        } else {
            let recovery = try ResnapshotView.read(directory)
            print(json ? StatusView.json(views, directory: directory, active: active, resnapshot: recovery?.dictionary)
                       : StatusView.text(views) + (recovery.map { "\n" + $0.text } ?? ""))
        }
    }

    /// When a queue cannot be read, what the target's checkpoint rows still tell: the
    /// batches each job committed there, the documents they loaded, the last commit.
    private func printCheckpoints(_ target: Target) {
        guard let db = try? target.connect(connectTimeout: 3),
              let rows = try? db.execute("""
                  SELECT pipeline, job_id, count(*), sum(documents_loaded), max(committed_at)::text FROM etl_checkpoints
                  GROUP BY pipeline, job_id ORDER BY max(committed_at) DESC
                  """).rows
        else {
            print("the queue cannot be read, and neither can the target's checkpoints at \(Redact.url(target.url))")
            return
        }
        print("the queue cannot be read; the target's checkpoints at \(Redact.url(target.url)) (schema \(target.schema)) record:")
        if rows.isEmpty { print("  no committed batch") }
        for row in rows {
            print("  \(row[0] ?? "?") job \(row[1] ?? "?"): \(row[2] ?? "0") batches committed, \(row[3] ?? "0") documents loaded, the last at \(row[4] ?? "?")")
        }
    }

    /// Refuses (exit 64) when a setting the user named differs from what the job recorded;
    /// what it does not name is not compared.
    private func refuseMismatch(_ mapping: any DocumentMapping, _ recorded: JobIdentity?, settings: JobSettings, urls: (mongo: Bool, postgres: Bool)) throws {
        guard let recorded else { return }
        let job = PipelineJob(mapping: mapping, settings: settings, recorded: recorded)
        var given = recorded
        let request = settings.source
        if request.choice != nil {
            given.source = try job.source.identity()
        } else if urls.mongo || request.namesCollection {
            given.source = (try? job.source.identity()) ?? recorded.source
        }
        if let schema = settings.targetSchema { given.targetSchema = schema }
        if urls.postgres {
            let named = PGConnection.named(in: settings.postgresURL)
            given.targetHost = named.host ?? given.targetHost
            given.targetPort = named.port ?? given.targetPort
            given.targetDatabase = named.database ?? given.targetDatabase
        }
        try job.refuseMismatch(recorded: recorded, current: given, sourceLocationNamed: request.choice != nil || urls.mongo)
    }

    /// `--partitions --rejected`: what the jobs' checkpoint rows set aside.
    private func printRejected(_ jobs: [PartitionedJobStatus], _ db: PGConnection, schema: String) throws {
        let documents = try jobs.flatMap { job in try job.setAside(db).map { (job, $0) } }
        if json {
            let entries = documents.map { job, d -> [String: Any] in
                ["pipeline": job.pipeline, "job": job.job, "partition": d.partition, "batch": d.batch, "_id": d.documentId, "reason": d.reason]
            }
            print(JSONOutput.text(["targetSchema": schema, "documents": entries]))
            return
        }
        print("\(documents.count) document(s) set aside")
        for (job, d) in documents {
            print("\(jobs.count > 1 ? job.pipeline + " " : "")_id \(d.documentId) (partition \(d.partition), batch \(d.batch)): \(d.reason)")
        }
    }

    private func printRejected(_ pipelines: [(String, [SetAsideDocument])], directory: String) throws {
        let documents = pipelines.flatMap { name, documents in documents.map { (name, $0) } }
        if json {
            let entries = documents.map { name, d -> [String: Any?] in
                [
                    "pipeline": name, "batch": d.batch, "_id": d.documentId, "reason": d.reason,
                    "document": withDocuments ? d.document.withUnsafeBytes { BSON.json($0) } : nil,
                ]
            }
            print(JSONOutput.text(["stateDirectory": directory, "documents": entries]))
            return
        }
        print("\(documents.count) document(s) set aside")
        for (name, d) in documents {
            print("\(pipelines.count > 1 ? name + " " : "")_id \(d.documentId) (batch \(d.batch)): \(d.reason)")
            if withDocuments { print("  " + d.document.withUnsafeBytes { BSON.json($0, limit: 2000) }) }
        }
    }
}
