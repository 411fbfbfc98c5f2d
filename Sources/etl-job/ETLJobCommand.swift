import ArgumentParser
import ETLCore
import CMalloc
import Foundation
import Mongo

struct ETLJobCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "etl-job",
            abstract: "Move MongoDB collections into normalized PostgreSQL tables, resumably: one pipeline per collection, several at once.",
            version: VersionInfo.text,
            subcommands: [Start.self, Resume.self, Worker.self, Sync.self, Status.self, Verify.self, Init.self, MappingCommand.self, Seed.self, Migrate.self, Scan.self, Version.self])
    }
}

/// Parses and runs the command. A bad flag prints one line (no usage dump) and exits 64.
@main
enum Main {
    static func main() async {
        SignalTrap.exitOnSignalsUntilTrapped()
        MongoDriver.keepCountersOutOfSharedMemory()
        keepMemoryFlat()
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
                FileHandle.standardError.write(Data(usageError(ETLJobCommand.message(for: error)).utf8))
            }
            exit(code.rawValue)
        }
    }
}

/// A usage error as the user sees it: the problem (with the valid values, when the parser
/// lists them), then where the options are described. No usage dump, no trace.
func usageError(_ message: String) -> String {
    let lines = message.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    var text = "etl-job: error: " + (lines.first ?? "invalid arguments")
    for line in lines.dropFirst() { text += "\n  " + line }
    let names = ETLJobCommand.configuration.subcommands.filter { $0.configuration.shouldDisplay }.map { $0._commandName }
    guard let name = CommandLine.arguments.dropFirst().first(where: { names.contains($0) }) else {
        return text + "\nCommands: \(names.joined(separator: ", ")). See 'etl-job --help'.\n"
    }
    return text + "\nSee 'etl-job \(name) --help'.\n"
}

/// Batches allocate and free multi-megabyte buffers on several threads. glibc's default
/// raises its mmap threshold after each such free, so later buffers come from per-thread
/// heaps that fragment and do not shrink: peak RSS grew 24% from 10,000 to 100,000 users.
/// A fixed 2 MB threshold gives batch payloads their own mappings, returned at once
/// (measured: 92 MB at 10,000 users, 105-108 MB at 100,000), and a large trim threshold
/// avoids trimming churn.
private func keepMemoryFlat() {
    _ = mallopt(M_MMAP_THRESHOLD, 2 << 20)
    _ = mallopt(M_TRIM_THRESHOLD, 64 << 20)
}
