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
            throw JobError(.usage, "the job in \(directory) has no pipeline '\(unknown)'; it runs \(manifest.pipelines.joined(separator: ", "))")
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

/// The status numbers of one pipeline with what is derived from them: throughput and ETA.
struct StatusView {
    let pipeline: String
    let job: String?
    let active: Bool
    let complete: Bool
    let finished: Bool
    let sourceDocuments: Int64?
    let extracted: Int64
    let extractionFinished: Bool
    let batches: Int
    let pending: Int
    let inFlight: Int
    let done: Int
    let documentsLoaded: Int64
    let documentsSetAside: Int64
    let rows: [String: Int64]
    let totalRows: Int64
    let documentsPerSecond: Double?
    let etaSeconds: Double?
    /// What the source shows: its members of `status --json`, how much of it is read, lines.
    let source: SourceStatus?
    /// When the job puts its foreign keys in place: after, during (nil before it started).
    let foreignKeys: String?
    /// Whether they are in place: always with during; with after, once the job finished.
    let foreignKeysInPlace: Bool?
    /// The pipeline's tables in load order (nil: the counters' tables, sorted).
    var tables: [String]?
    /// The changes applied after the snapshot (`sync`), once there are any.
    var sync: SyncView?
    /// The fields its mapping did not name, as the target records them (nil: not read).
    var unmapped: [UnmappedSummary]?
    /// The version of its mapping in force in the target (0: as given; nil: not read).
    var mappingVersion: Int?

    init(pipeline: String, _ s: QueueStatus, tables: [String]? = nil, source: SourceStatus? = nil, active: Bool, now: Double = Date().timeIntervalSince1970) {
        self.pipeline = pipeline
        self.source = source
        self.tables = tables
        let keys = s.foreignKeys ?? "during"
        foreignKeys = keys
        foreignKeysInPlace = keys == "during" || s.finishedAt != nil
        job = s.jobId
        self.active = active
        complete = s.isComplete
        finished = s.finishedAt != nil
        sourceDocuments = s.sourceTotal
        extracted = s.extracted
        extractionFinished = s.extractionFinished
        batches = s.batches
        pending = s.pending
        inFlight = s.inFlight
        done = s.done
        documentsLoaded = s.documentsLoaded
        documentsSetAside = s.documentsSetAside
        rows = s.rows
        totalRows = s.totalRows
        let end = active ? now : (s.finishedAt ?? now)
        if let begin = s.runStartedAt, end > begin, s.documentsLoaded > s.runStartLoaded {
            documentsPerSecond = Double(s.documentsLoaded - s.runStartLoaded) / (end - begin)
        } else {
            documentsPerSecond = nil
        }
        if s.isComplete {
            etaSeconds = 0
        } else if active, let rate = documentsPerSecond, let total = s.sourceTotal ?? Self.estimatedTotal(s, fractionRead: source?.fractionRead) {
            etaSeconds = max(0, Double(total - s.documentsLoaded - s.documentsSetAside) / rate)
        } else {
            etaSeconds = nil
        }
    }

    /// A source's document count, estimated from the documents read and the share of it read.
    static func estimatedTotal(_ s: QueueStatus, fractionRead: Double?) -> Int64? {
        guard let fractionRead, fractionRead > 0.01, s.extracted > 0 else { return nil }
        return Int64((Double(s.extracted) / fractionRead).rounded())
    }

    /// A pipeline named by the run's manifest whose queue records no job yet.
    private init(notStarted pipeline: String, active: Bool) {
        self.pipeline = pipeline
        job = nil
        self.active = active
        complete = false
        finished = false
        sourceDocuments = nil
        extracted = 0
        extractionFinished = false
        (batches, pending, inFlight, done) = (0, 0, 0, 0)
        (documentsLoaded, documentsSetAside, totalRows) = (0, 0, 0)
        rows = [:]
        documentsPerSecond = nil
        etaSeconds = nil
        source = nil
        tables = nil
        foreignKeys = nil
        foreignKeysInPlace = nil
    }

    static func notStarted(pipeline: String, active: Bool) -> StatusView { StatusView(notStarted: pipeline, active: active) }

    /// What the target records of the pipeline: its mapping in force (its tables too) and the
    /// fields its mapping did not name. Left unknown when the target cannot be reached at once.
    mutating func readTarget(_ job: PipelineJob) {
        guard let db = try? job.target.connect(connectTimeout: 3) else { return }
        guard let current = try? job.inForce(db), let fields = try? MappingLedger.summaries(db, pipeline: pipeline) else { return }
        mappingVersion = current.mappingVersion
        unmapped = fields
        if tables != nil { tables = current.mapping.tables.map(\.name) }
    }

