import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The right to run a job on one state directory. An `flock` on `job.lock`: the kernel
/// releases it when the process dies, so a killed run never leaves a stale lock behind.
public final class JobLock {
    private let fd: Int32

    public struct Busy: Error, CustomStringConvertible {
        public let directory: String
        public let pid: String?

        public init(directory: String, pid: String?) {
            self.directory = directory
            self.pid = pid
        }
        public var description: String {
            "another etl-job run is active on \(directory)" + (pid.map { " (pid \($0))" } ?? "")
        }
    }

    /// Takes the lock or throws `Busy` at once.
    public init(directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/job.lock"
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path])
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw Busy(directory: directory, pid: Self.holder(directory: directory))
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
    }

    deinit {
        flock(fd, LOCK_UN)
        close(fd)
    }

    /// The pid the holder wrote into the lock file, if any.
    public static func holder(directory: String) -> String? {
        let pid = (try? String(contentsOfFile: directory + "/job.lock", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return pid?.isEmpty == false ? pid : nil
    }

    /// Whether some process holds the lock of `directory` right now.
    public static func isHeld(directory: String) -> Bool {
        let fd = open(directory + "/job.lock", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        guard flock(fd, LOCK_SH | LOCK_NB) == 0 else { return true }
        flock(fd, LOCK_UN)
        return false
    }
}
