import ETLCore
import Foundation
import Logging
import Mongo
import Postgres
import Queue

/// The documents of a batch as the loader writes them: the byte range of each (a
/// replacement's new version inside its change envelope; a deletion's envelope), what it does,
/// and where its `_id` is read from.
struct BatchDocuments {
    enum Kind: Equatable {
        case write(WriteMode)
        /// A change that changes no row (a quiet stream's position).
        case nothing
        /// An envelope that is not a change.
        case invalid
    }

    var ranges: [Range<Int>]
    var kinds: [Kind]
    var envelopes: [Range<Int>]
    /// When each change was made (seconds since 1970), where the source tells.
    var times: [Double?]

    /// Nil when the payload is not documents laid end to end.
    init?(_ payload: [UInt8], changes: Bool) {
        guard let framed = BSONSequence.ranges(payload) else { return nil }
        envelopes = framed
        ranges = framed
        times = Array(repeating: nil, count: framed.count)
        guard changes else {
            kinds = Array(repeating: .write(.append), count: framed.count)
            return
        }
        kinds = []
        payload.withUnsafeBytes { raw in
            for (i, envelope) in framed.enumerated() {
                guard let change = Change.parse(UnsafeRawBufferPointer(rebasing: raw[envelope])) else {
                    kinds.append(.invalid)
                    continue
                }
                kinds.append(change.mode.map(Kind.write) ?? .nothing)
                times[i] = change.time
                if let document = change.document {
                    ranges[i] = (envelope.lowerBound + document.lowerBound)..<(envelope.lowerBound + document.upperBound)
                }
            }
        }
    }

    /// The documents a batch of changes touches, as set-aside records name them (none for a
    /// snapshot's batch).
    func touched(_ payload: [UInt8]) -> [String] {
        payload.withUnsafeBytes { raw in
            kinds.indices.filter { kinds[$0] != .nothing && kinds[$0] != .write(.append) }
                .map { BSONSequence.displayId(UnsafeRawBufferPointer(rebasing: raw[envelopes[$0]])) }
        }
    }

    /// The documents whose rows are written.
    var copied: [Int] { kinds.indices.filter { kinds[$0] == .write(.append) || kinds[$0] == .write(.replace) } }
    /// The documents whose existing rows are removed first.
    var keyed: [Int] { kinds.indices.filter { kinds[$0] == .write(.replace) || kinds[$0] == .write(.delete) } }
}