    /// The fields of `status --json`, every key always present.
    var dictionary: [String: Any?] {
        var members: [String: Any?] = [
            "pipeline": pipeline, "job": job, "active": active, "complete": complete, "finished": finished,
            "sourceDocuments": sourceDocuments, "extracted": extracted, "extractionFinished": extractionFinished,
            "batches": batches, "pending": pending, "inFlight": inFlight, "done": done,
            "documentsLoaded": documentsLoaded, "documentsSetAside": documentsSetAside, "rows": rows, "totalRows": totalRows,
            "documentsPerSecond": documentsPerSecond, "etaSeconds": etaSeconds,
            "foreignKeys": foreignKeys, "foreignKeysInPlace": foreignKeysInPlace,
        ]
        members["sync"] = .some(sync?.dictionary)
        members["unmapped"] = .some(unmapped.map { $0.map(unmappedJSON) })
        members["mappingVersion"] = .some(mappingVersion)
        for key in SourceKinds.statusKeys { members[key] = .some(nil) }
        for (key, value) in source?.json ?? [:] { members[key] = value.map { $0 as Any } }
        return members
    }

    /// `status --json`: the state directory, whether it holds a job, each pipeline and their sum.
    static func json(_ views: [StatusView], directory: String, active: Bool, resnapshot: [String: Any]? = nil) -> String {
        JSONOutput.text([
            "stateDirectory": directory,
            "resnapshot": resnapshot,
            "hasJob": !views.isEmpty,
            "active": active,
            "pipelines": views.map(\.dictionary),
            "total": [
                "documentsLoaded": views.reduce(0) { $0 + $1.documentsLoaded },
                "documentsSetAside": views.reduce(0) { $0 + $1.documentsSetAside },
                "totalRows": views.reduce(0) { $0 + $1.totalRows },
                "finished": !views.isEmpty && views.allSatisfy(\.finished),
            ] as [String: Any],
        ])
    }

    static func text(_ views: [StatusView]) -> String {
        var blocks = views.map(\.text)
        if views.count > 1 {
            func n(_ v: Int64) -> String { v.formatted(.number.grouping(.automatic)) }
            blocks.append("all \(views.count) pipelines: \(n(views.reduce(0) { $0 + $1.documentsLoaded })) documents loaded, "
                + "\(n(views.reduce(0) { $0 + $1.totalRows })) rows, \(n(views.reduce(0) { $0 + $1.documentsSetAside })) set aside")
        }
        return blocks.joined(separator: "\n\n")
    }

    var text: String {
        func n(_ v: Int64) -> String { v.formatted(.number.grouping(.automatic)) }
        guard let job else {
            return "pipeline     \(pipeline)\n" + (active ? "no job yet: a run is starting"
                : "not started: the run was stopped before this pipeline recorded its job; 'etl-job resume' starts it")
        }
        let state = finished ? "complete"
            : active ? "running"
            : complete ? "everything read is loaded or set aside, but the job is not finished (run 'etl-job resume')"
            : "stopped (resumable with 'etl-job resume')"
        var lines = [
            "pipeline     \(pipeline)",
            "job          \(job)  \(state)",
            "extracted    \(n(extracted))\(sourceDocuments.map { " of \(n($0))" } ?? "") documents"
                + (extractionFinished ? " (source read to its end)" : source?.progress.map { " (\($0))" } ?? ""),
            "batches      \(batches): \(pending) pending, \(inFlight) in flight, \(done) done",
            "loaded       \(n(documentsLoaded)) documents, \(n(totalRows)) rows",
            "set aside    \(n(documentsSetAside)) documents" + (documentsSetAside > 0 ? " (etl-job status --rejected)" : ""),
            foreignKeys == "keys-after"
                ? "keys         " + (foreignKeysInPlace == true ? "child tables' primary keys and the foreign keys built after the load"
                    : "child tables' primary keys and the foreign keys built after the load, when it completes (not in place yet)")
                : "foreign keys " + (foreignKeys == "after"
                    ? (foreignKeysInPlace == true ? "added after the load" : "added after the load, when it completes (not in place yet)")
                    : "in place during the load"),
        ]
        lines.insert(contentsOf: source?.lines ?? [], at: 2)
        if let rate = documentsPerSecond { lines.append("throughput   \(n(Int64(rate))) documents/s") }
        if let eta = etaSeconds, !complete { lines.append("ETA          \(Int(eta.rounded())) s") }
        lines += sync?.lines ?? []
        if let mappingVersion, mappingVersion > 0 { lines.append("mapping      version \(mappingVersion) in force (evolved; etl-job mapping prints it)") }
        if let unmapped {
            lines += unmapped.isEmpty ? ["unmapped     none: every field read is in the mapping"] : RunReport.renderUnmapped(unmapped, indent: "")
        } else {
            lines.append("unmapped     unknown: the target could not be read (give --postgres-url)")
        }
        lines.append("rows per table")
        let order = tables ?? rows.keys.sorted()
        let width = max(14, order.map(\.count).max() ?? 0)
        for table in order {
            lines.append("  \(table.padding(toLength: width, withPad: " ", startingAt: 0)) \(n(rows[table] ?? 0))")
        }
        return lines.joined(separator: "\n")
    }
}

