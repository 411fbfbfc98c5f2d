import ArgumentParser
import Foundation
import Users

/// The source limit: how fast the collection can be read in `_id` order, decoding nothing.
struct Scan: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read the whole source collection in _id order and report the time (benchmark helper).",
        shouldDisplay: false)

    @OptionGroup var connection: ConnectionOptions

    @Option(name: .customLong("cursor-batch-size"), help: "Documents per getMore.")
    var cursorBatchSize: Int32 = 1000

    func run() async throws {
        try await reportingErrors {
            let settings = try connection.resolved()
            let job = UsersJob(settings: settings, logger: connection.makeLogger())
            let collection = try job.connectMongo().collection(database: settings.database, name: settings.collection)
            let start = ContinuousClock.now
            let cursor = try collection.scanById(afterIdElement: nil, batchSize: cursorBatchSize)
            var documents = 0
            var bytes = 0
            while let doc = try cursor.next() {
                documents += 1
                bytes += doc.count
            }
            let elapsed = ContinuousClock.now - start
            print("scanned \(documents) documents (\(bytes) bytes) in \(String(format: "%.3f", Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)) s")
        }
    }
}
