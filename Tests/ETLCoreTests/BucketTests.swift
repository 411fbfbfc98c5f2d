import ETLCore
import Foundation
import Testing

/// Shared mutable test state behind a lock.
final class Shared<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    @discardableResult
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}

@Suite struct BucketTests {
    @Test func flushesWhenBatchIsFull() throws {
        let batches = Shared<[[Int]]>([])
        let bucket = Bucket<Int>(size: 3, flushTimeout: .seconds(60)) { batch in batches.withLock { $0.append(batch) } }
        for i in 1...7 { try bucket.add(i) }
        #expect(batches.withLock { $0 } == [[1, 2, 3], [4, 5, 6]])
        try bucket.finish()
        #expect(batches.withLock { $0 } == [[1, 2, 3], [4, 5, 6], [7]])
    }

    @Test func flushesEarlyWhenTheBatchWeighsTooMuch() throws {
        let batches = Shared<[[Int]]>([])
        let bucket = Bucket<Int>(size: 100, maxWeight: 10, weigh: { $0 }, flushTimeout: .seconds(60)) { batch in
            batches.withLock { $0.append(batch) }
        }
        for i in [3, 3, 3, 1, 9, 2] { try bucket.add(i) }
        try bucket.finish()
        #expect(batches.withLock { $0 } == [[3, 3, 3, 1], [9, 2]])
    }

    @Test func flushesAPartialBatchAfterTheTimeout() async throws {
        let batches = Shared<[[Int]]>([])
        let bucket = Bucket<Int>(size: 100, flushTimeout: .milliseconds(100)) { batch in batches.withLock { $0.append(batch) } }
        try bucket.add(1)
        try bucket.add(2)
        #expect(batches.withLock { $0 }.isEmpty)
        try await Task.sleep(for: .milliseconds(400))
        #expect(batches.withLock { $0 } == [[1, 2]])
        try bucket.add(3)
        try bucket.finish()
        #expect(batches.withLock { $0 } == [[1, 2], [3]])
    }

    @Test func aFailedTimedFlushIsReportedToTheProducer() async throws {
        struct Boom: Error {}
        let bucket = Bucket<Int>(size: 100, flushTimeout: .milliseconds(50)) { _ in throw Boom() }
        try bucket.add(1)
        try await Task.sleep(for: .milliseconds(300))
        #expect(throws: Boom.self) { try bucket.add(2) }
    }

    @Test func defaultsAreTheMeasuredOnes() {
        // 1,000 documents a batch and a worker per core (at least 2): see BucketConfig.
        let config = BucketConfig()
        #expect(config.batchSize == 1_000)
        #expect(config.workers == max(2, ProcessInfo.processInfo.activeProcessorCount))
        #expect(config.flushTimeout == .seconds(5))
    }
}

@Suite struct ManagerTests {
    struct Sleeper: Pipeline {
        let name: String
        let running: Shared<(now: Int, peak: Int)>
        var fails = false

        func run(stop: StopToken) async throws {
            running.withLock { $0.now += 1; $0.peak = max($0.peak, $0.now) }
            try? await Task.sleep(for: .milliseconds(100))
            running.withLock { $0.now -= 1 }
            if fails { throw Failure(name: name) }
        }
    }

    struct Failure: Error, Equatable { let name: String }

    @Test func runsAtMostWorkersPipelinesAtOnce() async throws {
        let counter = Shared<(now: Int, peak: Int)>((0, 0))
        let pipelines = (0..<6).map { Sleeper(name: "p\($0)", running: counter) }
        try await Manager(workers: 2).runAll(pipelines, stop: StopToken())
        #expect(counter.withLock { $0.peak } == 2)
    }

