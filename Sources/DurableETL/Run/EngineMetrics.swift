import ETLCore
import Foundation
import Metrics
import Queue
import Synchronization

/// What the engine does, told through swift-metrics' API. The executable chooses the backend
/// (Prometheus, with `--metrics-address`); without one every call here is a no-op. One
/// instance per pipeline of a run, made when its processor is; every metric carries the
/// `pipeline` label and nothing unbounded (no `_id`, no URL: a table name is bounded by the
/// mapping, a retry's cause by `RetryCause`).
public final class EngineMetrics: Sendable {
    /// Each metric the engine reports: its name, kind, labels and meaning, said once here (the
    /// exporter's `# HELP` lines and docs/operations/monitoring.md's table follow this list).
    public enum Name: String, CaseIterable, Sendable {
        case documentsLoaded = "etl_job_documents_loaded_total"
        case changesApplied = "etl_job_changes_applied_total"
        case rowsWritten = "etl_job_rows_written_total"
        case documentsSetAside = "etl_job_documents_set_aside_total"
        case batchesCommitted = "etl_job_batches_committed_total"
        case retries = "etl_job_retries_total"
        case unmappedFields = "etl_job_unmapped_fields_total"
        case lag = "etl_job_lag_seconds"
        case batchesPending = "etl_job_batches_pending"
        case batchesInFlight = "etl_job_batches_in_flight"
        case committedClusterTime = "etl_job_committed_cluster_time_seconds"
        case batchCommitDuration = "etl_job_batch_commit_duration_seconds"
        case changeCommitDelay = "etl_job_change_commit_delay_seconds"

        public var kind: String {
            switch self {
            case .lag, .batchesPending, .batchesInFlight, .committedClusterTime: "gauge"
            case .batchCommitDuration, .changeCommitDelay: "histogram"
            default: "counter"
            }
        }

        public var labels: [String] {
            switch self {
            case .rowsWritten: ["pipeline", "table"]
            case .retries: ["pipeline", "cause"]
            case .changesApplied: ["pipeline", "operation"]
            default: ["pipeline"]
            }
        }

        public var help: String {
            switch self {
            case .documentsLoaded: "Documents of the snapshot loaded (committed) into the target."
            case .changesApplied: "Changes of the source applied to the target (sync), by operation: replace or delete."
            case .rowsWritten: "Rows written (COPYed and committed), by table."
            case .documentsSetAside: "Documents (or changes) set aside rather than loaded; 'etl-job status --rejected' lists them."
            case .batchesCommitted: "Batches committed with their checkpoint."
            case .retries: "Attempts retried after a failure, by cause: source, target_connection, target_commit, target_lock."
            case .unmappedFields: "Fields the mapping did not name, seen in loaded documents (one per document and field)."
            case .lag: "Seconds between now and the source's time of the oldest change read but not yet committed; 0 when every change read is applied."
            case .batchesPending: "Batches queued and waiting for a loader."
            case .batchesInFlight: "Batches a loader holds (being transformed or loaded)."
            case .committedClusterTime: "The source's time (Unix seconds) of the last change committed to the target."
            case .batchCommitDuration: "Seconds of a batch's transaction, from BEGIN to the end of COMMIT."
            case .changeCommitDelay: "Seconds from a change's time on the source's clock (whole seconds) to the COMMIT that applied it."
            }
        }
    }

    /// Why an attempt was retried: a small fixed set, so that it is a label.
    public enum RetryCause: String, CaseIterable, Sendable {
        case source, targetConnection = "target_connection", targetCommit = "target_commit", targetLock = "target_lock"
    }

    /// Buckets for the two histograms, in seconds: a commit takes milliseconds to seconds, a
    /// change's delay (whole seconds of the source's clock) seconds to minutes.
    public static let buckets: [Name: [Double]] = [
        .batchCommitDuration: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
        .changeCommitDelay: [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600],
    ]

    let pipeline: String
    private let loaded: Counter
    private let replaced: Counter
    private let deleted: Counter
    private let setAside: Counter
    private let batches: Counter
    private let unmapped: Counter
    private let retryCounters: [RetryCause: Counter]
    private let rows: Mutex<[String: Counter]>
    private let lag: Gauge
    private let pending: Gauge
    private let inFlight: Gauge
    private let clusterTime: Gauge
    private let commitDuration: Metrics.Timer
    private let changeDelay: Metrics.Timer
    /// The oldest change time of each batch of changes staged in this process and not yet committed.
    private let waiting = Mutex<[UInt64: Double]>([:])

