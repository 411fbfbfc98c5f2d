import ETLCore
import Foundation
import Logging
import Postgres
import Queue

extension DurableJob {
    // MARK: Planning

    /// `start --partitions N`: every refusal and preparation of `start` (the target locked,
    /// migrated, checked, emptied with `fresh`, its keys dropped for the load), then each
    /// pipeline's source split into at most `count` ranges, recorded with the job in the
    /// target schema. Loads nothing; returns what it planned, in words.
    public func planPartitions(_ mappings: [any DocumentMapping], fresh: Bool, count: Int) throws -> [String] {
        let (steps, planned) = try planStart(mappings, fresh: fresh, recordedIn: .partitions)
        var run = planned
        var modes: [String: ForeignKeyMode] = [:]
        for case .prepareForeignKeys(let name, let mode) in steps { modes[name] = mode }
        // The ranges before anything is written: a source that cannot be split is refused first.
        var ranges: [String: (ranges: [SourcePartition], method: String)] = [:]
        for job in run.jobs {
            let split = try job.source.partitions(count)
            guard !split.ranges.isEmpty else { throw JobPlan.nothingToSplit(job.source.description) }
            ranges[job.name] = split
        }
        try execute(steps, &run)
        CrashPoint.prepared.reach()
        var lines: [String] = []
        for job in run.jobs {
            let db = run.db(job.name)
            let id = UUID().uuidString.lowercased()
            let (split, method) = ranges[job.name]!
            let mode = modes[job.name] ?? .keysAfter
            // Before any worker reads a document: where a later sync starts (as `start` records it).
            let start = Self.changeStreamStart(job, when: "was planned")
            try db.withTransaction {
                try run.locks[job.name]?.fence(db)
                try db.query("""
                    INSERT INTO etl_partitioned_jobs (job_id, pipeline, definition, identity, key_mode, batch_size, max_batch_bytes, method, change_stream_start)
                    VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9)
                    """, [id, job.name, job.mapping.definition, String(decoding: try job.identity(db).encoded(), as: UTF8.self), mode.rawValue,
                          String(settings.bucket.batchSize), String(settings.bucket.maxBatchBytes), method,
                          String(decoding: try JSONEncoder().encode(start), as: UTF8.self)])
                for (i, range) in split.enumerated() {
                    try db.query("INSERT INTO etl_partitions (job_id, partition, lower, upper, documents_planned) VALUES ($1, $2, decode($3, 'hex'), decode($4, 'hex'), $5)",
                                 [id, String(i + 1), range.lower.map(Self.hex), range.upper.map(Self.hex), range.documents.map(String.init)])
                }
            }
            let counts = split.map { $0.documents.map { $0.formatted(.number.grouping(.automatic)) } ?? "?" }
            lines.append("etl-job: planned job \(id) of the \(job.name) pipeline: \(split.count) partitions of \(job.source.description) "
                + "(\(method)), documents \(counts.joined(separator: ", ")); keys: \(Self.describe(mode, job.mapping))")
            logger.info("planned a job split into partitions", metadata: ["pipeline": "\(job.name)", "job": "\(id)", "partitions": "\(split.count)"])
        }
        // For a worker that planned (`worker --partitions`), its first sessions.
        run.releaseConnections()
        for job in run.jobs { run.locks[job.name]?.handBack(to: job.target) }
        return lines
    }

    /// `sync` with a state directory that holds no job: when the target's latest job split
    /// into partitions of each pipeline is finished, this directory takes it as its snapshot
    /// (a manifest, and a queue per pipeline recording the job, its identity and where the
    /// change stream stood when it was planned), so that the changes made since the plan are
    /// applied as after `start`. Returns what it adopted, in words (nothing: not such a target).
    public func adoptPartitionedJobs(resolve: (String, String?) throws -> (any DocumentMapping)?) throws -> [String] {
        guard try RunManifest.read(settings.stateDirectory) == nil else { return [] }
        let target = Target(url: settings.postgresURL, schema: settings.targetSchema ?? JobSettings.defaultSchema)
        // A target that cannot be reached holds nothing to adopt here: the sync's own checks say why.
        guard let db = try? target.connect(), try PartitionTable.exists(db) else { return [] }
        let rows = try db.execute("""
            SELECT DISTINCT ON (pipeline) job_id, pipeline, definition, identity::text, key_mode, change_stream_start, finished_at IS NOT NULL
            FROM etl_partitioned_jobs ORDER BY pipeline, planned_at DESC
            """).rows
        guard !rows.isEmpty else { return [] }
        let stateLock = try takeLock()
        defer { withExtendedLifetime(stateLock) {} }
        var jobs: [PipelineJob] = []
        var modes: [String: ForeignKeyMode] = [:]
        var lines: [String] = []
        for row in rows {
            let (id, pipeline) = (row[0]!, row[1]!)
            guard row[6] == "t" else {
                throw JobPlan.partitionedJobUnfinished(id, pipeline)
            }
            guard let mapping = try resolve(pipeline, row[2]) else {
                throw JobPlan.unknownPipeline(pipeline, of: .partitionedJob(id))
            }
            let identity = JobIdentity.decode(Array(row[3]!.utf8))
            try PipelineJob.refuseUnfollowablePolicy([mapping], settings)
            let job = PipelineJob(mapping: mapping, settings: settings, recorded: identity)
            let mode = ForeignKeyMode(rawValue: row[4] ?? "") ?? .keysAfter
            let start = row[5].flatMap { try? JSONDecoder().decode(ChangeStreamStart.self, from: Data($0.utf8)) }
                ?? .unavailable("job \(id) was planned by an etl-job that did not record where the change stream stood; load it again with 'etl-job start --fresh'")
            let queue = try job.openQueue()
            try queue.createJob(id: id, sourceTotal: nil, identity: Array(row[3]!.utf8), foreignKeys: mode.rawValue)
            try recordChangeStreamStart(job, queue, start: start)
            // What the workers loaded, for `status` of this directory.
            let totals = try db.query("SELECT coalesce(sum(documents_loaded), 0), coalesce(sum(documents_set_aside), 0) FROM etl_partitions WHERE job_id = $1",
                                      [id]).rows[0]
            let rows = try db.query("""
                SELECT r.key, sum(r.value::bigint) FROM etl_checkpoints c CROSS JOIN LATERAL jsonb_each_text(c.rows) AS r
                WHERE c.pipeline = $1 AND c.job_id LIKE $2 || '/%' GROUP BY r.key
                """, [pipeline, id]).rows
            try queue.countLoadedElsewhere(documents: Int64(totals[0] ?? "0") ?? 0, setAside: Int64(totals[1] ?? "0") ?? 0,
                                           rows: Dictionary(uniqueKeysWithValues: rows.map { ($0[0]!, Int64($0[1] ?? "0") ?? 0) }))
            try queue.finishExtraction()
            try queue.markFinished()
            jobs.append(job)
            modes[pipeline] = mode
            lines.append("etl-job: took job \(id) of the \(pipeline) pipeline, split into partitions and finished, as this state directory's snapshot")
        }
        try RunManifest(jobs, foreignKeys: modes).write(settings.stateDirectory)
        return lines
    }

    static func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    static func unhex(_ text: String?) -> [UInt8]? {
        guard let text else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count / 2)
        var index = text.startIndex
        while index < text.endIndex {
            let next = text.index(index, offsetBy: 2)
            bytes.append(UInt8(text[index..<next], radix: 16) ?? 0)
            index = next
        }
        return bytes
    }
}
