import Foundation
import Testing

/// A MongoDB-wire server (SecantusDB) of a test's own, with the flags it needs (`--auth`,
/// `--standalone`, a small oplog…), on a free loopback port, stopped when released.
public final class PrivateMongo {
    public let port: Int
    private var pid: pid_t = 0
    private let storage = NSTemporaryDirectory() + "etl-private-mongo-" + UUID().uuidString
    private var flags: [String]

    public var url: String { "mongodb://127.0.0.1:\(port)" }

    public init(flags: [String] = []) throws {
        port = Self.freePort()
        self.flags = flags
        try start()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: storage)
    }

    /// Stops the server and starts it again on the same data with `flags`.
    public func restart(with flags: [String]) throws {
        stop()
        self.flags = flags
        try start()
    }

    private func start() throws {
        let server = Services.packageRoot.appendingPathComponent("var/venv/bin/secantusd-py").path
        let args = [server, "--host", "127.0.0.1", "--port", String(port), "--storage-path", storage, "--log-level", "ERROR"] + flags
        let argv = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        // Its own process group, so stop() reaches anything it starts.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))
        posix_spawnattr_setpgroup(&attributes, 0)
        #expect(posix_spawn(&pid, server, &actions, &attributes, argv, environ) == 0)
        // A server with authentication or TLS cannot be pinged plainly: its port is enough.
        let plain = !flags.contains("--auth") && !flags.contains("--tls-cert-file")
        #expect(eventually(30) { (try? Services.mongo(url + "/?serverSelectionTimeoutMS=500")) != nil || !plain && portOpen() })
    }

    private func stop() {
        guard pid > 0 else { return }
        kill(-pid, SIGTERM)
        var status: Int32 = 0
        let exited = eventually(15) { waitpid(pid, &status, WNOHANG) == pid }
        kill(-pid, SIGKILL)
        if !exited { waitpid(pid, &status, 0) }
        pid = 0
        _ = eventually(10) { !portOpen() }
    }

    /// A loopback port nothing listens on, from the kernel.
    private static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    private func portOpen() -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}
