#if canImport(Glibc)
import Glibc
#endif

/// A file operation on the state directory that failed: which path, what, and why, in one line.
public struct StateFileError: Error, CustomStringConvertible {
    public let operation: String
    public let path: String
    public let code: Int32

    public init(_ operation: String, _ path: String, code: Int32 = errno) {
        self.operation = operation
        self.path = path
        self.code = code
    }

    public var description: String {
        "cannot \(operation) \(path): \(String(cString: strerror(code))); "
            + "fix it (or remove that path by hand), then run the command again"
    }
}

/// Removing what a job keeps in its state directory, robust to whatever a kill left behind.
public enum StateFiles {
    /// Removes `path` (a file, or a directory and everything under it); nothing when it is absent.
    ///
    /// A directory is first renamed aside to `.<name>.discarding`, in one step: a process that
    /// opens it by name meanwhile (an `etl-job status`, whose read-only LMDB open creates a lock
    /// file) finds either the whole queue or none, and cannot add files to the one being removed
    /// after its entries were listed. A kill halfway leaves only that aside copy, which the next
    /// removal of the same path removes first.
    public static func remove(_ path: String) throws {
        let aside = asidePath(path)
        try removeTree(aside)
        guard try isDirectory(removingAFile: path) else { return }
        guard rename(path, aside) == 0 else {
            if errno == ENOENT { return }
            throw StateFileError("move aside", path)
        }
        try removeTree(aside)
    }

    /// Where `remove` puts a directory while it empties it.
    public static func asidePath(_ path: String) -> String {
        let slash = path.lastIndex(of: "/")
        let parent = slash.map { String(path[...$0]) } ?? ""
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        return parent + "." + name + ".discarding"
    }

    /// True when `path` is a directory; a file there is removed, and then (or when nothing is
    /// there) false.
    private static func isDirectory(removingAFile path: String) throws -> Bool {
        var info = stat()
        guard lstat(path, &info) == 0 else {
            if errno == ENOENT { return false }
            throw StateFileError("inspect", path)
        }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            if unlink(path) != 0 && errno != ENOENT { throw StateFileError("remove", path) }
            return false
        }
        return true
    }

    private static func removeTree(_ path: String) throws {
        guard try isDirectory(removingAFile: path) else { return }
        // A file created while the entries were removed makes rmdir fail with ENOTEMPTY:
        // list and remove again (only a process that opened the directory before it was
        // renamed aside can still add one, so this ends).
        for _ in 0..<10 {
            for name in try entries(path) { try removeTree(path + "/" + name) }
            if rmdir(path) == 0 || errno == ENOENT { return }
            guard errno == ENOTEMPTY || errno == EEXIST else { throw StateFileError("remove", path) }
        }
        throw StateFileError("remove", path, code: ENOTEMPTY)
    }

    private static func entries(_ path: String) throws -> [String] {
        guard let directory = opendir(path) else {
            if errno == ENOENT { return [] }
            throw StateFileError("list", path)
        }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: MemoryLayout.size(ofValue: entry.pointee.d_name)) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}
