import FerrySystem
import SystemPackage

/// The copy visitor: recreates each entry under the walk's peer directory, data and metadata.
final class CopyVisitor: TreeVisitor, @unchecked Sendable {
    private enum LinkState {
        /// The first link is being copied; these entries wait to be linked to it.
        case copying(waiters: [(WalkDirectory, ByteString)], seen: UInt32)
        /// Copied at this path under the destination root.
        case copied(path: ByteString, seen: UInt32)
    }

    private let data: FileDataCopier
    private let metadata: MetadataApplier
    private let meter: ProgressMeter
    private let cancellation: CancellationFlag
    private let layoutCloner: (any LayoutCloner)?
    private let notes: CopyNotes
    private let privileged: Bool
    /// The directory the walk's peer side starts in: later links are made relative to it.
    private let destinationRoot: FileDescriptor
    /// Inodes with more than one link, until all their links inside the tree are seen.
    private let links = Locked<[FileID: LinkState]>([:])
    /// Continue a staging that an interrupted attempt left: keep what is complete, redo the rest.
    private let resume: Bool
    var movesFileData: Bool { true }

    init(options: CopyOptions, meter: ProgressMeter, notes: CopyNotes, destinationRoot: FileDescriptor, resume: Bool = false) {
        self.resume = resume
        data = FileDataCopier(allowClone: options.allowClone, allowCopyFileRange: options.allowCopyFileRange,
                              dropSourceCache: options.dropSourceCache)
        privileged = processIsPrivileged
        metadata = MetadataApplier(
            preserveOwnership: options.preserveOwnership, privileged: privileged,
            skippedAttributes: options.layoutCloner?.layoutAttributeNames ?? [], directoryLayoutAttributes: options.directoryLayoutAttributes,
            requireXattrs: options.requireXattrs, notes: notes)
        self.notes = notes
        self.meter = meter
        self.cancellation = options.cancellation
        self.layoutCloner = options.layoutCloner
        self.destinationRoot = destinationRoot
    }

    func visit(_ entry: WalkEntry, in directory: WalkDirectory) throws -> VisitOutcome {
        guard let peer = directory.peer else { return .done }
        let status = try directory.source.status(entry.name)
        if resume, let outcome = try resumeExisting(entry, status: status, in: directory, peer: peer) { return outcome }
        switch status.kind {
        case .directory:
            try peer.makeDirectory(entry.peerName, permissions: 0o700)
            meter.entries.add(1, ordering: .relaxed)
            return .descend(peer: try peer.openAt(entry.peerName, [.directory, .noFollow]))
        case .regular:
            if status.linkCount > 1 { return try copyLinked(entry, in: directory, peer: peer, status: status) }
            try copyFile(entry, in: directory, peer: peer)
        case .symlink:
            let target = try directory.source.readSymlink(entry.name)
            try peer.makeSymlink(entry.peerName, target: target)
            try metadata.apply(in: directory.source, entry.name, to: peer, entry.peerName, status: status,
                               path: directory.displayPath(entry.name))
        case .fifo, .socket, .characterDevice, .blockDevice:
            if (status.kind == .characterDevice || status.kind == .blockDevice) && !privileged {
                throw CopyError.unsupportedEntry(path: directory.displayPath(entry.name), kind: status.kind)
            }
            try peer.makeNode(entry.peerName, mode: (status.mode & ~0o7777) | 0o600,
                              deviceMajor: status.rdevMajor, deviceMinor: status.rdevMinor)
            try metadata.apply(in: directory.source, entry.name, to: peer, entry.peerName, status: status,
                               path: directory.displayPath(entry.name))
        case .unknown:
            throw CopyError.unsupportedEntry(path: directory.displayPath(entry.name), kind: .unknown)
        }
        meter.entries.add(1, ordering: .relaxed)
        return .done
    }

    func leave(_ directory: WalkDirectory) throws {
        guard let peer = directory.peer, let status = directory.status else { return }
        try metadata.apply(from: directory.source, to: peer, status: status, path: PathDisplay.string(directory.relativePath))
    }

