import ArgumentParser
import ETLCore
import Foundation
import Queue
import Users

struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the target against the source: counts, missing and unexpected keys, row contents.",
        discussion: "Exits 0 only when every table holds exactly the rows the source documents give, less the documents the job set aside.")

    @OptionGroup var connection: ConnectionOptions

    @Flag(help: "Print JSON for scripts.")
    var json = false

    func run() async throws {
        try await reportingErrors {
            let given = try connection.resolved()
            let recorded = try recordedJob(given.stateDirectory)
            let job = UsersJob(settings: given, logger: connection.makeLogger()).matching(recorded.identity)
            let settings = job.settings
            let client = try job.connectMongo()
            let db = try job.connectPostgres()
            try job.refuseMismatch(recorded: recorded.identity, current: job.identity(client, db))
            try job.checkSourceExists(client)
            let collection = client.collection(database: settings.database, name: settings.collection)
            let verifier = Verifier(db: db, collection: collection, setAside: recorded.setAside)
            let report = try verifier.run { n in Console.standardError.status("verified \(n) documents") }
            Console.standardError.endStatus()
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                print(String(decoding: try encoder.encode(report), as: UTF8.self))
            } else {
                print(report.render())
            }
            if !report.agrees { throw ExitCode(65) }
        }
    }

    /// What the job in the state directory recorded: its identity and the documents it set aside.
    private func recordedJob(_ directory: String) throws -> (identity: JobIdentity?, setAside: Set<String>) {
        guard DurableQueue.exists(in: directory) else { return (nil, []) }
        do {
            let queue = try DurableQueue(directory: directory, readOnly: true)
            return (try queue.identity, Set(try queue.setAsideDocuments().map(\.documentId)))
        } catch {
            throw JobError.queue(error, directory)
        }
    }
}
