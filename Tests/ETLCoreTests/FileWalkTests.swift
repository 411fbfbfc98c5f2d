import Foundation
import Mongo
import Testing
import UsersFixtures

/// The plan's walk over a plain mongodump file (a document's length and last byte only)
/// finds what reading every byte finds: the same documents, and damage at the same place.
@Suite struct FileWalkTests {
    static func file(_ users: Int) throws -> (path: String, bytes: [UInt8]) {
        let path = NSTemporaryDirectory() + "etl-walk-" + UUID().uuidString + ".bson"
        let writer = try BSONFileWriter(path: path, compressed: false)
        let generator = UserGenerator(seed: 42)
        for id in 1...users { try generator.document(id: Int64(id)).withUnsafeBytes { try writer.write($0) } }
        try writer.close()
        return (path, Array(try Data(contentsOf: URL(fileURLWithPath: path))))
    }

    /// Every document `skip` reads, with its offset, and whether it stopped on damage.
    static func skipped(_ path: String) throws -> (documents: [[Int]], damaged: Bool) {
        let reader = try BSONFileReader(path: path)
        var documents: [[Int]] = []
        do {
            while let length = try reader.skip() { documents.append([Int(reader.offset) - length, length]) }
            return (documents, false)
        } catch {
            return (documents, true)
        }
    }

    static func walked(_ path: String) throws -> (documents: [[Int]], damaged: Bool) {
        var documents: [[Int]] = []
        let whole = try BSONFileReader.walkPlainFile(path) { offset, length in documents.append([Int(offset), length]) }
        return (documents, !whole)
    }

    @Test func aWholeFileAndEveryKindOfDamageAreFoundAsReadingEveryByteFindsThem() throws {
        let (path, bytes) = try Self.file(30)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let whole = try Self.walked(path)
        #expect(whole.documents.count == 30 && !whole.damaged)
        #expect(whole.documents == (try Self.skipped(path)).documents)

        let second = whole.documents[1][0], third = whole.documents[2][0]
        var variants: [(String, [UInt8])] = [
            ("empty", []),
            ("three bytes", Array(bytes.prefix(3))),
            ("cut inside a document", Array(bytes.prefix(third - 100))),
            ("two bytes after the last document", bytes + [0, 0]),
        ]
        var unterminated = bytes
        unterminated[third - 1] = 7  // the second document's final NUL
        variants.append(("a document without its NUL", unterminated))
        var tooLong = bytes
        tooLong.replaceSubrange(second..<second + 4, with: withUnsafeBytes(of: UInt32(bytes.count).littleEndian, Array.init))
        variants.append(("a length past the end", tooLong))
        var tooShort = bytes
        tooShort.replaceSubrange(second..<second + 4, with: [4, 0, 0, 0])
        variants.append(("a length under 5", tooShort))
        for (name, content) in variants {
            try Data(content).write(to: URL(fileURLWithPath: path))
            let walked = try Self.walked(path), skipped = try Self.skipped(path)
            #expect(walked.documents == skipped.documents, "\(name)")
            #expect(walked.damaged == skipped.damaged, "\(name): walked \(walked.damaged), skipped \(skipped.damaged)")
        }
    }
}
