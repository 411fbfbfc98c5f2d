import Foundation
import Testing

extension Services {
    /// Kills the bundled MongoDB-wire server with SIGKILL, as a crash would, and waits until it is gone.
    public static func killMongo() throws {
        let pidFile = packageRoot.appendingPathComponent("var/run/mongo.pid").path
        let pid = try #require(Int32(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        kill(pid, SIGKILL)
        #expect(eventually(10) { kill(pid, 0) != 0 }, "the server is gone")
    }
}

extension Sandbox {
    /// How many tables the sandbox's PostgreSQL database holds in its public schema.
    public func tableCount() throws -> Int {
        Int(try db().execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").rows[0][0]!)!
    }

    /// Runs `etl-job` under a pseudo-terminal (`script`), as a person at a terminal would;
    /// `stdout` is everything the terminal received.
    /// `script` exits 128 + n when its child is killed by signal n (etl-job itself exits only
    /// 130 and 143 above 128): a crash signal fails the test, as `RunningJob.wait` does.
    public func inTerminal(_ arguments: [String], environment: [String: String] = [:], sourceLocation: SourceLocation = #_sourceLocation) throws -> JobResult {
        let command = ([Services.binary] + arguments).map(shellQuoted).joined(separator: " ")
        let job = try RunningJob(executable: "/usr/bin/script", arguments: ["-qec", command, "/dev/null"], environment: environment)
        let result = try job.wait(sourceLocation: sourceLocation)
        if !result.signaled, result.status > 128, crashSignals.contains(result.status - 128) {
            let said = "etl-job \(arguments.joined(separator: " ")) under a terminal was killed by \(signalName(result.status - 128))"
                + "\nterminal (last 2,000 characters):\n" + String(result.stdout.suffix(2000))
            Issue.record(Comment(rawValue: said), sourceLocation: sourceLocation)
        }
        return result
    }
}

private func shellQuoted(_ word: String) -> String {
    "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// The lines a terminal shows for some output: `\r` returns to the start of the line,
/// `ESC[K` erases to its end, other escapes are dropped.
public struct TerminalScreen {
    public let lines: [String]

    public init(_ output: String) {
        var lines: [String] = []
        var line: [Character] = []
        var column = 0
        var chars = Array(output)[...]
        while let c = chars.popFirst() {
            switch c {
            case "\n", "\r\n":
                lines.append(String(line))
                line = []
                column = 0
            case "\r":
                column = 0
            case "\u{1B}":
                var sequence = ""
                while let next = chars.popFirst() {
                    sequence.append(next)
                    if next.isLetter { break }
                }
                if sequence == "[K" { line.removeSubrange(min(column, line.count)...) }
            default:
                if column < line.count { line[column] = c } else { line.append(c) }
                column += 1
            }
        }
        if !line.isEmpty { lines.append(String(line)) }
        self.lines = lines
    }
}

/// Holds a state directory's job lock from the test process.
public final class JobLockHolder {
    private let fd: Int32
    public init(directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        fd = open(directory + "/job.lock", O_RDWR | O_CREAT, 0o644)
        #expect(flock(fd, LOCK_EX | LOCK_NB) == 0)
        let pid = Array("\(getpid())\n".utf8)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
    }
    deinit { close(fd) }
}

