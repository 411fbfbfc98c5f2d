import Queue
import Testing
@testable import DurableETL

/// `start` and `resume` decide from what they know before writing anything: a refusal with
/// its exit code, or the steps in order. No service is needed to check either.
@Suite struct JobPlanTests {
    static let users = JobPlan.Target(name: "users", builtIn: true, declaredKeys: 14, missingKeys: 0, ownsTables: true)
    static let orders = JobPlan.Target(name: "orders", builtIn: false, declaredKeys: 2, missingKeys: 2, ownsTables: true)

    static func refusal(_ body: () throws -> [JobPlan.Step]) -> JobError? {
        do { _ = try body(); return nil } catch { return error as? JobError }
    }

    @Test func aNewStartLocksMigratesAndWritesTheManifestBeforeAnyQueue() throws {
        let steps = try JobPlan.start(.init(stateDirectory: "var/state", fresh: false, targets: [Self.users]))
        #expect(steps == [
            .lockTargets(["users"]), .lockStateDirectory, .migrate(["users"]), .checkTargets(["users"]),
            .prepareForeignKeys("users", .keysAfter), .removeOrphanQueues(["users"]), .writeManifest(["users": .keysAfter]), .createJob("users", .keysAfter),
        ])
    }

    @Test func aFreshStartDiscardsAndTruncatesOnlyOnceEveryLockIsHeld() throws {
        let steps = try JobPlan.start(.init(stateDirectory: "s", fresh: true, existingJobFinished: false,
                                            targets: [Self.users.with { $0.nonEmptyTable = "users" }, Self.orders]))
        let discard = try #require(steps.firstIndex(of: .discardPreviousJob))
        #expect(steps.firstIndex(of: .lockStateDirectory)! < discard && steps.firstIndex(of: .lockTargets(["users", "orders"]))! < discard)
        #expect(steps[discard...].prefix(3) == [.discardPreviousJob, .truncate("users"), .truncate("orders")])
    }

    @Test func eachRefusalHasItsExitCodeAndComesBeforeAnyStep() {
        let busy = JobLock.Busy(directory: "s", pid: "42")
        #expect(Self.refusal { try JobPlan.start(.init(stateDirectory: "s", busy: busy, fresh: true, targets: [Self.users])) }?.kind == .busy)
        let unfinished = Self.refusal { try JobPlan.start(.init(stateDirectory: "s", fresh: false, existingJobFinished: false, targets: [Self.users])) }
        #expect(unfinished?.kind == .usage && unfinished?.description.contains("run 'etl-job resume'") == true)
        let finished = Self.refusal { try JobPlan.start(.init(stateDirectory: "s", fresh: false, existingJobFinished: true, targets: [Self.users])) }
        #expect(finished?.description.contains("already finished") == true)
        let rows = Self.refusal { try JobPlan.start(.init(stateDirectory: "s", fresh: false, targets: [Self.orders.with { $0.nonEmptyTable = "orders_items" }])) }
        #expect(rows?.kind == .usage && rows?.description.contains("the target table orders_items already holds rows") == true)
        let file = Self.refusal { try JobPlan.start(.init(stateDirectory: "s", fresh: false, request: .init(option: "--source-file"), targets: [Self.users, Self.orders])) }
        #expect(file?.description == "--source-file names the source of one pipeline; this run has 2")
        let builtIns = [Self.users, Self.users.with { $0.name = "other" }]
        let named = Self.refusal { try JobPlan.start(.init(stateDirectory: "s", fresh: false, request: .init(namesCollection: true), targets: builtIns)) }
        #expect(named?.kind == .usage && named?.description.hasPrefix("--database and --collection name the source of one built-in pipeline") == true)
    }

    @Test func foreignKeysGoAfterTheLoadWhenTheRoleMayMoveThem() throws {
        let notOwner = Self.users.with { $0.ownsTables = false }
        let steps = try JobPlan.start(.init(stateDirectory: "s", fresh: false, targets: [notOwner]))
        #expect(steps.contains(.prepareForeignKeys("users", .during)), "a role that does not own the tables keeps their keys in place")
        let asked = Self.refusal { try JobPlan.start(.init(stateDirectory: "s", fresh: false, targets: [notOwner], requestedForeignKeys: .after)) }
        #expect(asked?.kind == .usage && asked?.description.contains("needs a role that owns") == true)
        let noneInPlace = notOwner.with { $0.missingKeys = 14 }
        #expect(try JobPlan.start(.init(stateDirectory: "s", fresh: false, targets: [noneInPlace])).contains(.createJob("users", .after)),
                "a role that does not own the tables keeps their primary keys in place")
        let keysAsked = Self.refusal { try JobPlan.start(.init(stateDirectory: "s", fresh: false, targets: [noneInPlace], requestedForeignKeys: .keysAfter)) }
        #expect(keysAsked?.kind == .usage && keysAsked?.description.contains("needs a role that owns") == true)
        #expect(try JobPlan.start(.init(stateDirectory: "s", fresh: false, targets: [Self.users], requestedForeignKeys: .during))
            .contains(.createJob("users", .during)))
        #expect(try JobPlan.start(.init(stateDirectory: "s", fresh: false, targets: [Self.users], requestedForeignKeys: .after))
            .contains(.createJob("users", .after)), "--keys during: only the foreign keys after")
        #expect(try JobPlan.start(.init(stateDirectory: "s", fresh: false, targets: [Self.users])).contains(.createJob("users", .keysAfter)),
                "by default, on tables the role owns (or that do not exist yet), the keys after")
    }

    @Test func aResumeStartsWhatNeverStartedAndKeepsKeysInPlaceForJobsThatLoadWithThem() throws {
        let steps = try JobPlan.resume(.init(job: .init(stateDirectory: "s", hasJob: true), pipelines: [
            .init(target: Self.users, state: .unfinished(nil)),
            .init(target: Self.orders, state: .neverStarted(planned: .after)),
            .init(target: Self.users.with { $0.name = "done" }, state: .finished),
        ]))
        #expect(steps == [
            .lockTargets(["users", "orders"]), .migrate(["users", "orders"]), .checkTargets(["users", "orders"]),
            .addForeignKeys("users"), .prepareForeignKeys("orders", .after), .createJob("orders", .after),
        ])
        let later = try JobPlan.resume(.init(job: .init(stateDirectory: "s", hasJob: true), pipelines: [.init(target: Self.users, state: .unfinished(.keysAfter))]))
        #expect(later == [.lockTargets(["users"]), .migrate(["users"]), .checkTargets(["users"])], "a job with its keys after builds them only when its load completes")
        #expect(try JobPlan.resume(.init(job: .init(stateDirectory: "s", hasJob: true), pipelines: [.init(target: Self.users, state: .finished)])).isEmpty)
    }

    @Test func aResumeIsRefusedWithNothingToResumeAnotherSourceOrRowsBeforeItsFirstBatch() {
        #expect(Self.refusal { try JobPlan.resume(.init(job: .init(stateDirectory: "s", hasJob: false))) }?.description
            == "there is no job to resume in s; run 'etl-job start'")
        #expect(Self.refusal { try JobPlan.resume(.init(job: .init(stateDirectory: "s", hasJob: true, unknownPipeline: "gone"))) }?.kind == .usage)
        // A worker's directory (its partitions' queues): the job goes on with a worker, anywhere.
        let worker = Self.refusal { try JobPlan.resume(.init(job: .init(stateDirectory: "w", hasJob: false, ofWorker: true))) }
        #expect(worker?.kind == .usage && worker?.description.contains("w is an etl-job worker's state directory") == true
                && worker?.description.contains("run 'etl-job worker'") == true, "\(String(describing: worker))")
        let moved = JobPlan.ResumePipeline(target: Self.users, state: .unfinished(.after), differences: [.init("collection", "users", "usres")])
        #expect(Self.refusal { try JobPlan.resume(.init(job: .init(stateDirectory: "s", hasJob: true), pipelines: [moved])) }?.description
            == "the users job in s moves another collection or target: collection is 'usres' but the job was started on 'users'; use the same settings, or another --state-dir")
        let full = JobPlan.ResumePipeline(target: Self.orders.with { $0.nonEmptyTable = "orders" }, state: .neverStarted(planned: nil))
        #expect(Self.refusal { try JobPlan.resume(.init(job: .init(stateDirectory: "s", hasJob: true), pipelines: [full])) }?.description.contains("never started") == true)
    }
}

extension JobPlan.Target {
    func with(_ change: (inout Self) -> Void) -> Self {
        var copy = self
        change(&copy)
        return copy
    }
}
