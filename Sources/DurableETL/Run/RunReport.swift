import ETLCore
import Foundation
import Queue

/// What one pipeline of a run did.
public struct PipelineReport: Sendable {
    public var name: String
    /// Its tables, in load order.
    public var tables: [String]
    public var status: QueueStatus
    /// Why the pipeline did not succeed although everything ran (too many documents set aside).
    public var failure: String?
    /// A resume found this pipeline's job already finished: nothing ran.
    public var alreadyFinished = false
    /// The fields its mapping did not name, as the target records them (every run of the job,
    /// every worker), path by path.
    public var unmapped: [UnmappedSummary] = []
    /// The queue's status when the run began (what this run did is the difference): for a
    /// resume, what earlier runs loaded; for a run of changes, what earlier syncs applied.
    public var before: QueueStatus?

    /// What this run loaded (a resume's share of the job's totals).
    public var thisRun: (documents: Int64, setAside: Int64, rows: Int64) {
        (status.documentsLoaded - (before?.documentsLoaded ?? 0), status.documentsSetAside - (before?.documentsSetAside ?? 0),
         status.totalRows - (before?.totalRows ?? 0))
    }

    /// Whether earlier runs of the job had loaded anything (the report then tells this run apart).
    public var resumed: Bool { (before?.documentsLoaded ?? 0) + (before?.documentsSetAside ?? 0) > 0 }

    /// For a run of changes: what it applied (the change queue's counters less those at its start).
    public var applied: (replaced: Int64, deleted: Int64, setAside: Int64, rows: Int64) {
        (status.documentsLoaded - (before?.documentsLoaded ?? 0), status.documentsDeleted - (before?.documentsDeleted ?? 0),
         status.documentsSetAside - (before?.documentsSetAside ?? 0), status.totalRows - (before?.totalRows ?? 0))
    }

    public init(name: String, tables: [String], status: QueueStatus, failure: String? = nil, alreadyFinished: Bool = false) {
        self.name = name
        self.tables = tables
        self.status = status
        self.failure = failure
        self.alreadyFinished = alreadyFinished
    }
}

/// What a run did, printed at its end: per pipeline and, for several, their sum.
public struct RunReport: Sendable {
    public var pipelines: [PipelineReport]
    public var seconds: Double
    public var usage: ProcessUsage
    public var stages: [(Stage, Double)]
    /// A run of changes: how far behind the source each batch was when it committed (seconds).
    public var lags: [Double]? = nil
    /// Where the run's time went, in order; `seconds` is their sum.
    public var phases: [(Phase, Double)] = []

    /// The parts of a run's time, one after the other.
    public enum Phase: String, CaseIterable, Sendable {
        /// The process starting, reading its settings (and inferring mappings) until the job begins.
        case start
        /// Connecting, checking the source and target, migrating, emptying tables, dropping keys, opening queues.
        case prepare
        /// Reading, transforming and loading every batch.
        case load
        /// The final step: the keys added after the load, the job marked finished.
        case finish
    }

    /// Counts the process's start (`seconds` after it was created, when the job began) in the
    /// run's time, so that the report's duration is the command's.
    public mutating func include(start seconds: Double?) {
        guard let seconds, seconds > 0, !phases.isEmpty, phases.first?.0 != .start else { return }
        phases.insert((.start, seconds), at: 0)
        self.seconds += seconds
    }

    public init(pipelines: [PipelineReport], seconds: Double, usage: ProcessUsage, stages: [(Stage, Double)]) {
        self.pipelines = pipelines
        self.seconds = seconds
        self.usage = usage
        self.stages = stages
    }

