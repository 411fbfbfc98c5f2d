import DurableETL
import NotesPipeline
import ETLCore
import Foundation
import Logging

// Runs the notes pipeline: `notes-pipeline start|resume URL-OF-POSTGRES URL-OF-MONGODB STATE-DIR SCHEMA DATABASE`.
let arguments = CommandLine.arguments
guard arguments.count == 7, ["start", "resume"].contains(arguments[1]) else {
    FileHandle.standardError.write(Data("usage: notes-pipeline start|resume POSTGRES-URL MONGODB-URL STATE-DIR SCHEMA DATABASE\n".utf8))
    exit(64)
}
var settings = JobSettings(mongoURL: arguments[3], postgresURL: arguments[2], stateDirectory: arguments[4], targetSchema: arguments[5])
settings.database = arguments[6]
settings.bucket.batchSize = 20
let job = DurableJob(settings: settings, logger: Logger(label: "notes"))
do {
    let report = arguments[1] == "start"
        ? try await job.start([NotesMapping()], fresh: false, stop: StopToken())
        : try await job.resume(resolve: { name, _ in name == "notes" ? NotesMapping() : nil }, stop: StopToken())
    print(report.render())
    exit(report.failure == nil ? 0 : 65)
} catch {
    FileHandle.standardError.write(Data("notes-pipeline: \(error)\n".utf8))
    exit(1)
}
