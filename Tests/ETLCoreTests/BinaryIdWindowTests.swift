import Testing
@testable import Mongo

/// The binary `_id`s a scan keeps, weighed in MongoDB's order (length, subtype, bytes)
/// whatever order the server gave them in.
@Suite struct BinaryIdWindowTests {
    static func document(binary bytes: [UInt8], subtype: UInt8) -> [UInt8] {
        let document = BSONDocument()
        document.writer.append("_id", binary: bytes, subtype: subtype)
        return document.bytes
    }

    static func document(number: Int32) -> [UInt8] {
        let document = BSONDocument()
        document.writer.append("_id", number)
        return document.bytes
    }

    static func id(_ bytes: [UInt8], _ subtype: UInt8) -> BinaryId {
        Self.document(binary: bytes, subtype: subtype).withUnsafeBytes { BinaryId(idOf: $0)! }
    }

    static func keeps(_ window: inout BinaryIdWindow, _ document: [UInt8]) throws -> Bool {
        try document.withUnsafeBytes { try window.keeps($0) }
    }

    @Test func mongoDBOrdersBinaryIdsByLengthThenSubtypeThenBytes() {
        #expect(Self.id([9], 128) < Self.id([0, 0], 0))
        #expect(Self.id([9, 9], 0) < Self.id([0, 0], 4))
        #expect(Self.id([1, 2], 4) < Self.id([1, 3], 4))
    }

    @Test func aRangeKeepsItsBinaryIdsInMongoDBsOrderAndEveryOtherType() throws {
        var window = BinaryIdWindow(from: Self.id([5, 0], 0), before: Self.id([5, 0], 5))
        // In the bundled server's order (length, bytes): subtype 4 before subtype 0 here.
        let given: [([UInt8], UInt8, Bool)] = [([7], 0, false), ([1, 0], 4, true), ([4, 9], 0, false), ([6, 0], 0, true), ([1, 1], 5, true), ([5, 1], 5, false), ([0, 0, 0], 0, false)]
        for (bytes, subtype, kept) in given {
            #expect(try Self.keeps(&window, Self.document(binary: bytes, subtype: subtype)) == kept, "\(bytes) subtype \(subtype)")
        }
        #expect(try Self.keeps(&window, Self.document(number: 3)), "other types are the server's to bound")
    }

    @Test func aPositionThatExistsIsSkippedThroughInTheServersOrder() throws {
        var window = BinaryIdWindow(skipThrough: Self.id([5, 0], 4), positionExists: true)
        // The position comes after a document MongoDB sorts after it: both were read before.
        #expect(try !Self.keeps(&window, Self.document(binary: [6, 0], subtype: 0)))
        #expect(try !Self.keeps(&window, Self.document(binary: [5, 0], subtype: 4)))
        #expect(try Self.keeps(&window, Self.document(binary: [1, 0], subtype: 0)), "after the position: read, whatever its order")
    }

    @Test func aPositionDeletedAfterTheScanOpenedMakesItOpenAgain() throws {
        var window = BinaryIdWindow(skipThrough: Self.id([5, 0], 4), positionExists: true)
        #expect(try !Self.keeps(&window, Self.document(binary: [6, 0], subtype: 0)))
        #expect(throws: MongoError.self) { try Self.keeps(&window, Self.document(number: 1)) }
        let ended = BinaryIdWindow(skipThrough: Self.id([5, 0], 4), positionExists: true)
        #expect(throws: MongoError.self) { try ended.checkPositionPassed() }
    }

    @Test func aDeletedPositionIsPassedInMongoDBsOrderOrTheScanStops() throws {
        var consistent = BinaryIdWindow(skipThrough: Self.id([5, 0], 4))
        #expect(try !Self.keeps(&consistent, Self.document(binary: [9, 9], subtype: 0)))
        #expect(try Self.keeps(&consistent, Self.document(binary: [0, 0], subtype: 5)))
        var disagreeing = BinaryIdWindow(skipThrough: Self.id([5, 0], 4))
        #expect(try Self.keeps(&disagreeing, Self.document(binary: [6, 0], subtype: 4)))
        #expect(throws: MongoError.self, "a binary _id out of MongoDB's order") {
            try Self.keeps(&disagreeing, Self.document(binary: [1, 0], subtype: 0))
        }
    }
}
