import ArgumentParser
import Users

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create the 15 target tables and the job's bookkeeping tables (idempotent).")

    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        try await reportingErrors {
            let job = UsersJob(settings: try connection.resolved(), logger: connection.makeLogger())
            let applied = try job.migrate(try job.connectPostgres())
            print(applied == 0 ? "schema is up to date" : "applied \(applied) migration(s)")
        }
    }
}
