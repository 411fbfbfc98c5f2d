import ArgumentParser
import Foundation
import Testing
import TestSupport
@testable import etl_job

/// The documentation cannot drift from the code: its command lines are the binary's, its
/// links lead somewhere, its reference is what the binary prints, and the README's tour runs.
@Suite struct DocsTests {
    /// Why the parser refused arguments, as the case of its (internal) `ParserError`:
    /// `unknownOption`, `unexpectedExtraValues` (an unknown subcommand or a stray word),
    /// `userValidationError` (a command's `validate()`), … nil when it is not the parser's.
    static func parserRefusal(_ error: Error) -> String? {
        guard let inner = Mirror(reflecting: error).children.first(where: { $0.label == "parserError" })?.value else { return nil }
        return Mirror(reflecting: inner).children.first?.label ?? "\(inner)"
    }

    /// What a command line in the docs may end in besides success: asking for help or the version.
    static let accepted: Set<String> = ["helpRequested", "versionRequested"]

    /// nil when `arguments` parse as the binary parses them (the subcommand and every flag
    /// exist, and every value is one the flag takes: docs show values a reader can paste, not
    /// `N`), else why not. A bare `etl-job <command>` in prose names the command: it only has
    /// to exist.
    static func check(_ arguments: [String]) -> String? {
        if arguments.count == 1, arguments[0].first?.isLetter == true {
            let names = ETLJobCommand.configuration.subcommands.map { $0._commandName }
            return names.contains(arguments[0]) ? nil : "no command '\(arguments[0])'; the commands are \(names.joined(separator: ", "))"
        }
        do {
            _ = try ETLJobCommand.parseAsRoot(arguments)
            return nil
        } catch {
            let refusal = parserRefusal(error)
            if let refusal, accepted.contains(refusal) { return nil }
            return "\(refusal ?? "\(type(of: error))"): \(ETLJobCommand.message(for: error))"
        }
    }

    @Test func everyCommandLineInTheDocsParses() throws {
        var checked = 0
        for page in try Page.all() where page.path != "CHANGELOG.md" {
            for (line, text) in page.commandLines {
                for invocation in Shell.invocations(text) {
                    // `etl-job <command> --help` stands for every command.
                    if invocation.first?.hasPrefix("<") == true { continue }
                    for variant in Shell.variants(invocation) {
                        checked += 1
                        if let problem = Self.check(variant) {
                            Issue.record("\(page.path):\(line): etl-job \(variant.joined(separator: " ")): \(problem)")
                        }
                    }
                }
            }
        }
        #expect(checked > 100, "the docs hold command lines (found \(checked))")
    }

