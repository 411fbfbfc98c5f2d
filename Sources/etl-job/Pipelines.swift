import ArgumentParser
import DurableETL
import Foundation
import Mappings
import Users

/// The pipelines built into etl-job: one line each.
enum Pipelines {
    static let builtIn: [any DocumentMapping] = [UsersMapping()]

    static var names: [String] { builtIn.map(\.name) }

    static func mapping(named name: String) -> (any DocumentMapping)? {
        builtIn.first { $0.name == name }
    }

    /// Reads a mapping file; a problem is a usage error naming the file and the JSON path.
    static func load(_ path: String) throws -> FileMapping {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw JobError(.usage, "--mapping \(path): no such file, or it cannot be read")
        }
        do {
            return FileMapping(try MappingFile(json: data))
        } catch {
            throw JobError(.usage, "mapping file \(path): \(error)")
        }
    }

    /// Two pipelines of one job with one name, or writing one table, are refused (exit 64):
    /// they would share a queue, or truncate and load each other's rows.
    static func refuseOverlaps(_ all: [any DocumentMapping]) throws {
        var seen = Set<String>()
        for m in all where !seen.insert(m.name).inserted {
            throw JobError(.usage, "two pipelines are named '\(m.name)'; give a mapping file another \"pipeline\" name")
        }
        var owners: [String: String] = [:]
        for m in all {
            for table in m.tables.map(\.name) {
                if let other = owners[table] {
                    throw JobError(.usage, "the pipelines \(other) and \(m.name) both write the table \(table); rename it in one mapping file")
                }
                owners[table] = m.name
            }
        }
    }

    /// How a resume, status or verify finds a recorded pipeline: a built-in by name; one
    /// defined by a mapping file from the definition the job recorded. A file given again
    /// with `--mapping` must describe the same tables, or the command is refused (exit 64).
    static func resolver(given: [FileMapping]) -> @Sendable (String, String?) throws -> (any DocumentMapping)? {
        { name, definition in
            guard let definition else { return mapping(named: name) }
            let recorded: FileMapping
            do {
                recorded = FileMapping(try MappingFile(json: Data(definition.utf8)))
            } catch {
                throw JobError(.ioError, "the mapping the \(name) job recorded cannot be read (\(error)); \(JobError.untrustedState)")
            }
            if let file = given.first(where: { $0.name == name }), file.file.canonical != recorded.file.canonical {
                let before = recorded.file.canonical.split(separator: "\n"), after = file.file.canonical.split(separator: "\n")
                let changes = before.filter { !after.contains($0) }.map { "- " + $0.trimmingCharacters(in: .whitespaces) }
                    + after.filter { !before.contains($0) }.map { "+ " + $0.trimmingCharacters(in: .whitespaces) }
                throw JobError(.usage, "the mapping of pipeline \(name) changed since the job started: "
                    + changes.prefix(6).joined(separator: "; ") + (changes.count > 6 ? "; …" : "")
                    + "; resume with the file the job started with, or 'etl-job start --fresh'")
            }
            return recorded
        }
    }
}

/// Mapping files: `--mapping FILE`, repeatable.
struct MappingOptions: ParsableArguments {
    @Option(name: .customLong("mapping"), help: ArgumentHelp(
        "A mapping file describing a collection's tables (repeatable; see 'etl-job init').", valueName: "file"))
    var files: [String] = []

    @Option(name: .customLong("mappings"), help: ArgumentHelp(
        "A directory of mapping files: each *.json in it is a pipeline (as 'etl-job init --output-dir' writes them).", valueName: "dir"))
    var directory: String?

    func load() throws -> [FileMapping] {
        var paths = files
        if let directory {
            let names: [String]
            do {
                names = try FileManager.default.contentsOfDirectory(atPath: directory)
            } catch {
                throw JobError(.usage, "--mappings \(directory): no such directory, or it cannot be read")
            }
            let found = names.filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") }.sorted()
            guard !found.isEmpty else { throw JobError(.usage, "--mappings \(directory) holds no mapping file (*.json); 'etl-job init --output-dir \(directory)' writes them") }
            paths += found.map { URL(fileURLWithPath: directory).appendingPathComponent($0).path }
        }
        return try paths.map(Pipelines.load)
    }

    var given: Bool { !files.isEmpty || directory != nil }
}

/// Which pipelines a command runs: `--pipeline NAME` and `--mapping FILE`, both repeatable.
struct PipelineOptions: ParsableArguments {
    @Option(name: .customLong("pipeline"), help: ArgumentHelp(
        "A built-in pipeline to run (repeatable; default users unless --mapping is given). Known: \(Pipelines.names.joined(separator: ", ")).",
        valueName: "name"))
    var names: [String] = []

    @OptionGroup var mapping: MappingOptions

    func validate() throws {
        for name in names where Pipelines.mapping(named: name) == nil {
            throw ValidationError("unknown pipeline '\(name)'; the known pipelines are: \(Pipelines.names.joined(separator: ", "))")
        }
        var seen = Set<String>()
        for name in names where !seen.insert(name).inserted {
            throw ValidationError("the pipeline '\(name)' is named twice")
        }
    }

    /// The named built-in pipelines and the mapping files; users alone when neither is given,
    /// unless `defaultUsers` is false (a whole database's pipelines are its collections).
    func mappings(defaultUsers: Bool = true) throws -> [any DocumentMapping] {
        let files = try mapping.load()
        let builtIn = names.isEmpty && files.isEmpty && defaultUsers ? [Pipelines.builtIn[0]] : names.compactMap(Pipelines.mapping(named:))
        let all: [any DocumentMapping] = builtIn + files
        try Pipelines.refuseOverlaps(all)
        return all
    }
}
