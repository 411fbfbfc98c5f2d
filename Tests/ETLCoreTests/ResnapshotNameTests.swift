import DurableETL
import Testing

/// The shadow and replaced schemas a recovery names after the live one fit PostgreSQL's 63
/// bytes, whatever the live schema's name, and stay apart.
@Suite struct ResnapshotNameTests {
    @Test func aShortSchemaIsPrefixedAsItIs() {
        #expect(Resnapshot.Record.name("etl_resnapshot_", "app") == "etl_resnapshot_app")
    }

    @Test func aLongSchemaIsCutAtACharacterAndKeptApartByADigest() {
        let long = String(repeating: "é", count: 31) + "a"  // 63 bytes
        let other = String(repeating: "é", count: 31) + "b"
        let first = Resnapshot.Record.name("etl_resnapshot_", long)
        let second = Resnapshot.Record.name("etl_resnapshot_", other)
        #expect(first.utf8.count <= 63 && second.utf8.count <= 63)
        #expect(first != second)
        #expect(first.hasPrefix("etl_resnapshot_é") && first.unicodeScalars.allSatisfy { $0 != "\u{FFFD}" })
        #expect(Resnapshot.Record.name("etl_resnapshot_", long) == first, "the same name each time")
    }
}
