import ArgumentParser
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
            let settings = try connection.resolved()
            let job = UsersJob(settings: settings, logger: connection.makeLogger())
            let collection = try job.connectMongo().collection(database: settings.database, name: settings.collection)
            let setAside = try setAsideIds(settings.stateDirectory)
            let verifier = Verifier(db: try job.connectPostgres(), collection: collection, setAside: setAside)
            let showProgress = isatty(2) == 1
            let report = try verifier.run { n in
                if showProgress { FileHandle.standardError.write(Data("\rverified \(n) documents".utf8)) }
            }
            if showProgress { FileHandle.standardError.write(Data("\n".utf8)) }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                print(String(decoding: try encoder.encode(report), as: UTF8.self))
            } else {
                print(report.render())
            }
            if !report.agrees { throw ExitCode(1) }
        }
    }

    private func setAsideIds(_ directory: String) throws -> Set<String> {
        guard DurableQueue.exists(in: directory) else { return [] }
        let queue = try DurableQueue(directory: directory, readOnly: true)
        return Set(try queue.setAsideDocuments().map(\.documentId))
    }
}
