import Mongo
import Postgres

/// Why a document was set aside: the path of the offending field and what is wrong with it.
public struct RejectReason: Error, CustomStringConvertible, Sendable {
    public private(set) var path: [String]
    public let problem: String

    public init(_ problem: String, at field: String? = nil) {
        self.problem = problem
        path = field.map { [$0] } ?? []
    }

    /// The same reason, one level further out (`education` → `profile.education`).
    public func inside(_ parent: String) -> RejectReason {
        var copy = self
        copy.path.insert(parent, at: 0)
        return copy
    }

    public var description: String {
        guard var text = path.first else { return problem }
        for part in path.dropFirst() { text += part.hasPrefix("[") ? part : "." + part }
        return "field '\(text)' \(problem)"
    }
}

/// Runs `body`, prefixing the path of any rejection with `field` (made only then: an
/// array's `[index]` would otherwise be a string built for every entry of every document).
@inlinable
public func within<R>(_ field: @autoclosure () -> String, _ body: () throws -> R) throws -> R {
    do { return try body() } catch let reason as RejectReason { throw reason.inside(field()) }
}

/// Finds each of `names` among the elements of a document; a missing one is a rejection.
/// (Nothing allocated, and which names were found is a bit mask: it runs for every object
/// of every document.)
@inlinable
public func lookup(_ doc: BSONIterator, _ names: [StaticString]) throws(RejectReason) -> Fields {
    precondition(names.count <= Fields.capacity, "lookup finds at most \(Fields.capacity) names")
    var found: UInt64 = 0
    var fields = Fields(doc)
    var it = doc
    var next = 0
    while it.next() {
        // Documents usually hold their fields in the expected order: try that one first.
        if next < names.count, found & (1 << UInt64(next)) == 0, it.keyIs(names[next]) {
            fields.offsets[next] = it.elementOffset
            found |= 1 << UInt64(next)
            next += 1
            continue
        }
        var matched = false
        for i in names.indices where found & (1 << UInt64(i)) == 0 && it.keyIs(names[i]) {
            fields.offsets[i] = it.elementOffset
            found |= 1 << UInt64(i)
            matched = true
            break
        }
        if !matched { fields.strayCount += 1 }
    }
    let all: UInt64 = names.count == 64 ? ~0 : (1 << UInt64(names.count)) - 1
    if found != all {
        let missing = (~found & all).trailingZeroBitCount
        throw RejectReason("is missing", at: "\(names[missing])")
    }
    return fields
}

/// The elements `lookup` found, by the position of their names: where each starts in the
/// object, read again when asked for (an array of iterators, allocated per object, cost a
/// tenth of the users transform).
public struct Fields {
    /// As many as a bit mask of found names holds.
    @usableFromInline typealias Offsets = InlineArray<64, UInt32>
    public static var capacity: Int { Offsets.count }
    @usableFromInline let object: BSONIterator
    @usableFromInline var offsets = Offsets(repeating: 0)
    @usableFromInline var strayCount = 0
    /// Elements whose names were not asked for (or repeat one found): fields the caller does
    /// not name, which `strays(among:)` lists.
    public var strays: Int { strayCount }

    @inlinable
    init(_ object: BSONIterator) { self.object = object }

    @inlinable
    public subscript(index: Int) -> BSONIterator { object.element(at: offsets[index]) }

    /// The elements whose names are not among `names` (none unless `strays` counts some):
    /// each key with its type, nulls left out (a null holds nothing).
    public func strays(among names: [StaticString]) -> [(key: String, type: BSONType)] {
        guard strays > 0 else { return [] }
        var found: [(String, BSONType)] = []
        var it = object
        while it.next() {
            guard it.type != .null, it.type != .undefined, !names.contains(where: { it.keyIs($0) }) else { continue }
            found.append((it.key, it.type))
        }
        return found
    }
}

/// "an int32", "a string": a BSON type as a message names it.
@inlinable
public func article(_ type: BSONType) -> String {
    switch type {
    case .array, .document, .int32, .int64, .objectId, .undefined, .other: "an \(type.name)"
    default: "a \(type.name)"
    }
}

/// Typed reads of one element, each a rejection naming the field when the type is wrong.
extension BSONIterator {
    @inlinable
    public func mismatch(_ name: StaticString?, expected: String) -> RejectReason {
        RejectReason("is \(article(type)), expected \(expected)", at: name.map { "\($0)" })
    }

    @inlinable
    public func int64(_ name: StaticString) throws(RejectReason) -> Int64 {
        if let v = integer { return v }
        if type == .double { throw RejectReason("is \(displayValue), expected an integer", at: "\(name)") }
        throw mismatch(name, expected: "an integer")
    }

    @inlinable
    public func int32(_ name: StaticString) throws(RejectReason) -> Int32 {
        let v = try int64(name)
        guard let v32 = Int32(exactly: v) else { throw RejectReason("is \(v), not a 32-bit integer", at: "\(name)") }
        return v32
    }

    @inlinable
    public func finite(_ name: StaticString) throws(RejectReason) -> Double {
        guard let v = number else { throw mismatch(name, expected: "a number") }
        guard v.isFinite else { throw RejectReason("is \(v), expected a finite number", at: "\(name)") }
        return v
    }

    /// A string's UTF-8 bytes; invalid UTF-8 or an embedded NUL is a rejection.
    @inlinable
    public func string(_ name: StaticString?) throws(RejectReason) -> UnsafeRawBufferPointer {
        guard let bytes = utf8 else { throw mismatch(name, expected: "a string") }
        guard BSON.isValidUTF8(bytes) else {
            throw RejectReason("is not valid UTF-8 (or contains a NUL byte)", at: name.map { "\($0)" })
        }
        return bytes
    }

    /// Milliseconds since 1970 that PostgreSQL's timestamptz can hold.
    @inlinable
    public func date(_ name: StaticString) throws(RejectReason) -> Int64 {
        guard let v = dateTimeMillis else { throw mismatch(name, expected: "a date") }
        guard BinaryCopyWriter.timestampRangeMillis.contains(v) else {
            throw RejectReason("is a date out of range (\(v) ms from 1970; PostgreSQL's timestamptz holds 4713 BC to 294276 AD)", at: "\(name)")
        }
        return v
    }

    @inlinable
    public func boolean(_ name: StaticString) throws(RejectReason) -> Bool {
        guard let v = bool else { throw mismatch(name, expected: "a bool") }
        return v
    }

    @inlinable
    public func document(_ name: StaticString?) throws(RejectReason) -> BSONIterator {
        guard type == .document, let c = children else { throw mismatch(name, expected: "an object") }
        return c
    }

    @inlinable
    public func array(_ name: StaticString?) throws(RejectReason) -> BSONIterator {
        guard type == .array, let c = children else { throw mismatch(name, expected: "an array") }
        return c
    }
}
