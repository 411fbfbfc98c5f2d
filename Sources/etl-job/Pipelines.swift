import ArgumentParser
import DurableETL
import Users

/// The pipelines built into etl-job: one line each.
enum Pipelines {
    static let builtIn: [any DocumentMapping] = [UsersMapping()]

    static var names: [String] { builtIn.map(\.name) }

    static func mapping(named name: String) -> (any DocumentMapping)? {
        builtIn.first { $0.name == name }
    }
}

/// Which pipelines a command runs: `--pipeline NAME`, repeatable.
struct PipelineOptions: ParsableArguments {
    @Option(name: .customLong("pipeline"), help: ArgumentHelp(
        "A pipeline to run (repeatable; default users). Known: \(Pipelines.names.joined(separator: ", ")).",
        valueName: "name"))
    var names: [String] = []

    func validate() throws {
        for name in names where Pipelines.mapping(named: name) == nil {
            throw ValidationError("unknown pipeline '\(name)'; the known pipelines are: \(Pipelines.names.joined(separator: ", "))")
        }
        var seen = Set<String>()
        for name in names where !seen.insert(name).inserted {
            throw ValidationError("the pipeline '\(name)' is named twice")
        }
    }

    /// The named pipelines, or users alone.
    var mappings: [any DocumentMapping] {
        names.isEmpty ? [Pipelines.builtIn[0]] : names.compactMap(Pipelines.mapping(named:))
    }
}