    init(pipeline: String, tables: [String]) {
        self.pipeline = pipeline
        let p = [("pipeline", pipeline)]
        loaded = Counter(label: Name.documentsLoaded.rawValue, dimensions: p)
        replaced = Counter(label: Name.changesApplied.rawValue, dimensions: p + [("operation", "replace")])
        deleted = Counter(label: Name.changesApplied.rawValue, dimensions: p + [("operation", "delete")])
        setAside = Counter(label: Name.documentsSetAside.rawValue, dimensions: p)
        batches = Counter(label: Name.batchesCommitted.rawValue, dimensions: p)
        unmapped = Counter(label: Name.unmappedFields.rawValue, dimensions: p)
        retryCounters = Dictionary(uniqueKeysWithValues: RetryCause.allCases.map {
            ($0, Counter(label: Name.retries.rawValue, dimensions: p + [("cause", $0.rawValue)]))
        })
        rows = Mutex(Dictionary(tables.map { ($0, Counter(label: Name.rowsWritten.rawValue, dimensions: p + [("table", $0)])) }) { a, _ in a })
        lag = Gauge(label: Name.lag.rawValue, dimensions: p)
        pending = Gauge(label: Name.batchesPending.rawValue, dimensions: p)
        inFlight = Gauge(label: Name.batchesInFlight.rawValue, dimensions: p)
        clusterTime = Gauge(label: Name.committedClusterTime.rawValue, dimensions: p)
        commitDuration = Metrics.Timer(label: Name.batchCommitDuration.rawValue, dimensions: p)
        changeDelay = Metrics.Timer(label: Name.changeCommitDelay.rawValue, dimensions: p)
        Self.running.withLock { $0[pipeline] = self }
    }

    // MARK: What the engine tells

    func retried(_ cause: RetryCause) {
        retryCounters[cause]?.increment()
    }

    /// The queue's batches now: after the extractor stages one and a loader claims, commits or requeues one.
    func observe(_ queue: DurableQueue) {
        guard let pending = try? queue.pendingCount(), let inFlight = try? queue.inFlight().count else { return }
        self.pending.record(pending)
        self.inFlight.record(inFlight)
    }

    /// A batch of changes staged as `batch`: the oldest of their times on the source's clock.
    func staged(batch: UInt64, oldestChange: Double?) {
        guard let oldestChange else { return }
        waiting.withLock { $0[batch] = oldestChange }
        refresh()
    }

    /// A batch committed: what it loaded, and how long its transaction took.
    func committed(batch: UInt64, _ outcome: BatchOutcome, changes: Bool, transaction: Duration, changeTimes: [Double], unmappedFields: Int) {
        let now = Date().timeIntervalSince1970
        batches.increment()
        commitDuration.recordNanoseconds(transaction.nanoseconds)
        // Net of the documents of earlier batches it displaced, a batch's count can be below zero; a counter only grows.
        let documents = max(0, outcome.documentsLoaded)
        if changes {
            replaced.increment(by: documents)
            deleted.increment(by: outcome.documentsDeleted)
        } else {
            loaded.increment(by: documents)
        }
        if !outcome.setAside.isEmpty { setAside.increment(by: outcome.setAside.count) }
        if unmappedFields > 0 { unmapped.increment(by: unmappedFields) }
        for (table, count) in outcome.rows where count > 0 { rowCounter(table).increment(by: count) }
        for time in changeTimes { changeDelay.recordNanoseconds(Int64(max(0, now - time) * 1e9)) }
        if let latest = outcome.latestChange { clusterTime.record(latest) }
        waiting.withLock { _ = $0.removeValue(forKey: batch) }
        refresh(now: now)
    }

    private func rowCounter(_ table: String) -> Counter {
        rows.withLock { counters in
            if let counter = counters[table] { return counter }
            let counter = Counter(label: Name.rowsWritten.rawValue, dimensions: [("pipeline", pipeline), ("table", table)])
            counters[table] = counter
            return counter
        }
    }

    /// How far behind the source this pipeline's changes are now, in seconds: from the oldest
    /// change staged and not yet committed; 0 when none waits.
    func lagSeconds(now: Double = Date().timeIntervalSince1970) -> Double {
        waiting.withLock { $0.values.min() }.map { max(0, now - $0) } ?? 0
    }

    private func refresh(now: Double = Date().timeIntervalSince1970) {
        lag.record(lagSeconds(now: now))
    }

    // MARK: What the executable reads

    /// The pipelines of the runs of this process, by name (the latest run's).
    private static let running = Mutex<[String: EngineMetrics]>([:])

    /// Brings the gauges that follow the clock (the lag) up to now; an exporter calls it
    /// before it reads the metrics.
    public static func refresh() {
        let now = Date().timeIntervalSince1970
        for pipeline in running.withLock({ Array($0.values) }) { pipeline.refresh(now: now) }
    }

    /// The largest lag of this process's pipelines of changes, in seconds (0 when none waits).
    public static func lagSeconds() -> Double {
        let now = Date().timeIntervalSince1970
        return running.withLock { Array($0.values) }.map { $0.lagSeconds(now: now) }.max() ?? 0
    }
}
