import Synchronization

/// How the running command goes on after a failure it can get past, as the job's errors and
/// messages advise it: `etl-job resume` continues the job of a state directory (the default);
/// a worker is run again instead, its partition waiting in the target for it or any other
/// (`etl-job worker` sets that before it starts).
public enum GoOn {
    private static let phrase = Mutex("run 'etl-job resume'")

    /// The advice, as a clause: "run 'etl-job resume'".
    public static var advice: String { phrase.withLock { $0 } }

    public static func advise(_ advice: String) { phrase.withLock { $0 = advice } }
}
