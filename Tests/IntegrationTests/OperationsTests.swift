import DurableETL
import Foundation
import Postgres
import Testing
import TestSupport

/// Operating a run (issue 37): `--metrics-address` serves Prometheus' text format at
/// /metrics, /healthz and /readyz; `--log-format json` makes stderr one JSON object a line.
/// Against the real services, the built binary scraped over loopback as Prometheus would.
@Suite(.serialized) struct OperationsTests {
    /// A snapshot from a file, its commits slowed so that it lasts: every engine metric is
    /// there from the start, the documents loaded grow between two scrapes, and promtool
    /// accepts the text.
    @Test func metricsDuringASnapshotMoveWithTheWork() throws {
        let sandbox = try Sandbox()
        let file = sandbox.stateDirectory + "-users.bson"
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try sandbox.run(["seed", "--users", "6000", "--output", file]).status == 0)
        try sandbox.slowCommits(seconds: 0.25)
        let port = Scrape.freePort()
        let job = try sandbox.launch(["start", "--source-file", file, "--postgres-url", sandbox.postgresURL, "--state-dir", sandbox.stateDirectory,
                                      "--batch-size", "250", "--metrics-address", "127.0.0.1:\(port)"])
        var first: Metrics?
        #expect(eventually(20) {
            first = (try? Scrape.get(port, "/metrics")).flatMap { $0.status == 200 ? Metrics($0.body) : nil }
            return (first?.sum("etl_job_documents_loaded_total") ?? 0) > 0
        }, "the documents loaded count up during the run")
        var text = ""
        #expect(eventually(10) {
            text = (try? Scrape.get(port, "/metrics").body) ?? ""
            return Metrics(text).sum("etl_job_documents_loaded_total") > first!.sum("etl_job_documents_loaded_total")
        }, "the documents loaded grow with the work: \(text)")
        let second = Metrics(text)
        for name in EngineMetrics.Name.allCases {
            #expect(second.types[name.rawValue] == name.kind, "\(name.rawValue) is exported as a \(name.kind): \(second.types)")
        }
        #expect(second.sum("etl_job_rows_written_total", ["table": "users"]) == second.sum("etl_job_documents_loaded_total"))
        #expect(second.sum("etl_job_batch_commit_duration_seconds_count") == second.sum("etl_job_batches_committed_total"))
        #expect(try Scrape.promtool(text) == "", "promtool check metrics accepts the text")
        #expect(!text.contains(sandbox.postgresURL) && !text.contains("etl:etl"), "no URL or credential in the metrics")
        #expect(try Scrape.get(port, "/healthz").status == 200)
        let ready = try Scrape.get(port, "/readyz")
        #expect(ready.status == 200 && ready.body.contains("target: ok") && !ready.body.contains("source"), "a file source needs no server: \(ready.body)")
        let result = try job.wait()
        #expect(result.status == 0, "\(result)")
        #expect(throws: (any Error).self, "the listener is gone with the process") { try Scrape.get(port, "/metrics") }
    }

    /// `sync --follow` with a writer: the changes applied grow; with the target's sessions
    /// stopped (SIGSTOP), the loader stays in its statement, so /healthz turns 503 past
    /// --stalled-after and /readyz turns 503 once the changes waiting are older than
    /// --max-lag; both come back to 200 when the sessions go on (SIGCONT, always sent).
    @Test func syncMetricsAndProbesFollowAPausedTarget() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 200)
        #expect(try sandbox.job("start").status == 0)
        let writer = try SyncTests.LiveWriter(kind: "users", database: sandbox.mongoDatabase, rate: 40, seed: 7)
        defer { _ = try? writer.stop() }
        let port = Scrape.freePort()
        let follow = try sandbox.launch(["sync", "--follow"] + sandbox.connectionArguments
            + ["--metrics-address", "127.0.0.1:\(port)", "--stalled-after", "2", "--max-lag", "4"])
        defer { if follow.isRunning { follow.signal(SIGKILL) } }

        var before = 0.0
        #expect(eventually(30) {
            before = (try? Metrics(Scrape.get(port, "/metrics").body).sum("etl_job_changes_applied_total")) ?? 0
            return before > 0
        }, "changes are applied")
        #expect(eventually(10) { ((try? Metrics(Scrape.get(port, "/metrics").body).sum("etl_job_changes_applied_total")) ?? 0) > before },
                "the changes applied grow while the writer writes")
        let text = try Scrape.get(port, "/metrics").body
        #expect(try Scrape.promtool(text) == "", "promtool check metrics accepts the text")
        #expect(Metrics(text).sum("etl_job_committed_cluster_time_seconds") > Date().timeIntervalSince1970 - 600)
        #expect(Metrics(text).sum("etl_job_change_commit_delay_seconds_count") > 0)
        #expect(eventually(10) { (try? Scrape.get(port, "/readyz"))?.status == 200 }, "ready while caught up")

        let paused = try Scrape.pauseBackends(of: sandbox.name)
        #expect(!paused.isEmpty, "the job holds sessions in its database")
        do {
            defer { Scrape.resume(paused) }
            #expect(eventually(20) { (try? Scrape.get(port, "/healthz"))?.status == 503 }, "a loader wedged in a statement is unhealthy")
            let health = try Scrape.get(port, "/healthz")
            #expect(health.body.contains("stalled: loading batch"), "\(health.body)")
            #expect(eventually(20) { (try? Scrape.get(port, "/readyz"))?.status == 503 }, "not ready while the changes wait longer than --max-lag")
            let ready = try Scrape.get(port, "/readyz")
            #expect(ready.body.contains("target: ok") && ready.body.contains("source: ok") && ready.body.contains("lag: "), "\(ready.body)")
            #expect(Metrics(try Scrape.get(port, "/metrics").body).sum("etl_job_lag_seconds") > 4)
        }
        #expect(eventually(30) { (try? Scrape.get(port, "/healthz"))?.status == 200 }, "healthy again once the sessions go on")
        #expect(eventually(30) { (try? Scrape.get(port, "/readyz"))?.status == 200 }, "ready again once caught up")
        follow.signal(SIGTERM)
        let stopped = try follow.wait()
        #expect(stopped.status == 143 && !stopped.signaled, "\(stopped)")
    }

    /// A quiet stream is waited on, not wedged: /healthz stays 200 well past --stalled-after.
    /// /readyz says 503 while the source cannot be reached (a server of the test's own,
    /// stopped under a running sync), naming the side and no credential.
    @Test func quietStreamIsHealthyAndReadinessFailsWhileTheSourceIsDown() throws {
        let sandbox = try Sandbox()
        var mongo: PrivateMongo? = try PrivateMongo()
        let url = mongo!.url
        #expect(try sandbox.run(["seed", "--users", "100", "--mongodb-url", url, "--database", sandbox.mongoDatabase]).status == 0)
        let arguments = ["--postgres-url", sandbox.postgresURL, "--mongodb-url", url, "--database", sandbox.mongoDatabase, "--state-dir", sandbox.stateDirectory]
        #expect(try sandbox.run(["start"] + arguments).status == 0)
        let port = Scrape.freePort()
        let follow = try sandbox.launch(["sync", "--follow", "--metrics-address", "127.0.0.1:\(port)", "--max-lag", "30", "--stalled-after", "1"] + arguments)
        defer { if follow.isRunning { follow.signal(SIGKILL) } }
        #expect(eventually(20) { (try? Scrape.get(port, "/readyz"))?.status == 200 }, "ready with both sides up")
        let quiet = Date().addingTimeInterval(4)
        while Date() < quiet {
            let health = try Scrape.get(port, "/healthz")
            #expect(health.status == 200, "a quiet stream is no stall: \(health.body)")
            Thread.sleep(forTimeInterval: 0.5)
        }
        mongo = nil
        #expect(eventually(20) { (try? Scrape.get(port, "/readyz"))?.status == 503 }, "not ready without the source")
        let ready = try Scrape.get(port, "/readyz")
        #expect(ready.body.contains("source: unreachable") && ready.body.contains("target: ok"), "\(ready.body)")
        follow.signal(SIGTERM)
        let stopped = try follow.wait()
        #expect(!stopped.signaled, "\(stopped)")
    }

    /// `--log-format json` and `ETL_LOG_FORMAT=json`: every line of stderr is a JSON object
    /// with time, level and message, pipeline lines name their pipeline and job, and nothing
    /// holds an escape, also on a terminal (no progress line). Text stays the default.
    @Test func jsonLogsAreOneObjectALine() throws {
        let sandbox = try Sandbox()
        let file = sandbox.stateDirectory + "-users.bson"
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try sandbox.run(["seed", "--users", "1500", "--output", file]).status == 0)
        let base = ["start", "--source-file", file, "--postgres-url", sandbox.postgresURL, "--batch-size", "200", "-v"]
        let runs: [(String, JobResult)] = [
            ("--log-format json", try sandbox.run(base + ["--state-dir", sandbox.stateDirectory + "-a", "--target-schema", "a", "--log-format", "json"])),
            ("ETL_LOG_FORMAT=json", try sandbox.run(base + ["--state-dir", sandbox.stateDirectory + "-b", "--target-schema", "b"],
                                                    environment: ["ETL_LOG_FORMAT": "json"])),
            ("on a terminal", try sandbox.inTerminal(base + ["--state-dir", sandbox.stateDirectory + "-c", "--target-schema", "c", "--log-format", "json",
                                                             "--progress-interval", "0.1"])),
        ]
        for (what, result) in runs {
            #expect(result.status == 0, "\(what): \(result)")
            // On a terminal stdout and stderr share it: the report's lines are plain text there.
            let log = what == "on a terminal" ? result.stdout.components(separatedBy: "\r\n").filter { $0.hasPrefix("{") }.joined(separator: "\n") : result.stderr
            let lines = log.split(separator: "\n").map(String.init)
            #expect(lines.count >= 3, "\(what): a verbose run logs: \(log)")
            #expect(!log.contains("\u{1B}") && !log.contains("\r"), "\(what): no terminal codes")
            for line in lines {
                let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                #expect(object?["time"] is String && object?["level"] is String && object?["message"] is String, "\(what): \(line)")
            }
            let committed = lines.first { $0.contains("committed a batch") }.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            #expect(committed?["pipeline"] as? String == "users" && (committed?["job"] as? String)?.isEmpty == false, "\(what): \(lines.prefix(3))")
            if what == "on a terminal" {
                #expect(!result.stdout.contains("\u{1B}"), "no escape on the terminal either: \(result.stdout.prefix(500))")
            }
        }
        let text = try sandbox.run(["status", "--state-dir", sandbox.stateDirectory + "-a"])
        #expect(text.status == 0 && !text.stderr.hasPrefix("{"), "text stays the default: \(text)")
        for state in ["-a", "-b", "-c"] { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + state) }
    }

    /// A bad --log-format or ETL_LOG_FORMAT, a --metrics-address that is no HOST:PORT: one
    /// line and exit 64, before anything runs. A port another socket holds: a clear error, exit 69.
    @Test func badSettingsAreOneLineAndAPortInUseIsRefused() throws {
        let sandbox = try Sandbox()
        let refusals: [([String], [String: String], String)] = [
            (["start", "--log-format", "xml"], [:], "--log-format 'xml' is not a log format; valid formats: text, json"),
            (["sync"], ["ETL_LOG_FORMAT": "yaml"], "ETL_LOG_FORMAT 'yaml' is not a log format"),
            (["start", "--metrics-address", "9464"], [:], "--metrics-address must be HOST:PORT"),
            (["worker", "--metrics-address", "127.0.0.1:70000"], [:], "--metrics-address must be HOST:PORT"),
            (["resume", "--metrics-address", ":9464"], [:], "--metrics-address must be HOST:PORT"),
            (["sync", "--max-lag=-1"], [:], "--max-lag must be 0 or more seconds"),
        ]
        for (arguments, environment, message) in refusals {
            let result = try sandbox.run(arguments + sandbox.connectionArguments, environment: environment)
            let lines = result.stderr.split(separator: "\n")
            #expect(result.status == 64 && lines.first?.hasPrefix("etl-job: error: \(message)") == true, "\(arguments): \(result)")
            #expect(lines.count <= 2, "one line (and where --help is): \(result.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: sandbox.stateDirectory))

        try sandbox.seed(users: 20)
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(holder) }
        var address = Scrape.loopback(port: 0)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        #expect(listen(holder, 1) == 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(holder, $0, &length) } }
        let port = Int(UInt16(bigEndian: address.sin_port))
        let result = try sandbox.job("start", ["--metrics-address", "127.0.0.1:\(port)"])
        #expect(result.status == 69 && result.stderr == "etl-job: error: --metrics-address 127.0.0.1:\(port): cannot listen there (the address is already in use)\n",
                "\(result)")
        #expect(!FileManager.default.fileExists(atPath: sandbox.stateDirectory), "refused before the job began")
    }
}

