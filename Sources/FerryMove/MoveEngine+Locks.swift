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
    /// Each is its directory's path as the kernel has it (symlinks resolved) and the name: a
    /// request through a symlinked directory locks the same path as one through the real name,
    /// and the two conflict. (As given, they never did, and both tasks ran on one tree.)
    static func locks(for transfer: Transfer, taskID: String) throws -> [PathLock] {
        let destinationDevice = try device(transfer.destination)
        let destination = transfer.destination.resolvedPath() ?? transfer.destinationPath
        return try zip(transfer.sources, transfer.sourcePaths).map { source, path in
            PathLock(taskID: taskID, filesystem: try device(source.directory), path: StoredPath(lockPath(source.directory, path)))
        } + transfer.sources.map { PathLock(taskID: taskID, filesystem: destinationDevice, path: StoredPath(BytePath.join(destination, $0.destinationName))) }
    }

    /// `path` (a directory's entry, as named) with the directory's resolved path in front.
    static func lockPath(_ directory: FileDescriptor, _ path: ByteString) -> ByteString {
        guard let resolved = directory.resolvedPath() else { return path }
        return BytePath.join(resolved, BytePath.split(path).name)
    }

    /// The same locks from a planned task's record, whose sources may be gone (published, or
    /// being removed): their directories, which a commit never removes, give the filesystem.
    func locks(_ task: TaskRecord, _ plan: TaskPlan) throws -> [PathLock] {
        let opener = DirectoryOpener(roots: settings.roots)
        defer { opener.close() }
        let destination = try opener.openDirectory(plan.destinationDirectory.bytes)
        defer { destination.closeQuietly() }
        let destinationDevice = try Self.device(destination)
        let destinationPath = destination.resolvedPath() ?? plan.destinationDirectory.bytes
        var locks: [PathLock] = []
        for source in task.sources {
            let path = Transfer.absolute(source.bytes)
            let directory = try opener.openDirectory(BytePath.split(path).parent)
            defer { directory.closeQuietly() }
            locks.append(PathLock(taskID: task.id, filesystem: try Self.device(directory), path: StoredPath(Self.lockPath(directory, path))))
        }
        for final in plan.finalNames {
            locks.append(PathLock(taskID: task.id, filesystem: destinationDevice, path: StoredPath(BytePath.join(destinationPath, final.bytes))))
        }
        return locks
    }

    static func device(_ fd: FileDescriptor) throws -> String {
        let status = try fd.status()
        return "\(status.deviceMajor):\(status.deviceMinor)"
    }
}
