import Foundation
import Synchronization

/// Where the time of a run goes.
public enum Stage: Int, CaseIterable, Sendable {
    /// `removal`: a batch of changes deleting the rows of the documents it replaces or deletes.
    case extract, queueWrite, transform, removal, copy, commit, waiting

    public var label: String {
        switch self {
        case .extract: "extract"
        case .queueWrite: "queue write"
        case .transform: "transform"
        case .removal: "removal"
        case .copy: "COPY"
        case .commit: "commit"
        case .waiting: "waiting"
        }
    }
}

/// Time spent per stage, summed over threads (so it can exceed the wall time).
public final class StageClock: Sendable {
    private let nanos = Mutex<[Int64]>(Array(repeating: 0, count: Stage.allCases.count))

    public init() {}

    @discardableResult
    public func measure<T>(_ stage: Stage, _ body: () throws -> T) rethrows -> T {
        let start = ContinuousClock.now
        defer { add(stage, ContinuousClock.now - start) }
        return try body()
    }

    public func add(_ stage: Stage, _ duration: Duration) {
        nanos.withLock { $0[stage.rawValue] += duration.nanoseconds }
    }

    public func seconds(_ stage: Stage) -> Double {
        Double(nanos.withLock { $0[stage.rawValue] }) / 1e9
    }
}

/// Resource use of this process so far.
/// How long this process has existed: since the kernel created it (its `exec` and the
/// runtime's start included), from /proc; nil where /proc does not say.
public enum ProcessAge {
    public static var seconds: Double? {
        guard let stat = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
              let end = stat.lastIndex(of: ")") else { return nil }
        // Field 22, starttime, in clock ticks after boot; the fields after the name start at 3.
        let fields = stat[stat.index(after: end)...].split(separator: " ")
        guard fields.count > 19, let ticks = Double(fields[19]) else { return nil }
        var now = timespec()
        clock_gettime(CLOCK_BOOTTIME, &now)
        return max(0, Double(now.tv_sec) + Double(now.tv_nsec) / 1e9 - ticks / Double(sysconf(Int32(_SC_CLK_TCK))))
    }
}

public struct ProcessUsage: Sendable {
    public let peakResidentBytes: Int64
    public let cpuSeconds: Double

    public static func current() -> ProcessUsage {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return ProcessUsage(
            peakResidentBytes: Int64(usage.ru_maxrss) * 1024,
            cpuSeconds: seconds(usage.ru_utime) + seconds(usage.ru_stime))
    }
}