/// Prometheus' text format read into values: `name{labels}` to value, and each family's type.
struct Metrics {
    var samples: [(name: String, labels: [String: String], value: Double)] = []
    var types: [String: String] = [:]

    init(_ text: String) {
        for line in text.split(separator: "\n") {
            if line.hasPrefix("# TYPE ") {
                let parts = line.split(separator: " ")
                if parts.count == 4 { types[String(parts[2])] = String(parts[3]) }
                continue
            }
            guard !line.hasPrefix("#"), let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            let series = line[..<space]
            let name = String(series.prefix { $0 != "{" })
            var labels: [String: String] = [:]
            if let open = series.firstIndex(of: "{") {
                for pair in series[series.index(after: open)..<series.index(before: series.endIndex)].split(separator: ",") {
                    let kv = pair.split(separator: "=", maxSplits: 1)
                    if kv.count == 2 { labels[String(kv[0])] = String(kv[1].dropFirst().dropLast()) }
                }
            }
            samples.append((name, labels, value))
        }
    }

    /// The sum of a metric's series whose labels include `matching`.
    func sum(_ name: String, _ matching: [String: String] = [:]) -> Double {
        samples.filter { sample in sample.name == name && matching.allSatisfy { sample.labels[$0.key] == $0.value } }.reduce(0) { $0 + $1.value }
    }
}