    /// In a resumed stage: an entry that exists already is kept when it is complete (a directory is
    /// entered again; a file whose size, mode and mtime match was finished — times are set last), and
    /// removed otherwise so the normal path recreates it. Returns nil to continue on the normal path.
    private func resumeExisting(_ entry: WalkEntry, status: FileStatus, in directory: WalkDirectory, peer: FileDescriptor) throws -> VisitOutcome? {
        let existing: FileStatus
        do { existing = try peer.status(entry.peerName) } catch {
            if error.code == .notFound { return nil }
            throw error
        }
        if status.kind == .directory && existing.kind == .directory {
            meter.entries.add(1, ordering: .relaxed)
            // Its metadata is applied again when it is left; until then it must be writable, and
            // pass no default ACL (one an earlier attempt finished it with) to what is made in it
            // now, as a new staging directory does not (`inheritNothing`).
            try peer.changeMode(entry.peerName, permissions: 0o700)  // (in the private staging)
            let reopened = try peer.openAt(entry.peerName, [.directory, .noFollow])
            CopyEngine.inheritNothing(reopened)
            return .descend(peer: reopened)
        }
        let complete = status.kind == .regular && existing.kind == .regular && status.linkCount == 1
            && existing.size == status.size && existing.permissions == status.permissions
            && existing.modificationTime == status.modificationTime
            // Not changed since (its mtime put back by `cp -p` or `touch -r`): the staged file's
            // ctime is from its last metadata, set after its data.
            && status.changeTime <= existing.changeTime
        // Kept only if its data reached the disk: the run that wrote it may have died before its
        // flush, and a write-back error since is reported to this file's next fsync (which no one
        // else makes), not to a later syncfs, which another flush of the filesystem may have
        // consumed. A file whose flush fails is copied again.
        if complete, Self.flushes(entry.peerName, in: peer) {
            meter.entries.add(1, ordering: .relaxed)
            meter.bytes.add(status.size, ordering: .relaxed)
            meter.keptBytes.add(status.size, ordering: .relaxed)
            return .done
        }
        if existing.kind == .directory {
            try CopyEngine.removeTree(in: peer, entry.peerName)
        } else {
            try peer.removeEntry(entry.peerName, isDirectory: false)
        }
        return nil
    }

    static func flushes(_ name: ByteString, in directory: FileDescriptor) -> Bool {
        // Read-only, else write-only (no truncation) for a file its owner may not read (0200).
        guard let file = (try? directory.openAt(name, [.noFollow])) ?? (try? directory.openAt(name, [.writeOnly, .noFollow])) else { return false }
        defer { file.closeQuietly() }
        return (try? file.sync()) != nil
    }

