@testable import DurableETL
import ETLCore
import Foundation
import Logging
import Mongo
import NotesPipeline
import Postgres
import Queue
import TestSupport
import Testing

/// The engine with pipelines that know nothing of users: the notes pipeline of docs/design/writing-a-pipeline.md
/// (run by its own small program, so that it can be killed) and a one-table archive
/// pipeline defined here.
@Suite(.serialized) struct EngineTests {
    static let notesTables = ["notes", "note_comments"]

    @Test func aPipelineOutsideUsersLoadsEveryIdTypeAndResumesExactlyAfterKills() throws {
        let sandbox = try Sandbox()
        defer {
            for state in ["straight", "killed"] { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-\(state)") }
        }
        let seeded = try NotesData.seed(sandbox, count: 300)

        let straight = try notes(sandbox, "start", schema: "straight", state: "straight")
        #expect(straight.status == 0, "\(straight.stderr)")

        // Killed at a different moment each time (mid-COPY, after a COMMIT the queue does not
        // know of, right after staging, after an acknowledgement), then resumed to the end.
        let kills = ["copied:2", "committed:2", "enqueued:4", "acknowledged:3", "copied:1"]
        var result = try notes(sandbox, "start", schema: "killed", state: "killed", crashAt: kills[0])
        #expect(result.signaled, "the first run is killed: \(result.stderr)")
        var runs = 1
        while result.status != 0 || result.signaled {
            #expect(runs < 12, "resume finishes: \(result.stderr)")
            if runs >= 12 { break }
            result = try notes(sandbox, "resume", schema: "killed", state: "killed", crashAt: runs < kills.count ? kills[runs] : nil)
            runs += 1
        }
        #expect(runs > 2, "the run was killed more than once")

        let expected = try sandbox.checksums(tables: Self.notesTables, schema: "straight")
        #expect(try sandbox.checksums(tables: Self.notesTables, schema: "killed") == expected)
        #expect(try sandbox.counts(tables: Self.notesTables, schema: "killed") == ["notes": seeded.good, "note_comments": seeded.comments])
        for schema in ["straight", "killed"] {
            let queue = try DurableQueue(directory: sandbox.stateDirectory + "-\(schema)/notes", readOnly: true)
            let setAside = try queue.setAsideDocuments()
            #expect(setAside.map(\.reason) == ["field 'title' is an int32, expected a string"])
            let report = try NotesData.verify(sandbox, schema: schema, setAside: Set(setAside.map(\.documentId)))
            #expect(report.agrees, "\(report.render())")
        }
        // Every _id type became its own key, none collided.
        let kinds = try sandbox.db().execute("""
            SELECT count(*) FILTER (WHERE id LIKE '%"$oid"%'), count(*) FILTER (WHERE id LIKE '%"$binary"%'),
                   count(*) FILTER (WHERE id LIKE '"%'), count(*) FILTER (WHERE id ~ '^[0-9]+$')
            FROM killed.notes
            """).rows[0].map { Int($0!)! }
        #expect(kinds == [50, 100, 50, 99])
    }

    @Test func twoPipelinesShareOneTargetAndOneStopStopsBoth() async throws {
        let sandbox = try Sandbox()
        _ = try NotesData.seed(sandbox, count: 200)
        try NotesData.seedArchive(sandbox, count: 200)
        var settings = JobSettings(mongoURL: Services.mongoURL, postgresURL: sandbox.postgresURL, stateDirectory: sandbox.stateDirectory)
        settings.bucket.batchSize = 5
        settings.bucket.workers = 3
        let job = DurableJob(settings: settings, logger: Logger(label: "test"))
        let mappings: [any DocumentMapping] = [SandboxNotes(database: sandbox.mongoDatabase), ArchiveMapping(database: sandbox.mongoDatabase)]

        // Slow commits, so that the stop comes while both pipelines are loading.
        try job.migrate(try Target(url: sandbox.postgresURL, schema: "public").connect(), mappings)
        try sandbox.db().execute("""
            CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$;
            CREATE TRIGGER slow_commit AFTER INSERT ON etl_checkpoints FOR EACH ROW EXECUTE FUNCTION slow_commit();
            """)
        let stop = Self.stopped(after: 1.5)
        let stopped = try await job.start(mappings, fresh: false, stop: stop, observer: nil)
        #expect(stopped.pipelines.map(\.name) == ["notes", "archive"])
        #expect(stopped.pipelines.allSatisfy { $0.status.finishedAt == nil }, "one stop stops every pipeline")
        #expect(stopped.pipelines.allSatisfy { $0.status.documentsLoaded > 0 }, "both pipelines ran at once")

        try sandbox.db().execute("DROP TRIGGER slow_commit ON etl_checkpoints")
        let resolve: @Sendable (String, String?) -> (any DocumentMapping)? = { name, _ in mappings.first { $0.name == name } }
        let resumed = try await job.resume(resolve: resolve, stop: StopToken())
        #expect(resumed.failure == nil, "1 of 200 set aside is within the default limit of 1%")
        #expect(resumed.pipelines.map(\.status.documentsLoaded) == [199, 200])
        #expect(resumed.pipelines.map(\.status.documentsSetAside) == [1, 0])
        #expect(try sandbox.counts(tables: ["notes", "archived_notes"]) == ["notes": 199, "archived_notes": 200])

        // Checkpoints and migrations are keyed by pipeline.
        let db = try sandbox.db()
        let checkpoints = try db.execute("SELECT pipeline, sum(documents_loaded) FROM etl_checkpoints GROUP BY 1 ORDER BY 1").rows
        #expect(checkpoints.map { $0.compactMap { $0 } } == [["archive", "200"], ["notes", "199"]])
        let migrations = try db.execute("SELECT pipeline || ':' || version FROM etl_migrations ORDER BY 1").rows.map { $0[0]! }
        #expect(migrations == ["archive:1", "etl-job:1", "etl-job:2", "etl-job:3", "etl-job:4", "etl-job:5", "etl-job:6", "notes:1"])
    }

    @Test func workersAreSharedOutAmongPipelines() {
        #expect(DurableJob.share(workers: 4, among: 1) == [4])
        #expect(DurableJob.share(workers: 5, among: 2) == [3, 2])
        #expect(DurableJob.share(workers: 1, among: 3) == [1, 1, 1])
    }

    @Test func theDocsExampleIsTheNotesPipeline() throws {
        let page = try String(contentsOf: Services.packageRoot.appendingPathComponent("docs/design/writing-a-pipeline.md"), encoding: .utf8)
        let source = try String(contentsOf: Services.packageRoot.appendingPathComponent("Tests/NotesPipeline/NotesMapping.swift"), encoding: .utf8)
        #expect(page.contains("```swift\n" + source + "```"), "docs/design/writing-a-pipeline.md shows Tests/NotesPipeline/NotesMapping.swift as it is")
    }

    /// Runs the notes program against the sandbox, killed at `crashAt` when given; `memory`:
    /// that many notes from memory instead of MongoDB.
    static func notes(_ sandbox: Sandbox, _ command: String, schema: String, state: String, crashAt: String? = nil, memory: Int? = nil) throws -> JobResult {
        let job = try RunningJob(
            executable: Services.sibling("notes-pipeline"),
            arguments: [command, sandbox.postgresURL, Services.mongoURL, sandbox.stateDirectory + "-\(state)", schema, sandbox.mongoDatabase]
                + (memory.map { ["memory:\($0)"] } ?? []),
            environment: crashAt.map { ["ETL_CRASH_AT": $0] } ?? [:])
        return try job.wait()
    }

    private func notes(_ sandbox: Sandbox, _ command: String, schema: String, state: String, crashAt: String? = nil) throws -> JobResult {
        try Self.notes(sandbox, command, schema: schema, state: state, crashAt: crashAt)
    }

    private static func stopped(after seconds: Double) -> StopToken {
        let stop = StopToken()
        if seconds <= 0 { stop.request(.signal(SIGINT)) } else {
            Thread.detachNewThread {
                Thread.sleep(forTimeInterval: seconds)
                stop.request(.signal(SIGINT))
            }
        }
        return stop
    }
}

/// A second pipeline, one table: archived notes keyed by their integer `_id`.
struct ArchiveMapping: DocumentMapping {
    let database: String
    var name: String { "archive" }
    var source: SourceCollection { SourceCollection(database: database, collection: "archive") }
    var tables: [TableSpec] {
        [TableSpec("archived_notes", columns: [.init("id", "bigint"), .init("title", "text")], primaryKey: ["id"])]
    }

