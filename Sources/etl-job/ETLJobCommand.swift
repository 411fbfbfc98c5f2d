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
                let text = usageError(ETLJobCommand.message(for: error))
                if Console.standardError.format == .json {
                    Console.standardError.line(text, level: .error)
                } else {
                    FileHandle.standardError.write(Data(text.utf8))
                }
            }
            end(code.rawValue)
        }
        end(0)
    }

    /// How every command ends, and the only place that decides it (issue #40).
    ///
    /// 1. Every thread the command started (`Threads`: loaders, stagers, the progress line,
    ///    bucket timers, sessions opened aside) is joined, so that each has released what it
    ///    held (libpq connections and their SSL contexts, LMDB reader slots) and run its
    ///    thread-exit handlers (OpenSSL's per-thread state) before the process ends. A thread
    ///    that cannot end in time (one blocked in a round trip on a path that stops early) is
    ///    left running; `ETL_THREADS_AT_EXIT=report` names it on stderr and exits 70 if the
    ///    command had succeeded (the tests set it).
    ///    The `--metrics-address` listener is stopped first, its event loop's and probe pool's
    ///    threads joined (reported too).
    /// 2. Standard output and error are flushed.
    /// 3. `_exit`, not `exit`: no atexit handler and no library destructor runs. OpenSSL
    ///    registers `OPENSSL_cleanup` with atexit (when libmongoc's constructor initializes it,
    ///    before `main`) and libmongoc runs `mongoc_cleanup` as a destructor; both free global
    ///    state that a thread still using libpq, libmongoc or OpenSSL would touch (a finished
    ///    `verify` over TLS died of SIGABRT that way: a connection thread's OpenSSL thread-exit
    ///    handler racing `OPENSSL_cleanup`). Nothing needs that cleanup: the kernel closes the
    ///    sockets and files, LMDB commits are durable when they return, and the driver's
    ///    shared-memory counters were unlinked at start. The C handles the process still holds
    ///    at this point (sessions kept for reuse, a client's pool) are not released one by
    ///    one for the same reason: releasing them can only race, never save anything.
    static func end(_ code: Int32) -> Never {
        OperationsServer.stop()
        var left = Threads.endAll(until: .now + .seconds(2))
        var status = code
        let report = ProcessInfo.processInfo.environment["ETL_THREADS_AT_EXIT"] == "report"
        if report { left += swiftNIOThreads() }
        if !left.isEmpty, report {
            Console.standardError.line("etl-job: threads still running at exit: \(left.joined(separator: ", "))", level: .error)
            if status == 0 { status = 70 }
        }
        fflush(nil)
        _exit(status)
    }
}

/// The threads of swift-nio (the `--metrics-address` listener's event loop and probe pool)
/// still running, by the names the kernel knows them by; `OperationsServer.stop` ends them.
private func swiftNIOThreads() -> [String] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.compactMap { try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8) }
        .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        .filter { $0.hasPrefix("NIO-ELT") || $0.hasPrefix("TP-#") }
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
