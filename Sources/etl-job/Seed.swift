import ArgumentParser
import ETLCore
import Foundation
import Mongo
import DurableETL
import Users
import UsersFixtures

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

    @Flag(name: .customLong("bad-input"), help: "Mix in the corpus of malformed documents (etl-job sets them aside).")
    var badInput = false

    @Option(help: ArgumentHelp(
        "Write the documents to this file, as mongodump does (gzip-compressed when it ends in .gz), instead of inserting them.",
        valueName: "file"))
    var output: String?

    func validate() throws {
        guard users >= 0 else { throw ValidationError("--users must not be negative") }
        guard !badInput || users >= 100 else { throw ValidationError("--bad-input needs --users 100 or more") }
    }

    func run() async throws {
        try await reportingErrors {
            let settings = try connection.resolved()
            let defaults = UsersMapping().source
            let names = SourceCollection(database: settings.source.database ?? defaults.database, collection: settings.source.collection ?? defaults.collection)
            let target = MongoCollectionSource(url: settings.mongoURL, collection: names)
            _ = try connection.makeLogger()
            try await Threads.blocking(name: "seed") {
                if let output { try write(to: output) } else { try insert(target) }
            }
        }
    }

    /// The same documents, in `_id` order (the corpus's after the users'), as a mongodump file.
    private func write(to path: String) throws {
        guard !path.isEmpty else { throw JobError(.usage, "--output needs a path") }
        let writer: BSONFileWriter
        do {
            writer = try BSONFileWriter(path: path, compressed: path.hasSuffix(".gz"))
        } catch {
            throw JobError(.unavailable, "\(error)")
        }
        let generator = UserGenerator(seed: seed)
        let corpus = badInput ? BadInputCorpus.documents(users: users, generator: generator) : []
        let replaced = Set(corpus.compactMap { $0.id.map { $0 + firstId - 1 } })
        let showProgress = users >= 5_000
        do {
            for id in firstId..<(firstId + Int64(users)) where !replaced.contains(id) {
                try generator.document(id: id).withUnsafeBytes { try writer.write($0) }
                if showProgress, (id - firstId + 1) % 1_000 == 0 { Console.standardError.status("wrote \(id - firstId + 1)/\(users) users") }
            }
            for bad in corpus { try bad.document.withUnsafeBytes { try writer.write($0) } }
            try writer.close()
        } catch let error as BSONFileError {
            throw JobError(.ioError, "\(error)")
        }
        Console.standardError.endStatus()
        print("wrote \(users) users to \(path) (seed \(seed))"
            + (badInput ? ", \(corpus.filter { $0.reason != nil }.count) of them malformed" : ""))
    }

    private func insert(_ target: MongoCollectionSource) throws {
        let source = target.collection
        let collection = try target.collectionForWriting()
        if drop { try collection.drop() }
        let generator = UserGenerator(seed: seed)
        let corpus = badInput ? BadInputCorpus.documents(users: users, generator: generator) : []
        let replaced = Set(corpus.compactMap { $0.id.map { $0 + firstId - 1 } })
        let chunk = 500
        let showProgress = users >= 5_000
        var next = firstId
        let end = firstId + Int64(users)
        while next < end {
            let upper = min(next + Int64(chunk), end)
            try collection.insertMany((next..<upper).filter { !replaced.contains($0) }.map { generator.document(id: $0) })
            next = upper
            if showProgress { Console.standardError.status("seeded \(next - firstId)/\(users) users") }
        }
        Console.standardError.endStatus()
        var refused: [String] = []
        for bad in corpus {
            do {
                try collection.insertMany([bad.document])
            } catch let error as MongoError where bad.sourceMayRefuse {
                refused.append(bad.kind)
                Console.standardError.line("seed: the source refused the \(bad.kind) document (_id \(bad.displayId)): \(error)")
            }
        }
        print("seeded \(users) users into \(source.database).\(source.collection) (seed \(seed))"
            + (badInput ? ", \(corpus.filter { $0.reason != nil }.count - refused.count) of them malformed" : ""))
    }
}
