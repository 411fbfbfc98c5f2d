import Foundation
import Mongo
import Testing
import DurableETL
import Users
import UsersFixtures

/// A document damaged inside (its framing intact) is never read as a shorter document.
@Suite struct DamagedBSONTests {
    /// A generated user's bytes and where `pattern` (a type byte, a key, its NUL) starts in them.
    static func user(_ id: Int64 = 7, locating pattern: [UInt8]) -> (bytes: [UInt8], at: Int) {
        let bytes = UserGenerator(seed: 42).document(id: id).bytes
        let at = (0...(bytes.count - pattern.count)).first { Array(bytes[$0..<($0 + pattern.count)]) == pattern }!
        return (bytes, at)
    }

    static func element(_ type: UInt8, _ key: String) -> [UInt8] { [type] + Array(key.utf8) + [0] }

    @Test func everyGeneratedDocumentIsWhole() {
        let generator = UserGenerator(seed: 42)
        for id in Int64(1)...200 {
            #expect(generator.document(id: id).withUnsafeBytes { BSON.damage(in: $0) } == nil)
        }
    }

    /// The one-pass check answers "whole" only where libbson's walk finds nothing: every
    /// single-byte change and truncation of generated users (a deterministic sample of
    /// 40,000), and every generated user is whole by the fast pass (so it is the one used).
    @Test func theFastCheckNeverCallsWholeWhatLibbsonFindsDamaged() {
        let generator = UserGenerator(seed: 42)
        var random = SplitMix64(seed: 7)
        var whole = 0, damaged = 0
        for id in Int64(1)...200 {
            let original = generator.document(id: id).bytes
            #expect(original.withUnsafeBytes { BSON.isCertainlyWhole($0) }, "user \(id) takes the fast path")
            for _ in 0..<200 {
                var bytes = original
                switch random.next() % 3 {
                case 0: bytes[Int(random.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: random.next())
                case 1: bytes[Int(random.next() % UInt64(bytes.count))] ^= 1 << UInt8(random.next() % 8)
                default:  // a length made a little wrong, in its first byte
                    let at = Int(random.next() % UInt64(bytes.count))
                    bytes[at] = bytes[at] &+ UInt8(truncatingIfNeeded: random.next() % 5) &- 2
                }
                let fast = bytes.withUnsafeBytes { BSON.isCertainlyWhole($0) }
                let walked = bytes.withUnsafeBytes { BSON.walkedDamage(in: $0) }
                if fast { #expect(walked == nil, "user \(id): the fast pass calls whole what libbson finds damaged: \(String(describing: walked))") }
                if walked == nil { whole += 1 } else { damaged += 1 }
                #expect(bytes.withUnsafeBytes { BSON.damage(in: $0) } == walked)
            }
        }
        #expect(whole > 1000 && damaged > 1000, "both kinds were tried: \(whole) whole, \(damaged) damaged")
    }

    @Test func typesLeftToLibbsonAreStillFoundWhole() {
        // { _id: 1, pattern: /^a/i }, written by hand (a regular expression, type 0x0B).
        let body: [UInt8] = [0x10] + Array("_id".utf8) + [0, 1, 0, 0, 0] + [0x0B] + Array("pattern".utf8) + [0] + Array("^a".utf8) + [0, UInt8(ascii: "i"), 0]
        let length = UInt32(4 + body.count + 1)
        let bytes = withUnsafeBytes(of: length.littleEndian, Array.init) + body + [0]
        #expect(bytes.withUnsafeBytes { BSON.walkedDamage(in: $0) } == nil)
        #expect(!bytes.withUnsafeBytes { BSON.isCertainlyWhole($0) })
        #expect(bytes.withUnsafeBytes { BSON.damage(in: $0) } == nil)
    }

    @Test func anUnknownTypeInTheMiddleIsFoundAtItsElementWithThePathAroundIt() {
        var (bytes, at) = Self.user(locating: Self.element(0x10, "age"))
        bytes[at] = 0xAA
        let damage = bytes.withUnsafeBytes { BSON.damage(in: $0) }
        #expect(damage == BSONDamage(offset: at, path: [], after: "lastName"))
        #expect(damage?.description.hasPrefix("damaged BSON at byte \(at) of the document (after 'lastName')") == true, "\(String(describing: damage))")
    }

    @Test func damageInsideANestedArrayNamesTheFieldsAroundIt() {
        // profile.education[0].year is an int32.
        var (bytes, at) = Self.user(locating: Self.element(0x10, "year"))
        bytes[at] = 0xAA
        let damage = bytes.withUnsafeBytes { BSON.damage(in: $0) }
        #expect(damage?.offset == at)
        #expect(damage?.path == ["profile", "education", "0"])
        #expect(damage?.description.contains("inside 'profile.education[0]', after 'profile.education[0].degree'") == true, "\(String(describing: damage))")
    }

    @Test func aKeyWithoutItsTerminatingNULIsDamage() {
        var (bytes, at) = Self.user(locating: Self.element(0x02, "firstName"))
        bytes[at + 1 + "firstName".utf8.count] = UInt8(ascii: "X")
        #expect(bytes.withUnsafeBytes { BSON.damage(in: $0) }?.offset == at)
    }

    @Test func aDamagedDocumentIsSetAsideWholeNeverMappedWithFieldsMissing() {
        for (type, key) in [(UInt8(0x10), "age"), (0x02, "bio"), (0x10, "year"), (0x02, "firstName")] {
            var (bytes, at) = Self.user(locating: Self.element(type, key))
            if key == "firstName" { bytes[at + 10] = UInt8(ascii: "X") } else { bytes[at] = 0xAA }
            var rows = MappedRows(UsersMapping())
            let reason = bytes.withUnsafeBytes { doc -> String? in
                do throws(RejectReason) { try rows.add(document: doc); return nil } catch { return "\(error)" }
            }
            #expect(reason?.hasPrefix("damaged BSON at byte \(at) of the document") == true, "\(key): \(reason ?? "loaded")")
            #expect(rows.documents == 0 && rows.tables.allSatisfy(\.isEmpty), "\(key): nothing of it is written")
        }
    }

    @Test func aDocumentDamagedBeforeItsIdIsNamedSo() {
        var bytes = UserGenerator(seed: 42).document(id: 9).bytes
        bytes[4] = 0xAA  // the type byte of the first element, _id
        #expect(bytes.withUnsafeBytes { BSONSequence.displayId($0) } == "<damaged before its _id>")
        #expect(bytes.withUnsafeBytes { BSON.damage(in: $0) } == BSONDamage(offset: 4, path: [], after: nil))
    }
}
