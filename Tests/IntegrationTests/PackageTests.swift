import Foundation
import TestSupport
import Testing

/// What deploys what a user installs: the Kubernetes examples, the systemd unit, the version's
/// changelog. The package and the image themselves are built, installed on a bare Debian 12 and
/// run by `scripts/package --test`, which scripts/test runs after these (it needs the release
/// build, and swift test holds the build directory).
@Suite(.serialized) struct PackageTests {
    static let root = Services.packageRoot.path

    /// The version, as Version.swift writes it once.
    static func version() throws -> String {
        let source = try String(contentsOfFile: root + "/Sources/etl-job/Version.swift", encoding: .utf8)
        return try #require(source.firstMatch(of: /static let etlJob = "([^"]+)"/).map { String($0.1) })
    }

    /// Runs `command` with bash in the package's root, its output to `log`; the exit status and
    /// the log's last lines.
    static func shell(_ command: String, log: String) throws -> (status: Int32, tail: String) {
        let words: [String] = ["/bin/bash", "-c", "cd \"$0\" && (\(command)) > \"$1\" 2>&1", root, log]
        let argv = words.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        #expect(posix_spawn(&pid, "/bin/bash", nil, nil, argv, environ) == 0)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        let tail = text.split(separator: "\n", omittingEmptySubsequences: false).suffix(40).joined(separator: "\n")
        return ((status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f), tail)
    }

    @Test func theKubernetesExamplesValidateAgainstKubernetesSchemasAndNameThisVersionsImage() throws {
        let examples = try FileManager.default.contentsOfDirectory(atPath: Self.root + "/examples/kubernetes")
            .filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(examples == ["etl-job-sync.yaml", "etl-job-workers.yaml"])
        // kubernetes-validate (PyPI, in var/venv by scripts/setup) carries the schemas: offline.
        let result = try Self.shell(
            "var/venv/bin/kubernetes-validate --strict " + examples.map { "examples/kubernetes/\($0)" }.joined(separator: " "),
            log: NSTemporaryDirectory() + "/kubernetes-validate.log")
        #expect(result.status == 0, "\(result.tail)")
        let version = try Self.version()
        for example in examples {
            let text = try String(contentsOfFile: Self.root + "/examples/kubernetes/" + example, encoding: .utf8)
            let images = text.matches(of: /image: *(\S+)/).map { String($0.1) }
            #expect(!images.isEmpty && images.allSatisfy { $0.hasSuffix("/etl-job:\(version)") }, "\(example): \(images), version \(version)")
            #expect(text.contains("runAsNonRoot: true"), "\(example) runs as the image's non-root user")
        }
        let sync = try String(contentsOfFile: Self.root + "/examples/kubernetes/etl-job-sync.yaml", encoding: .utf8)
        #expect(sync.contains("kind: Deployment") && sync.contains("replicas: 1") && sync.contains("type: Recreate"))
        #expect(sync.contains("\"sync\", \"--follow\""))
        // The volume's group is the image's user (scripts/package fixes it at 999).
        let script = try String(contentsOfFile: Self.root + "/scripts/package", encoding: .utf8)
        #expect(sync.contains("fsGroup: 999") && script.contains("--config.user 999:999"))
    }

    @Test func theSystemdUnitVerifiesAndRetriesOnlyWhatARestartCanMend() throws {
        let unit = try String(contentsOfFile: Self.root + "/packaging/systemd/etl-job-sync@.service", encoding: .utf8)
        #expect(unit.contains("ExecStart=/usr/bin/etl-job sync --follow"))
        #expect(unit.contains("Restart=on-failure"))
        #expect(unit.contains("RestartPreventExitStatus=64 65 66 70 74"), "75 (another run) and 69 (unreachable) are retried")
        // systemd's own check, with the binary at a path that exists here.
        let directory = NSTemporaryDirectory() + "/unit-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try unit.replacingOccurrences(of: "/usr/bin/etl-job", with: Services.binary)
            .write(toFile: directory + "/etl-job-sync@.service", atomically: true, encoding: .utf8)
        let result = try Self.shell("systemd-analyze verify --man=no '\(directory)/etl-job-sync@app.service'",
                                    log: directory + ".log")
        #expect(result.status == 0 && !result.tail.contains("etl-job-sync"), "\(result.tail)")
    }

    @Test func theChangelogHasThisVersionFirst() throws {
        let changelog = try String(contentsOfFile: Self.root + "/CHANGELOG.md", encoding: .utf8)
        let first = changelog.firstMatch(of: #/\n## (\d+\.\d+\.\d+) /#).map { String($0.1) }
        #expect(first == (try Self.version()))
    }

    /// The README's install section names the files scripts/package writes for this version.
    @Test func theReadmeInstallsTheFilesThePackageScriptWrites() throws {
        let version = try Self.version()
        let readme = try String(contentsOfFile: Self.root + "/README.md", encoding: .utf8)
        let script = try String(contentsOfFile: Self.root + "/scripts/package", encoding: .utf8)
        let files = [("etl-job_${version}_${arch}.deb", "etl-job_\(version)_amd64.deb"),
                     ("etl-job-${version}-linux-${arch}.tar.gz", "etl-job-\(version)-linux-amd64.tar.gz"),
                     ("etl-job-${version}.oci.tar", "etl-job-\(version).oci.tar"),
                     ("etl-job-${version}.docker.tar", "etl-job-\(version).docker.tar")]
        for (template, name) in files {
            #expect(script.contains(template), "scripts/package writes \(template)")
            #expect(readme.contains(name), "README names \(name)")
        }
        #expect(readme.contains("sudo apt install ./etl-job_\(version)_amd64.deb"))
        #expect(readme.contains("docker://REGISTRY/etl-job:\(version)"))
    }
}
