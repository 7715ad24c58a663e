import FerrySystem
import SystemPackage

/// Moves a tree by renaming: directories are recreated under the peer (or reused, when a previous
/// attempt made them), every other entry is renamed into its directory with `RENAME_NOREPLACE`, and
/// each directory gets its source's metadata once its entries are in. No data is copied: on Lustre
/// 2.15+ a *file* may be renamed across projects (the server moves its quota) though a directory
/// may not. Resumable (entries already moved are simply not found again) and reversible (`.back`
/// runs it from the staging tree into the source skeleton). Hard links stay links: each name is
/// renamed.
///
/// Emptying a directory changes its times, so each staging directory carries its source's
/// `DirectoryOrigin` until it is finished: a resumed relink publishes the directory with the times
/// it had before the move, and a rollback gives them back. A rollback changes nothing else about a
/// source directory that is still there; one it has to make again gets the origin's mode and owner.
final class RelinkVisitor: TreeVisitor, @unchecked Sendable {
    enum Direction { case forward, back }

    private let metadata: MetadataApplier
    private let meter: ProgressMeter
    private let cancellation: CancellationFlag
    private let direction: Direction

    init(options: CopyOptions, meter: ProgressMeter, notes: CopyNotes, direction: Direction = .forward) {
        metadata = MetadataApplier(preserveOwnership: options.preserveOwnership, privileged: processIsPrivileged,
                                   skippedAttributes: [DirectoryOrigin.attribute], directoryLayoutAttributes: options.directoryLayoutAttributes,
                                   requireXattrs: options.requireXattrs && direction == .forward, notes: notes)
        self.meter = meter
        self.cancellation = options.cancellation
        self.direction = direction
    }

    func visit(_ entry: WalkEntry, in directory: WalkDirectory) throws -> VisitOutcome {
        guard let peer = directory.peer else { return .done }
        if cancellation.isCancelled { throw CopyError.cancelled }
        let status = try directory.source.status(entry.name)
        if status.kind == .directory {
            switch direction {
            case .forward: return .descend(peer: try stagingDirectory(for: status, named: entry.peerName, in: peer))
            case .back: return .descend(peer: try sourceDirectory(named: entry.peerName, in: peer, stagedAs: entry.name, in: directory.source, status: status))
            }
        }
        meter.started(directory.displayPath(entry.name))
        try rename(from: directory.source, entry.name, to: peer, entry.peerName, flags: .noReplace)
        meter.entries.add(1, ordering: .relaxed)
        if status.kind == .regular { meter.bytes.add(status.size, ordering: .relaxed) }
        return .done
    }

    /// The staging directory for a source directory: made, with the source's origin, or reused and
    /// writable again until left. A reused one without an origin was either made by an attempt
    /// stopped before it recorded one, and then nothing was moved into it yet, so the source is as
    /// it was; or finished, which dropped the origin and gave it the source's metadata as it was.
    private func stagingDirectory(for source: FileStatus, named name: ByteString, in peer: FileDescriptor) throws -> FileDescriptor {
        do {
            try peer.makeDirectory(name, permissions: 0o700)
            return try openMade(name, in: peer, marked: DirectoryOrigin(source))
        } catch {
            guard error.code == .exists else { throw error }
        }
        let reused = try peer.openAt(name, [.directory, .noFollow])
        do {
            if try DirectoryOrigin.read(reused) == nil {
                try DirectoryOrigin(try isEmpty(reused) ? source : reused.status()).record(on: reused)
            }
            try reused.changeMode(permissions: 0o700)
        } catch {
            reused.closeQuietly()
            throw error
        }
        return reused
    }

    /// On the way back: the source directory a staging directory came from, left as it is, or
    /// made again (marked with the origin, so that a retry knows it for one) if it is gone. The
    /// staging directory's origin is recorded on it first if it has none (it was finished, so its
    /// metadata is the origin), so that a rollback that is itself interrupted, after emptying it
    /// has changed its times, still knows them.
    private func sourceDirectory(named name: ByteString, in peer: FileDescriptor, stagedAs staged: ByteString, in staging: FileDescriptor,
                                 status: FileStatus) throws -> FileDescriptor {
        let origin: DirectoryOrigin
        if let recorded = try DirectoryOrigin.read(in: staging, staged) {
            origin = recorded
        } else {
            origin = DirectoryOrigin(status)
            try origin.record(in: staging, staged)
        }
        do {
            try peer.makeDirectory(name, permissions: 0o700)
        } catch {
            guard error.code == .exists else { throw error }
            return try peer.openAt(name, [.directory, .noFollow])
        }
        return try openMade(name, in: peer, marked: origin)
    }

