import FerryJobs
import FerrySystem

/// The path locks a task takes: from its request at validation, and from its record when a
/// stopped commit is resumed.
extension MoveEngine {
    /// How long a task waiting for another's lock waits before it looks again, at most: the
    /// holder's end makes it claimable at once (`TaskStore.wait`), so this only bounds what a
    /// missed wake-up costs (a holder that a ferry of an older version ends, say).
    static let lockWaitDelay: Duration = .seconds(15)

    /// The paths a transfer touches, as locks: each source and each final name, on its filesystem.
    static func locks(for transfer: Transfer, taskID: String) throws -> [PathLock] {
        let destinationDevice = try device(transfer.destination)
        return try zip(transfer.sources, transfer.sourcePaths).map { source, path in
            PathLock(taskID: taskID, filesystem: try device(source.directory), path: StoredPath(path))
        } + transfer.finalPaths.map { PathLock(taskID: taskID, filesystem: destinationDevice, path: StoredPath($0)) }
    }

    /// The same locks from a planned task's record, whose sources may be gone (published, or
    /// being removed): their directories, which a commit never removes, give the filesystem.
    func locks(_ task: TaskRecord, _ plan: TaskPlan) throws -> [PathLock] {
        let opener = DirectoryOpener(roots: settings.roots)
        defer { opener.close() }
        let destination = try opener.openDirectory(plan.destinationDirectory.bytes)
        defer { destination.closeQuietly() }
        let destinationDevice = try Self.device(destination)
        var locks: [PathLock] = []
        for source in task.sources {
            let path = Transfer.absolute(source.bytes)
            let directory = try opener.openDirectory(BytePath.split(path).parent)
            defer { directory.closeQuietly() }
            locks.append(PathLock(taskID: task.id, filesystem: try Self.device(directory), path: StoredPath(path)))
        }
        for final in plan.finalNames {
            locks.append(PathLock(taskID: task.id, filesystem: destinationDevice, path: StoredPath(BytePath.join(plan.destinationDirectory.bytes, final.bytes))))
        }
        return locks
    }

    static func device(_ fd: FileDescriptor) throws -> String {
        let status = try fd.status()
        return "\(status.deviceMajor):\(status.deviceMinor)"
    }
}
