import ArgumentParser
import ETLCore
import Foundation
import DurableETL

struct Start: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a new run: migrate the schema, extract, transform and load.")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var pipelines: PipelineOptions
    @OptionGroup var bucket: BucketOptions

    @Flag(help: "Discard the job in the state directory and empty the pipelines' target tables first.")
    var fresh = false

    @Flag(help: "Do not ask before --fresh truncates the target tables.")
    var yes = false

    func run() async throws {
        try await reportingErrors {
            let settings = try connection.resolved(bucket)
            let mappings = pipelines.mappings
            if mappings.count > 1, settings.database != nil || settings.collection != nil {
                throw JobError(.usage, "--database and --collection name the source of one pipeline; this run has \(mappings.count)")
            }
            if fresh && !yes { try confirmTruncation(settings, mappings) }
            let job = DurableJob(settings: settings, logger: connection.makeLogger())
            try await runInterruptibly { stop, progress in try await job.start(mappings, fresh: fresh, stop: stop, observer: progress) }
        }
    }

    private func confirmTruncation(_ settings: JobSettings, _ mappings: [any DocumentMapping]) throws {
        let tables = mappings.reduce(0) { $0 + $1.tables.count }
        let names = mappings.map(\.name).joined(separator: ", ")
        guard isatty(0) == 1 else {
            throw JobError(.usage, "--fresh truncates the \(tables) target tables of \(names); add --yes to confirm when not running interactively")
        }
        FileHandle.standardError.write(Data("This discards the job in \(settings.stateDirectory) and truncates the \(tables) target tables of \(names) at \(Redact.url(settings.postgresURL)). Continue? [y/N] ".utf8))
        guard let answer = readLine(), ["y", "yes"].contains(answer.lowercased()) else {
            throw JobError(.usage, "not confirmed; nothing was changed")
        }
    }
}

/// Runs a start or resume: SIGINT/SIGTERM stop it gracefully (exit 130/143, resumable), a
/// progress line goes to a terminal's stderr, the report to stdout.
func runInterruptibly(_ body: @escaping (StopToken, RunObserver?) async throws -> RunReport) async throws {
    let stop = StopToken()
    let trap = SignalTrap(stop: stop) { signal in
        Console.standardError.line("etl-job: stopping (signal \(signal)): finishing batches in flight; run 'etl-job resume' to continue")
    }
    let progress = Console.standardError.isTerminal ? Progress() : nil
    let report: RunReport
    do {
        report = try await body(stop, progress)
    } catch {
        if case .signal(let number) = stop.reason { throw interrupted(number) }
        throw error
    }
    withExtendedLifetime(trap) {}
    if case .signal(let number) = stop.reason { throw interrupted(number) }
    print(report.render())
    if let failure = report.failure { throw failure }
}

private func interrupted(_ signal: Int32) -> ExitCode {
    Console.standardError.line("etl-job: stopped; the run is resumable with 'etl-job resume'")
    return ExitCode(128 + signal)
}
