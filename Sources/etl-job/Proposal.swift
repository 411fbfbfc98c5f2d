import DurableETL
import ETLCore
import Foundation
import Mappings

/// Mappings inferred from a sample of a collection's documents: what `init` writes, and what
/// `start` runs for a collection of a whole database that no mapping file describes.
enum Proposal {
    /// Reads every k-th document in source order (k = count / sample) and infers the mapping.
    /// A source that does not know its count (a file) is read twice: once to count its
    /// documents, once to sample them. `takenTables`: names other pipelines of the job use.
    static func propose(_ source: any Source, names: SourceCollection, sample: Int, takenTables: Set<String> = []) throws -> Data {
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
        let label = "\(names.database).\(names.collection)"
        while inference.documents < sample, let document = try cursor.next() {
            if seen % stride == 0 { document.withUnsafeBytes { inference.add($0) } }
            seen += 1
            if seen % 10_000 == 0 { Console.standardError.status("init \(label): read \(seen) documents, sampled \(inference.documents)") }
        }
        Console.standardError.endStatus()
        if inference.damagedCount > 0 {
            Console.standardError.line("etl-job: \(inference.damagedCount) sampled documents of \(label) are damaged BSON and were left out of the inference "
                + "(a load sets them aside); the first: \(inference.damaged[0])")
        }
        guard inference.sawIds || inference.documents == 0 else {
            throw JobError(.dataError, "none of the \(inference.documents) documents sampled from \(source.description) has an _id "
                + "(mongodump writes such files for the oplog and some system collections); etl-job keys every document's rows by its _id, "
                + "so it cannot load them: give each document an _id (mongorestore into MongoDB gives each one), then run init on that collection")
        }
        let mapping = inference.mapping(source: names, uniqueIndexes: try source.uniqueIndexes(), takenTables: takenTables)
        let data = Data(MappingText.render(mapping).utf8)
        // What init writes must load: read it back as etl-job will. A failure is init's own fault.
        do {
            _ = try MappingFile(json: data)
        } catch {
            throw JobError(.software, "init proposed a mapping it cannot read back (\(error)); this is a bug in etl-job, please report it with the source's first documents")
        }
        return data
    }

    /// The collections a whole-database command moves: the dump's (`--source-dump`), else
    /// those of `database` on the MongoDB server; `--collection` keeps one.
    static func collections(_ settings: JobSettings, database: String?, only collection: String?) throws -> [SourceCollection] {
        var found: [SourceCollection]
        if let dump = (settings.source.choice as? BSONDumpDirectory.Choice)?.dump {
            found = dump.collections()
            guard !found.isEmpty else { throw JobError(.noInput, "the dump \(dump.databaseDirectory) holds no collection file") }
        } else {
            guard let database else { throw JobError(.usage, "a whole database needs --database (or --source-dump DIR)") }
            found = try MongoCollectionSource.collections(url: settings.mongoURL, database: database)
            guard !found.isEmpty else { throw JobError(.noInput, "the database \(database) holds no collection") }
        }
        if let collection {
            found = found.filter { $0.collection == collection }
            guard !found.isEmpty else { throw JobError(.noInput, "the source holds no collection \(collection)") }
        }
        return found
    }

    /// One mapping per collection, each with tables no other of them (nor `taken`) uses. An
    /// empty collection is skipped, and said so: it has nothing to infer a mapping from.
    static func proposeAll(_ settings: JobSettings, _ collections: [SourceCollection], sample: Int, taken: Set<String> = [])
        throws -> [(names: SourceCollection, data: Data, mapping: FileMapping)] {
        var tables = taken
        var pipelines = Set<String>()
        var proposed: [(names: SourceCollection, data: Data, mapping: FileMapping)] = []
        for names in collections {
            let source = SourceKinds.source(settings, collection: names)
            if try source.check(allowEmpty: true) == 0 {
                Console.standardError.line("etl-job: \(source.description) is empty; no mapping is inferred for it")
                continue
            }
            let data = try propose(source, names: names, sample: sample, takenTables: tables)
            var mapping = FileMapping(try MappingFile(json: data))
            // Two collections whose names make one pipeline name (a.b and a_b) get two.
            if !pipelines.insert(mapping.name).inserted {
                var n = 2
                while pipelines.contains("\(mapping.name)_\(n)") { n += 1 }
                var object = try JSONSerialization.jsonObject(with: data) as! [String: Any]
                object["pipeline"] = "\(mapping.name)_\(n)"
                let renamed = Data(MappingText.render(object).utf8)
                mapping = FileMapping(try MappingFile(json: renamed))
                pipelines.insert(mapping.name)
                proposed.append((names, renamed, mapping))
            } else {
                proposed.append((names, data, mapping))
            }
            tables.formUnion(mapping.tables.map(\.name))
        }
        return proposed
    }
}
