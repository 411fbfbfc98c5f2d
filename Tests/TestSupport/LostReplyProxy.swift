import Foundation

/// A TCP proxy in front of PostgreSQL that loses the reply to one batch's COMMIT: it lets
/// the `n`-th COMMIT (a simple query, or pipelined) sent on a connection that COPYed reach the server, drops the client's
/// side before relaying the answer, then refuses every connection for `refuseFor` seconds.
/// The server commits; the client cannot know. (Use `sslmode=disable gssencmode=disable`:
/// the stream is then plain protocol messages, a type byte and an int32 length that counts
/// itself, after a startup message that has no type byte.)
public final class LostCommitReplyProxy: @unchecked Sendable {
    // Safe: mutable state is guarded by `lock`; each connection's threads share only fds
    // whose closing is counted under `lock` too.
    public let port: Int
    private let listener: Int32
    private let targetPort: Int
    private let loseCommit: Int
    private let refuseFor: Double
    private let lock = NSLock()
    private var commitsAfterCopy = 0
    private var refuseUntil: Date?
    private var stopped = false
    public private(set) var lostCommits = 0
    private let startingUpUntil: Date
    /// Connections answered "the database system is starting up".
    public var startingUpAnswers: Int { lock.withLock { answeredStartingUp } }
    private var answeredStartingUp = 0

    /// When the proxy accepts connections again (after the lost reply).
    public var refusingUntil: Date? { lock.withLock { refuseUntil } }

    /// `startingUpFor`: for that many seconds, every connection is answered as PostgreSQL
    /// answers while it starts up or recovers after a restart (FATAL, SQLSTATE 57P03).
    /// `loseCommit` 0 loses no COMMIT reply.
    public init(targetPort: Int, loseCommit: Int, refuseFor: Double, startingUpFor: Double = 0) throws {
        startingUpUntil = Date(timeIntervalSinceNow: startingUpFor)
        self.targetPort = targetPort
        self.loseCommit = loseCommit
        self.refuseFor = refuseFor
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = Self.loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else { throw POSIXError(.EADDRINUSE) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &length) }
        }
        listener = fd
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    public func stop() {
        lock.withLock { stopped = true }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    private static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if lock.withLock({ stopped }) { return }
                continue
            }
            if let until = lock.withLock({ refuseUntil }), Date() < until {
                close(client)
                continue
            }
            if Date() < startingUpUntil {
                Thread.detachNewThread { [self] in answerStartingUp(client) }
                continue
            }
            let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = Self.loopback(port: UInt16(targetPort))
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard connected == 0 else {
                close(client)
                close(server)
                continue
            }
            let connection = Connection(client: client, server: server)
            Thread.detachNewThread { [self] in relayClientMessages(connection) }
            Thread.detachNewThread { connection.relayReplies() }
        }
    }

    /// Client to server, message by message, watching for COPY and COMMIT.
    private func relayClientMessages(_ c: Connection) {
        defer { c.finish() }
        guard let startup = c.readClient(headerBytes: 0), c.sendServer(startup) else { return }
        var copied = false
        while let message = c.readClient(headerBytes: 1) {
            let query = Self.query(message)
            if query?.contains("COPY ") == true { copied = true }
            if copied && query == "COMMIT" && shouldLose() {
                // A pipelined COMMIT (Parse, then Bind, Execute … Sync) runs once the messages
                // after it arrive: they are read first, and all reach the server.
                var messages = [message]
                if message.first == UInt8(ascii: "P") {
                    while messages.last?.first != UInt8(ascii: "S"), let next = c.readClient(headerBytes: 1) { messages.append(next) }
                }
                c.cutClient()
                _ = c.sendServer(messages.flatMap { $0 })
                Thread.sleep(forTimeInterval: 0.5)  // let the server finish committing
                return
            }
            guard c.sendServer(message) else { return }
        }
    }

    /// The statement a simple query ('Q': the text) or a Parse ('P': a name, then the text) carries.
    private static func query(_ message: [UInt8]) -> String? {
        var body = message.dropFirst(5)
        switch message.first {
        case UInt8(ascii: "Q"): break
        case UInt8(ascii: "P"): body = body.drop { $0 != 0 }.dropFirst()
        default: return nil
        }
        return String(decoding: body.prefix { $0 != 0 }, as: UTF8.self)
    }

    /// Reads the startup message, answers with PostgreSQL's own FATAL for a server that is
    /// starting up, and closes.
    private func answerStartingUp(_ client: Int32) {
        let connection = Connection(client: client, server: -1)
        _ = connection.readClient(headerBytes: 0)
        var fields: [UInt8] = []
        for (code, text) in [("S", "FATAL"), ("V", "FATAL"), ("C", "57P03"), ("M", "the database system is starting up")] {
            fields += Array(code.utf8) + Array(text.utf8) + [0]
        }
        fields.append(0)
        let length = UInt32(fields.count + 4)
        let message = [UInt8(ascii: "E")] + withUnsafeBytes(of: length.bigEndian, Array.init) + fields
        _ = message.withUnsafeBytes { Glibc.send(client, $0.baseAddress, message.count, Int32(MSG_NOSIGNAL)) }
        lock.withLock { answeredStartingUp += 1 }
        close(client)
    }

    private func shouldLose() -> Bool {
        lock.withLock {
            commitsAfterCopy += 1
            guard loseCommit > 0, commitsAfterCopy == loseCommit else { return false }
            lostCommits += 1
            refuseUntil = Date(timeIntervalSinceNow: refuseFor)
            return true
        }
    }

    final class Connection: @unchecked Sendable {
        let client: Int32
        let server: Int32
        private let lock = NSLock()
        private var clientCut = false
        private var finished = 0

        init(client: Int32, server: Int32) {
            self.client = client
            self.server = server
        }

        /// Reads one message: `headerBytes` type bytes, then an int32 length that counts itself.
        func readClient(headerBytes: Int) -> [UInt8]? {
            guard let head = read(client, count: headerBytes + 4) else { return nil }
            let length = Int(head[headerBytes...].reduce(0) { $0 << 8 | UInt32($1) })
            guard length >= 4, let body = read(client, count: length - 4) else { return nil }
            return head + body
        }

        func sendServer(_ bytes: [UInt8]) -> Bool { write(server, bytes) }

        /// From now on the client gets nothing more, and its socket is shut.
        func cutClient() {
            lock.withLock { clientCut = true }
            shutdown(client, Int32(SHUT_RDWR))
        }

        func relayReplies() {
            defer { finish() }
            var buffer = [UInt8](repeating: 0, count: 65_536)
            while true {
                let n = buffer.withUnsafeMutableBytes { Glibc.read(server, $0.baseAddress, $0.count) }
                guard n > 0, !lock.withLock({ clientCut }), write(client, Array(buffer[..<n])) else { return }
            }
        }

        /// Each of the two relay threads calls this once; the second closes both sockets.
        func finish() {
            shutdown(client, Int32(SHUT_RDWR))
            shutdown(server, Int32(SHUT_RDWR))
            let last = lock.withLock { () -> Bool in
                finished += 1
                return finished == 2
            }
            if last {
                close(client)
                close(server)
            }
        }

        private func read(_ fd: Int32, count: Int) -> [UInt8]? {
            var bytes = [UInt8](repeating: 0, count: count)
            var got = 0
            while got < count {
                let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + got, count - got) }
                guard n > 0 else { return nil }
                got += n
            }
            return bytes
        }

        private func write(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
            var sent = 0
            while sent < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
                guard n > 0 else { return false }
                sent += n
            }
            return true
        }
    }
}
