import Foundation
import Mongo
import Queue

/// A mongodump output file (`--source-file`): BSON documents one after another, plain or
/// gzip-compressed (told by the content). A position is `{"offset": n}`, the offset after
/// the last document read in the uncompressed stream.
///
/// The documents of a plain file are already durable where they are: the queue keeps each
/// batch's extent and checksum, and a worker reads the batch back with `pread`.
public final class BSONFileSource: Source {
    public let path: String
    public let collection: SourceCollection
    private let compressed: Bool?
    /// The offsets this source reads, for a partition of a job: from `lower` to before `upper`
    /// (the whole file: 0 and nil).
    let lower: UInt64
    let upper: UInt64?

    public convenience init(path: String, collection: SourceCollection) {
        self.init(path: path, collection: collection, lower: 0, upper: nil)
    }

    private init(path: String, collection: SourceCollection, lower: UInt64, upper: UInt64?) {
        self.path = path
        self.collection = collection
        compressed = BSONFileReader.isCompressed(path: path)
        (self.lower, self.upper) = (lower, upper)
    }

    public var description: String {
        lower == 0 && upper == nil ? "the source file \(path)" : "offsets \(lower) to \(upper.map(String.init) ?? "the end") of the source file \(path)"
    }

    /// `--source-file PATH`, as the command line names it.
    public struct Choice: SourceChoice {
        public let path: String

        public init(path: String) { self.path = path }

        public var option: String { "--source-file" }

        /// mongodump writes `<database>/<collection>.bson[.gz]`.
        public var impliedCollection: SourceCollection? {
            var name = URL(fileURLWithPath: path).lastPathComponent
            for suffix in [".gz", ".bson"] where name.hasSuffix(suffix) { name.removeLast(suffix.count) }
            return SourceCollection(database: URL(fileURLWithPath: path).deletingLastPathComponent().lastPathComponent, collection: name)
        }

        public func source(_ settings: JobSettings, collection: SourceCollection) -> any Source {
            BSONFileSource(path: path, collection: collection)
        }
    }

    /// What a job records: the file's absolute path, size and the SHA-256 of its first MiB.
    /// The same file moved is the same source; any other file is not.
    public struct Identity: SourceIdentity, Equatable {
        public static let kind = "file"
        public static let statusKeys = ["sourceFile", "sourceFileRead"]
        public var database: String
        public var collection: String
        public var sourceFile: File

        public struct File: Codable, Sendable, Equatable {
            public var path: String
            public var size: Int64
            public var headDigest: String
            /// gzip-compressed: offsets in its content do not compare with its size.
            public var compressed: Bool?
        }

        init(names: SourceCollection, file: File) {
            (database, collection, sourceFile) = (names.database, names.collection, file)
        }

        private enum Keys: String, CodingKey { case database, collection, sourceFile }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            database = try c.decode(String.self, forKey: .database)
            collection = try c.decode(String.self, forKey: .collection)
            // A run manifest of etl-job 0.3 names only the path of the file it planned to read.
            if let path = try? c.decode(String.self, forKey: .sourceFile) {
                sourceFile = File(path: path, size: -1, headDigest: "", compressed: nil)
            } else {
                sourceFile = try c.decode(File.self, forKey: .sourceFile)
            }
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(database, forKey: .database)
            try c.encode(collection, forKey: .collection)
            try c.encode(sourceFile, forKey: .sourceFile)
        }

        public var names: SourceCollection { SourceCollection(database: database, collection: collection) }

        public var location: String { "file \(sourceFile.path)" }

        /// A file's database and collection only label it, but a command naming others is told.
        public func differences(from given: Identity, locationNamed: Bool) -> [IdentityDifference] {
            var found = names.differences(from: given.names)
            let (recorded, other) = (sourceFile, given.sourceFile)
            if recorded.size != other.size {
                found.append(.init("source file size", "\(recorded.size) bytes (\(recorded.path))", "\(other.size) bytes (\(other.path))"))
            } else if recorded.headDigest != other.headDigest {
                found.append(.init("source file's first MiB (SHA-256)", "\(recorded.headDigest) (\(recorded.path))", "\(other.headDigest) (\(other.path))"))
            }
            return found
        }

        public func reopen(_ settings: JobSettings, collection: SourceCollection) -> any Source {
            BSONFileSource(path: sourceFile.path, collection: collection)
        }

        public func status(at position: [UInt8]?, extractionFinished: Bool) -> SourceStatus {
            var status = SourceStatus()
            let read = extractionFinished ? 1 : fractionRead(at: position)
            status.json = ["sourceFile": sourceFile.path, "sourceFileRead": read]
            status.fractionRead = read
            status.lines = ["source file  \(sourceFile.path)"]
            status.progress = read.map { "\(Int($0 * 100)) % of the file read" }
            return status
        }

