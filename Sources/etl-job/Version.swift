import ArgumentParser
import CBuildStamp
import Mongo
import Postgres
import Queue

/// The version of etl-job and of the C libraries it runs with. `etlJob` is the one place the
/// version is written: scripts/package reads it for the package, the tarball and the image tag,
/// and CHANGELOG.md has a section for it.
enum VersionInfo {
    static let etlJob = "0.3.0"

    /// The commit a release build was made from (scripts/build links it in); nil for a build
    /// that did not say.
    static let commit: String? = etl_job_build_commit().map { String(cString: $0) }

    /// "0.3.0 (commit 3f2a9c1d7e4b)": what --version's first line and the JSON documents carry.
    static var described: String {
        "\(etlJob) (\(commit.map { "commit \($0)" } ?? "built without a commit"))"
    }

    static var text: String {
        "etl-job \(described)\nlibmongoc \(MongoDriver.version)\nlibpq \(PGConnection.libraryVersion)\nliblmdb \(lmdbVersion)"
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version of etl-job (and the commit it was built from) and of libmongoc, libpq and liblmdb.")

    func run() { print(VersionInfo.text) }
}
