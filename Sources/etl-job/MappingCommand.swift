import ArgumentParser
import DurableETL
import ETLCore
import Foundation
import Mappings
import Postgres

/// `etl-job mapping`: the mapping in force, as batches evolved it, in the format `init` writes.
struct MappingCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mapping",
        abstract: "Print (or write) the mapping in force for a pipeline: the file it started with, grown by the fields batches met that it did not name.",
        discussion: """
            Reads the job in the state directory (or, with --pipeline and no job there, the target alone) and the versions the target \
            records in etl_mappings. Diff it against the file you edited; the file you gave is never rewritten.
            """)

    @OptionGroup var connection: ConnectionOptions

    @Option(name: .customLong("pipeline"), help: ArgumentHelp("The pipeline (needed when the job runs several, or when no job is in the state directory).", valueName: "name"))
    var pipeline: String?

    @Option(help: ArgumentHelp("Write the mapping here instead of printing it (refused if the file exists, unless --force).", valueName: "file"))
    var output: String?

    @Flag(help: "Overwrite --output when it exists.")
    var force = false

    @Flag(help: "List the versions of the mapping (when, by which job and batch, what changed) instead of printing it.")
    var history = false

    func run() async throws {
        try await reportingErrors {
            let settings = try connection.resolved()
            _ = try connection.makeLogger()
            let text = try await Threads.blocking(name: "mapping") { try describe(settings) }
            if let output {
                if FileManager.default.fileExists(atPath: output) && !force {
                    throw JobError(.usage, "--output \(output) exists; give --force to overwrite it, or another file")
                }
                do {
                    try AtomicFile.write(Data(text.utf8), to: output)
                } catch {
                    throw JobError(.ioError, "cannot write \(output): \(error.localizedDescription)")
                }
                Console.standardError.line("etl-job: wrote the mapping in force to \(output)")
            } else {
                print(text, terminator: text.hasSuffix("\n") ? "" : "\n")
            }
        }
    }

    /// The pipeline's mapping in force (or its versions), from the job and the target.
    private func describe(_ settings: JobSettings) throws -> String {
        let (name, given, schema) = try whichPipeline(settings)
        let target = Target(url: settings.postgresURL, schema: schema)
        let db = try target.connectWaiting(startupWait: 5)
        if history {
            let versions = try MappingLedger.history(db, pipeline: name)
            guard !versions.isEmpty else { return "the \(name) pipeline's mapping never evolved in schema \(schema): the file it was given is in force" }
            return versions.map { v in
                "version \(v.version)  \(v.at)" + (v.job.map { "  job \($0)" } ?? "") + (v.batch.map { " batch \($0)" } ?? "") + "\n"
                    + v.changes.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n")
            }.joined(separator: "\n")
        }
        if let latest = try MappingLedger.latest(db, pipeline: name) {
            return (try? MappingFile(json: Data(latest.definition.utf8)).rendered) ?? latest.definition
        }
        guard let given else {
            throw JobError(.noInput, "the target (schema \(schema)) records no mapping for the \(name) pipeline, and no job in \(settings.stateDirectory) runs it; "
                + "name the state directory of its job with --state-dir, or the schema with --target-schema")
        }
        return given
    }

    /// The pipeline asked for, the definition its job was given (nil for a pipeline of code or
    /// one only the target knows) and the schema of its tables.
    private func whichPipeline(_ settings: JobSettings) throws -> (name: String, given: String?, schema: String) {
        let directory = settings.stateDirectory
        guard let manifest = try RunManifest.read(directory) else {
            guard let pipeline else {
                throw JobError(.usage, "no job in \(directory): name the pipeline with --pipeline (and its schema with --target-schema), or the job's --state-dir")
            }
            try refuseBuiltIn(pipeline)
            return (pipeline, nil, settings.targetSchema ?? JobSettings.defaultSchema)
        }
        let name: String
        if let pipeline {
            guard manifest.pipelines.contains(pipeline) else {
                throw JobPlan.noSuchPipeline(pipeline, in: directory, runs: manifest.pipelines)
            }
            name = pipeline
        } else {
            guard manifest.pipelines.count == 1 else {
                throw JobError(.usage, "the job in \(directory) runs \(manifest.pipelines.count) pipelines (\(manifest.pipelines.joined(separator: ", "))); name one with --pipeline")
            }
            name = manifest.pipelines[0]
        }
        let planned = manifest.planned[name]
        if planned?.definition == nil { try refuseBuiltIn(name) }
        return (name, planned?.definition, settings.targetSchema ?? planned?.targetSchema ?? JobSettings.defaultSchema)
    }

    private func refuseBuiltIn(_ name: String) throws {
        guard Pipelines.mapping(named: name) != nil else { return }
        throw JobError(.usage, "the \(name) pipeline is built in: its tables are code, not a mapping file ('etl-job init' proposes a mapping file for its collection)")
    }
}
