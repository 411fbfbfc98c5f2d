import ArgumentParser
import DurableETL
import ETLCore

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create the pipelines' target tables and the job's bookkeeping tables (idempotent).")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup(title: "Job") var pipelines: PipelineOptions

    func run() async throws {
        try await reportingErrors {
            let settings = try connection.resolved()
            let mappings = try pipelines.mappings()
            let logger = try connection.makeLogger()
            let applied = try await Threads.blocking(name: "migrate") {
                let job = DurableJob(settings: settings, logger: logger)
                let first = PipelineJob(mapping: mappings[0], settings: settings)
                let db = try first.connectPostgres()
                let applied = try job.migrate(db, mappings)
                // The schema complete, keys included (a job that adds them after its load drops them first).
                for mapping in mappings { try first.target.addKeys(db, mapping, primaryKeys: true) }
                return applied
            }
            print(applied == 0 ? "schema is up to date" : "applied \(applied) migration(s)")
        }
    }
}
