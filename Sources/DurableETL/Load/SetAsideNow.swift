import Queue

/// The documents of a pipeline set aside now: those the snapshot set aside that no change
/// has touched since, and those the latest change to them set aside.
public enum SetAsideNow {
    /// `snapshot`: the pipeline's queue; `changes`: the directory of its change queue.
    public static func read(_ snapshot: DurableQueue, changes: String) throws -> [SetAsideDocument] {
        let initial = try snapshot.setAsideDocuments()
        guard DurableQueue.exists(in: changes) else { return initial }
        let current: (setAside: [SetAsideDocument], cleared: Set<String>)
        do {
            current = try DurableQueue(directory: changes, readOnly: true).currentDocuments()
        } catch {
            throw JobError.queue(error, changes)
        }
        let decided = current.cleared.union(current.setAside.map(\.documentId))
        return initial.filter { !decided.contains($0.documentId) } + current.setAside
    }
}
