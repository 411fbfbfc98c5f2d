import ArgumentParser
import DurableETL
import ETLCore
import Foundation
import Queue

/// Machine output: every `--json` document carries `schemaVersion` and `etlJob` (the version
/// and commit that wrote it), its keys are always
/// present (null where a value is unknown), and they are sorted.
enum JSONOutput {
    /// 2: pipelines carry `unmapped`, the fields their mappings did not name.
    static let schemaVersion = 2

    /// `object` as one line of JSON; nil values (at any depth) become null.
    /// The version and commit that wrote a document: its `etlJob` key.
    struct Stamp: Encodable {
        let version = VersionInfo.etlJob
        let commit = VersionInfo.commit

        func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(version, forKey: .version)
            try container.encode(commit, forKey: .commit)  // null, not absent, when unknown
        }
        private enum CodingKeys: String, CodingKey { case version, commit }
    }
    static let stamp = Stamp()

    static func text(_ object: [String: Any?]) -> String {
        String(decoding: data(object), as: UTF8.self)
    }

    static func data(_ object: [String: Any?]) -> Data {
        var document = object
        document["schemaVersion"] = schemaVersion
        document["etlJob"] = ["version": stamp.version, "commit": stamp.commit] as [String: Any?]
        return try! JSONSerialization.data(withJSONObject: plain(document), options: [.sortedKeys, .withoutEscapingSlashes])
    }

    private static func plain(_ value: Any?) -> Any {
        switch value {
        case nil: return NSNull()
        case let dictionary as [String: Any?]: return dictionary.mapValues(plain)
        case let dictionary as [String: Any]: return dictionary.mapValues(plain)
        case let array as [Any?]: return array.map(plain)
        case let array as [Any]: return array.map(plain)
        case let some?: return some
        }
    }
}

struct ReportOptions: ParsableArguments {
    @Option(name: .customLong("report-json"), help: ArgumentHelp(
        "Write the final report as JSON to this file (atomically), whatever the outcome.", valueName: "file"))
    var reportJSON: String?
}

/// The final report of `start`/`resume` for `--report-json`: counts per pipeline and table,
/// documents set aside, timings, and how the run ended.
enum ReportJSON {
    static func document(_ report: RunReport?, outcome: RunOutcome) -> [String: Any?] {
        [
            "exitCode": Int(outcome.exitCode),
            "exitReason": outcome.reason,
            "error": outcome.failure.map { Redact.url($0.description) },
            "seconds": report?.seconds,
            "cpuSeconds": report?.usage.cpuSeconds,
            "peakMemoryBytes": report?.usage.peakResidentBytes,
            "documentsLoaded": report?.documentsLoaded ?? 0,
            "documentsSetAside": report?.documentsSetAside ?? 0,
            "totalRows": report?.totalRows ?? 0,
            "thisRun": report.map { r -> [String: Any?] in
                let run = r.thisRun
                return ["documentsLoaded": run.documents, "documentsSetAside": run.setAside, "totalRows": run.rows, "resumed": r.resumed]
            } as Any?,
            "phases": Dictionary(uniqueKeysWithValues: RunReport.Phase.allCases.map { phase in
                (phase.rawValue, report?.phases.first { $0.0 == phase }?.1 as Any?)
            }),
            "stages": Dictionary(uniqueKeysWithValues: Stage.allCases.map { stage in
                (stage.label, report?.stages.first { $0.0 == stage }?.1 as Any?)
            }),
            "changes": report?.lags.map { lags -> [String: Any?] in
                let applied = (report?.pipelines ?? []).map(\.applied)
                let stats = RunReport.lagStatistics(lags)
                return [
                    "replaced": applied.reduce(0) { $0 + $1.replaced }, "deleted": applied.reduce(0) { $0 + $1.deleted },
                    "setAside": applied.reduce(0) { $0 + $1.setAside },
                    "lagSeconds": stats.map { ["median": $0.median, "p99": $0.p99, "max": $0.max] } as Any?,
                ]
            } as Any?,
            "pipelines": (report?.pipelines ?? []).map { p -> [String: Any?] in
                [
                    "pipeline": p.name,
                    "job": p.status.jobId,
                    "documentsLoaded": p.status.documentsLoaded,
                    "documentsSetAside": p.status.documentsSetAside,
                    "rows": Dictionary(uniqueKeysWithValues: p.tables.map { ($0, p.status.rows[$0] ?? 0) }),
                    "totalRows": p.status.totalRows,
                    "finished": p.status.finishedAt != nil,
                    "alreadyFinished": p.alreadyFinished,
                    "failure": p.failure,
                    "unmapped": p.unmapped.map(unmappedJSON),
                ]
            },
        ]
    }

    static func write(_ report: RunReport?, outcome: RunOutcome, to path: String) throws {
        do {
            try AtomicFile.write(JSONOutput.data(document(report, outcome: outcome)), to: path)
        } catch {
            throw JobError(.ioError, "cannot write the report to \(path): \(error.localizedDescription)")
        }
    }
}

/// One path of a pipeline's unmapped fields, as every `--json` output gives it.
func unmappedJSON(_ field: UnmappedSummary) -> [String: Any?] {
    ["path": field.path, "documents": field.documents, "types": field.types, "exampleId": field.exampleId, "outcome": field.outcome,
     "firstSeen": field.firstSeen]
}
