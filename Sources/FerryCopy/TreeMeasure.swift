import FerrySystem
import Synchronization
import SystemPackage

/// The size of what a copy or a move will create: what a pre-flight check compares with free
/// space and quota, and the totals for progress.
public struct TreeMeasurement: Sendable, Equatable {
    /// Sum of `st_size` of regular files, each inode once.
    public var bytes: UInt64 = 0
    /// Sum of allocated space (`st_blocks` × 512), each inode once: what the copy will occupy.
    public var allocatedBytes: UInt64 = 0
    /// Every entry, directories and the top-level items included: the inodes a copy needs, plus links.
    public var entries: UInt64 = 0
    public var files: UInt64 = 0
    public var directories: UInt64 = 0
    public var symlinks: UInt64 = 0
    public var specialFiles: UInt64 = 0
    /// Paths that are further links to an inode counted already.
    public var extraHardLinks: UInt64 = 0
    public var sparseFiles: UInt64 = 0
    /// Regular files whose data is not on disk (Lustre HSM `released`: size > 0, no blocks), and
    /// their size: on Lustre what a recall brings back, which the copy then needs room for. (On
    /// other filesystems such a file is only a hole, and these figures mean nothing.)
    public var releasedFiles: UInt64 = 0
    public var releasedBytes: UInt64 = 0
    /// Entries other than directories whose directory lacks its owner's write permission (0555):
    /// a relink renames them out of it, which only root may do there.
    public var entriesInReadOnlyDirectories: UInt64 = 0

    public init() {}

    /// Inodes the copy will create.
    public var inodes: UInt64 { entries - extraHardLinks }
}

final class MeasureVisitor: TreeVisitor, @unchecked Sendable {
    private let totals = Locked(TreeMeasurement())
    private let seenLinked = Locked<Set<FileID>>([])
    /// Counts entries and bytes as they are found, for a progress display (no totals: they are
    /// what is being measured).
    private let meter: ProgressMeter?

    init(meter: ProgressMeter? = nil) { self.meter = meter }

    func visit(_ entry: WalkEntry, in directory: WalkDirectory) throws -> VisitOutcome {
        let status = try directory.source.status(entry.name)
        // A file bind-mounted over one of the tree's (a directory is refused by the walk).
        if status.isMountRoot && !directory.isRoot { throw CopyError.mountPoint(path: directory.displayPath(entry.name)) }
        var firstLink = true
        if status.kind == .regular && status.linkCount > 1 {
            firstLink = seenLinked.withLock { $0.insert(status.fileID).inserted }
        }
        let inReadOnly = status.kind != .directory && (directory.status.map { $0.permissions & 0o200 == 0 } ?? false)
        totals.withLock { t in
            t.entries += 1
            if inReadOnly { t.entriesInReadOnlyDirectories += 1 }
            switch status.kind {
            case .directory: t.directories += 1
            case .symlink: t.symlinks += 1
            case .regular:
                t.files += 1
                guard firstLink else { t.extraHardLinks += 1; return }
                t.bytes += status.size
                t.allocatedBytes += status.blocks * 512
                if status.blocks * 512 < status.size { t.sparseFiles += 1 }
                if status.size > 0 && status.blocks == 0 {
                    t.releasedFiles += 1
                    t.releasedBytes += status.size
                }
            default: t.specialFiles += 1
            }
            if status.kind != .regular { t.allocatedBytes += status.blocks * 512 }
        }
        if let meter {
            meter.entries.add(1, ordering: .relaxed)
            if status.kind == .regular && firstLink { meter.bytes.add(status.size, ordering: .relaxed) }
        }
        return status.kind == .directory ? .descend(peer: nil) : .done
    }

    func leave(_ directory: WalkDirectory) throws {}

    var result: TreeMeasurement { totals.withLock { $0 } }
}

/// Gives an unprivileged owner write access to a directory whose contents are to go, through a
/// descriptor opened O_NOFOLLOW (fchmodat would follow a swapped-in symlink). Returns whether its
/// permissions were changed.
@discardableResult
func makeWritableForRemoval(_ name: ByteString, in parent: FileDescriptor, status: FileStatus) throws -> Bool {
    guard status.permissions & 0o700 != 0o700 else { return false }
    try parent.changeDirectoryMode(name, permissions: status.permissions | 0o700)
    return true
}

/// Removes a walked directory from its parent if it is empty (or gone already); false if something
/// is still in it. The walk's root is never removed.
func removeIfEmpty(_ directory: WalkDirectory) throws -> Bool {
    guard let parent = directory.parent else { return true }
    do {
        try parent.source.removeEntry(directory.name, isDirectory: true)
    } catch {
        switch error.code {
        case .notEmpty, .exists: return false
        case .notFound: return true
        default: throw error
        }
    }
    return true
}

