import ArgumentParser
import Foundation

struct ETLJobCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "etl-job",
        abstract: "Move a MongoDB collection into 15 PostgreSQL tables, resumably.",
        subcommands: [Start.self, Resume.self, Status.self, Verify.self, Seed.self, Migrate.self, Scan.self])
}

/// Parses and runs the command. A bad flag prints one line (no usage dump) and exits 64.
@main
enum Main {
    static func main() async {
        do {
            var command = try ETLJobCommand.parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let code = ETLJobCommand.exitCode(for: error)
            if code == .success {
                print(ETLJobCommand.fullMessage(for: error))
            } else if !(error is ExitCode) {
                let message = ETLJobCommand.message(for: error).split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
                FileHandle.standardError.write(Data("etl-job: error: \(message)\n".utf8))
            }
            exit(code.rawValue)
        }
    }
}
