import DurableETL
import Foundation
import Queue
import Testing

func temporaryDirectory() -> String {
    let path = NSTemporaryDirectory() + "etl-queue-test-" + UUID().uuidString
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// A BSON-framed stand-in document of `size` bytes: an int32 length, filler, a final NUL.
func document(size: Int = 8, filler: UInt8 = 0) -> [UInt8] {
    withUnsafeBytes(of: Int32(size).littleEndian, Array.init) + [UInt8](repeating: filler, count: size - 5) + [0]
}

func documents(_ n: Int, filler: UInt8 = 0) -> [UInt8] {
    (0..<n).flatMap { _ in document(filler: filler) }
}

/// The engine's record of a job, opaque to the queue.
let exampleIdentity = Array(#"{"pipeline":"users"}"#.utf8)

@Suite struct QueueTests {
    @Test func theJobsRecordIsKeptAsGiven() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let queue = try DurableQueue(directory: dir)
            try queue.createJob(id: "j", sourceTotal: nil, identity: exampleIdentity)
        }
        #expect(try DurableQueue(directory: dir, readOnly: true).identity == exampleIdentity)
    }

    @Test func aSecondEnvironmentOnTheSameDirectoryInOneProcessIsRefused() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let queue = try DurableQueue(directory: dir)
        try queue.createJob(id: "j", sourceTotal: nil, identity: exampleIdentity)
        #expect(throws: (any Error).self) { try DurableQueue(directory: dir, readOnly: true) }
        #expect(throws: (any Error).self) { try DurableQueue(directory: dir + "/.") }
        #expect(try queue.jobId == "j", "the first environment still works after the refused second open")
    }

    @Test func aFailedOpenClosesItsEnvironmentOnceAndFreesTheDirectory() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Read-only on a directory with no queue: mdb_env_open fails after mdb_env_create.
        for _ in 0..<3 {
            #expect(throws: (any Error).self) { try DurableQueue(directory: dir, readOnly: true) }
        }
        let queue = try DurableQueue(directory: dir)
        try queue.createJob(id: "j", sourceTotal: nil, identity: exampleIdentity)
        #expect(try queue.jobId == "j")
    }

    @Test func claimAckRequeueAndSetAsideSurviveReopening() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let queue = try DurableQueue(directory: dir)
            try queue.createJob(id: "job-1", sourceTotal: 30, identity: exampleIdentity)
            try queue.enqueue(payload: documents(10, filler: 1), documents: 10, position: [9])
            try queue.enqueue(payload: documents(10, filler: 2), documents: 10, position: [19])
            try queue.enqueue(payload: documents(10, filler: 3), documents: 10, position: [29])
            try queue.finishExtraction()

            let first = try #require(try queue.claim())
            let second = try #require(try queue.claim())
            #expect(first.id == 1 && first.payload == documents(10, filler: 1) && first.documentCount == 10)
            #expect(second.id == 2)
            let aside = SetAsideDocument(batch: 1, documentId: "5", reason: "field 'age' is missing", document: [7, 7])
            try queue.complete(first.id, outcome: BatchOutcome(documentsLoaded: 9, rows: ["users": 9, "posts": 40], setAside: [aside]))
            try queue.requeue(second.id)
        }
        let queue = try DurableQueue(directory: dir)
        let status = try #require(try queue.status())
        #expect(status.jobId == "job-1")
        #expect(status.sourceTotal == 30)
        #expect(status.extracted == 30)
        #expect(status.extractionFinished)
        #expect((status.batches, status.pending, status.inFlight, status.done) == (3, 2, 0, 1))
        #expect(status.documentsLoaded == 9)
        #expect(status.documentsSetAside == 1)
        #expect(status.rows == ["users": 9, "posts": 40])
        #expect(try queue.extractPosition == [29])
        #expect(try queue.setAsideDocuments() == [SetAsideDocument(batch: 1, documentId: "5", reason: "field 'age' is missing", document: [7, 7])])
        #expect(try queue.payload(of: 1) == nil, "a done batch's payload is freed")
        #expect(try queue.claim()?.id == 2, "a requeued batch is claimed again, oldest first")
        #expect(try queue.inFlight() == [2])
    }

    /// A sync that sets aside the same document change after change keeps one record of it,
    /// the latest, and its queue's file stops growing: months of a steady share of bad
    /// changes must not fill the state directory's disk.
    @Test func batchesOfChangesKeepOnlyTheLatestDecisionPerDocument() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let queue = try DurableQueue(directory: dir)
        try queue.createJob(id: "j-changes", sourceTotal: nil, identity: exampleIdentity)
        let bulky = [UInt8](repeating: 7, count: 16_384)  // a document of 16 kB, in overflow pages
        var sizes: [Int] = []
        for round in 1...600 {
            try queue.enqueue(payload: documents(2), documents: 2, position: [UInt8(round % 256)])
            let batch = try #require(try queue.claim())
            let aside = SetAsideDocument(batch: batch.id, documentId: "bad", reason: "round \(round)", document: bulky)
            try queue.complete(batch.id, outcome: BatchOutcome(
                documentsLoaded: 1, rows: ["users": 1], setAside: [aside], touched: ["bad", "good"]))
            if round % 100 == 0 {
                sizes.append(try FileManager.default.attributesOfItem(atPath: dir + "/data.mdb")[.size] as! Int)
            }
        }
        let current = try queue.currentDocuments()
        #expect(current.setAside.map(\.reason) == ["round 600"] && current.cleared == ["good"])
        #expect(try queue.setAsideDocuments().isEmpty, "no history of set-aside changes is kept")
        #expect(try queue.status()?.documentsSetAside == 600, "the counts still count every change set aside")
        // 600 × 16 kB = 9.4 MB were set aside; the file holds about one of them.
        #expect(sizes.last! < 1 << 20, "data.mdb: \(sizes) bytes")
    }

    @Test func completingABatchTwiceCountsItOnce() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let queue = try DurableQueue(directory: dir)
        try queue.createJob(id: "j", sourceTotal: nil, identity: exampleIdentity)
        try queue.enqueue(payload: documents(1), documents: 1, position: [1])
        let batch = try #require(try queue.claim())
        let outcome = BatchOutcome(documentsLoaded: 1, rows: ["users": 1], setAside: [])
        try queue.complete(batch.id, outcome: outcome)
        try queue.complete(batch.id, outcome: outcome)
        #expect(try queue.status()?.rows["users"] == 1)
        #expect(try queue.status()?.done == 1)
    }

    @Test func concurrentClaimsNeverShareABatch() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let queue = try DurableQueue(directory: dir)
        try queue.createJob(id: "j", sourceTotal: nil, identity: exampleIdentity)
        for i in 0..<400 { try queue.enqueue(payload: documents(1, filler: UInt8(i % 256)), documents: 1, position: [1]) }
        let claimed = try await withThrowingTaskGroup(of: [UInt64].self) { group in
            for _ in 0..<8 {
                group.addTask {
                    var mine: [UInt64] = []
                    while let b = try queue.claim() { mine.append(b.id) }
                    return mine
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        #expect(claimed.count == 400)
        #expect(Set(claimed).count == 400)
    }

    /// (A changed byte, which only the checksum catches, is changed on disk by an integration test.)
    @Test(arguments: ["broken length", "wrong count"])
    func aBatchWhoseDocumentsDoNotAddUpIsNeverHandedOut(damage: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let queue = try DurableQueue(directory: dir, framing: .bson)
        try queue.createJob(id: "j", sourceTotal: nil, identity: exampleIdentity)
        var payload = documents(3, filler: 7)
        if damage == "broken length" { payload[8] = 200 }
        try queue.enqueue(payload: payload, documents: damage == "wrong count" ? 4 : 3, position: [1])
        #expect(throws: (any Error).self) { try queue.claim() }
        #expect(try queue.status()?.pending == 1, "the batch stays pending, not in flight")
        #expect(try queue.inFlight().isEmpty)
    }

    @Test func aFullMapGrowsInsteadOfFailing() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let queue = try DurableQueue(directory: dir, initialMapSize: 1 << 20)
        try queue.createJob(id: "j", sourceTotal: nil, identity: exampleIdentity)
        let payload = document(size: 256 << 10, filler: 0xAB)
        for _ in 0..<16 { try queue.enqueue(payload: payload, documents: 1, position: [1]) }
        #expect(queue.mapSize > 1 << 20)
        #expect(try queue.status()?.pending == 16)
        #expect(try queue.payload(of: 16) == payload)
    }

    @Test func theJobLockAdmitsOneHolderAndDiesWithIt() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(!JobLock.isHeld(directory: dir))
        var lock: JobLock? = try JobLock(directory: dir)
        #expect(JobLock.isHeld(directory: dir))
        #expect(throws: JobLock.Busy.self) { try JobLock(directory: dir) }
        lock = nil
        _ = lock
        #expect(!JobLock.isHeld(directory: dir))
        _ = try JobLock(directory: dir)
    }
}