/// Removes trees without following symlinks: entries are unlinked by name in directories opened
/// with `O_NOFOLLOW`, directories after their contents.
final class RemoveVisitor: TreeVisitor, @unchecked Sendable {
    let meter: ProgressMeter?
    init(meter: ProgressMeter?) { self.meter = meter }
    /// Each unlink takes the directory's lock: threads go to different directories instead.
    var visitsFilesWhereListed: Bool { true }

    func visit(_ entry: WalkEntry, in directory: WalkDirectory) throws -> VisitOutcome {
        meter?.entries.add(1, ordering: .relaxed)
        do {
            try directory.source.removeEntry(entry.name, isDirectory: false)
            return .done
        } catch {
            switch error.code {
            case .notFound:
                return .done
            case .isDirectory, .notPermitted:
                // A directory (unlink says EISDIR, or EPERM on some filesystems): empty it first.
                // An unprivileged owner may need to make it writable to do so.
                // Through a descriptor opened O_NOFOLLOW: fchmodat would follow a swapped-in symlink.
                let status = try? directory.source.status(entry.name)
                // Not a directory (an immutable file, another's file in a sticky directory):
                // that is the error to report, not the ENOTDIR of opening it as one.
                if error.code == .notPermitted && status?.kind != .directory { throw error }
                if !processIsPrivileged, let status, status.kind == .directory {
                    try makeWritableForRemoval(entry.name, in: directory.source, status: status)
                }
                return .descend(peer: nil)
            default:
                throw error
            }
        }
    }

    func leave(_ directory: WalkDirectory) throws {
        guard let parent = directory.parent else { return }
        try parent.source.removeEntry(directory.name, isDirectory: true)
    }
}

/// Removes a moved source entry by entry, and only where the published copy (the walk's peer)
/// holds the same: a file goes when its copy has the same size and modification time, a symlink
/// when its copy points to the same target, any other entry when its copy is of its kind with its
/// modification time, and a directory once it is empty. Anything written into the source after it
/// was verified (a new entry, an append, a rewrite, something renamed in) stays where it is, and is
/// counted as a survivor. Links are never followed, as in `RemoveVisitor`.
final class VerifiedRemoveVisitor: TreeVisitor, @unchecked Sendable {
    /// Entries left in place: how many, and the first few paths.
    let survivors = Locked<(count: Int, first: [String])>((0, []))
    /// Directories an unprivileged owner had to make writable, with their permissions before:
    /// put back on those that survive.
    private let loosened = Locked<[FileID: UInt32]>([:])
    /// Inodes with several names, one of which this walk is removing or has removed: their ctime
    /// moves on with it, and their other names are still to be judged by size and mtime.
    private let unlinkedLinks = Locked<Set<FileID>>([])
    private let privileged = processIsPrivileged

    var visitsFilesWhereListed: Bool { true }

    private func survived(_ path: String) {
        survivors.withLock {
            $0.count += 1
            if $0.first.count < 10 { $0.first.append(path) }
        }
    }

    /// The status of `name` in `directory`, or nil if there is no such entry.
    private static func statusIfPresent(_ directory: FileDescriptor?, _ name: ByteString) throws -> FileStatus? {
        guard let directory else { return nil }
        do {
            return try directory.status(name)
        } catch {
            if error.code == .notFound { return nil }
            throw error
        }
    }

    func visit(_ entry: WalkEntry, in directory: WalkDirectory) throws -> VisitOutcome {
        // Gone already: removed before a crash.
        guard let status = try Self.statusIfPresent(directory.source, entry.name) else { return .done }
        let copy = try Self.statusIfPresent(directory.peer, entry.peerName)
        guard let peer = directory.peer, let copy, copy.kind == status.kind else {
            survived(directory.displayPath(entry.name))
            return .done
        }
        let same: Bool
        if status.kind == .directory, status.isMountRoot || ((directory.status ?? (try? directory.source.status())).map { status.isOnAnotherMount(than: $0) } ?? false) {
            // Mounted since the copy was made (the walks refuse to cross mounts, and a move
            // refuses a mount point as its source): nothing of it is the source's, and nothing of
            // it goes; not even made writable.
            throw CopyError.mountPoint(path: directory.displayPath(entry.name))
        }
        switch status.kind {
        case .directory:
            let copyDirectory = try peer.openAt(entry.peerName, [.directory, .noFollow])
            if !privileged {
                do {
                    if try makeWritableForRemoval(entry.name, in: directory.source, status: status) {
                        loosened.withLock { $0[status.fileID] = status.permissions }
                    }
                } catch {
                    copyDirectory.closeQuietly()
                    throw error
                }
            }
            return .descend(peer: copyDirectory)
        case .regular:
            let looksSame = copy.size == status.size && copy.modificationTime == status.modificationTime
            same = looksSame && (!changedSinceCopied(status, copy) || sameAfterAll(entry, in: directory, peer: peer, status, copy))
        case .symlink:
            same = try peer.readSymlink(entry.peerName) == directory.source.readSymlink(entry.name)
        default:
            same = copy.modificationTime == status.modificationTime
        }
        guard same else {
            survived(directory.displayPath(entry.name))
            return .done
        }
        // Before the unlink that moves its ctime on: a thread judging another name of it then
        // finds it here.
        if status.linkCount > 1 { unlinkedLinks.withLock { _ = $0.insert(status.fileID) } }
        do {
            try directory.source.removeEntry(entry.name, isDirectory: false)
        } catch {
            if error.code != .notFound { throw error }  // else: gone meanwhile
        }
        return .done
    }