    /// The checker itself: a renamed flag, an unknown subcommand, a flag given to the wrong
    /// command, a placeholder or a value a command refuses fail, each named by the parser's
    /// own reason; usage brackets and alternatives are read as a reader reads them.
    @Test func theCheckerFailsWhatTheParserRefuses() {
        #expect(Self.check(["start", "--fresh", "--yes"]) == nil)
        #expect(Self.check(["start", "--help"]) == nil)
        #expect(Self.check(["init"]) == nil, "a command named in prose only has to exist")
        #expect(Self.check(["start", "--freshh"])?.hasPrefix("unknownOption") == true)
        #expect(Self.check(["stat"])?.hasPrefix("no command 'stat'") == true)
        #expect(Self.check(["stat", "--json"]) != nil, "\(Self.check(["stat", "--json"]) ?? "")")
        #expect(Self.check(["status", "--fresh"])?.hasPrefix("unknownOption") == true)
        #expect(Self.check(["seed", "--users", "N"])?.hasPrefix("unableToParseValue") == true, "a placeholder where a number goes")
        #expect(Self.check(["start", "--keys", "sideways"])?.hasPrefix("userValidationError") == true, "a value start's validate() refuses")
        #expect(Shell.invocations(#"POSTGRES_URL=x etl-job status --json | jq . # a comment"#) == [["status", "--json"]])
        #expect(Shell.invocations(#"sudo -u etl-job etl-job start --env-file /etc/etl-job/app.env"#) == [["start", "--env-file", "/etc/etl-job/app.env"]])
        #expect(Shell.invocations(#"ssh h "etl-job worker --partitions 16" &"#) == [["worker", "--partitions", "16"]])
        #expect(Shell.invocations("examples/kubernetes/  a Kubernetes Job of etl-job workers").isEmpty, "prose in a block is no command")
        #expect(Shell.invocations("perf record -g -o /tmp/p .build/release/etl-job start --fresh --yes") == [["start", "--fresh", "--yes"]])
        #expect(Shell.variants(Shell.invocations("etl-job start [--source-file a.bson | --database app --collection users] [--keys after|during] [...]")[0])
                == [["start", "--source-file", "a.bson", "--keys", "after"], ["start", "--database", "app", "--collection", "users", "--keys", "after"]])
        #expect(Shell.variants(Shell.invocations("etl-job start --postgres-url 'host=db port=5432' --mapping 'a [b].json'")[0])
                == [["start", "--postgres-url", "host=db port=5432", "--mapping", "a [b].json"]])
    }

    @Test func everyRelativeLinkAndAnchorResolves() throws {
        let pages = try Page.all()
        let anchors = Dictionary(uniqueKeysWithValues: pages.map { ($0.path, $0.anchors) })
        var checked = 0
        for page in pages {
            let directory = URL(fileURLWithPath: Page.root + "/" + page.path).deletingLastPathComponent()
            for (line, target) in page.links where !target.contains("://") && !target.hasPrefix("mailto:") {
                checked += 1
                let parts = target.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                let file = parts[0].isEmpty ? URL(fileURLWithPath: Page.root + "/" + page.path)
                    : directory.appendingPathComponent(parts[0].removingPercentEncoding ?? parts[0]).standardizedFileURL
                guard FileManager.default.fileExists(atPath: file.path) else {
                    Issue.record("\(page.path):\(line): \(target): no file \(file.path)")
                    continue
                }
                guard parts.count == 2 else { continue }
                let relative = String(file.path.dropFirst(Page.root.count + 1))
                guard let known = anchors[relative] else {
                    Issue.record("\(page.path):\(line): \(target): an anchor into a file that is not one of the docs' pages")
                    continue
                }
                if !known.contains(parts[1]) {
                    Issue.record("\(page.path):\(line): \(target): \(relative) has no heading #\(parts[1])")
                }
            }
        }
        #expect(checked > 50, "the docs hold links (found \(checked))")
    }

    /// `scripts/reference --check` writes the reference from the binary's `--help` into a
    /// temporary file and compares it with docs/reference/commands.md.
    @Test func theCommandReferenceIsWhatTheBinaryPrints() throws {
        let result = try RunningJob(executable: Page.root + "/scripts/reference", arguments: ["--check"],
                                    environment: ["ETL_JOB_BIN": Services.binary]).wait()
        #expect(result.status == 0, "docs/reference/commands.md is stale: run scripts/reference\n\(result.stdout)\(result)")
    }

    /// The README's tour, taken from README.md itself, run by bash as a reader would run it:
    /// in a directory of its own (the default state directory var/state is inside it), against
    /// a PostgreSQL database and a MongoDB-wire server of the bundled kind that are the test's
    /// own, named by the environment as a reader's .env would name them.
    @Test func theReadmeTourRunsAsWritten() throws {
        let tour = try Self.tour()
        #expect(tour.contains("etl-job start"), "the tour block was found:\n\(tour)")
        let sandbox = try Sandbox()
        let mongo = try PrivateMongo()
        let directory = sandbox.stateDirectory + "-tour"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = URL(fileURLWithPath: Services.binary).deletingLastPathComponent().path + ":" + (Services.env["PATH"] ?? "/usr/bin:/bin")
        let result = try RunningJob(
            executable: "/bin/bash",
            arguments: ["-c", #"cd "$1" && exec timeout 900 bash -euo pipefail -c "$2""#, "tour", directory, tour],
            environment: ["PATH": path, "POSTGRES_URL": sandbox.postgresURL, "MONGODB_URL": mongo.url],
            unsetting: ["ETL_STATE_DIR", "ETL_LOG_LEVEL", "ETL_LOG_FORMAT", "ETL_CRASH_AT"]).wait()
        #expect(result.status == 0, "the tour failed:\n\(result.stdout.suffix(3000))\n\(result)")
        #expect(result.stdout.contains("killed: exit 137"), "the tour's kill happened:\n\(result.stdout.suffix(3000))")
        #expect(FileManager.default.fileExists(atPath: directory + "/mine.json"), "init wrote the mapping")
        let users = try sandbox.db().execute("SELECT count(*) FROM users").rows[0][0]
        #expect(users == "10500", "the snapshot, resumed, then synced: 10,000 + 500 users")
        let mine = try sandbox.db().execute("SELECT count(*) FROM mine.users").rows[0][0]
        #expect(mine == "10500", "the mapped collection loaded into schema mine")
    }

    /// The first `sh` block under README.md's "A five-minute tour".
    static func tour() throws -> String {
        let readme = try String(contentsOfFile: Page.root + "/README.md", encoding: .utf8)
        guard let section = readme.range(of: "\n## A five-minute tour\n"),
              let open = readme.range(of: "\n```sh\n", range: section.upperBound..<readme.endIndex),
              let close = readme.range(of: "\n```\n", range: open.upperBound..<readme.endIndex) else { return "" }
        return String(readme[open.upperBound..<close.lowerBound]) + "\n"
    }
}
