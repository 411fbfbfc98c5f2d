import ArgumentParser
import DurableETL
import ETLCore
import Foundation
import Metrics
import Mongo
import NIOCore
import NIOHTTP1
import NIOPosix
import Postgres
import Prometheus
import Synchronization

/// What a run tells whoever operates it: metrics and probes over HTTP. Off unless
/// `--metrics-address` is given.
struct OperationsOptions: ParsableArguments {
    @Option(name: .customLong("metrics-address"), help: ArgumentHelp(
        "Serve Prometheus metrics at /metrics and the probes /healthz and /readyz on this address (e.g. 127.0.0.1:9464, [::1]:9464, 0.0.0.0:9464); off by default.",
        valueName: "host:port"))
    var metricsAddress: String?

    @Option(name: .customLong("stalled-after"), help: ArgumentHelp(
        "/healthz answers 503 once a loader or the extractor has been in one piece of work (a batch's transaction, a read from the source) this long.",
        valueName: "seconds"))
    var stalledAfter = 300.0

    @Option(name: .customLong("max-lag"), help: ArgumentHelp(
        "/readyz answers 503 while sync is further behind the source than this (default: no limit).", valueName: "seconds"))
    var maxLag: Double?

    func validate() throws {
        if let metricsAddress { _ = try ListenAddress(metricsAddress) }
        guard stalledAfter > 0 else { throw ValidationError("--stalled-after must be a positive number of seconds") }
        guard maxLag.map({ $0 >= 0 }) ?? true else { throw ValidationError("--max-lag must be 0 or more seconds") }
    }
}

/// `HOST:PORT` as `--metrics-address` takes it; an IPv6 host in brackets.
struct ListenAddress: CustomStringConvertible {
    let host: String
    let port: Int

    init(_ text: String) throws {
        let refusal = ValidationError("--metrics-address must be HOST:PORT with a port from 1 to 65535 (e.g. 127.0.0.1:9464), not '\(text)'")
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65_535).contains(port) else { throw refusal }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, !host.contains(where: { $0.isWhitespace || $0 == "/" || $0 == "[" || $0 == "]" }) else { throw refusal }
        self.host = host
        self.port = port
    }

    var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// What /readyz checks: the target answers, the source answers (a MongoDB source; a file is
/// read by the run itself), and a run of changes is no further behind than `maxLag`.
struct ReadinessProbe: Sendable {
    let postgresURL: String
    let mongoURL: String?
    let maxLag: Double?

    init(_ settings: JobSettings, maxLag: Double?) {
        postgresURL = settings.postgresURL
        mongoURL = settings.source.choice == nil ? settings.mongoURL : nil
        self.maxLag = maxLag
    }

    /// Blocking: it connects to both sides, each within 2 seconds.
    func check() -> (ready: Bool, report: String) {
        var lines: [String] = []
        var ready = true
        func note(_ side: String, _ body: () throws -> Void) {
            do {
                try body()
                lines.append("\(side): ok")
            } catch {
                ready = false
                lines.append("\(side): unreachable (\(Redact.url("\(error)")))")
            }
        }
        note("target") { _ = try PGConnection(url: postgresURL, connectTimeout: 2, applicationName: "etl-job readyz").execute("SELECT 1") }
        if let mongoURL { note("source") { try MongoClient(url: mongoURL, serverSelectionTimeoutMS: 2000).ping() } }
        if let maxLag {
            let lag = EngineMetrics.lagSeconds()
            if lag > maxLag { ready = false }
            lines.append(String(format: "lag: %.1f s (--max-lag %g s)", lag, maxLag))
        }
        return (ready, lines.joined(separator: "\n") + "\n")
    }
}

