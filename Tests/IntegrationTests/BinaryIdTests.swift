import Foundation
@testable import Mongo
import Testing
import TestSupport

/// Binary `_id`s (UUIDs, hashes) sort by length, then subtype, then bytes in MongoDB; the
/// bundled wire server sorts them by length and bytes and compares ranges by bytes alone. A
/// scan after a position or within a range must keep exactly its documents on either server.
@Suite struct BinaryIdTests {
    /// 60 binary `_id`s of lengths 1, 2 and 16 in five subtypes (several of one length in
    /// different subtypes, where the two orders disagree), then integers and strings.
    static func collection(_ sandbox: Sandbox) throws -> MongoCollection {
        let collection = sandbox.mongo.collection(database: sandbox.mongoDatabase, name: "blobs")
        let subtypes: [UInt8] = [0, 3, 4, 5, 128]
        try collection.insertMany((0..<80).map { i in
            let document = BSONDocument()
            switch i {
            case ..<60:
                let length = [1, 2, 16][i % 3]
                document.writer.append("_id", binary: (0..<length).map { UInt8(truncatingIfNeeded: (i * 37 + $0 * 11) ^ 0x5a) }, subtype: subtypes[i % 5])
            case ..<70: document.writer.append("_id", Int32(i))
            default: document.writer.append("_id", "s\(i)")
            }
            document.writer.append("n", Int32(i))
            return document
        })
        return collection
    }

    /// 60 UUIDs (subtype 4, 16 bytes): an order every server agrees on.
    static func uuids(_ sandbox: Sandbox) throws -> MongoCollection {
        let collection = sandbox.mongo.collection(database: sandbox.mongoDatabase, name: "uuids")
        try collection.insertMany((0..<60).map { i in
            let document = BSONDocument()
            document.writer.append("_id", binary: (0..<16).map { UInt8(truncatingIfNeeded: (i * 97 + $0 * 13) ^ 0xa5) }, subtype: 4)
            document.writer.append("n", Int32(i))
            return document
        })
        return collection
    }

    static func numbers(_ cursor: MongoCursor) throws -> [Int32] {
        var numbers: [Int32] = []
        while let document = try cursor.next() {
            var it = BSONIterator(document: document)!
            guard it.find("n"), let n = it.integer else {
                Issue.record("a document without its number")
                continue
            }
            numbers.append(Int32(n))
        }
        return numbers
    }

    static func idElement(of n: Int32, in collection: MongoCollection) throws -> [UInt8] {
        let cursor = try collection.scanById(afterIdElement: nil, batchSize: 100)
        while let document = try cursor.next() {
            var it = BSONIterator(document: document)!
            _ = it.find("n")
            if it.integer == Int64(n) { return BSONSequence.idElement(document)! }
        }
        Issue.record("no document \(n)")
        return []
    }

    @Test func rangesMeetingAtBinaryIdsHoldEveryDocumentOnce() throws {
        let sandbox = try Sandbox()
        let collection = try Self.collection(sandbox)
        let all = try Self.numbers(collection.scanById(afterIdElement: nil, batchSize: 100))
        #expect(Set(all).count == 80)
        // Bounds at every fifth binary _id of the server's order, in MongoDB's order, with a
        // number and a string among them: the ranges between them cover the collection once.
        let buckets = try collection.idBuckets(9)
        #expect(buckets.count == 9, "\(buckets.count)")
        let bounds = buckets.dropFirst().map(\.lowest)
        var seen: [Int32] = []
        for i in 0...bounds.count {
            seen += try Self.numbers(collection.scanById(afterIdElement: nil, from: i == 0 ? nil : bounds[i - 1],
                                                          before: i == bounds.count ? nil : bounds[i], batchSize: 7))
        }
        #expect(seen.sorted() == all.sorted(), "every document in exactly one range")
    }

