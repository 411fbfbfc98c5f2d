import ArgumentParser
import Foundation
import Synchronization
import DurableETL
import ETLCore

/// The source limit: how fast the collection can be read in `_id` order, decoding nothing.
struct Scan: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read the whole source (collection in _id order, or --source-file) and report the time (benchmark helper).",
        shouldDisplay: false)

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup(title: "Job") var pipelines: PipelineOptions

    @Option(name: .customLong("cursor-batch-size"), help: "Documents per getMore.")
    var cursorBatchSize: Int32 = 1000

    @Flag(help: "Also map every document into its COPY rows, as a batch does, and report the CPU time of that alone.")
    var transform = false

    @Option(help: ArgumentHelp("Split the source as 'start --partitions n' does and read the ranges at once, one reader each: the source's limit for n workers.",
                               valueName: "n"))
    var partitions: Int?

    func validate() throws {
        if let partitions, !(1...10_000).contains(partitions) { throw ValidationError("--partitions must be between 1 and 10000") }
    }

    func run() async throws {
        try await reportingErrors {
            let job = PipelineJob(mapping: try pipelines.mappings()[0], settings: try connection.resolved())
            if let partitions {
                try await Self.scan(job, partitions: partitions, cursorBatchSize: cursorBatchSize)
                return
            }
            try await Threads.blocking(name: "scan") { try Self.scan(job, cursorBatchSize: cursorBatchSize, transform: transform) }
        }
    }

    /// The split (timed), then every range read at once on a thread of its own.
    private static func scan(_ job: PipelineJob, partitions: Int, cursorBatchSize: Int32) async throws {
        let start = ContinuousClock.now
        let split = try await Threads.blocking(name: "plan") { try job.source.partitions(partitions) }
        let planned = ContinuousClock.now
        let counts = Mutex<(documents: Int, bytes: Int)>((0, 0))
        let errors = await Threads.run(count: split.ranges.count, name: "scan") { index in
            let cursor = try job.source.restricted(to: split.ranges[index]).open(after: nil, batchSize: cursorBatchSize)
            var documents = 0, bytes = 0
            while let doc = try cursor.next() {
                documents += 1
                bytes += doc.count
            }
            counts.withLock { $0 = ($0.documents + documents, $0.bytes + bytes) }
        }
        if let error = errors.first { throw error }
        let (documents, bytes) = counts.withLock { $0 }
        print("scanned \(documents) documents (\(bytes) bytes) in \(split.ranges.count) ranges at once in \(String(format: "%.3f", (ContinuousClock.now - start).seconds)) s "
            + "(the split, \(split.method): \(String(format: "%.3f", (planned - start).seconds)) s)")
    }

    private static func scan(_ job: PipelineJob, cursorBatchSize: Int32, transform: Bool) throws {
        let start = ContinuousClock.now
        try job.source.checkExists()
        let cursor = try job.source.open(after: nil, batchSize: cursorBatchSize)
        var documents = 0, bytes = 0, rows = 0, rejected = 0
        var mapped = MappedRows(job.mapping, expectedDocuments: 1000)
        var mapping = Duration.zero
        func count(_ mapped: MappedRows) -> Int { mapped.tables.reduce(0) { $0 + $1.rowCount } }
        while let doc = try cursor.next() {
            documents += 1
            bytes += doc.count
            guard transform else { continue }
            // Per document: the CPU of this thread alone is what a loader spends on it.
            let before = threadCPUTime()
            let accepted = doc.withUnsafeBytes { d in (try? mapped.add(document: d)) != nil }
            if !accepted { rejected += 1 }
            if mapped.documents == 1000 {
                rows += count(mapped)
                mapped = MappedRows(job.mapping, expectedDocuments: 1000)
            }
            mapping += threadCPUTime() - before
        }
        rows += count(mapped)
        print("scanned \(documents) documents (\(bytes) bytes) in \(String(format: "%.3f", (ContinuousClock.now - start).seconds)) s")
        if transform {
            print("mapped them into \(rows) rows (\(rejected) set aside) in \(String(format: "%.3f", mapping.seconds)) s of CPU")
        }
    }

    private static func threadCPUTime() -> Duration {
        var now = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now)
        return .seconds(now.tv_sec) + .nanoseconds(now.tv_nsec)
    }
}