/// The changes `sync` applied after the snapshot: from the pipeline's change queue.
/// A re-snapshot in progress (`sync --on-history-lost resnapshot`): its step, and what the
/// shadow's snapshot loaded so far.
struct ResnapshotView {
    let record: Resnapshot.Record
    let documentsLoaded: Int64

    static func read(_ directory: String) throws -> ResnapshotView? {
        guard let record = try Resnapshot.read(directory) else { return nil }
        let shadow = Resnapshot.shadowDirectory(directory)
        let pipelines = (try? RunManifest.read(shadow))?.pipelines ?? []
        let loaded = pipelines.reduce(Int64(0)) { sum, name in sum + ((try? RunManifest.recordedStatus(shadow, name))??.documentsLoaded ?? 0) }
        return ResnapshotView(record: record, documentsLoaded: loaded)
    }

    var dictionary: [String: Any] {
        ["step": record.step.rawValue, "description": record.step.description, "liveSchema": record.liveSchema,
         "shadowSchema": record.shadowSchema, "replacedSchema": record.replacedSchema, "began": record.began,
         "shadowDocumentsLoaded": documentsLoaded]
    }

    var text: String {
        let began = Date(timeIntervalSince1970: record.began).formatted(.iso8601)
        return "re-snapshot (the change stream's history was lost), since \(began): step \(record.step.rawValue), \(record.step.description); "
            + "\(documentsLoaded.formatted(.number.grouping(.automatic))) documents loaded into schema \(record.shadowSchema), "
            + "the tables in \(record.liveSchema) unchanged until the swap"
    }
}

struct SyncView {
    let replaced: Int64
    let deleted: Int64
    let setAside: Int64
    let pending: Int
    let inFlight: Int
    let batches: Int
    /// When the latest change applied was made at the source (seconds since 1970).
    let appliedChange: Double?
    /// How far the target is behind the source while a sync runs, in seconds.
    let lagSeconds: Double?
    let eventsPerSecond: Double?

    static func read(_ directory: String, active: Bool, now: Double = Date().timeIntervalSince1970) throws -> SyncView? {
        guard DurableQueue.exists(in: directory) else { return nil }
        let status: QueueStatus
        do {
            guard let found = try DurableQueue(directory: directory, readOnly: true).status() else { return nil }
            status = found
        } catch {
            throw JobError.queue(error, directory)
        }
        return SyncView(status, active: active, now: now)
    }

    init(_ s: QueueStatus, active: Bool, now: Double) {
        (replaced, deleted, setAside) = (s.documentsLoaded, s.documentsDeleted, s.documentsSetAside)
        (pending, inFlight, batches) = (s.pending, s.inFlight, s.batches)
        appliedChange = s.appliedChange
        lagSeconds = active ? s.appliedChange.map { max(0, now - $0) } : nil
        let handled = s.documentsLoaded + s.documentsDeleted + s.documentsSetAside
        if active, let begin = s.runStartedAt, now > begin, handled > s.runStartHandled {
            eventsPerSecond = Double(handled - s.runStartHandled) / (now - begin)
        } else {
            eventsPerSecond = nil
        }
    }

    var events: Int64 { replaced + deleted + setAside }

    var dictionary: [String: Any?] {
        [
            "eventsApplied": events, "replaced": replaced, "deleted": deleted, "setAside": setAside,
            "batches": batches, "pending": pending, "inFlight": inFlight,
            "lastAppliedChangeTime": appliedChange.map { Date(timeIntervalSince1970: $0).formatted(.iso8601) },
            "lagSeconds": lagSeconds, "eventsPerSecond": eventsPerSecond,
        ]
    }