    /// Opens a directory just made and records `origin` on it.
    private func openMade(_ name: ByteString, in peer: FileDescriptor, marked origin: DirectoryOrigin) throws(SystemError) -> FileDescriptor {
        let made = try peer.openAt(name, [.directory, .noFollow])
        do {
            try origin.record(on: made)
        } catch {
            made.closeQuietly()
            throw error
        }
        return made
    }

    func leave(_ directory: WalkDirectory) throws {
        guard let peer = directory.peer, let status = directory.status else { return }
        let path = PathDisplay.string(directory.relativePath)
        switch direction {
        case .forward:
            // The source's current mode, owner and attributes; the times it had before the move.
            // A source directory that an unfinished rollback made again still carries the origin
            // it was made from, and that is what it was.
            if let remade = try DirectoryOrigin.read(directory.source) {
                try finish(peer, from: directory.source, status: remade.all(on: status), path: path)
                return
            }
            let origin = try DirectoryOrigin.read(peer)
            try finish(peer, from: directory.source, status: origin?.times(on: status) ?? status, path: path)
        case .back:
            if let own = try DirectoryOrigin.read(peer) {  // made again: as the source was
                try finish(peer, from: directory.source, status: own.all(on: status), path: path)
                return
            }
            // Still there: only its times, which emptying it changed. A runner that does not own
            // it may not set them (EPERM); every entry is back, so that is no reason to fail.
            let origin = try DirectoryOrigin.read(directory.source) ?? DirectoryOrigin(status)
            do {
                try peer.setTimes(access: origin.access, modification: origin.modification)
            } catch {
                guard error.code == .notPermitted || error.code == .permissionDenied else { throw error }
            }
        }
    }

    /// Gives a directory its final metadata and drops its origin. Root may remove the attribute
    /// whatever the mode. Anyone else needs write permission on the directory, so the mode keeps
    /// the owner's write bit until the origin is gone: applied with it, then set again just before
    /// the removal (an access ACL applied after the mode takes the owner's bits from its own
    /// entry), and the final mode last (a chmod leaves the times as set, and brings the ACL's
    /// owner entry back to the source's).
    private func finish(_ directory: FileDescriptor, from source: FileDescriptor, status: FileStatus, path: String) throws {
        let writable = status.permissions | 0o200
        let loosen = !processIsPrivileged && writable != status.permissions
        var applied = status
        if loosen { applied.mode |= 0o200 }
        try metadata.apply(from: source, to: directory, status: applied, path: path)
        if loosen { try directory.changeMode(permissions: writable) }
        do {
            try ExtendedAttributes.remove(directory, DirectoryOrigin.attribute)
        } catch {
            guard error.code == .noData || error.code == .notSupported else { throw error }
        }
        if loosen { try directory.changeMode(permissions: status.permissions) }
    }

    private func isEmpty(_ directory: FileDescriptor) throws -> Bool {
        let listing = try directory.openAt(Array(".".utf8), [.directory])
        defer { listing.closeQuietly() }
        return try DirectoryStream(listing).next() == nil
    }
}

/// Lists the relinked directories that still carry an origin: directories a relink never left,
/// because their source directory was removed before a resumed attempt could walk it again.
final class UnfinishedRelinkVisitor: TreeVisitor, @unchecked Sendable {
    private let found = Locked<[String]>([])

    func visit(_ entry: WalkEntry, in directory: WalkDirectory) throws -> VisitOutcome {
        let kind = entry.kind == .unknown ? try directory.source.status(entry.name).kind : entry.kind
        return kind == .directory ? .descend(peer: nil) : .done
    }

    func leave(_ directory: WalkDirectory) throws {
        guard try DirectoryOrigin.read(directory.source) != nil else { return }  // the walk never leaves its root
        found.withLock { $0.append(PathDisplay.string(directory.relativePath)) }
    }

    var unfinished: [String] { found.withLock { $0 } }
}

/// What a relinked directory's source was before the relink emptied it: mode, owner and times, as
/// the extended attribute `user.ferry.origin` on its staging directory ("mode uid gid atime-s
/// atime-ns mtime-s mtime-ns", decimal). Recording it is best effort: on a filesystem without user
/// attributes a relink still works, and only a resumed or rolled-back directory's times are then
/// the ones emptying it left.
struct DirectoryOrigin: Equatable {
    static let attribute = Array("user.ferry.origin".utf8)

    var permissions: UInt32
    var uid: UInt32
    var gid: UInt32
    var access: Timespec
    var modification: Timespec

