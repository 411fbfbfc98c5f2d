import Testing
@testable import DurableETL

/// `etl-job worker` decides from what it met (a claim, a load, the unfinished jobs, their
/// final steps, a wait, a stop) what to do next. No service is needed to check it.
@Suite struct WorkerPlanTests {
    @Test func aWorkerClaimsLoadsAndClaimsAgainUntilNoJobIsLeft() {
        var worker = JobPlan.Worker(waits: false)
        #expect(worker.start() == .claim)
        #expect(worker.claimed(true) == .load)
        #expect(worker.loaded() == .claim)
        #expect(worker.claimed(false) == .readJobs)
        #expect(worker.read(unfinishedJobs: 1) == .finishJobs)
        #expect(worker.finished(waiting: []) == .claim, "a job it finished: another look for partitions")
        #expect(worker.claimed(false) == .readJobs)
        #expect(worker.read(unfinishedJobs: 0) == .exit(unfinished: []))
    }

    @Test func withoutWaitAWorkerLeavesTheJobsOthersStillLoad() {
        var worker = JobPlan.Worker(waits: false)
        _ = worker.start()
        _ = worker.claimed(false)
        _ = worker.read(unfinishedJobs: 2)
        #expect(worker.finished(waiting: ["users", "notes"]) == .exit(unfinished: ["users", "notes"]))
    }

    @Test func withWaitAWorkerSaysOnceWhatItWaitsForUntilItClaimsAgain() {
        var worker = JobPlan.Worker(waits: true)
        _ = worker.start()
        _ = worker.claimed(false)
        _ = worker.read(unfinishedJobs: 1)
        #expect(worker.finished(waiting: ["users"]) == .wait(announce: ["users"]))
        #expect(worker.waited() == .claim)
        _ = worker.claimed(false)
        _ = worker.read(unfinishedJobs: 1)
        #expect(worker.finished(waiting: ["users"]) == .wait(announce: nil), "said once")
        #expect(worker.waited() == .claim)
        #expect(worker.claimed(true) == .load, "a partition another worker left")
        _ = worker.loaded()
        _ = worker.claimed(false)
        _ = worker.read(unfinishedJobs: 1)
        #expect(worker.finished(waiting: ["users"]) == .wait(announce: ["users"]), "said again after a claim")
    }

    @Test func aStopEndsTheWorkerWithNothingLeftUnsaid() {
        var worker = JobPlan.Worker(waits: true)
        _ = worker.start()
        #expect(worker.stopped() == .exit(unfinished: []))
    }

    @Test func eachRefusalOfAnUnknownPipelineNamesWhoseJobItIs() {
        #expect(JobPlan.unknownPipeline("orders", of: .stateDirectory("var/state")).description
            == "the job in var/state runs the pipeline 'orders', which this etl-job does not know")
        #expect(JobPlan.unknownPipeline("orders", of: .target).description
            == "the target's job split into partitions runs the pipeline 'orders', which this etl-job does not know")
        #expect(JobPlan.unknownPipeline("orders", of: .partitionedJob("abc")).description
            == "job abc loads the orders pipeline, which this etl-job does not know; name its mapping with --mapping")
    }

    @Test func startSplitIntoPartitionsRecordsItsJobInTheTargetNotTheStateDirectory() throws {
        var facts = JobPlan.StartFacts(stateDirectory: "var/state", fresh: false, targets: [JobPlanTests.users])
        facts.recordedIn = .partitions
        let steps = try JobPlan.start(facts)
        #expect(!steps.contains { if case .writeManifest = $0 { true } else if case .createJob = $0 { true } else { false } })
        #expect(steps.contains(.prepareForeignKeys("users", .keysAfter)))
    }
}