    var lines: [String] {
        func n(_ v: Int64) -> String { v.formatted(.number.grouping(.automatic)) }
        var lines = [
            "sync         \(n(events)) changes applied: \(n(replaced)) replaced, \(n(deleted)) deleted, \(n(setAside)) set aside"
                + (setAside > 0 ? " (etl-job status --rejected)" : ""),
            "sync batches \(batches): \(pending) pending, \(inFlight) in flight",
        ]
        if let applied = appliedChange {
            lines.append("synced to    \(Date(timeIntervalSince1970: applied).formatted(.iso8601)) (the source's time of the last change applied)"
                + (lagSeconds.map { String(format: "; lag %.1f s", $0) } ?? ""))
        }
        if let rate = eventsPerSecond { lines.append("sync rate    \(n(Int64(rate))) changes/s") }
        return lines
    }
}

/// The live progress line on a terminal while a run goes, read through the run's own
/// queues: the running job (its id) and, for several pipelines, their sum. Removed when the
/// run ends, leaving its last state on a line of its own.
final class Progress: RunObserver, @unchecked Sendable {
    // Safe: `running` is guarded by `lock`; drawing happens under it too, so no line is
    // drawn after `runEnded` removed it.
    private let lock = NSCondition()
    private var running = false
    /// Which run draws: a worker's runs (one a partition) follow each other at once, and the
    /// thread of one that ended must not go on into the next.
    private var generation = 0

    private var finalLine: (() -> String?)?
    /// The thread drawing the current run's line.
    private var drawer: DedicatedThread?

    func runStarted(_ pipelines: [RunningPipeline]) {
        lock.lock()
        running = true
        generation += 1
        let mine = generation
        finalLine = { Self.line(pipelines) }
        lock.unlock()
        let thread = Threads.spawn(name: "progress") { [self] in
            lock.lock()
            defer { lock.unlock() }
            while running && generation == mine {
                _ = lock.wait(until: Date(timeIntervalSinceNow: 1))
                guard running, generation == mine, let line = Self.line(pipelines) else { continue }
                Console.standardError.status(line)
            }
        }
        lock.lock()
        drawer = thread
        lock.unlock()
    }

    func runEnded() {
        lock.lock()
        running = false
        Console.standardError.endStatus(finalLine?())
        finalLine = nil
        lock.broadcast()
        let ending = drawer
        drawer = nil
        lock.unlock()
        // It reads the run's queues (LMDB read transactions, each with its thread's reader
        // slot): it ends, and lets go of them, before the run goes on to close them or exit.
        ending?.join()
    }

    static func line(_ pipelines: [RunningPipeline]) -> String? {
        var parts: [String] = []
        for p in pipelines {
            guard let status = (try? p.queue.status()).flatMap({ $0 }) else { return nil }
            let name = pipelines.count > 1 ? "\(p.name) " : ""
            if p.changes {
                let sync = SyncView(status, active: true, now: Date().timeIntervalSince1970)
                parts.append("\(name)sync: \(sync.events) changes applied (\(sync.replaced) replaced, \(sync.deleted) deleted, \(sync.setAside) set aside), "
                    + "\(status.pending) batch\(status.pending == 1 ? "" : "es") pending" + (sync.lagSeconds.map { String(format: ", lag %.1f s", $0) } ?? ""))
                continue
            }
            let source = JobIdentity.decode((try? p.queue.identity) ?? nil)?.source
                .status(at: (try? p.queue.extractPosition) ?? nil, extractionFinished: status.extractionFinished)
            let view = StatusView(pipeline: p.name, status, source: source, active: true)
            let total = status.sourceTotal.map { "/\($0)" } ?? ""
            let file = status.extractionFinished ? "" : source?.progress.map { "\($0), " } ?? ""
            let eta = view.etaSeconds.map { String(format: ", ETA %.0f s", $0) } ?? ""
            // A partition's job id is the job's and its number (`etl-job worker`).
            let partition = p.jobId.split(separator: "/").dropFirst().first.map { " partition \($0)" } ?? ""
            parts.append("\(name)job \(p.jobId.prefix(8))\(partition): loaded \(status.documentsLoaded)\(total) documents, \(status.totalRows) rows, "
                + "\(file)\(status.pending) batches pending\(eta)")
        }
        return parts.joined(separator: " | ")
    }
}