    init(_ status: FileStatus) {
        permissions = status.permissions
        uid = status.uid
        gid = status.gid
        access = status.accessTime
        modification = status.modificationTime
    }

    init?(encoded: ByteString) {
        let fields = String(decoding: encoded, as: UTF8.self).split(separator: " ")
        guard fields.count == 7, let mode = UInt32(fields[0]), let uid = UInt32(fields[1]), let gid = UInt32(fields[2]),
              let atime = Int64(fields[3]), let atimeNanoseconds = UInt32(fields[4]),
              let mtime = Int64(fields[5]), let mtimeNanoseconds = UInt32(fields[6]),
              mode <= 0o7777, atimeNanoseconds < 1_000_000_000, mtimeNanoseconds < 1_000_000_000 else { return nil }
        permissions = mode
        self.uid = uid
        self.gid = gid
        access = Timespec(seconds: atime, nanoseconds: atimeNanoseconds)
        modification = Timespec(seconds: mtime, nanoseconds: mtimeNanoseconds)
    }

    var encoded: ByteString {
        Array("\(permissions) \(uid) \(gid) \(access.seconds) \(access.nanoseconds) \(modification.seconds) \(modification.nanoseconds)".utf8)
    }

    /// `status` with the origin's times.
    func times(on status: FileStatus) -> FileStatus {
        var status = status
        status.accessTime = access
        status.modificationTime = modification
        return status
    }

    /// `status` with the origin's mode, owner and times.
    func all(on status: FileStatus) -> FileStatus {
        var status = times(on: status)
        status.mode = (status.mode & ~0o7777) | permissions
        status.uid = uid
        status.gid = gid
        return status
    }

    /// The origin recorded on a directory; nil if it has none (or a filesystem without user
    /// attributes). Any other error is thrown: taken for "none", it would be overwritten.
    static func read(_ directory: FileDescriptor) throws(SystemError) -> DirectoryOrigin? {
        try parse { () throws(SystemError) in try ExtendedAttributes.value(directory, attribute) }
    }

    static func read(in parent: FileDescriptor, _ name: ByteString) throws(SystemError) -> DirectoryOrigin? {
        try parse { () throws(SystemError) in try ExtendedAttributes.value(in: parent, symlink: name, attribute) }
    }

    private static func parse(_ value: () throws(SystemError) -> ByteString?) throws(SystemError) -> DirectoryOrigin? {
        do {
            return try value().flatMap(DirectoryOrigin.init(encoded:))
        } catch {
            guard error.code == .notSupported else { throw error }
            return nil
        }
    }

    /// Records the origin on a directory. Only a filesystem without user attributes is let off;
    /// any other failure is thrown, since a directory without its origin would be taken for one
    /// that was finished.
    func record(on directory: FileDescriptor) throws(SystemError) {
        try Self.tolerant { () throws(SystemError) in try ExtendedAttributes.set(directory, Self.attribute, encoded) }
    }

    func record(in parent: FileDescriptor, _ name: ByteString) throws(SystemError) {
        try Self.tolerant { () throws(SystemError) in try ExtendedAttributes.set(in: parent, symlink: name, Self.attribute, encoded) }
    }

    private static func tolerant(_ write: () throws(SystemError) -> Void) throws(SystemError) {
        do {
            try write()
        } catch {
            guard error.code == .notSupported else { throw error }
        }
    }
}

/// Removes the directories of a tree that are empty, deepest first, and nothing else: after a
/// relink the source is a skeleton of directories, and anything found in it (a file written there
/// meanwhile) must survive. Returns the paths left because they were not empty.
final class EmptyDirectoryRemover: TreeVisitor, @unchecked Sendable {
    private let left = Locked<[String]>([])
    /// The modes of directories given owner write to be emptied, to be put back on those that
    /// are not empty after all.
    private let loosened = Locked<[FileID: UInt32]>([:])

    func visit(_ entry: WalkEntry, in directory: WalkDirectory) throws -> VisitOutcome {
        let status = try directory.source.status(entry.name)
        if status.kind == .directory {
            // Its empty subdirectories go from it, which takes write permission on it: a user's
            // read-only directory (0555) gets owner write, as `RemoveVisitor` gives it. It goes too.
            if !processIsPrivileged, try makeWritableForRemoval(entry.name, in: directory.source, status: status) {
                loosened.withLock { $0[status.fileID] = status.permissions }
            }
            return .descend(peer: nil)
        }
        left.withLock { $0.append(directory.displayPath(entry.name)) }
        return .done
    }

