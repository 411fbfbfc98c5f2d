import Mongo
import Queue

extension Framing {
    /// The queue's payloads are BSON documents laid end to end: the engine, not the queue,
    /// knows how to read their lengths.
    public static let bson = Framing { BSONSequence.ranges($0)?.count }
}