/// A scraper: a plain HTTP/1.1 GET over loopback, promtool, and the target's sessions paused.
enum Scrape {
    struct Failed: Error, CustomStringConvertible {
        let description: String
    }

    static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }

    /// A port nothing listens on now.
    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = loopback(port: 0)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// GET `path` from 127.0.0.1:`port`: the status and the body (the server closes after it).
    static func get(_ port: Int, _ path: String) throws -> (status: Int, body: String) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = loopback(port: UInt16(port))
        let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { throw Failed(description: "nothing listens on 127.0.0.1:\(port)") }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
        guard send(fd, request, request.count, 0) == request.count else { throw Failed(description: "could not send the request") }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { break }
            response += buffer[..<n]
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let end = text.range(of: "\r\n\r\n"), let status = Int(text.split(separator: " ").dropFirst().first ?? "") else {
            throw Failed(description: "no HTTP response: \(text.prefix(200))")
        }
        return (status, String(text[end.upperBound...]))
    }

    /// What `promtool check metrics` says of `text` (empty when it accepts it). A machine
    /// without promtool fails the test: the format is checked, never skipped.
    static func promtool(_ text: String) throws -> String {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool") else {
            throw Failed(description: "promtool is not installed (Debian's prometheus package; scripts/setup installs it)")
        }
        let input = NSTemporaryDirectory() + "metrics-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: input) }
        try text.write(toFile: input, atomically: true, encoding: .utf8)
        let result = try RunningJob(executable: "/bin/sh", arguments: ["-c", "/usr/bin/promtool check metrics < '\(input)'"], environment: [:]).wait()
        return result.status == 0 ? "" : "exit \(result.status): \(result.stdout)\(result.stderr)"
    }

    /// Stops (SIGSTOP) every PostgreSQL session of `database` but this test's: the job's
    /// loaders then wait in their statements. Their pids, for `resume`.
    static func pauseBackends(of database: String) throws -> [Int32] {
        let admin = try Services.postgres()
        let rows = try admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = '\(database)' AND application_name LIKE 'etl-job pid %'").rows
        let pids = rows.compactMap { $0[0].flatMap { Int32($0) } }
        for pid in pids { kill(pid, SIGSTOP) }
        return pids
    }

    static func resume(_ pids: [Int32]) {
        for pid in pids { kill(pid, SIGCONT) }
    }
}
