/// The decisions of `etl-job worker`, as a state machine: each event of the worker (a claim
/// made or not, a partition loaded, the unfinished jobs read, their final steps tried, a wait
/// over, a stop) returns the next action, and the worker does the I/O. Pure: tested without
/// services, as `JobPlan`'s plans are.
extension JobPlan {
    public struct Worker: Sendable, Equatable {
        public enum Action: Sendable, Equatable {
            /// Claim the first pending partition of the oldest unfinished job no live worker holds.
            case claim
            /// Load the partition claimed, mark it done, and hand its lease on.
            case load
            /// Read the unfinished jobs.
            case readJobs
            /// Try each unfinished job's final step (it runs once its partitions are all done).
            case finishJobs
            /// Wait until another worker marks a partition done or finishes a job, or a short
            /// while; `announce`: the pipelines to say it waits for, the first time.
            case wait(announce: [String]?)
            /// End the worker; `unfinished`: the pipelines whose jobs other workers still load.
            case exit(unfinished: [String])
        }

        /// Whether the worker waits for the others (`--wait`) rather than exiting.
        let waits: Bool
        private var announced = false

        public init(waits: Bool) { self.waits = waits }

        public mutating func start() -> Action { .claim }

        /// A claim was tried: it found a partition, or none is pending.
        public mutating func claimed(_ found: Bool) -> Action {
            guard found else { return .readJobs }
            announced = false
            return .load
        }

        /// The partition was loaded, or handed over to the worker that took it over.
        public mutating func loaded() -> Action { .claim }

        public mutating func read(unfinishedJobs count: Int) -> Action { count == 0 ? .exit(unfinished: []) : .finishJobs }

        /// The final steps were tried; `waiting`: the pipelines whose jobs other workers still load.
        public mutating func finished(waiting: [String]) -> Action {
            guard !waiting.isEmpty else { return .claim }
            guard waits else { return .exit(unfinished: waiting) }
            defer { announced = true }
            return .wait(announce: announced ? nil : waiting)
        }

        public mutating func waited() -> Action { .claim }

        /// A stop was requested: the worker claims nothing more.
        public mutating func stopped() -> Action { .exit(unfinished: []) }
    }
}
