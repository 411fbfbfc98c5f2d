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
        guard connection.source.namesAnotherSource || (connection.source.database != nil && connection.source.collection != nil) else {
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
                // A file is named again when the mapping runs: a mapping names a collection, not a file.
                let file = connection.source.sourceFile.map { " --source-file \($0)" } ?? ""
                Console.standardError.line("etl-job: wrote the mapping to \(output); run it with 'etl-job start --mapping \(output)\(file)'")
            } else {
                print(String(decoding: data, as: UTF8.self))
            }
        }
    }

    /// Reads every k-th document in source order (k = count / sample) and infers the mapping.
    /// A source that does not know its count (a file) is read twice: once to count its
    /// documents, once to sample them.
    private static func propose(_ settings: JobSettings, sample: Int) throws -> Data {
        let implied = settings.source.choice?.impliedCollection
        let names = SourceCollection(
            database: settings.source.database ?? implied?.database ?? "",
            collection: settings.source.collection ?? implied?.collection ?? "")
        let source = SourceKinds.source(settings, collection: names)
        var total: Int64
        if let known = try source.check(allowEmpty: false) {
            total = known
        } else {
            let counting = try source.open(after: nil, batchSize: 1_000)
            total = 0
            while try counting.next() != nil { total += 1 }
        }
        let stride = max(1, Int(total) / sample)
        let cursor = try source.open(after: nil, batchSize: 1_000)
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
        guard inference.sawIds || inference.documents == 0 else {
            throw JobError(.dataError, "none of the \(inference.documents) documents sampled from \(source.description) has an _id "
                + "(mongodump writes such files for the oplog and some system collections); etl-job keys every document's rows by its _id, "
                + "so it cannot load them: give each document an _id (mongorestore into MongoDB gives each one), then run init on that collection")
        }
        let mapping = inference.mapping(source: names, uniqueIndexes: try source.uniqueIndexes())
        let data = Data(MappingText.render(mapping).utf8)
        // What init writes must load: read it back as etl-job will. A failure is init's own fault.
        do {
            _ = try MappingFile(json: data)
        } catch {
            throw JobError(.software, "init proposed a mapping it cannot read back (\(error)); this is a bug in etl-job, please report it with the source's first documents")
        }
        return data
    }
}