    public var documentsLoaded: Int64 { pipelines.reduce(0) { $0 + $1.status.documentsLoaded } }
    public var documentsSetAside: Int64 { pipelines.reduce(0) { $0 + $1.status.documentsSetAside } }
    public var totalRows: Int64 { pipelines.reduce(0) { $0 + $1.status.totalRows } }
    public var alreadyFinished: Bool { !pipelines.isEmpty && pipelines.allSatisfy(\.alreadyFinished) }
    /// This run's share: what it loaded, set aside and wrote (all of it unless it resumed a job).
    public var thisRun: (documents: Int64, setAside: Int64, rows: Int64) {
        var sum: (documents: Int64, setAside: Int64, rows: Int64) = (0, 0, 0)
        for p in pipelines where !p.alreadyFinished {
            let run = p.thisRun
            sum = (sum.documents + run.documents, sum.setAside + run.setAside, sum.rows + run.rows)
        }
        return sum
    }
    public var resumed: Bool { pipelines.contains(where: \.resumed) }

    /// Set when the run went through but a pipeline did not succeed (exit 65).
    public var failure: JobError? {
        let reasons = pipelines.compactMap { p in p.failure.map { pipelines.count > 1 ? "\(p.name): \($0)" : $0 } }
        return reasons.isEmpty ? nil : JobError(.dataError, reasons.joined(separator: "; "))
    }

    public func render() -> String {
        if alreadyFinished {
            return pipelines.map { p in
                "etl-job: the \(p.name) job \(p.status.jobId) already finished (\(p.status.documentsLoaded) documents loaded, "
                    + "\(p.status.documentsSetAside) set aside); nothing to resume"
            }.joined(separator: "\n")
        }
        func n(_ v: Int64) -> String { v.formatted(.number.grouping(.automatic)) }
        func rate(_ v: Int64) -> String { seconds > 0 ? n(Int64(Double(v) / seconds)) : "-" }
        // As wide as the longest table name: a cut name could read as another table's.
        let width = max(18, pipelines.flatMap(\.tables).map(\.count).max() ?? 0)
        func label(_ text: String) -> String { text.padding(toLength: width, withPad: " ", startingAt: 0) }
        if let lags { return renderChanges(lags: lags) }
        var lines = ["etl-job: run complete"]
        for p in pipelines {
            let s = p.status
            lines += [
                "  pipeline          \(p.name)\(p.alreadyFinished ? " (already finished)" : "")",
                "  documents loaded  \(n(s.documentsLoaded))",
                "  set aside         \(n(s.documentsSetAside))" + (s.documentsSetAside > 0 ? "  (etl-job status --rejected)" : ""),
                "  rows              \(n(s.totalRows))",
            ]
            for table in p.tables {
                lines.append("    \(label(table)) \(n(s.rows[table] ?? 0))")
            }
            lines += Self.renderUnmapped(p.unmapped)
        }
        if pipelines.count > 1 {
            lines += [
                "  all pipelines     \(pipelines.count)",
                "  documents loaded  \(n(documentsLoaded))",
                "  set aside         \(n(documentsSetAside))",
                "  rows              \(n(totalRows))",
            ]
        }
        // The rates are this run's: after a resume, what it loaded over its own duration.
        let run = thisRun
        if resumed {
            lines.append("  this run          \(n(run.documents)) documents loaded, \(n(run.setAside)) set aside, \(n(run.rows)) rows "
                + "(the counts above are the job's, earlier runs included)")
        }
        lines += [
            "  duration          \(String(format: "%.2f s", seconds))" + (phases.isEmpty ? "" : "  ("
                + phases.map { "\($0.0.rawValue) \(String(format: "%.2f", $0.1))" }.joined(separator: ", ") + ")"),
            "  documents/s       \(rate(run.documents))",
            "  rows/s            \(rate(run.rows))",
            "  peak memory       \(String(format: "%.1f MB", Double(usage.peakResidentBytes) / 1_048_576))",
            "  CPU time          \(String(format: "%.2f s", usage.cpuSeconds))",
            "  time per stage (summed over threads)",
        ]
        // A snapshot removes nothing.
        for (stage, s) in stages where stage != .removal || s > 0 {
            lines.append("    \(label(stage.label)) \(String(format: "%.2f s", s))")
        }
        return lines.joined(separator: "\n")
    }
}