    /// Whether the source file's status changed after its copy was made (the verifier's rule): a
    /// rewrite that put its mtime back (`cp -p`, `rsync -t`, `touch -r`), or only its attributes
    /// (`chattr -i` to let it go). Removing another name of the same inode in this walk is not a
    /// change (one removed before a crash is: `sameAfterAll` then decides).
    private func changedSinceCopied(_ status: FileStatus, _ copy: FileStatus) -> Bool {
        status.changeTime > copy.changeTime && !unlinkedLinks.withLock { $0.contains(status.fileID) }
    }

    /// For a file changed since its copy was made: it goes only if the copy still holds what it
    /// holds (its bytes, mode, owner and extended attributes, ACLs among them), not just the same
    /// size and mtime. What cannot be read to tell (a file its owner may not read) stays.
    private func sameAfterAll(_ entry: WalkEntry, in directory: WalkDirectory, peer: FileDescriptor,
                              _ status: FileStatus, _ copy: FileStatus) -> Bool {
        guard status.permissions == copy.permissions && status.uid == copy.uid && status.gid == copy.gid else { return false }
        // On Lustre, no blocks for its bytes: released to tape (HSM, which also moves the ctime
        // on), which reading would recall, file by file, inside the commit.
        if status.size > 0 && status.blocks == 0,
           (try? directory.source.filesystemStatistics().magic) == FilesystemStatistics.lustreMagic { return false }
        let unstoppable = CancellationFlag()
        do {
            // The source's attributes a copy takes, each the copy's (the copy may hold more: a
            // label given where it landed).
            let copied = try Self.attributes(peer, entry.peerName)
            guard try Self.attributes(directory.source, entry.name).allSatisfy({ copied[$0.key] == $0.value }) else { return false }
            return try VerifyVisitor.digest(directory.source, entry.name, cancellation: unstoppable) { _ in }
                == VerifyVisitor.digest(peer, entry.peerName, cancellation: unstoppable) { _ in }
        } catch {
            return false
        }
    }

    /// A file's extended attributes as a copy takes them (not Lustre's own of the inode, nor its
    /// layout, which a copy gets from its destination; without root's rights, no `trusted.*` or
    /// `security.*`, which only root may write).
    private static func attributes(_ directory: FileDescriptor, _ name: ByteString) throws(SystemError) -> [ByteString: ByteString] {
        let file = try directory.openAt(name, [.noFollow])
        defer { file.closeQuietly() }
        var found: [ByteString: ByteString] = [:]
        let names: [ByteString]
        do {
            names = try ExtendedAttributes.names(file)
        } catch {
            guard error.code == .notSupported else { throw error }
            names = []
        }
        let rootOnly = [Array("trusted.".utf8), Array("security.".utf8)]
        for attribute in names where !MetadataApplier.lustreInodeAttributes.contains(attribute)
            && !MetadataApplier.lustreLayoutAttributes.contains(attribute)
            && (processIsPrivileged || !rootOnly.contains { attribute.starts(with: $0) }) {
            found[attribute] = try ExtendedAttributes.value(file, attribute)
        }
        return found
    }

    func leave(_ directory: WalkDirectory) throws {
        // Not empty: something in it survived (and was counted), and it stays as it was.
        if try !removeIfEmpty(directory), let status = directory.status, let before = loosened.withLock({ $0[status.fileID] }) {
            try? directory.source.changeMode(permissions: before)
        }
    }
}

/// `fsync` of every file and directory walked (`CopyEngine.flush`, on FUSE): each file by
/// itself, each directory once its entries are done.
final class SyncVisitor: TreeVisitor, Sendable {
    func visit(_ entry: WalkEntry, in directory: WalkDirectory) throws -> VisitOutcome {
        let status = try directory.source.status(entry.name)
        switch status.kind {
        case .directory:
            return .descend(peer: nil)
        case .regular:
            // A file its owner may not read (mode 0200) may still be opened to write: fsync
            // takes either.
            let file: FileDescriptor
            do {
                file = try directory.source.openAt(entry.name, [.readOnly, .noFollow, .nonBlocking])
            } catch where error.code == .permissionDenied {
                file = try directory.source.openAt(entry.name, [.writeOnly, .noFollow, .nonBlocking])
            }
            defer { file.closeQuietly() }
            try file.sync()
            return .done
        default:
            return .done  // a symlink or a special file is its directory's entry: synced with it
        }
    }

    func leave(_ directory: WalkDirectory) throws {
        try directory.source.sync()
    }
}
