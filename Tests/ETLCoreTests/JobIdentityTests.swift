import Foundation
import Testing
@testable import DurableETL

/// What a job records of its source and target, as the queue keeps it.
@Suite struct JobIdentityTests {
    static let collection = MongoCollectionSource.Identity(sourceServers: "127.0.0.1:57017", database: "sample_db", collection: "users")
    static let example = JobIdentity(
        pipeline: "users", source: collection, targetHost: "127.0.0.1", targetPort: "55432", targetDatabase: "etl", targetSchema: "public")

    @Test func aRecordReadsBackAndNamesEachDifference() throws {
        let recorded = try #require(JobIdentity.decode(try Self.example.encoded()))
        #expect(recorded.differences(from: Self.example).isEmpty)
        var other = Self.example
        other.source = MongoCollectionSource.Identity(sourceServers: "127.0.0.1:57017", database: "sample_db", collection: "usres")
        other.targetPort = "5432"
        let differences = recorded.differences(from: other)
        #expect(differences.map(\.field) == ["collection", "target port"])
        #expect(differences[0].recorded == "users" && differences[0].given == "usres")
    }

    /// State directories written by etl-job 0.3 (no `sourceKind`) still resume.
    @Test func recordsOfTheEarlierLayoutAreRead() throws {
        let mongo = #"{"collection":"users","database":"sample_db","pipeline":"users","sourceServers":"127.0.0.1:57017","targetDatabase":"etl","targetHost":"127.0.0.1","targetPort":"55432","targetSchema":"public"}"#
        let file = #"{"collection":"users","database":"sample_db","pipeline":"users","sourceFile":{"compressed":false,"headDigest":"ab","path":"/d/users.bson","size":12},"sourceServers":"","targetDatabase":"etl","targetHost":"127.0.0.1","targetPort":"55432","targetSchema":"public"}"#
        let fromMongo = try #require(JobIdentity.decode(Array(mongo.utf8)))
        #expect(fromMongo.source as? MongoCollectionSource.Identity == Self.collection)
        let fromFile = try #require(JobIdentity.decode(Array(file.utf8)))
        let recorded = try #require(fromFile.source as? BSONFileSource.Identity)
        #expect(recorded.sourceFile == .init(path: "/d/users.bson", size: 12, headDigest: "ab", compressed: false))
        #expect(recorded.names == SourceCollection(database: "sample_db", collection: "users"))
        #expect(fromFile.differences(from: fromMongo).map(\.field) == ["source"], "a file is never the same source as a collection")
    }

    @Test func aMovedFileIsTheSameSourceAndAnotherIsNot() throws {
        let file = BSONFileSource.Identity.File(path: "/a/users.bson", size: 100, headDigest: "d1", compressed: false)
        let names = SourceCollection(database: "sample_db", collection: "users")
        let recorded = BSONFileSource.Identity(names: names, file: file)
        var moved = file
        moved.path = "/b/users.bson"
        #expect(recorded.differences(from: .init(names: names, file: moved), locationNamed: true).isEmpty)
        var other = file
        other.headDigest = "d2"
        #expect(recorded.differences(from: .init(names: names, file: other), locationNamed: true).map(\.field) == ["source file's first MiB (SHA-256)"])
    }

    @Test func aManifestOfTheEarlierLayoutNamesItsPlannedSource() throws {
        let legacy = #"{"formatVersion":1,"pipelines":["users"],"planned":{"users":{"collection":"users","database":"sample_db","foreignKeys":"after","sourceFile":"/d/users.bson","targetSchema":"public"}}}"#
        let manifest = try JSONDecoder().decode(RunManifest.self, from: Data(legacy.utf8))
        let planned = try #require(manifest.planned["users"])
        #expect((planned.source as? BSONFileSource.Identity)?.sourceFile.path == "/d/users.bson")
        let plain = #"{"formatVersion":1,"pipelines":["users"],"planned":{"users":{"collection":"users","database":"sample_db","targetSchema":"s"}}}"#
        let fromMongo = try JSONDecoder().decode(RunManifest.self, from: Data(plain.utf8))
        #expect(fromMongo.planned["users"]?.source is MongoCollectionSource.Identity)
        #expect(fromMongo.planned["users"]?.targetSchema == "s")
    }
}