    @Test func theBundledServerIsFoundToOrderBinariesItsOwnWay() throws {
        let sandbox = try Sandbox()
        let collection = try Self.collection(sandbox)
        let started = ContinuousClock.now
        #expect(try !BinaryOrder.probe(collection), "it answers, and sorts by length and bytes, and compares ranges by bytes")
        #expect(!collection.ordersBinaryLikeMongoDB())
        #expect(ContinuousClock.now - started < .seconds(1), "four literal values, not the collection")
        // MongoDB's answers, and the bundled server's, to the same two questions.
        let (p, q, r, s) = (BinaryOrder.p, BinaryOrder.q, BinaryOrder.r, BinaryOrder.s)
        #expect(BinaryOrder.isMongoDBs(sorted: [p, q, s, r], between: [s]))
        #expect(!BinaryOrder.isMongoDBs(sorted: [p, q, r, s], between: []))
    }

    /// Where the server bounds binary _ids itself (as MongoDB does, from the `_id` index): on
    /// UUIDs, whose order every server agrees on, ranges and a resume read each document once.
    @Test func rangesOfUUIDsBoundedOnTheServerHoldEveryDocumentOnce() throws {
        let sandbox = try Sandbox()
        let collection = try Self.uuids(sandbox)
        let all = try Self.numbers(collection.scanById(afterIdElement: nil, batchSize: 100))
        let bounds = try collection.idBuckets(4).dropFirst().map(\.lowest)
        var seen: [Int32] = []
        for i in 0...bounds.count {
            seen += try Self.numbers(collection.scanById(afterIdElement: nil, from: i == 0 ? nil : bounds[i - 1],
                                                          before: i == bounds.count ? nil : bounds[i], batchSize: 7, binaryOnServer: true))
        }
        #expect(seen == all, "in order, each once")
        let position = try Self.idElement(of: all[20], in: collection)
        #expect(try Self.numbers(collection.scanById(afterIdElement: position, batchSize: 5, binaryOnServer: true)) == Array(all[21...]))
    }

    @Test func aScanAfterABinaryPositionReadsWhatFollowsItInTheServersOrder() throws {
        let sandbox = try Sandbox()
        let collection = try Self.collection(sandbox)
        let all = try Self.numbers(collection.scanById(afterIdElement: nil, batchSize: 100))
        for cut in [0, 7, 23, 41, 59] where all[cut] < 60 {
            let position = try Self.idElement(of: all[cut], in: collection)
            let rest = try Self.numbers(collection.scanById(afterIdElement: position, batchSize: 5))
            #expect(rest == Array(all[(cut + 1)...]), "after the document at \(cut) of the server's order")
        }
    }

    /// The position's document deleted since: where the server sorts binaries as MongoDB does
    /// the scan goes on after it; where not (the bundled server, on these _ids), it stops with
    /// an error rather than skip or repeat a document.
    @Test func aDeletedBinaryPositionIsFollowedExactlyOrRefused() throws {
        let sandbox = try Sandbox()
        let collection = try Self.collection(sandbox)
        let all = try Self.numbers(collection.scanById(afterIdElement: nil, batchSize: 100))
        let cut = 30
        let position = try Self.idElement(of: all[cut], in: collection)
        let delete = BSONDocument()
        delete.writer.append("delete", "blobs")
        delete.writer.appendArray("deletes") { d in
            d.appendDocument("0") { one in
                one.appendDocument("q") { q in
                    position.withUnsafeBytes { var it = BSONIterator(document: $0)!; _ = it.next(); it.append(to: q, as: "_id") }
                }
                one.append("limit", Int32(1))
            }
        }
        try sandbox.mongo.runCommand(delete, database: sandbox.mongoDatabase)
        #expect(try Self.numbers(collection.scanById(afterIdElement: nil, batchSize: 100)).count == 79)
        do {
            let rest = try Self.numbers(collection.scanById(afterIdElement: position, batchSize: 5))
            #expect(rest == Array(all[(cut + 1)...]))
        } catch let error as MongoError {
            #expect(error.message.contains("start again with 'etl-job start --fresh'"), "\(error)")
        }
    }
}
