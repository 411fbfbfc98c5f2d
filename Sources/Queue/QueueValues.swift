/// A batch handed to a worker: its queue id and the documents as stored (laid end to end, as
/// the engine wrote them: opaque bytes to the queue).
public struct QueueBatch: Sendable {
    public let id: UInt64
    public let documentCount: Int
    /// Empty for a batch whose documents stay in the source (`isExternal`).
    public let payload: [UInt8]
    /// The queue keeps only where the documents are (the batch's extent in a plain source
    /// file), their count and checksum; the worker reads them from the file and checks them.
    public let isExternal: Bool
    /// The source position after the batch (nil for a batch recorded before extents were kept).
    public let position: [UInt8]?

    public init(id: UInt64, documentCount: Int, payload: [UInt8], isExternal: Bool = false, position: [UInt8]? = nil) {
        self.id = id
        self.documentCount = documentCount
        self.payload = payload
        self.isExternal = isExternal
        self.position = position
    }
}

/// A document that did not fit the target, kept whole with the reason.
public struct SetAsideDocument: Sendable, Equatable {
    public let batch: UInt64
    public let documentId: String
    public let reason: String
    public let document: [UInt8]

    public init(batch: UInt64, documentId: String, reason: String, document: [UInt8]) {
        self.batch = batch
        self.documentId = documentId
        self.reason = reason
        self.document = document
    }
}

/// The outcome of a committed batch, recorded when it is marked done.
public struct BatchOutcome: Sendable, Equatable {
    public var documentsLoaded: Int
    public var rows: [String: Int64]
    public var setAside: [SetAsideDocument]
    /// Documents whose rows a batch of changes removed (deleted in the source).
    public var documentsDeleted: Int
    /// For a batch of changes: every document it changed (as `SetAsideDocument.documentId`
    /// names them), so that the queue knows which are set aside now and which no longer are.
    public var touched: [String]
    /// For a batch of changes: when its latest change was made at the source (seconds since 1970).
    public var latestChange: Double?

    public init(documentsLoaded: Int, rows: [String: Int64], setAside: [SetAsideDocument], documentsDeleted: Int = 0, touched: [String] = [],
                latestChange: Double? = nil) {
        self.documentsLoaded = documentsLoaded
        self.rows = rows
        self.setAside = setAside
        self.documentsDeleted = documentsDeleted
        self.touched = touched
        self.latestChange = latestChange
    }
}

/// What the queue knows about a job, as `status` shows it.
public struct QueueStatus: Sendable, Codable, Equatable {
    public var jobId: String
    public var createdAt: Double
    public var sourceTotal: Int64?
    public var extracted: Int64
    public var extractionFinished: Bool
    public var batches: Int
    public var pending: Int
    public var inFlight: Int
    public var done: Int
    public var documentsLoaded: Int64
    public var documentsSetAside: Int64
    public var documentsDeleted: Int64 = 0
    public var rows: [String: Int64]
    public var runStartedAt: Double?
    public var runStartLoaded: Int64
    /// Documents loaded, deleted or set aside when the run began.
    public var runStartHandled: Int64 = 0
    public var finishedAt: Double?
    /// For a queue of changes: when the latest change applied was made at the source.
    public var appliedChange: Double?
    /// When the job puts its foreign keys in place (`after`, `during`); nil for a job of
    /// etl-job 0.2 or earlier, which kept them in place.
    public var foreignKeys: String?

    public var totalRows: Int64 { rows.values.reduce(0, +) }
    public var isComplete: Bool { extractionFinished && pending == 0 && inFlight == 0 }
}