    @Test func reportsTheErrorOfEveryFailedPipeline() async {
        let counter = Shared<(now: Int, peak: Int)>((0, 0))
        let pipelines = [
            Sleeper(name: "a", running: counter, fails: true),
            Sleeper(name: "b", running: counter),
            Sleeper(name: "c", running: counter, fails: true),
        ]
        do {
            try await Manager(workers: 3).runAll(pipelines, stop: StopToken())
            Issue.record("expected failures")
        } catch let errors as ETLErrors {
            let names = errors.errors.compactMap { ($0 as? PipelineError)?.pipeline }.sorted()
            #expect(names == ["a", "c"])
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func aStopRequestLaunchesNoFurtherPipelines() async throws {
        let started = Shared(0)
        struct Stopper: Pipeline {
            let name = "stopper"
            let started: Shared<Int>
            func run(stop: StopToken) async throws {
                started.withLock { $0 += 1 }
                stop.request(.signal(SIGINT))
            }
        }
        let stop = StopToken()
        try await Manager(workers: 1).runAll([Stopper(started: started), Stopper(started: started)], stop: stop)
        #expect(started.withLock { $0 } == 1)
        #expect(stop.reason == .signal(SIGINT))
    }
}

@Suite struct RunnerTests {
    /// Extracts 0..<n into a shared list; workers drain it, summing what they take.
    final class Counting: ETLProcessor, @unchecked Sendable {
        let n: Int
        let staged = Shared<[[Int]]>([])
        let taken = Shared<[Int]>([])
        let finished = Shared(false)
        let failAtWorkerItem: Int?

        init(n: Int, failAtWorkerItem: Int? = nil) {
            self.n = n
            self.failAtWorkerItem = failAtWorkerItem
        }

        var name: String { "counting" }
        func weight(of item: Int) -> Int { 1 }
        func preProcess() throws {}
        func postProcess() throws {}
        func extract(_ emit: (Int) throws -> Void, stop: StopToken) throws -> Bool {
            for i in 0..<n where !stop.isStopRequested { try emit(i) }
            return !stop.isStopRequested
        }
        func stage(_ batch: [Int], stop: StopToken) throws { staged.withLock { $0.append(batch) } }
        func finishExtraction() throws { finished.withLock { $0 = true } }
        func makeWorker(index: Int) throws -> Worker { Worker(owner: self) }

        final class Worker: ETLWorker {
            let owner: Counting
            init(owner: Counting) { self.owner = owner }
            func close() {}
            func step(stop: StopToken) throws -> WorkerStep {
                let batch: [Int]? = owner.staged.withLock { $0.isEmpty ? nil : $0.removeFirst() }
                guard let batch else {
                    if owner.finished.withLock({ $0 }) { return .drained }
                    Thread.sleep(forTimeInterval: 0.001)
                    return .idle
                }
                if let bad = owner.failAtWorkerItem, batch.contains(bad) { throw ManagerTests.Failure(name: "item \(bad)") }
                owner.taken.withLock { $0 += batch }
                return .worked
            }
        }
    }

    @Test func everyExtractedItemIsProcessedExactlyOnce() async throws {
        let processor = Counting(n: 10_007)
        let runner = ETLRunner(processor: processor, config: BucketConfig(batchSize: 100, workers: 4))
        try await runner.run(stop: StopToken())
        #expect(processor.taken.withLock { $0 }.sorted() == Array(0..<10_007))
    }

    @Test func aWorkerFailureStopsTheRunAndIsReported() async {
        let processor = Counting(n: 100_000, failAtWorkerItem: 250)
        let runner = ETLRunner(processor: processor, config: BucketConfig(batchSize: 100, workers: 2))
        let stop = StopToken()
        await #expect(throws: ManagerTests.Failure(name: "item 250")) { try await runner.run(stop: stop) }
        #expect(stop.reason == .failure)
    }
}

@Suite struct RedactTests {
    @Test func passwordsNeverSurvive() {
        #expect(Redact.url("postgresql://etl:s3cret@127.0.0.1:5432/etl") == "postgresql://etl:***@127.0.0.1:5432/etl")
        #expect(Redact.url("mongodb://admin:p%40ss@host:27017/?authSource=admin") == "mongodb://admin:***@host:27017/?authSource=admin")
        #expect(Redact.url("postgresql://host/db?user=x&password=hunter2&sslmode=off") == "postgresql://host/db?user=x&password=***&sslmode=off")
        #expect(Redact.url("mongodb://127.0.0.1:57017") == "mongodb://127.0.0.1:57017")
        #expect(!Redact.url("postgresql://u:a@b@host/db").contains("a@b"))
    }
}