    func leave(_ directory: WalkDirectory) throws {
        // One that is not empty holds survivors, listed already, and keeps the mode it had.
        if try !removeIfEmpty(directory), let id = directory.status?.fileID, let mode = loosened.withLock({ $0[id] }) {
            try directory.source.changeMode(permissions: mode)
        }
    }

    var survivors: [String] { left.withLock { $0 } }
}

extension CopyEngine {
    /// Relinks the sources into the staging directory (see `RelinkVisitor`). Safe to run again after
    /// an interruption. Never removes anything.
    public func relink(_ sources: [CopySource], into staging: StagingArea, totals: TreeMeasurement? = nil) throws(CopyError) {
        let meter = ProgressMeter(phase: .copying, bytesTotal: totals?.bytes ?? 0, entriesTotal: totals?.entries ?? 0,
                                  interval: options.progressInterval, handler: progressHandler)
        defer { meter.finish() }
        let visitor = RelinkVisitor(options: options, meter: meter, notes: CopyNotes())
        try walk(sources.filter { (try? $0.directory.status($0.name)) != nil }, peer: staging.directory, visitor: visitor)
    }

    /// Puts relinked entries back: renames everything in the staging directory into the sources'
    /// directory skeleton (recreating directories that are missing), then removes the staging
    /// skeleton's empty directories. What cannot be put back stays in staging, never deleted, and
    /// is thrown (`notPutBack`): a rollback that left any is not done. The renames are flushed
    /// (syncfs) before it returns, so that a task recorded as rolled back after it cannot find its
    /// files back in staging after a power cut.
    public func unrelink(_ sources: [CopySource], from staging: StagingArea) throws(CopyError) {
        let meter = ProgressMeter(phase: .cleaningUp, bytesTotal: 0, entriesTotal: 0, interval: options.progressInterval, handler: nil)
        defer { meter.finish() }
        let visitor = RelinkVisitor(options: options, meter: meter, notes: CopyNotes(), direction: .back)
        for source in sources where (try? staging.directory.status(source.destinationName)) != nil {
            let back = CopySource(directory: staging.directory, name: source.destinationName, destinationName: source.name)
            try walk([back], peer: source.directory, visitor: visitor)
        }
        let left = try removeEmptyDirectories(in: staging.directory)
        // Sources and staging are on one filesystem (a relink renames between them).
        do { try staging.parent.syncFilesystem() } catch { throw .system(path: PathDisplay.string(staging.name), error) }
        guard left.isEmpty else { throw .notPutBack(staging: PathDisplay.string(staging.name), entries: left) }
        do { try staging.parent.removeEntry(staging.name, isDirectory: true) } catch where error.code == .notFound {} catch {
            throw .system(path: PathDisplay.string(staging.name), error)
        }
        do { try staging.parent.sync() } catch { throw .system(path: PathDisplay.string(staging.name), error) }
    }

    /// The relinked directories under `staged` that were never finished (see
    /// `UnfinishedRelinkVisitor`), by path: a relinked tree with any is not to be published.
    public func unfinishedRelinkedDirectories(_ staged: [CopySource]) throws(CopyError) -> [String] {
        let visitor = UnfinishedRelinkVisitor()
        try walk(staged, peer: nil, visitor: visitor)
        return visitor.unfinished
    }

    /// Removes the empty directories under `sources` (a relinked source's skeleton), deepest first.
    /// Returns entries found in them, which are left in place.
    @discardableResult
    public func removeEmptySkeleton(_ sources: [CopySource]) throws(CopyError) -> [String] {
        let visitor = EmptyDirectoryRemover()
        try walk(sources.filter { (try? $0.directory.status($0.name)) != nil }, peer: nil, visitor: visitor)
        return visitor.survivors
    }

    /// Entries left (not directories, or directories that would not go), by path.
    private func removeEmptyDirectories(in directory: FileDescriptor) throws(CopyError) -> [String] {
        let stream: [WalkEntry]
        do {
            let fresh = try directory.openAt(Array(".".utf8), [.directory])
            defer { fresh.closeQuietly() }
            let listing = DirectoryStream(fresh)
            var names: [WalkEntry] = []
            while let entry = try listing.next() { names.append(WalkEntry(name: entry.name, peerName: entry.name, kind: entry.kind)) }
            stream = names
        } catch { throw .system(path: ".", error) }
        let sources = stream.map { CopySource(directory: directory, name: $0.name) }
        let remover = EmptyDirectoryRemover()
        try walk(sources, peer: nil, visitor: remover)
        return remover.survivors
    }
}
