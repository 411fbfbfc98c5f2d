/// The roles of one extract → transform → load job.
///
/// Extraction feeds a `Bucket`, whose batches go to `stage` (for the durable engine: into the
/// durable queue). Workers, each made by `makeWorker` with resources of its own, then take
/// staged batches, transform and load them until nothing is left.
public protocol ETLProcessor: Sendable {
    associatedtype Item
    associatedtype Worker: ETLWorker

    /// An item's size in bytes, for `BucketConfig.maxBatchBytes`.
    func weight(of item: Item) -> Int

    var name: String { get }

    /// Runs before anything is extracted (recovery of a previous run), on a thread of its own.
    func preProcess() throws
    /// Calls `emit` for each source item, in order, until the source is exhausted or `stop`
    /// is requested; returns true when the source was read to its end.
    func extract(_ emit: (Item) throws -> Void, stop: StopToken) throws -> Bool
    /// Makes one batch of extracted items durable. May wait (backpressure) until `stop`.
    func stage(_ batch: [Item], stop: StopToken) throws
    /// Records that the source has been read to its end.
    func finishExtraction() throws
    func makeWorker(index: Int) throws -> Worker
    /// Runs after every worker has drained (reporting, bookkeeping), on a thread of its own.
    func postProcess() throws
}

public enum WorkerStep: Sendable {
    /// Processed a unit of work.
    case worked
    /// Found nothing to do right now (and waited a little for work to appear).
    case idle
    /// Nothing is left and nothing more will come.
    case drained
}

public protocol ETLWorker: AnyObject {
    /// Claims and processes one unit of work, or waits briefly when there is none.
    func step(stop: StopToken) throws -> WorkerStep
    /// Releases the worker's resources; called once, after its last step.
    func close()
}

/// Anything the `Manager` can run.
public protocol Pipeline: Sendable {
    var name: String { get }
    func run(stop: StopToken) async throws
}

/// One failure or several, from the extractor, the workers or several pipelines.
public struct ETLErrors: Error, CustomStringConvertible {
    public let errors: [any Error]

    public init(_ errors: [any Error]) { self.errors = errors }

    public var description: String {
        errors.count == 1 ? "\(errors[0])" : errors.enumerated().map { "[\($0.offset + 1)] \($0.element)" }.joined(separator: "\n")
    }

    /// Throws nothing for no errors, the error itself for one, and all of them for several.
    static func throwIfAny(_ errors: [any Error]) throws {
        switch errors.count {
        case 0: return
        case 1: throw errors[0]
        default: throw ETLErrors(errors)
        }
    }
}

/// Runs one processor: pre-process, extraction into the bucket on its own thread,
/// `config.workers` workers on theirs, post-process. The first failure asks every other
/// part to stop at its next safe point, and all failures are reported together.
public struct ETLRunner<P: ETLProcessor>: Pipeline {
    public let processor: P
    public let config: BucketConfig
    /// False when the source was already read to its end (a resumed run with nothing left to extract).
    public let extractSource: Bool

    public init(processor: P, config: BucketConfig, extractSource: Bool = true) {
        self.processor = processor
        self.config = config
        self.extractSource = extractSource
    }

    public var name: String { processor.name }

    public func run(stop: StopToken) async throws {
        let processor = processor
        try await Threads.blocking(name: "\(processor.name)-recover") { try processor.preProcess() }
        let config = config
        let extractSource = extractSource
        let errors = await Threads.run(count: config.workers + 1, name: processor.name) { index in
            do {
                if index == config.workers {
                    if extractSource { try Self.extract(processor, config: config, stop: stop) }
                } else {
                    try Self.work(processor, index: index, stop: stop)
                }
            } catch {
                stop.request(.failure)
                throw error
            }
        }
        try ETLErrors.throwIfAny(errors)
        if !stop.isStopRequested {
            try await Threads.blocking(name: "\(processor.name)-finish") { try processor.postProcess() }
        }
    }

    private static func extract(_ processor: P, config: BucketConfig, stop: StopToken) throws {
        // Batches are staged on a thread of their own while the source is read further.
        let handoff = Handoff<P.Item>(name: "\(processor.name)-stage") { try processor.stage($0, stop: stop) }
        let bucket = Bucket<P.Item>(
            size: config.batchSize, maxWeight: config.maxBatchBytes, weigh: processor.weight(of:),
            flushTimeout: config.cutsByCountOnly ? .seconds(86_400 * 365) : config.flushTimeout
        ) { try handoff.submit($0) }
        let complete: Bool
        do {
            complete = try processor.extract({ try bucket.add($0) }, stop: stop)
            // A stop mid-scan still flushes what was read: it is staged with its position, so
            // nothing is read twice on resume. Batches cut by count alone are read again whole.
            if complete || !config.cutsByCountOnly { try bucket.finish() } else { bucket.abandon() }
            try handoff.finish()
        } catch {
            bucket.abandon()
            handoff.abandon()
            throw error
        }
        if complete { try processor.finishExtraction() }
    }

    private static func work(_ processor: P, index: Int, stop: StopToken) throws {
        let worker = try processor.makeWorker(index: index)
        defer { worker.close() }
        while !stop.isStopRequested {
            if case .drained = try worker.step(stop: stop) { return }
        }
    }
}

/// Runs several pipelines concurrently, at most `workers` at a time, and reports every failure.
public struct Manager: Sendable {
    public let workers: Int

    public init(workers: Int) {
        precondition(workers > 0, "manager workers must be positive")
        self.workers = workers
    }

    public func runAll(_ pipelines: [any Pipeline], stop: StopToken) async throws {
        try await stop.bridgingCancellation { try await run(pipelines, stop: stop) }
    }

    private func run(_ pipelines: [any Pipeline], stop: StopToken) async throws {
        var errors: [any Error] = []
        await withTaskGroup(of: (any Error)?.self) { group in
            var next = 0
            func launch() {
                let pipeline = pipelines[next]
                next += 1
                group.addTask {
                    do {
                        try await pipeline.run(stop: stop)
                        return nil
                    } catch {
                        return PipelineError(pipeline: pipeline.name, underlying: error)
                    }
                }
            }
            while next < min(workers, pipelines.count) { launch() }
            while let result = await group.next() {
                if let result { errors.append(result) }
                if next < pipelines.count, !stop.isStopRequested { launch() }
            }
        }
        try ETLErrors.throwIfAny(errors)
    }
}

public struct PipelineError: Error, CustomStringConvertible {
    public let pipeline: String
    public let underlying: any Error
    public var description: String { "\(pipeline): \(underlying)" }
}