    func map(_ document: UnsafeRawBufferPointer, into rows: inout TableRows) throws(RejectReason) {
        let fields = try lookup(BSONIterator(document: document)!, ["_id", "title"])
        let (id, title) = (try fields[0].int64("_id"), try fields[1].string("title"))
        rows.row(0, fields: 2) { w in
            w.int8(id)
            w.text(title)
        }
    }
}

/// NotesMapping with the sandbox's database as its source.
struct SandboxNotes: DocumentMapping {
    let database: String
    let notes = NotesMapping()
    var name: String { notes.name }
    var source: SourceCollection { SourceCollection(database: database, collection: "notes") }
    var tables: [TableSpec] { notes.tables }
    func map(_ document: UnsafeRawBufferPointer, into rows: inout TableRows) throws(RejectReason) {
        try notes.map(document, into: &rows)
    }
}

enum NotesData {
    /// `count` notes whose `_id`s are of six types (int32, int64, string, ObjectId, UUID,
    /// binary), with 0 to 3 comments, `pinned` present on half; the note at 7 has a number
    /// for a title and must be set aside (NotesCorpus).
    static func seed(_ sandbox: Sandbox, count: Int) throws -> (good: Int, comments: Int) {
        let collection = sandbox.mongo.collection(database: sandbox.mongoDatabase, name: "notes")
        try collection.insertMany(NotesCorpus.documents(count: count))
        let comments = (0..<count).filter { $0 != 7 }.reduce(0) { $0 + $1 % 4 }
        return (count - 1, comments)
    }

