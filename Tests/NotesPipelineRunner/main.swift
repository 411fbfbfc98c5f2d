import DurableETL
import NotesPipeline
import ETLCore
import Foundation
import Logging

// Runs the notes pipeline: `notes-pipeline start|resume|changes POSTGRES-URL MONGODB-URL STATE-DIR SCHEMA DATABASE [memory:N]`.
// With `memory:N`, the notes come from memory (NotesCorpus, N of them, and its changes) instead of MongoDB.
let arguments = CommandLine.arguments
guard arguments.count == 7 || arguments.count == 8, ["start", "resume", "changes"].contains(arguments[1]) else {
    FileHandle.standardError.write(Data("usage: notes-pipeline start|resume|changes POSTGRES-URL MONGODB-URL STATE-DIR SCHEMA DATABASE [memory:N]\n".utf8))
    exit(64)
}
var settings = JobSettings(mongoURL: arguments[3], postgresURL: arguments[2], stateDirectory: arguments[4], targetSchema: arguments[5])
settings.source.database = arguments[6]
settings.bucket.batchSize = 20
if arguments.count == 8, arguments[7].hasPrefix("memory:"), let count = Int(arguments[7].dropFirst(7)) {
    MemorySource.register(MemorySource(name: "notes-memory", documents: NotesCorpus.documents(count: count).map(\.bytes)))
    MemorySource.register(MemorySource(name: "notes-memory-changes", documents: NotesCorpus.changes(count: count).changes))
    settings.source.choice = MemorySource.Choice(name: "notes-memory")
    settings.maxSetAside = .count(5)
}
let job = DurableJob(settings: settings, logger: Logger(label: "notes"))
let resolve: @Sendable (String, String?) -> (any DocumentMapping)? = { name, _ in name == "notes" ? NotesMapping() : nil }
do {
    let report = switch arguments[1] {
    case "start": try await job.start([NotesMapping()], fresh: false, stop: StopToken())
    case "resume": try await job.resume(resolve: resolve, stop: StopToken())
    default: try await job.applyChanges(resolve: resolve, follow: false, stop: StopToken())
    }
    print(report.render())
    exit(report.failure == nil ? 0 : 65)
} catch {
    FileHandle.standardError.write(Data("notes-pipeline: \(error)\n".utf8))
    exit(1)
}
