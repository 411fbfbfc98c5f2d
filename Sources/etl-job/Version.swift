import ArgumentParser
import Mongo
import Postgres
import Queue

/// The version of etl-job and of the C libraries it runs with.
enum VersionInfo {
    static let etlJob = "0.2.0"

    static var text: String {
        "etl-job \(etlJob)\nlibmongoc \(MongoDriver.version)\nlibpq \(PGConnection.libraryVersion)\nliblmdb \(lmdbVersion)"
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version of etl-job and of libmongoc, libpq and liblmdb.")

    func run() { print(VersionInfo.text) }
}
