import Mongo
import Testing
@testable import DurableETL

/// Changes as the queue holds them, and which of several to one document count.
@Suite struct ChangeTests {
    static func document(_ id: Int32, _ title: String) -> [UInt8] {
        let doc = BSONDocument()
        doc.writer.append("_id", id)
        doc.writer.append("title", title)
        return doc.bytes
    }

    static func id(_ id: Int32) -> [UInt8] {
        let doc = BSONDocument()
        doc.writer.append("_id", id)
        return doc.bytes
    }

    @Test func anEnvelopeKeepsTheNewVersionInPlaceWithItsPositionAndTime() throws {
        let version = Self.document(7, "seven")
        let position = Self.id(99)
        let change = try #require(Change.replace(version, position: position, time: 1_700_000_000))
        let bytes = change.encoded
        let parsed = try #require(bytes.withUnsafeBytes(Change.parse))
        #expect(parsed.mode == .replace && parsed.time == 1_700_000_000)
        #expect(Array(bytes[try #require(parsed.document)]) == version, "the new version lies whole inside the envelope")
        #expect(Array(bytes[try #require(parsed.position)]) == position)
        #expect(bytes.withUnsafeBytes(BSONSequence.displayId) == "7", "the envelope names the document's _id")
        let deletion = Change(mode: .delete, id: Self.id(7)).encoded
        #expect(deletion.withUnsafeBytes(Change.parse)?.mode == .delete)
        #expect(deletion.withUnsafeBytes(Change.parse)?.document == nil)
        let quiet = Change(mode: nil, id: nil, position: position).encoded
        let none = try #require(quiet.withUnsafeBytes(Change.parse))
        #expect(none.mode == nil && none.position != nil, "a quiet stream's position changes no row")
    }

    @Test func anythingElseIsNotAChange() {
        for bytes in [Self.document(1, "a plain document"), Change(mode: .append, id: Self.id(1)).encoded, Change(mode: .replace, id: Self.id(1)).encoded] {
            #expect(bytes.withUnsafeBytes(Change.parse) == nil)
        }
    }

    @Test func ofSeveralChangesToOneDocumentInABatchTheLastCountsInTheOrderOfTheLast() {
        let a1 = Change.replace(Self.document(1, "a1"))!.encoded
        let b1 = Change.replace(Self.document(2, "b1"))!.encoded
        let a2 = Change(mode: .delete, id: Self.id(1)).encoded
        let c1 = Change.replace(Self.document(3, "c1"))!.encoded
        let b2 = Change.replace(Self.document(2, "b2"))!.encoded
        let quiet = Change(mode: nil, id: nil, position: Self.id(5)).encoded
        #expect(Change.latestPerDocument([a1, b1, a2, quiet, c1, b2]) == [a2, c1, b2])
        #expect(Change.latestPerDocument([quiet, quiet]) == [quiet], "a batch of positions only keeps one, to commit it")
    }
}