    static func seedArchive(_ sandbox: Sandbox, count: Int) throws {
        let collection = sandbox.mongo.collection(database: sandbox.mongoDatabase, name: "archive")
        try collection.insertMany((0..<count).map { i in
            let doc = BSONDocument()
            doc.writer.append("_id", Int64(i))
            doc.writer.append("title", "archived \(i)")
            return doc
        })
    }

    static func verify(_ sandbox: Sandbox, schema: String, setAside: Set<String>) throws -> Verifier.Report {
        let db = try Target(url: sandbox.postgresURL, schema: schema).connect()
        var settings = JobSettings(mongoURL: Services.mongoURL, postgresURL: sandbox.postgresURL, stateDirectory: sandbox.stateDirectory)
        settings.source.database = sandbox.mongoDatabase
        let job = PipelineJob(mapping: NotesMapping(), settings: settings)
        return try Verifier(db: db, mapping: NotesMapping(), source: job.source.open(after: nil, batchSize: 500), setAside: setAside).run()
    }
}

/// The engine with a source in memory (no MongoDB server): the snapshot, then batches of
/// changes that replace and delete documents' rows in every table, exactly.
@Suite(.serialized) struct WriteModeTests {
    static let tables = ["notes", "note_comments"]

    static func settings(_ sandbox: Sandbox, _ name: String) -> JobSettings {
        var settings = JobSettings(mongoURL: Services.mongoURL, postgresURL: sandbox.postgresURL, stateDirectory: sandbox.stateDirectory)
        settings.source.choice = MemorySource.Choice(name: name)
        settings.bucket.batchSize = 7
        settings.bucket.workers = 2
        settings.maxSetAside = .count(5)
        return settings
    }

