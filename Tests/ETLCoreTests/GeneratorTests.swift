import Mongo
import Testing
import DurableETL
import TestSupport
import Users
import UsersFixtures

@Suite struct GeneratorTests {
    @Test func theSameSeedGivesByteIdenticalDocuments() {
        let a = UserGenerator(seed: 99), b = UserGenerator(seed: 99), c = UserGenerator(seed: 100)
        for id in [1, 2, 500, 9_999, Int64(Int32.max) + 5] {
            #expect(a.document(id: id).bytes == b.document(id: id).bytes)
            #expect(a.document(id: id).bytes != c.document(id: id).bytes)
        }
    }

    /// Averages over 10,000 users against the midpoints of DATA.md's ranges, and ~40 rows per user.
    @Test func distributionsMatchTheDataContract() throws {
        let generator = UserGenerator(seed: 42)
        let n = 10_000
        var lengths: [String: Int] = [:]
        var rows = userRows(expectedDocuments: n)
        var bytes = 0
        var ages = 0
        for id in 1...Int64(n) {
            let doc = generator.document(id: id)
            try doc.withUnsafeBytes { raw in
                bytes += raw.count
                try rows.add(document: raw)
                var it = BSONIterator(document: raw)!
                count(&it, prefix: "", into: &lengths)
                var age = BSONIterator(document: raw)!
                _ = age.find("age")
                ages += Int(age.integer!)
            }
        }
        func mean(_ key: String) -> Double { Double(lengths[key] ?? 0) / Double(n) }
        let expected: [(String, Double)] = [
            ("profile.interests", 3.5), ("profile.skills", 4), ("profile.education", 2), ("profile.experience", 2.5),
            ("preferences.settings", 3), ("activityLog", 12.5), ("transactions", 5), ("messages", 2.5),
            ("socialMedia.connections", 10), ("socialMedia.posts", 5), ("socialMedia.groups", 1.5),
        ]
        for (key, midpoint) in expected {
            #expect(abs(mean(key) - midpoint) / midpoint < 0.03, "\(key): mean \(mean(key)), midpoint \(midpoint)")
        }
        #expect(abs(Double(ages) / Double(n) - 49) < 1)
        let totalRows = UsersMapping.tables.indices.reduce(0) { $0 + rows.rowCount($1) }
        let perUser = Double(totalRows) / Double(n)
        #expect(perUser > 39 && perUser < 42, "rows per user: \(perUser)")
        let kbPerDocument = Double(bytes) / Double(n) / 1000
        #expect(kbPerDocument > 5 && kbPerDocument < 6.5, "KB per document: \(kbPerDocument)")
    }

    /// Counts array lengths by dotted path.
    private func count(_ it: inout BSONIterator, prefix: String, into lengths: inout [String: Int]) {
        while it.next() {
            let path = prefix + it.key
            if it.type == .array, var child = it.children {
                var n = 0
                while child.next() { n += 1 }
                lengths[path, default: 0] += n
            } else if it.type == .document, var child = it.children {
                count(&child, prefix: path + ".", into: &lengths)
            }
        }
    }
}
