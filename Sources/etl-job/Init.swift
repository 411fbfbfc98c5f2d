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

    func validate() throws {
        guard sample > 0 else { throw ValidationError("--sample must be at least 1") }
        guard connection.source.sourceFile != nil || (connection.source.database != nil && connection.source.collection != nil) else {
            throw ValidationError("init needs --database and --collection (the collection to describe), or --source-file (a mongodump file)")
        }
    }

    func run() async throws {
        try await reportingErrors {
            let settings = try connection.resolved()
            _ = try connection.makeLogger()
            if let output, FileManager.default.fileExists(atPath: output) {
                throw JobError(.usage, "\(output) exists; choose another --output or remove it")
            }
            let sample = sample
            let data = try await Threads.blocking(name: "init") { try Self.propose(settings, sample: sample) }
            if let output {
                do {
                    try AtomicFile.write(data, to: output)
                } catch {
                    throw JobError(.ioError, "cannot write \(output): \(error.localizedDescription)")
                }
                Console.standardError.line("etl-job: wrote the mapping to \(output); run it with 'etl-job start --mapping \(output)'")
            } else {
                print(String(decoding: data, as: UTF8.self))
            }
        }
    }

    /// Reads every k-th document in source order (k = count / sample) and infers the mapping.
    /// A file is read twice: once to count its documents, once to sample them.
    private static func propose(_ settings: JobSettings, sample: Int) throws -> Data {
        let source = SourceCollection(
            database: settings.database ?? settings.sourceFile.map(Self.databaseName) ?? "",
            collection: settings.collection ?? settings.sourceFile.map(Self.collectionName) ?? "")
        let job = PipelineJob(mapping: Placeholder(source: source), settings: settings)
        let client = try job.connectSource()
        var total = try job.checkSource(client, allowEmpty: false) ?? Int64(sample)
        if settings.sourceFile != nil {
            let counting = try job.openSource(nil, after: nil)
            total = 0
            while try counting.next() != nil { total += 1 }
        }
        let stride = max(1, Int(total) / sample)
        let cursor = try job.openSource(client, after: nil)
        var inference = Inference()
        var seen = 0
        while inference.documents < sample, let document = try cursor.next() {
            if seen % stride == 0 { document.withUnsafeBytes { inference.add($0) } }
            seen += 1
            if seen % 10_000 == 0 { Console.standardError.status("init: read \(seen) documents, sampled \(inference.documents)") }
        }
        Console.standardError.endStatus()
        if inference.damagedCount > 0 {
            Console.standardError.line("etl-job: \(inference.damagedCount) sampled documents are damaged BSON and were left out of the inference "
                + "(a load sets them aside); the first: \(inference.damaged[0])")
        }
        let mapping = inference.mapping(source: source)
        let data = try JSONSerialization.data(withJSONObject: mapping, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        // What init writes must load: read it back as etl-job will.
        _ = try MappingFile(json: data)
        return data + Data("\n".utf8)
    }
}

extension Init {
    /// mongodump writes `<database>/<collection>.bson[.gz]`.
    static func collectionName(_ path: String) -> String {
        var name = URL(fileURLWithPath: path).lastPathComponent
        for suffix in [".gz", ".bson"] where name.hasSuffix(suffix) { name.removeLast(suffix.count) }
        return name
    }

    static func databaseName(_ path: String) -> String {
        URL(fileURLWithPath: path).deletingLastPathComponent().lastPathComponent
    }
}

/// A pipeline known only by its source (what `init` needs to check the collection).
private struct Placeholder: DocumentMapping {
    let source: SourceCollection
    var name: String { "init" }
    var tables: [TableSpec] { [] }
    func map(_ document: UnsafeRawBufferPointer, into rows: inout TableRows) throws(RejectReason) {}
}