        /// How much of a plain file the job has read, from the queue's position (an offset).
        func fractionRead(at position: [UInt8]?) -> Double? {
            guard sourceFile.compressed == false, sourceFile.size > 0, let offset = try? FilePosition.offset(position ?? FilePosition.encode(0)) else {
                return nil
            }
            return min(1, Double(offset) / Double(sourceFile.size))
        }
    }

    public func identity() throws -> any SourceIdentity {
        let file = try identify()
        return Identity(names: collection, file: .init(path: path, size: file.size, headDigest: file.headDigest, compressed: compressed))
    }

    private func identify() throws -> (size: Int64, headDigest: String) {
        guard FileManager.default.fileExists(atPath: path) else {
            throw JobError(.noInput, "the source file \(path) does not exist")
        }
        do {
            return try BSONFileReader.identify(path: path)
        } catch {
            throw JobError(.noInput, "\(error)")
        }
    }

    /// The file must exist, be readable and, unless `allowEmpty`, hold a document (exit 66).
    /// Its document count is not known before it is read.
    public func check(allowEmpty: Bool) throws -> Int64? {
        let size = try identify().size
        let first: [UInt8]?
        do {
            first = try BSONFileReader(path: path).next()
        } catch {
            throw JobError(.dataError, "\(error)")
        }
        if first == nil && !allowEmpty {
            throw JobError(.noInput, "the source file \(path) holds no document (\(size) bytes); add --allow-empty to run on it anyway")
        }
        return first == nil ? 0 : nil
    }

    public func checkExists() throws {
        _ = try identify()
    }

    public func open(after position: [UInt8]?, batchSize: Int32) throws -> any DocumentCursor {
        do {
            return Cursor(try BSONFileReader(path: path, offset: try FilePosition.offset(position, start: lower)), upper: upper)
        } catch let error as BSONFileError {
            throw JobError(.dataError, "\(error)")
        }
    }

    /// In a file, the position after a batch is the offset after its bytes.
    public func position(after batch: [[UInt8]], previous: [UInt8]?) throws -> [UInt8] {
        FilePosition.encode(try FilePosition.offset(previous, start: lower) + UInt64(batch.reduce(0) { $0 + $1.count }))
    }

    public var keepsDocuments: Bool { compressed == false }

    public func documents(from start: [UInt8]?, to end: [UInt8], batch: UInt64, check: ([UInt8]) throws -> Void) throws -> [UInt8] {
        let (first, last) = (try FilePosition.offset(start, start: lower), try FilePosition.offset(end))
        guard last > first else {
            throw JobError(.ioError, "batch \(batch) of the queue has an empty extent in \(description); \(JobError.untrustedState)")
        }
        let payload: [UInt8]
        do {
            payload = try FileRange.read(path, offset: first, count: Int(last - first))
            try check(payload)
        } catch let error as BSONFileError {
            throw JobError(.dataError, "\(error); the job cannot finish from this file: start again with 'etl-job start --fresh'")
        } catch let damaged as DamagedBatch {
            throw JobError(.dataError, "the source file \(path) changed since the job read it: the documents of batch \(batch) "
                + "(offsets \(first) to \(last)) no longer match what was queued (\(damaged.problem)); start again with 'etl-job start --fresh'")
        }
        return payload
    }

    /// A file's documents; a file that ends inside one, or holds something else, stops the
    /// job (exit 65) naming the offset: what was read before it stays loaded.
    private final class Cursor: DocumentCursor {
        let reader: BSONFileReader
        /// The offset where this source's range ends (a partition's), if it does before the file's end.
        let upper: UInt64?
        private var moved = false

        init(_ reader: BSONFileReader, upper: UInt64?) { (self.reader, self.upper) = (reader, upper) }

        var position: [UInt8]? { moved ? FilePosition.encode(reader.offset) : nil }

        func next() throws -> [UInt8]? {
            if let upper, reader.offset >= upper { return nil }
            do {
                let document = try reader.next()
                moved = moved || document != nil
                return document
            } catch let error as BSONFileError {
                throw JobError(.dataError, "\(error); what was read before it is loaded. The job is tied to the file as it is (its size and first MiB): "
                    + "a whole copy is another source, loaded as a new job ('etl-job start --fresh', with --partitions for a job split into partitions)")
            }
        }
    }
}

/// A position in a mongodump file, as the queue keeps it: the BSON document `{"offset": n}`.
enum FilePosition {
    static func encode(_ offset: UInt64) -> [UInt8] {
        var bytes: [UInt8] = [21, 0, 0, 0, 0x12] + Array("offset".utf8) + [0]
        withUnsafeBytes(of: Int64(offset).littleEndian) { bytes += $0 }
        return bytes + [0]
    }