extension RunReport {
    /// The fields a pipeline's mapping did not name, one line each (nothing when there were none).
    public static func renderUnmapped(_ fields: [UnmappedSummary], indent: String = "  ") -> [String] {
        guard !fields.isEmpty else { return [] }
        func n(_ v: Int64) -> String { v.formatted(.number.grouping(.automatic)) }
        let width = min(40, fields.map(\.path.count).max() ?? 0)
        return ["\(indent)fields not in the mapping  \(fields.count) (etl-job mapping prints the mapping in force)"] + fields.map { f in
            "\(indent)  \(f.path.padding(toLength: max(width, f.path.count), withPad: " ", startingAt: 0))  \(n(f.documents)) document\(f.documents == 1 ? "" : "s") "
                + "(\(f.types.joined(separator: ", "))), \(f.outcome); e.g. _id \(f.exampleId)"
        }
    }

    /// The median, 99th percentile and largest of the lags; nil for none.
    public static func lagStatistics(_ lags: [Double]) -> (median: Double, p99: Double, max: Double)? {
        guard !lags.isEmpty else { return nil }
        let sorted = lags.sorted()
        func percentile(_ p: Double) -> Double { sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded(.up)))] }
        return (percentile(0.5), percentile(0.99), sorted.last!)
    }

    /// What a run of changes applied, per pipeline, and how far behind the source it was.
    func renderChanges(lags: [Double]) -> String {
        func n(_ v: Int64) -> String { v.formatted(.number.grouping(.automatic)) }
        var lines = ["etl-job: changes applied"]
        var events: Int64 = 0
        for p in pipelines {
            let s = p.status
            let (replaced, deleted, setAside, rows) = p.applied
            events += replaced + deleted + setAside
            lines += [
                "  pipeline          \(p.name)",
                "  replaced          \(n(replaced))  (inserted or updated documents: their rows rewritten)",
                "  deleted           \(n(deleted))",
                "  set aside         \(n(setAside))" + (setAside > 0 ? "  (etl-job status --rejected)" : ""),
                "  rows written      \(n(rows))",
            ]
            lines += Self.renderUnmapped(p.unmapped)
            if let applied = s.appliedChange {
                let date = Date(timeIntervalSince1970: applied).formatted(.iso8601)
                lines.append("  caught up to      \(date) (the source's time of the last change applied)")
            }
        }
        lines += [
            "  duration          \(String(format: "%.2f s", seconds))",
            "  changes/s         \(seconds > 0 ? n(Int64(Double(events) / seconds)) : "-")",
            "  lag behind source " + (Self.lagStatistics(lags).map {
                String(format: "median %.1f s, p99 %.1f s, max %.1f s (at each batch's commit)", $0.median, $0.p99, $0.max)
            } ?? "-"),
            "  peak memory       \(String(format: "%.1f MB", Double(usage.peakResidentBytes) / 1_048_576))",
            "  CPU time          \(String(format: "%.2f s", usage.cpuSeconds))",
            "  time per stage (summed over threads)",
        ]
        for (stage, s) in stages {
            let name = stage == .extract ? "reading the stream" : stage.label
            lines.append("    \(name.padding(toLength: 18, withPad: " ", startingAt: 0)) \(String(format: "%.2f s", s))")
        }
        return lines.joined(separator: "\n")
    }
}

/// A pipeline while its run goes: read its progress through the run's own queue, since
/// LMDB forbids a second environment on the same files in one process.
public struct RunningPipeline: Sendable {
    public let name: String
    public let jobId: String
    public let queue: DurableQueue
    /// The run applies changes (sync) rather than loading the snapshot.
    public var changes = false
}

/// Follows a run once its queues are open (the progress display).
public protocol RunObserver: AnyObject, Sendable {
    func runStarted(_ pipelines: [RunningPipeline])
    func runEnded()
}
