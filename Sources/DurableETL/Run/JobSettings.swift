import ETLCore

/// Where a run reads, writes and keeps its state, for every pipeline it runs.
public struct JobSettings: Sendable {
    public var mongoURL: String
    public var postgresURL: String
    /// Holds one queue per pipeline, in a subdirectory named after it.
    public var stateDirectory: String
    /// The PostgreSQL schema of the tables, checkpoints and migrations (created if missing).
    /// Nil: the recorded job's on a resume, else `defaultSchema`.
    public var targetSchema: String?
    /// The whole run's worker budget, shared out among its pipelines.
    public var bucket: BucketConfig
    public var cursorBatchSize: Int32
    public var maxDocumentBytes: Int
    public var queueMapBytes: Int
    public var maxSetAside = SetAsideLimit.default
    public var allowEmpty = false
    /// What the command says about the source: a database or collection (only for a run of
    /// one built-in pipeline; without them a pipeline reads its mapping's source, and a resume
    /// the recorded one), or a source of another kind (only for a run of one pipeline).
    public var source = SourceRequest()
    /// When a new job puts its foreign keys in place (nil: `after`).
    public var foreignKeys: ForeignKeyMode?
    /// How the final step builds the keys it adds after the load.
    public var keyBuild = KeyBuild()
    /// `--unmapped`: the policy for fields a mapping does not name, over the mapping's own.
    public var unmapped: UnmappedPolicy?

    public static let defaultSchema = "public"
    public static let defaultMaxDocumentBytes = 8 << 20

    public init(
        mongoURL: String, postgresURL: String, stateDirectory: String, targetSchema: String? = nil,
        bucket: BucketConfig = BucketConfig(), cursorBatchSize: Int32 = 500,
        maxDocumentBytes: Int = defaultMaxDocumentBytes, queueMapBytes: Int = 64 << 20
    ) {
        self.mongoURL = mongoURL
        self.postgresURL = postgresURL
        self.stateDirectory = stateDirectory
        self.targetSchema = targetSchema
        self.bucket = bucket
        self.cursorBatchSize = cursorBatchSize
        self.maxDocumentBytes = maxDocumentBytes
        self.queueMapBytes = queueMapBytes
    }
}
