import CCrypto
import CZlib
import Foundation

/// A mongodump output file that cannot be read as one: missing, damaged, or truncated.
public struct BSONFileError: Error, CustomStringConvertible, Sendable {
    public let description: String

    init(_ description: String) { self.description = description }
}

/// Reads a mongodump output file: BSON documents one after another, plain (`.bson`) or
/// gzip-compressed (`.bson.gz`; told by its content, not its name). Streaming: it holds one
/// read buffer and the document being read, whatever the file's size.
///
/// Positions are offsets in the uncompressed stream. Opening a plain file at a position is a
/// seek; opening a compressed file there decompresses everything before it (gzip has no
/// restart points), which costs about as long as reading that part again.
public final class BSONFileReader {
    public let path: String
    public let isCompressed: Bool
    /// The offset, in the uncompressed stream, of the next document.
    public private(set) var offset: UInt64

    private let file: gzFile
    private var buffer: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0

    public init(path: String, offset: UInt64 = 0) throws {
        guard let file = gzopen(path, "rb") else {
            throw BSONFileError("cannot open the source file \(path): \(String(cString: strerror(errno)))")
        }
        gzbuffer(file, 1 << 20)
        self.file = file
        self.path = path
        isCompressed = gzdirect(file) == 0
        buffer = .allocate(byteCount: 1 << 20, alignment: 8)
        self.offset = 0
        if offset > 0 {
            let reached = gzseek(file, Int(offset), SEEK_SET)
            guard reached == Int(offset) else {
                throw BSONFileError("the source file \(path) is shorter than the job's position \(offset) (\(zlibError())); it is not the file the job read")
            }
            self.offset = offset
        }
    }

    deinit {
        gzclose_r(file)
        buffer.deallocate()
    }

    /// A whole small file, gzip-compressed or not (mongodump's `.metadata.json[.gz]`); nil when
    /// it cannot be read.
    public static func contents(of path: String) -> Data? {
        guard let file = gzopen(path, "rb") else { return nil }
        defer { gzclose_r(file) }
        var data = Data()
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = chunk.withUnsafeMutableBytes { gzread(file, $0.baseAddress, UInt32($0.count)) }
            if n < 0 { return nil }
            if n == 0 { return data }
            data.append(contentsOf: chunk[..<Int(n)])
        }
    }

    /// The next document, or nil at the end of the file. A file that ends inside a document,
    /// or whose next length cannot be a document's, is an error naming the offset.
    public func next() throws -> [UInt8]? {
        try advance { Array($0) }
    }

    /// Calls `body` with the offset and length of each document of the plain (uncompressed)
    /// file at `path`, in order, reading only each document's last byte and the next one's
    /// length prefix (one `pread` of 5 bytes a document, where `skip` reads every byte). Stops
    /// where `skip` would throw (a length out of range, a document that does not end with its
    /// NUL, a file that ends inside a document) and returns false there; true at the end.
    public static func walkPlainFile(_ path: String, _ body: (UInt64, Int) -> Void) throws -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BSONFileError("cannot open the source file \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw BSONFileError("cannot read the size of the source file \(path): \(String(cString: strerror(errno)))") }
        let size = UInt64(info.st_size)
        // The previous document's last byte, then the next document's length prefix.
        var window: (UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0)
        func read(_ count: Int, into at: Int, from offset: UInt64) -> Bool {
            withUnsafeMutableBytes(of: &window) { pread(fd, $0.baseAddress! + at, count, off_t(offset)) == count }
        }
        func nextLength() -> Int {
            withUnsafeBytes(of: window) { Int(Int32(littleEndian: $0.loadUnaligned(fromByteOffset: 1, as: Int32.self))) }
        }
        if size == 0 { return true }
        guard size >= 4, read(4, into: 1, from: 0) else { return false }
        var offset: UInt64 = 0
        while true {
            let length = nextLength()
            guard length >= 5, length <= BSONSequence.maxDocumentBytes, offset + UInt64(length) <= size else { return false }
            let end = offset + UInt64(length)
            let rest = size - end
            guard read(rest >= 4 ? 5 : 1, into: 0, from: end - 1), window.0 == 0 else { return false }
            body(offset, length)
            offset = end
            if rest == 0 { return true }
            if rest < 4 { return false }
        }
    }

    /// Steps over the next document without copying it: its length, or nil at the end of the
    /// file (errors as `next`'s).
    public func skip() throws -> Int? {
        try advance { $0.count }
    }

    private func advance<T>(_ take: (UnsafeRawBufferPointer) -> T) throws -> T? {
        var needed = 4
        while true {
            guard try fill(needed) else {
                if end == start { return nil }
                throw BSONFileError("the source file \(path) ends inside the document at offset \(offset): "
                    + (needed == 4 ? "\(end - start) bytes remain, too few for a length (a truncated file)"
                       : "it declares \(needed) bytes, \(end - start) remain (a truncated file)"))
            }
            switch BSONSequence.frame(UnsafeRawBufferPointer(rebasing: buffer[start..<end]), at: 0) {
            case .incomplete(let more):
                needed = more
            case .invalidLength(let length):
                throw BSONFileError("the source file \(path) holds no document at offset \(offset): its length field says \(length) bytes "
                    + "(a damaged file, or not a mongodump .bson file)")
            case .unterminated(let length):
                throw BSONFileError("the document at offset \(offset) of the source file \(path) does not end where its length says "
                    + "(\(length) bytes): the file is damaged")
            case .document(let length):
                let document = take(UnsafeRawBufferPointer(rebasing: buffer[start..<(start + length)]))
                start += length
                offset += UInt64(length)
                return document
            }
        }
    }

    /// Makes at least `count` bytes available from `start`; false when the file ends first.
    private func fill(_ count: Int) throws -> Bool {
        if end - start >= count { return true }
        if buffer.count < count {
            let grown = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, buffer.count * 2), alignment: 8)
            grown.copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[start..<end]))
            buffer.deallocate()
            buffer = grown
            (start, end) = (0, end - start)
        } else if buffer.count - start < count {
            buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: end - start)
            (start, end) = (0, end - start)
        }
        while end - start < count {
            let read = gzread(file, buffer.baseAddress! + end, UInt32(buffer.count - end))
            if read < 0 {
                throw BSONFileError("cannot read the source file \(path) after offset \(offset + UInt64(end - start)): \(zlibError())")
            }
            if read == 0 {
                var code: Int32 = 0
                _ = gzerror(file, &code)
                if code == Z_BUF_ERROR {
                    throw BSONFileError("the compressed source file \(path) ends inside its gzip stream, after offset "
                        + "\(offset + UInt64(end - start)) of its content (a truncated file)")
                }
                return false
            }
            end += Int(read)
        }
        return true
    }

    private func zlibError() -> String {
        var code: Int32 = 0
        let message = gzerror(file, &code).map { String(cString: $0) } ?? ""
        return code == Z_ERRNO ? String(cString: strerror(errno)) : (message.isEmpty ? "end of file" : message)
    }

    /// Whether the file is gzip-compressed (its first two bytes are gzip's magic, as zlib
    /// tells); nil when it cannot be read.
    public static func isCompressed(path: String) -> Bool? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let head = try? handle.read(upToCount: 2) else { return nil }
        return head.count == 2 && head[head.startIndex] == 0x1F && head[head.startIndex + 1] == 0x8B
    }

    /// What identifies a source file: its size and the SHA-256 of its first MiB as stored.
    public static func identify(path: String) throws -> (size: Int64, headDigest: String) {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw BSONFileError("cannot open the source file \(path): \(String(cString: strerror(errno)))")
        }
        defer { try? handle.close() }
        let size = try handle.seekToEnd()
        try handle.seek(toOffset: 0)
        let head = try handle.read(upToCount: 1 << 20) ?? Data()
        var digest = [UInt8](repeating: 0, count: Int(SHA256_DIGEST_LENGTH))
        head.withUnsafeBytes { _ = SHA256($0.baseAddress?.assumingMemoryBound(to: UInt8.self), head.count, &digest) }
        return (Int64(size), digest.map { String(format: "%02x", $0) }.joined())
    }
}