    @Test func changesReplaceAndDeleteEachDocumentsRowsInEveryTableExactly() async throws {
        let sandbox = try Sandbox()
        let name = "notes-" + sandbox.name
        let count = 60
        MemorySource.register(MemorySource(name: name, documents: NotesCorpus.documents(count: count).map(\.bytes)))
        let (changes, final) = NotesCorpus.changes(count: count)
        // The first run of changes stops halfway through them; the second reads on from there.
        let half = changes.count / 2
        MemorySource.register(MemorySource(name: name + "-changes", documents: Array(changes[..<half])))
        let job = DurableJob(settings: Self.settings(sandbox, name), logger: Logger(label: "test"))
        let mappings: [any DocumentMapping] = [NotesMapping()]
        let snapshot = try await job.start(mappings, fresh: false, stop: StopToken())
        #expect(snapshot.pipelines[0].status.documentsLoaded == Int64(count - 1))
        let resolve: @Sendable (String, String?) -> (any DocumentMapping)? = { name, _ in name == "notes" ? NotesMapping() : nil }
        _ = try await job.applyChanges(resolve: resolve, follow: false, stop: StopToken())
        MemorySource.register(MemorySource(name: name + "-changes", documents: changes))
        let applied = try await job.applyChanges(resolve: resolve, follow: false, stop: StopToken())
        #expect(applied.failure == nil, "\(String(describing: applied.failure))")

        // The target equals a fresh snapshot of the final documents, row for row.
        let expected = "expected-" + name
        MemorySource.register(MemorySource(name: expected, documents: final))
        var fresh = Self.settings(sandbox, expected)
        fresh.stateDirectory = sandbox.stateDirectory + "-expected"
        fresh.targetSchema = "expected"
        defer { try? FileManager.default.removeItem(atPath: fresh.stateDirectory) }
        let reference = try await DurableJob(settings: fresh, logger: Logger(label: "test")).start(mappings, fresh: false, stop: StopToken())
        #expect(reference.pipelines[0].status.documentsSetAside == 1, "note 8 ends with a numeric title")
        #expect(try sandbox.checksums(tables: Self.tables) == sandbox.checksums(tables: Self.tables, schema: "expected"))
        let counts = try sandbox.counts(tables: Self.tables)
        #expect(counts["notes"] == final.count - 1)

        let queue = try DurableQueue(directory: sandbox.stateDirectory + "/notes/changes", readOnly: true)
        let status = try #require(try queue.status())
        #expect(status.documentsDeleted == Int64(count / 5), "every fifth note deleted")
        // A batch of changes keeps each document's latest decision, not a history of them.
        #expect(try queue.setAsideDocuments().isEmpty)
        let setAside = try queue.currentDocuments().setAside
        #expect(Set(setAside.map(\.reason)) == ["field 'title' is an int32, expected a string"])
        let ids = [7, 8].map { NotesCorpus.note($0, comments: 0).withUnsafeBytes(BSONSequence.displayId) }
        #expect(setAside.map(\.documentId).allSatisfy(ids.contains), "\(setAside.map(\.documentId))")
        #expect(try sandbox.db().execute("SELECT count(*) FROM etl_checkpoints WHERE job_id LIKE '%-changes' AND position IS NOT NULL").rows[0][0] != "0",
                "each batch of changes records the position it reached with its rows")
    }
}

extension WriteModeTests {
    /// The guarantees without MongoDB: the snapshot from memory and its changes, killed at
    /// every step of a batch, resumed each time, equal the same work done without a kill.
    @Test func aSnapshotAndItsChangesFromMemoryKilledAtEveryStepEqualTheUninterruptedRun() throws {
        let sandbox = try Sandbox()
        defer { for state in ["straight", "killed"] { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-\(state)") } }
        func run(_ command: String, _ state: String, _ crashAt: String? = nil) throws -> JobResult {
            try EngineTests.notes(sandbox, command, schema: state, state: state, crashAt: crashAt, memory: 200)
        }
        #expect(try run("start", "straight").status == 0)
        #expect(try run("changes", "straight").status == 0)

        var result = try run("start", "killed", "copied:2")
        #expect(result.signaled)
        for point in ["committed:2", "enqueued:3", "acknowledged:2", nil] {
            result = try run("resume", "killed", point)
        }
        #expect(result.status == 0 && !result.signaled, "\(result.stderr)")
        for point in ["enqueued:3", "copied:2", "committed:2", "acknowledged:2", "copied:1"] {
            result = try run("changes", "killed", point)
            #expect(result.signaled, "killed applying changes at \(point): \(result.stderr)")
        }
        result = try run("changes", "killed")
        #expect(result.status == 0 && !result.signaled, "\(result.stderr)")
        let expected = try sandbox.checksums(tables: Self.tables, schema: "straight")
        #expect(try sandbox.checksums(tables: Self.tables, schema: "killed") == expected)
        #expect(try sandbox.duplicateKeys(tables: ["notes"], schema: "killed") == 0)
        // Nothing was left to apply: a run with nothing new changes nothing.
        #expect(try run("changes", "killed").status == 0)
        #expect(try sandbox.checksums(tables: Self.tables, schema: "killed") == expected)
    }
}