    /// The offset a position holds; `start` for none (the file's, or a partition's, start).
    static func offset(_ position: [UInt8]?, start: UInt64 = 0) throws -> UInt64 {
        guard let position else { return start }
        guard position.count == 21, position[4] == 0x12 else {
            throw JobError(.ioError, "the queue's position is not a file offset; \(JobError.untrustedState)")
        }
        return UInt64(position.withUnsafeBytes { Int64(littleEndian: $0.loadUnaligned(fromByteOffset: 12, as: Int64.self)) })
    }
}

extension BSONFileSource {
    /// Byte ranges of about equal size, each starting at a document: the file is walked from
    /// its start by the documents' length prefixes (a compressed file's content is
    /// decompressed to walk it). Each range's documents are counted on the way. Where the file
    /// is damaged the walk stops: the rest is the last range's, whose worker reports the damage.
    public func partitions(_ count: Int) throws -> (ranges: [SourcePartition], method: String) {
        let total = compressed == true ? nil : try identify().size
        var starts: [UInt64] = [0]
        var counts: [Int64] = [0]
        var lengths: [Int] = []
        var damaged = false
        if let total {
            // A plain file: each document's length and last byte, not its every byte.
            do {
                damaged = try !BSONFileReader.walkPlainFile(path) { offset, _ in
                    if starts.count < count, offset >= UInt64(total) * UInt64(starts.count) / UInt64(count), counts[counts.count - 1] > 0 {
                        starts.append(offset)
                        counts.append(0)
                    }
                    counts[counts.count - 1] += 1
                }
            } catch { throw JobError(.noInput, "\(error)") }
        } else {
            // A compressed file's content size is unknown before it is read: its documents'
            // offsets are gathered first and cut by the total.
            let reader: BSONFileReader
            do { reader = try BSONFileReader(path: path) } catch { throw JobError(.noInput, "\(error)") }
            while true {
                let length: Int?
                do { length = try reader.skip() } catch {
                    damaged = true
                    break
                }
                guard let length else { break }
                lengths.append(length)
            }
        }
        if total == nil {
            let size = lengths.reduce(UInt64(0)) { $0 + UInt64($1) }
            var offset: UInt64 = 0
            for length in lengths {
                if starts.count < count, offset >= size * UInt64(starts.count) / UInt64(count), counts[counts.count - 1] > 0 {
                    starts.append(offset)
                    counts.append(0)
                }
                counts[counts.count - 1] += 1
                offset += UInt64(length)
            }
        }
        let ranges = starts.indices.map { i in
            SourcePartition(lower: i == 0 ? nil : FilePosition.encode(starts[i]), upper: i + 1 < starts.count ? FilePosition.encode(starts[i + 1]) : nil,
                            documents: damaged && i == starts.count - 1 ? nil : counts[i])
        }
        return (ranges, "byte ranges of the file, each starting at a document, found by walking the documents' length prefixes")
    }

    public func restricted(to partition: SourcePartition) throws -> any Source {
        BSONFileSource(path: path, collection: collection, lower: try FilePosition.offset(partition.lower),
                       upper: try partition.upper.map { try FilePosition.offset($0) })
    }

    /// The file's size (uncompressed documents are not counted before they are read).
    public var sizeDescription: String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return String(format: "not counted; the file is %.1f MB", Double(info.st_size) / 1_048_576) + (compressed == true ? " compressed" : "")
    }

    /// The unique indexes mongodump recorded beside the file (`<collection>.metadata.json`, or
    /// `.metadata.json.gz` beside a `.bson.gz`); none without that file.
    public func uniqueIndexes() throws -> [UniqueIndex] {
        let base = path.hasSuffix(".bson.gz") ? String(path.dropLast(8)) : path.hasSuffix(".bson") ? String(path.dropLast(5)) : path
        let candidates = [base + ".metadata.json", base + ".metadata.json.gz"]
        guard let metadata = candidates.first(where: FileManager.default.fileExists(atPath:)) else { return [] }
        guard let data = BSONFileReader.contents(of: metadata) else {
            throw JobError(.noInput, "cannot read \(metadata), the indexes mongodump recorded beside \(path)")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let list = object["indexes"] as? [[String: Any]] else {
            throw JobError(.dataError, "\(metadata) is not the metadata mongodump writes (a JSON object with \"indexes\")")
        }
        return list.compactMap { index in
            let unique = (index["unique"] as? Bool) ?? false
            guard unique, let key = index["key"] as? [String: Any] else { return nil }
            // JSON objects keep no member order here: a compound key's fields sorted (a UNIQUE
            // constraint on a set of columns means the same in any order).
            let fields = key.keys.sorted()
            guard fields != ["_id"] else { return nil }
            return UniqueIndex(name: index["name"] as? String ?? fields.joined(separator: "_"), fields: fields,
                               partial: index["partialFilterExpression"] != nil)
        }
    }
}
