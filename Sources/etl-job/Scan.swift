import ArgumentParser
import Foundation
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

    func run() async throws {
        try await reportingErrors {
            let job = PipelineJob(mapping: try pipelines.mappings()[0], settings: try connection.resolved())
            try await Threads.blocking(name: "scan") { try Self.scan(job, cursorBatchSize: cursorBatchSize) }
        }
    }

    private static func scan(_ job: PipelineJob, cursorBatchSize: Int32) throws {
        let start = ContinuousClock.now
        try job.source.checkExists()
        let cursor = try job.source.open(after: nil, batchSize: cursorBatchSize)
        var documents = 0
        var bytes = 0
        while let doc = try cursor.next() {
            documents += 1
            bytes += doc.count
        }
        print("scanned \(documents) documents (\(bytes) bytes) in \(String(format: "%.3f", (ContinuousClock.now - start).seconds)) s")
    }
}