    private func copyFile(_ entry: WalkEntry, in directory: WalkDirectory, peer: FileDescriptor) throws {
        let flags: OpenFlags = privileged ? [.noFollow, .noAccessTime] : [.noFollow]
        // O_NOFOLLOW: a file swapped for a symlink since the listing fails here instead of being
        // followed; one swapped for a fifo opens at once, to be refused below.
        let (source, before) = try directory.source.openRegularForReading(entry.name, flags)
        defer { source.closeQuietly() }
        guard before.kind == .regular else {
            throw CopyError.sourceChanged(path: directory.displayPath(entry.name), detail: "it is no longer a regular file")
        }
        meter.started(directory.displayPath(entry.name))
        let create: OpenFlags = [.writeOnly, .create, .exclusive, .noFollow]
        let destination = try peer.openAt(entry.peerName, create.union(layoutCloner?.createFlags ?? []), permissions: 0o600)
        var open = true
        defer { if open { destination.closeQuietly() } }
        if let layoutCloner {
            do {
                try layoutCloner.cloneLayout(from: source, to: destination)
            } catch {
                notes.add("\(directory.displayPath(entry.name)): layout not preserved (\(error)); the file has its directory's default layout")
            }
        }
        do {
            try data.copy(from: source, to: destination, status: before, cancellation: cancellation) { bytes in
                meter.bytes.add(bytes, ordering: .relaxed)
            }
        } catch {
            // Cut short while it was read: a changed source (not retried, nothing published), not
            // "no data available".
            let shrank = error.code == .noData && error.syscall.hasSuffix("(source ended early)")
            if shrank { throw CopyError.sourceChanged(path: directory.displayPath(entry.name), detail: "it shrank below its size of \(before.size) bytes while being copied") }
            throw error
        }
        if cancellation.isCancelled { throw CopyError.cancelled }
        let after = try source.status()
        if after.size != before.size || after.modificationTime != before.modificationTime || after.changeTime != before.changeTime {
            throw CopyError.sourceChanged(
                path: directory.displayPath(entry.name),
                detail: "size \(before.size) → \(after.size), mtime \(before.modificationTime) → \(after.modificationTime)")
        }
        try metadata.apply(from: source, to: destination, status: before, path: directory.displayPath(entry.name))
        open = false
        try destination.closeAfterWriting()
    }

    /// Hard links inside the tree stay links: the first path of an inode is copied, the others are
    /// linked to it — after the copy is complete, if another thread is still copying it.
    private func copyLinked(_ entry: WalkEntry, in directory: WalkDirectory, peer: FileDescriptor, status: FileStatus) throws -> VisitOutcome {
        let id = status.fileID
        let nlink = status.linkCount
        enum Role { case first, wait, link(ByteString) }
        let role: Role = links.withLock { table in
            switch table[id] {
            case nil:
                table[id] = .copying(waiters: [], seen: 1)
                return .first
            case .copying(var waiters, let seen)?:
                waiters.append((directory, entry.peerName))
                table[id] = .copying(waiters: waiters, seen: seen + 1)
                return .wait
            case .copied(let path, let seen)?:
                if seen + 1 >= nlink { table[id] = nil } else { table[id] = .copied(path: path, seen: seen + 1) }
                return .link(path)
            }
        }
        switch role {
        case .wait:
            return .deferred
        case .link(let path):
            try linkFirstCopy(path, to: peer, entry.peerName)
            meter.entries.add(1, ordering: .relaxed)
            return .done
        case .first:
            try copyFile(entry, in: directory, peer: peer)
            meter.entries.add(1, ordering: .relaxed)
            let path = BytePath.join(directory.peerRelativePath, entry.peerName)
            let waiters: [(WalkDirectory, ByteString)] = links.withLock { table in
                guard case .copying(let waiters, let seen)? = table[id] else { return [] }
                if seen >= nlink { table[id] = nil } else { table[id] = .copied(path: path, seen: seen) }
                return waiters
            }
            for (waitingDirectory, name) in waiters {
                guard let waitingPeer = waitingDirectory.peer else { continue }
                try linkFirstCopy(path, to: waitingPeer, name)
                meter.entries.add(1, ordering: .relaxed)
                waitingDirectory.finishDeferredEntry()
            }
            return .done
        }
    }

    /// A link to the first copy of a file, at `path` beneath the destination's root, as `name` in
    /// `peer`. In a tree deeper than PATH_MAX the path is too long for one call: its directory is
    /// then opened by the resolver's walk (a component at a time, through no symlink).
    private func linkFirstCopy(_ path: ByteString, to peer: FileDescriptor, _ name: ByteString) throws {
        do {
            try FerrySystem.link(from: destinationRoot, path, to: peer, name)
        } catch {
            guard error.code == .nameTooLong else { throw error }
            let (parentPath, last) = BytePath.split(path)
            let parent = try PathResolver.open(beneath: destinationRoot, parentPath, [.path, .directory], forceWalk: true)
            defer { parent.closeQuietly() }
            try FerrySystem.link(from: parent, last, to: peer, name)
        }
    }
}