/// The listener of `--metrics-address`: Prometheus' registry behind swift-metrics, served on
/// an event loop of its own, with a thread for the probes that connect (so that a slow server
/// never holds the loop). The engine is untouched: it counts through swift-metrics, and the
/// loops it runs mark their work in `Liveness`. One per process; `Main.end` stops it.
final class OperationsServer: Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let pool: NIOThreadPool
    private let channel: any Channel

    private static let current = Mutex<OperationsServer?>(nil)

    private init(group: MultiThreadedEventLoopGroup, pool: NIOThreadPool, channel: any Channel) {
        self.group = group
        self.pool = pool
        self.channel = channel
    }

    /// Starts serving when `options` name an address; a bound address fails the command (69).
    static func start(_ options: OperationsOptions, readiness: ReadinessProbe) async throws {
        guard let text = options.metricsAddress else { return }
        let address = try ListenAddress(text)
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        for (name, buckets) in EngineMetrics.buckets {
            factory.durationHistogramBuckets[name.rawValue] = buckets.map { .nanoseconds(Int64($0 * 1e9)) }
        }
        MetricsSystem.bootstrap(factory)
        let endpoints = Endpoints(registry: registry, stalledAfter: options.stalledAfter, readiness: readiness)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        do {
            let channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                        try channel.pipeline.syncOperations.addHandler(OperationsHandler(endpoints: endpoints, pool: pool))
                    }
                }
                .bind(host: address.host, port: address.port).get()
            current.withLock { $0 = OperationsServer(group: group, pool: pool, channel: channel) }
        } catch {
            try? await pool.shutdownGracefully()
            try? await group.shutdownGracefully()
            throw JobError(.unavailable, "--metrics-address \(address): cannot listen there (\(Self.reason(error)))")
        }
    }

    /// Closes the listener and ends its threads (the event loop's and the probes'); a probe
    /// under way finishes first (within its connect timeouts).
    static func stop() {
        guard let server = current.withLock({ $0.take() }) else { return }
        try? server.channel.close().wait()
        try? server.pool.syncShutdownGracefully()
        try? server.group.syncShutdownGracefully()
    }

    private static func reason(_ error: any Error) -> String {
        if let error = error as? IOError, error.errnoCode == EADDRINUSE { return "the address is already in use" }
        if let error = error as? IOError, error.errnoCode == EADDRNOTAVAIL { return "no interface of this machine has that address" }
        return "\(error)"
    }
}

/// The answers of the three endpoints, decided off the event loop's thread where they block.
struct Endpoints: Sendable {
    let registry: PrometheusCollectorRegistry
    let stalledAfter: Double
    let readiness: ReadinessProbe

    struct Answer {
        var status: HTTPResponseStatus
        var contentType = "text/plain; charset=utf-8"
        var body: String
    }

    /// Prometheus' text format, with each engine metric's help line (the registry knows none:
    /// swift-metrics passes no help text).
    func metrics() -> Answer {
        EngineMetrics.refresh()
        let help = Dictionary(uniqueKeysWithValues: EngineMetrics.Name.allCases.map { ($0.rawValue, $0.help) })
        var text = ""
        for line in registry.emitToString().split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# TYPE "), let name = line.dropFirst(7).split(separator: " ").first, let help = help[String(name)] {
                text += "# HELP \(name) \(help)\n"
            }
            text += line + (line.isEmpty ? "" : "\n")
        }
        return Answer(status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: text)
    }

    /// 200 while every loop works or waits on purpose; 503 once one has been in the same
    /// piece of work longer than `stalledAfter`.
    func health() -> Answer {
        guard let oldest = Liveness.oldest(), oldest.seconds > stalledAfter else { return Answer(status: .ok, body: "ok\n") }
        return Answer(status: .serviceUnavailable, body: String(format: "stalled: %@ for %.0f s (--stalled-after %g s)\n", oldest.what, oldest.seconds, stalledAfter))
    }

    func ready() -> Answer {
        let (ready, report) = readiness.check()
        return Answer(status: ready ? .ok : .serviceUnavailable, body: report)
    }
}

/// One HTTP/1.1 request at a time per connection, answered and closed.
final class OperationsHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let endpoints: Endpoints
    private let pool: NIOThreadPool
    private var request: HTTPRequestHead?

    init(endpoints: Endpoints, pool: NIOThreadPool) {
        self.endpoints = endpoints
        self.pool = pool
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = head
        case .body:
            break
        case .end:
            guard let head = request else { return }
            request = nil
            answer(head, context: context)
        }
    }

    private func answer(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        guard head.method == .GET || head.method == .HEAD else {
            return respond(Endpoints.Answer(status: .methodNotAllowed, body: "GET only\n"), head, context: context)
        }
        switch path {
        case "/metrics": respond(endpoints.metrics(), head, context: context)
        case "/healthz": respond(endpoints.health(), head, context: context)
        case "/readyz":
            // It connects to both sides: on the pool's thread, never the event loop's.
            let endpoints = endpoints
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            pool.runIfActive(eventLoop: context.eventLoop) { endpoints.ready() }.whenComplete { result in
                let (handler, context) = bound.value
                let answer = (try? result.get()) ?? Endpoints.Answer(status: .serviceUnavailable, body: "stopping\n")
                handler.respond(answer, head, context: context)
            }
        default:
            respond(Endpoints.Answer(status: .notFound, body: "not found; try /metrics, /healthz or /readyz\n"), head, context: context)
        }
    }

    private func respond(_ answer: Endpoints.Answer, _ request: HTTPRequestHead, context: ChannelHandlerContext) {
        let body = Array(answer.body.utf8)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: answer.contentType)
        headers.add(name: "Content-Length", value: String(body.count))
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: answer.status, headers: headers))), promise: nil)
        if request.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
