import ArgumentParser
import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue
import DurableETL

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
