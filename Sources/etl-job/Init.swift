import ArgumentParser
import DurableETL
import ETLCore
import Foundation
import Mappings

/// Proposes a mapping file for a collection from a sample of its documents.
struct Init: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sample a collection (or a mongodump file) and print (or write) a mapping file for it, with the evidence for each choice.",
        discussion: "Run the mapping with 'etl-job start --mapping FILE'. Edit it first as you like: rename tables and columns, drop fields, change types, choose jsonb for any subtree.")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: ArgumentHelp("Documents to sample, spread over the collection.", valueName: "n"))
    var sample = 1_000

    @Option(help: ArgumentHelp("Write the mapping here (refused if the file exists) instead of printing it.", valueName: "file"))
    var output: String?

    @Option(name: .customLong("output-dir"), help: ArgumentHelp(
        "For a whole database (--database without --collection, or --source-dump): write one mapping per collection, <pipeline>.json, here (default mappings).",
        valueName: "dir"))
    var outputDirectory: String?

    @Flag(help: "Overwrite mapping files that exist in --output-dir.")
    var force = false

    /// --database without --collection, or a dump directory without --collection.
    var wholeDatabase: Bool {
        connection.source.collection == nil && (connection.source.sourceDump != nil || (connection.source.database != nil && connection.source.sourceFile == nil))
    }

    func validate() throws {
        guard sample > 0 else { throw ValidationError("--sample must be at least 1") }
        guard connection.source.namesAnotherSource || connection.source.database != nil else {
            throw ValidationError("init needs --database (a whole database) and --collection (one collection), --source-file (a mongodump file) or --source-dump (a mongodump directory)")
        }
        if wholeDatabase, output != nil {
            throw ValidationError("--output writes one mapping; a whole database writes one per collection into --output-dir")
        }
        if !wholeDatabase, outputDirectory != nil || force {
            throw ValidationError("\(outputDirectory != nil ? "--output-dir" : "--force") is for a whole database (--database without --collection, or --source-dump); use --output for one collection")
        }
    }

    func run() async throws {
        try await reportingErrors {
            let settings = try connection.resolved()
            _ = try connection.makeLogger()
            if wholeDatabase { return try await writeAll(settings) }
            if let output, FileManager.default.fileExists(atPath: output) {
                throw JobError(.usage, "\(output) exists; choose another --output or remove it")
            }
            let sample = sample
            let data = try await Threads.blocking(name: "init") { () throws -> Data in
                let implied = settings.source.choice?.impliedCollection
                let dump = (settings.source.choice as? BSONDumpDirectory.Choice)?.dump.database
                let names = SourceCollection(
                    database: dump ?? settings.source.database ?? implied?.database ?? "",
                    collection: settings.source.collection ?? implied?.collection ?? "")
                return try Proposal.propose(SourceKinds.source(settings, collection: names), names: names, sample: sample)
            }
            if let output {
                do {
                    try AtomicFile.write(data, to: output)
                } catch {
                    throw JobError(.ioError, "cannot write \(output): \(error.localizedDescription)")
                }
                // A file is named again when the mapping runs: a mapping names a collection, not a file.
                let file = connection.source.sourceFile.map { " --source-file \($0)" } ?? ""
                Console.standardError.line("etl-job: wrote the mapping to \(output); run it with 'etl-job start --mapping \(output)\(file)'")
            } else {
                print(String(decoding: data, as: UTF8.self))
            }
        }
    }

    /// One mapping per collection into the output directory; files that exist are refused
    /// (all named, nothing written) unless --force.
    private func writeAll(_ settings: JobSettings) async throws {
        let directory = outputDirectory ?? "mappings"
        let (sample, database, collection, force) = (sample, connection.source.database, connection.source.collection, force)
        let proposed = try await Threads.blocking(name: "init") {
            try Proposal.proposeAll(settings, try Proposal.collections(settings, database: database, only: collection), sample: sample)
        }
        guard !proposed.isEmpty else { throw JobError(.noInput, "every collection of the source is empty; there is nothing to infer a mapping from") }
        let files = proposed.map { (URL(fileURLWithPath: directory).appendingPathComponent($0.mapping.name + ".json").path, $0) }
        let existing = files.map(\.0).filter { FileManager.default.fileExists(atPath: $0) }
        if !existing.isEmpty && !force {
            throw JobError(.usage, "\(existing.joined(separator: ", ")) exist\(existing.count == 1 ? "s" : ""); nothing was written: add --force to overwrite, or choose another --output-dir")
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for (path, proposal) in files { try AtomicFile.write(proposal.data, to: path) }
        } catch {
            throw JobError(.ioError, "cannot write the mappings into \(directory): \(error.localizedDescription)")
        }
        for (path, proposal) in files {
            Console.standardError.line("etl-job: wrote \(path) (\(proposal.names.database).\(proposal.names.collection): \(proposal.mapping.tables.count) tables)")
        }
        let dump = connection.source.sourceDump.map { " --source-dump \($0)" } ?? ""
        Console.standardError.line("etl-job: wrote \(files.count) mappings; review them, then run 'etl-job start --mappings \(directory)\(dump)'")
    }
}
