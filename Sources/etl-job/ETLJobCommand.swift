import ArgumentParser

@main
struct ETLJobCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "etl-job",
        abstract: "Move a MongoDB collection into 15 PostgreSQL tables, resumably.",
        subcommands: [Start.self, Resume.self, Status.self, Seed.self, Migrate.self, Scan.self])
}
