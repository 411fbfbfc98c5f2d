import ArgumentParser
import Foundation
import Mongo
import Users

struct Seed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Insert the deterministic benchmark dataset into the source collection.")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "Number of users.")
    var users = 10_000

    @Option(help: "Generator seed: the same seed gives byte-identical documents.")
    var seed: UInt64 = 42

    @Option(name: .customLong("first-id"), help: "_id of the first user.")
    var firstId: Int64 = 1

    @Flag(help: "Drop the collection first.")
    var drop = false

    func validate() throws {
        guard users >= 0 else { throw ValidationError("--users must not be negative") }
    }

    func run() async throws {
        try await reportingErrors {
            let job = UsersJob(settings: try connection.resolved(), logger: connection.makeLogger())
            let collection = try job.connectMongo().collection(database: connection.database, name: connection.collection)
            if drop { try collection.drop() }
            let generator = UserGenerator(seed: seed)
            let chunk = 500
            let showProgress = users >= 5_000
            var next = firstId
            let end = firstId + Int64(users)
            while next < end {
                let upper = min(next + Int64(chunk), end)
                try collection.insertMany((next..<upper).map { generator.document(id: $0) })
                next = upper
                if showProgress {
                    FileHandle.standardError.write(Data("\rseeded \(next - firstId)/\(users) users".utf8))
                }
            }
            if showProgress { FileHandle.standardError.write(Data("\n".utf8)) }
            print("seeded \(users) users into \(connection.database).\(connection.collection) (seed \(seed))")
        }
    }
}