/// Writes documents as a mongodump output file, gzip-compressed when asked. The file appears
/// under its name only when closed: a run killed while writing leaves no partial file there.
public final class BSONFileWriter {
    public let path: String
    private let partial: String
    private var file: gzFile?

    public init(path: String, compressed: Bool) throws {
        self.path = path
        partial = path + ".partial"
        guard let file = gzopen(partial, compressed ? "wb6" : "wbT") else {
            throw BSONFileError("cannot create \(partial): \(String(cString: strerror(errno)))")
        }
        gzbuffer(file, 1 << 20)
        self.file = file
    }

    deinit {
        if let file {
            gzclose_w(file)
            unlink(partial)
        }
    }

    public func write(_ document: UnsafeRawBufferPointer) throws {
        guard let file else { throw BSONFileError("\(path) is already closed") }
        guard gzwrite(file, document.baseAddress, UInt32(document.count)) == Int32(document.count) else {
            var code: Int32 = 0
            let described = String(cString: gzerror(file, &code))
            let message = code == Z_ERRNO ? String(cString: strerror(errno)) : described
            throw BSONFileError("cannot write \(partial): \(message)")
        }
    }

    /// Flushes, syncs and renames the file to its name.
    public func close() throws {
        guard let file else { return }
        self.file = nil
        guard gzclose_w(file) == Z_OK else {
            unlink(partial)
            throw BSONFileError("cannot write \(partial): \(String(cString: strerror(errno)))")
        }
        let fd = open(partial, O_RDONLY)
        defer { if fd >= 0 { Foundation.close(fd) } }
        guard fd >= 0, fsync(fd) == 0, rename(partial, path) == 0 else {
            throw BSONFileError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }
}

/// Reads byte ranges of a plain (uncompressed) file, as a worker reads a batch whose
/// documents the queue left in the source file.
public enum FileRange {
    public static func read(_ path: String, offset: UInt64, count: Int) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BSONFileError("cannot open the source file \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw BSONFileError("the source file \(path) ends before offset \(offset + UInt64(count)) "
                    + (n < 0 ? "(\(String(cString: strerror(errno))))" : "(it is shorter than when the job read it)"))
            }
            done += n
        }
        return bytes
    }
}
