import ArgumentParser
import DurableETL
import ETLCore
import Foundation
import Mappings

/// Proposes a mapping file for a collection from a sample of its documents.
struct Init: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sample a collection and print (or write) a mapping file for it, with the evidence for each choice.",
        discussion: "Run the mapping with 'etl-job start --mapping FILE'. Edit it first as you like: rename tables and columns, drop fields, change types, choose jsonb for any subtree.")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: ArgumentHelp("Documents to sample, spread over the collection.", valueName: "n"))
    var sample = 1_000

    @Option(help: ArgumentHelp("Write the mapping here (refused if the file exists) instead of printing it.", valueName: "file"))
    var output: String?

    func validate() throws {
        guard sample > 0 else { throw ValidationError("--sample must be at least 1") }
        guard connection.source.database != nil, connection.source.collection != nil else {
            throw ValidationError("init needs --database and --collection: the collection to describe")
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

    /// Reads every k-th document in `_id` order (k = count / sample) and infers the mapping.
    private static func propose(_ settings: JobSettings, sample: Int) throws -> Data {
        let source = SourceCollection(database: settings.database!, collection: settings.collection!)
        let job = PipelineJob(mapping: Placeholder(source: source), settings: settings)
        let client = try job.connectMongo()
        let total = try job.checkSource(client, allowEmpty: false) ?? Int64(sample)
        let stride = max(1, Int(total) / sample)
        let cursor = try client.collection(database: source.database, name: source.collection).scanById(afterIdElement: nil, batchSize: 1_000)
        var inference = Inference()
        var seen = 0
        while inference.documents < sample, let document = try cursor.next() {
            if seen % stride == 0 { inference.add(document) }
            seen += 1
            if seen % 10_000 == 0 { Console.standardError.status("init: read \(seen) documents, sampled \(inference.documents)") }
        }
        Console.standardError.endStatus()
        let mapping = inference.mapping(source: source)
        let data = try JSONSerialization.data(withJSONObject: mapping, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        // What init writes must load: read it back as etl-job will.
        _ = try MappingFile(json: data)
        return data + Data("\n".utf8)
    }
}

/// A pipeline known only by its source (what `init` needs to check the collection).
private struct Placeholder: DocumentMapping {
    let source: SourceCollection
    var name: String { "init" }
    var tables: [TableSpec] { [] }
    func map(_ document: UnsafeRawBufferPointer, into rows: inout TableRows) throws(RejectReason) {}
}
