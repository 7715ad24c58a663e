import FerrySystem
import Glibc
import SystemPackage

/// One top-level thing to copy: `name` inside the open directory `directory`, to be published as
/// `destinationName` in the destination directory.
public struct CopySource: Sendable {
    public var directory: FileDescriptor
    public var name: ByteString
    public var destinationName: ByteString

    public init(directory: FileDescriptor, name: ByteString, destinationName: ByteString? = nil) {
        self.directory = directory
        self.name = name
        self.destinationName = destinationName ?? name
    }
}

/// A staging directory, `.ferry-staging-<id>` in the destination directory: same directory means
/// same filesystem (and, on Lustre, same MDT), so publishing is an atomic rename.
public struct StagingArea: Sendable {
    public let parent: FileDescriptor
    public let name: ByteString
    public let directory: FileDescriptor
    public static let prefix = ".ferry-staging-"
    /// The extended attribute that marks a directory as one Ferry made for staging, holding its id.
    /// A name alone proves nothing: anyone who may rename entries in a shared directory can give
    /// another user's directory a staging name, and a janitor running as root would then delete
    /// what that user could not. Setting this attribute takes the directory's ownership or write
    /// permission on it, so the janitor removes only directories that carry it — and only those
    /// that give nobody but their owner any access (`private`): Ferry makes them 0700, whereas a
    /// directory another user could mark (group- or world-writable, or writable through an ACL,
    /// which shows in the group bits) is not Ferry's, whatever it carries.
    public static let markerAttribute = Array("user.ferry.staging".utf8)

    /// Permission bits a staging directory never has (see `markerAttribute`).
    static let notPrivate: UInt32 = 0o077

    public enum Marking: Sendable, Equatable {
        /// Marked with this id: made by Ferry for this task, to hold copies.
        case copies
        /// Marked with this id as a relink's: it holds the moved files themselves, their only
        /// names while the task runs.
        case relinked
        /// No mark, or another id's: not to be removed by a janitor.
        case unmarked
        /// The filesystem keeps no `user.*` attributes, so Ferry could not mark it either.
        case unsupported
    }

    /// The mark's value: the id (after `relink ` for a relink's), and the directory it was made in
    /// (`in INODE`). A copy of a staging directory (`cp -a`, `rsync -X`, kept as a backup) carries
    /// the mark along, but not into the directory it was made for: the mark holds only there, and
    /// a janitor removes nothing elsewhere. The inode, not the device: a device number is given
    /// at mount time (Lustre, NFS: another on each client, and after a remount), and a task is
    /// resumed on whichever node claims it.
    public static func markValue(id: String, relink: Bool, parent: FileStatus) -> ByteString {
        Array("\(relink ? "relink " : "")\(id) in \(parent.inode)".utf8)
    }

    /// The mark as Ferry wrote it before it named its directory: read still (a task staged then
    /// is resumed, rolled back and cleaned up as any other), never written.
    static func earlierMarkValue(id: String, relink: Bool) -> ByteString {
        Array("\(relink ? "relink " : "")\(id)".utf8)
    }

    /// Marks a staging directory Ferry has just made in `parent`; a filesystem without `user.*`
    /// attributes leaves it unmarked.
    static func mark(_ directory: FileDescriptor, in parent: FileDescriptor, id: String, relink: Bool) throws(SystemError) {
        do {
            try ExtendedAttributes.set(directory, markerAttribute, markValue(id: id, relink: relink, parent: try parent.status()))
        } catch where error.code == .notSupported {
            return
        }
    }

    /// Whether the open directory `directory`, an entry of `parent`, carries the staging mark of
    /// task `id` made there, and is private to its owner, as Ferry made it (a marked directory
    /// others may write to, or one marked for another directory, is `.unmarked`).
    public static func marking(of directory: FileDescriptor, in parent: FileDescriptor, id: String) -> Marking {
        let marking: Marking
        do {
            let value = try ExtendedAttributes.value(directory, markerAttribute)
            let place = try parent.status()
            switch value {
            case markValue(id: id, relink: false, parent: place)?, earlierMarkValue(id: id, relink: false)?: marking = .copies
            case markValue(id: id, relink: true, parent: place)?, earlierMarkValue(id: id, relink: true)?: marking = .relinked
            default: return .unmarked
            }
        } catch {
            return error.code == .notSupported ? .unsupported : .unmarked
        }
        guard let status = try? directory.status(), status.permissions & notPrivate == 0 else { return .unmarked }
        return marking
    }

    public init(parent: FileDescriptor, name: ByteString, directory: FileDescriptor) {
        self.parent = parent
        self.name = name
        self.directory = directory
    }
}

public struct CopyReport: Sendable {
    public var measurement: TreeMeasurement
    public var bytesCopied: UInt64
    public var entriesCopied: UInt64
    public var verify: VerifyMode
    public var ownershipPreserved: Bool
    public var notes: [String]
    public var noteCount: Int
    public var published: [ByteString]
    public var seconds: Double
    public var phaseSeconds: [String: Double]
}

/// The one copy engine: the move engine, the archive and the pool all copy through it.
public final class CopyEngine: Sendable {
    public let options: CopyOptions
    private let progress: ProgressHandler?
    var progressHandler: ProgressHandler? { progress }

    public init(options: CopyOptions = CopyOptions(), progress: ProgressHandler? = nil) {
        self.options = options
        self.progress = progress
        raiseOpenFileLimit()
    }

    /// Counts bytes, blocks and entries of the sources (what a pre-flight check needs). With
    /// `reporting`, the progress handler is told a `.measuring` phase: what is found so far, with
    /// no totals.
    public func measure(_ sources: [CopySource], reporting: Bool = true) throws(CopyError) -> TreeMeasurement {
        let meter = ProgressMeter(phase: .measuring, bytesTotal: 0, entriesTotal: 0, interval: options.progressInterval,
                                  handler: reporting ? progress : nil)
        defer { meter.finish() }
        let visitor = MeasureVisitor(meter: meter)
        try walk(sources, peer: nil, visitor: visitor)
        return visitor.result
    }

    /// Creates an empty staging directory in `destination`. The name carries `id` (a task id), so a
    /// janitor can tell whose it is, and the mark (`StagingArea.markerAttribute`) that it is
    /// Ferry's, and whether it is to hold copies or, for a relink, the moved files themselves.
    public func createStaging(in destination: FileDescriptor, id: String, relink: Bool = false) throws(CopyError) -> StagingArea {
        let name = Array((StagingArea.prefix + id).utf8)
        let fd: FileDescriptor
        do {
            try destination.makeDirectory(name, permissions: 0o700)
            fd = try destination.openAt(name, [.directory, .noFollow])
        } catch {
            throw .system(path: PathDisplay.string(name), error)
        }
        do {
            try StagingArea.mark(fd, in: destination, id: id, relink: relink)
        } catch {
            fd.closeQuietly()
            try? destination.removeEntry(name, isDirectory: true)
            throw .system(path: PathDisplay.string(name), error)
        }
        Self.inheritNothing(fd)
        return StagingArea(parent: destination, name: name, directory: fd)
    }

    /// Copies the sources into the staging directory, in parallel. On failure everything staged is
    /// removed before the error is thrown.
    /// `resume`: the staging directory holds what an interrupted attempt copied; complete entries are
    /// kept, the rest redone. `discardOnFailure`: remove the staging directory when the copy fails (a
    /// caller that may resume later keeps it and decides itself).
    public func stage(_ sources: [CopySource], into staging: StagingArea, totals: TreeMeasurement? = nil, resume: Bool = false,
                      discardOnFailure: Bool = true) throws(CopyError) -> (bytes: UInt64, entries: UInt64, notes: CopyNotes) {
        let meter = ProgressMeter(phase: .copying, bytesTotal: totals?.bytes ?? 0, entriesTotal: totals?.entries ?? 0,
                                  interval: options.progressInterval, handler: progress)
        let notes = CopyNotes()
        let visitor = CopyVisitor(options: options, meter: meter, notes: notes, destinationRoot: staging.directory, resume: resume)
        do {
            try walk(sources, peer: staging.directory, visitor: visitor)
        } catch {
            meter.finish()
            if discardOnFailure { discard(staging) }
            throw error
        }
        meter.finish()
        return (meter.bytes.load(ordering: .relaxed), meter.entries.load(ordering: .relaxed), notes)
    }

    /// Compares the staged copies with their sources; throws `.verificationFailed` with the first
    /// differences, or `.sourceChanged` when a source changed after it was copied.
    public func verify(_ sources: [CopySource], in staging: StagingArea, totals: TreeMeasurement? = nil) throws(CopyError) {
        let meter = ProgressMeter(phase: .verifying, bytesTotal: options.verify == .checksum ? totals?.bytes ?? 0 : 0,
                                  entriesTotal: totals?.entries ?? 0, interval: options.progressInterval, handler: progress)
        defer { meter.finish() }
        let visitor = VerifyVisitor(mode: options.verify, checkOwnership: options.preserveOwnership,
                                    meter: meter, cancellation: options.cancellation)
        try walk(sources, peer: staging.directory, visitor: visitor)
        let differences = visitor.found
        if !differences.isEmpty { throw .verificationFailed(differences: differences) }
    }

    /// Makes the staged copies durable and visible: one `syncfs` for all the data, then each item
    /// renamed into place with `RENAME_NOREPLACE` (never replacing anything), then `fsync` of the
    /// destination directory so the renames survive a crash, then the empty staging directory goes.
    /// Returns the names published. If a name is taken meanwhile, the items already published stay,
    /// the rest are removed with the staging directory, and `.destinationExists` is thrown.
    @discardableResult
    public func publish(_ sources: [CopySource], from staging: StagingArea, flushed: Bool = false) throws(CopyError) -> [ByteString] {
        var published: [ByteString] = []
        if !flushed {
            do { try flush(staging) } catch {
                discard(staging)
                throw error
            }
        }
        do {
            for source in sources {
                try Self.renameNoReplace(from: staging.directory, source.destinationName, to: staging.parent, source.destinationName)
                published.append(source.destinationName)
            }
            try staging.parent.sync()
        } catch {
            if error.code == .exists, let name = sources.dropFirst(published.count).first?.destinationName {
                discard(staging)
                throw .destinationExists(path: PathDisplay.string(name))
            }
            discard(staging)
            throw .system(path: PathDisplay.string(staging.name), error)
        }
        discard(staging)
        return published
    }

    /// Writes every staged byte and inode to stable storage: one `syncfs`, not an `fsync` per file,
    /// except on FUSE. The kernel passes `syncfs` on to a FUSE server only for virtiofs: for any
    /// other FUSE filesystem (a pool, sshfs, the tests' quota filesystem) it returns at once with
    /// nothing written, and there every staged file and directory is `fsync`ed, which does reach it.
    public func flush(_ staging: StagingArea) throws(CopyError) {
        do { try staging.directory.syncFilesystem() } catch { throw .system(path: PathDisplay.string(staging.name), error) }
        guard (try? staging.directory.filesystemStatistics())?.magic == FilesystemStatistics.fuseMagic else { return }
        try walk([CopySource(directory: staging.parent, name: staging.name)], peer: nil, visitor: SyncVisitor())
    }

    private func checkpoint() throws(CopyError) {
        if options.cancellation.isCancelled { throw .cancelled }
    }

    /// Removes the named entries of a moved source where `published` (the directory the copies were
    /// published in, under their destination names) holds the same (`VerifiedRemoveVisitor`), and
    /// leaves the rest. Returns how many entries survived and the first few of their paths.
    public func removeMoved(_ sources: [CopySource], publishedIn published: FileDescriptor) throws(CopyError) -> (count: Int, first: [String]) {
        let visitor = VerifiedRemoveVisitor()
        try walk(sources, peer: published, visitor: visitor, cancellation: CancellationFlag())
        return visitor.survivors.withLock { $0 }
    }

    /// Removes the named entries (files or whole trees) from their directories.
    public func remove(_ sources: [CopySource]) throws(CopyError) {
        try walk(sources, peer: nil, visitor: RemoveVisitor(meter: nil), cancellation: CancellationFlag())
    }

    /// The whole copy: measure, stage, verify, publish. Anything created is removed on failure;
    /// the sources are only read.
    /// `measurement`: pass one taken already (e.g. for a space check) to save a walk.
    public func copy(_ sources: [CopySource], to destination: FileDescriptor, id: String = randomIdentifier(),
                     measurement known: TreeMeasurement? = nil) throws(CopyError) -> CopyReport {
        let started = MonotonicClock.now()
        var phases: [String: Double] = [:]
        var mark = started
        func lap(_ name: String) {
            let now = MonotonicClock.now()
            phases[name] = now - mark
            mark = now
        }
        for source in sources {
            if (try? destination.status(source.destinationName)) != nil {
                throw .destinationExists(path: PathDisplay.string(source.destinationName))
            }
        }
        let measurement: TreeMeasurement
        if let known { measurement = known } else { measurement = try measure(sources) }
        lap("measure")
        let staging = try createStaging(in: destination, id: id)
        let staged = try stage(sources, into: staging, totals: measurement)
        lap("copy")
        do {
            try checkpoint()
            try verify(sources, in: staging, totals: measurement)
            lap("verify")
            try checkpoint()
            try flush(staging)
            lap("flush")
            try checkpoint()  // the last moment a cancel can still undo everything
        } catch {
            discard(staging)
            throw error
        }
        let published = try publish(sources, from: staging, flushed: true)
        lap("publish")
        return CopyReport(
            measurement: measurement, bytesCopied: staged.bytes, entriesCopied: staged.entries, verify: options.verify,
            ownershipPreserved: options.preserveOwnership, notes: staged.notes.first, noteCount: staged.notes.count,
            published: published, seconds: MonotonicClock.now() - started, phaseSeconds: phases)
    }

    /// Publishes one staged item under its own name in the staging directory's parent, never
    /// replacing anything (`.exists` if the name is taken).
    public static func publishOne(from staging: StagingArea, _ name: ByteString) throws(SystemError) {
        try renameNoReplace(from: staging.directory, name, to: staging.parent, name)
    }

    /// `renameat2(RENAME_NOREPLACE)`; where the filesystem lacks the flag (EINVAL), a file is published
    /// with `link` + `unlink` (link never replaces), a directory with a check and a plain rename.
    ///
    /// A directory that moves to another parent has its `..` rewritten, for which the kernel wants
    /// write permission on the directory itself: a user's read-only directory (0555, as its source
    /// was) gets owner write for the rename, and its mode back at once after.
    static func renameNoReplace(from: FileDescriptor, _ name: ByteString, to: FileDescriptor, _ newName: ByteString) throws(SystemError) {
        do {
            try renameNoReplaceAsIs(from: from, name, to: to, newName)
        } catch where error.code == .permissionDenied {
            guard let status = try? from.status(name), status.kind == .directory, status.permissions & 0o200 == 0,
                  status.uid == geteuid() else { throw error }
            let directory = try from.openAt(name, [.directory, .noFollow])
            defer { directory.closeQuietly() }
            try directory.changeMode(permissions: status.permissions | 0o200)
            do {
                try renameNoReplaceAsIs(from: from, name, to: to, newName)
            } catch {
                try? directory.changeMode(permissions: status.permissions)
                throw error
            }
            try directory.changeMode(permissions: status.permissions)
        }
    }

    private static func renameNoReplaceAsIs(from: FileDescriptor, _ name: ByteString, to: FileDescriptor, _ newName: ByteString) throws(SystemError) {
        do {
            try rename(from: from, name, to: to, newName, flags: .noReplace)
        } catch where error.code == .exists {
            // Published already if it is the same file: where the flag is missing (below), a run
            // that ended between the link and the unlink left it under both names (the kernel
            // answers EEXIST itself once the name exists). Anything else is not replaced.
            guard let here = try? from.status(name), here.kind != .directory,
                  let there = try? to.status(newName), there.fileID == here.fileID else { throw error }
            try from.removeEntry(name, isDirectory: false)
        } catch where error.code == .invalidArgument {
            let status = try from.status(name)
            if status.kind == .directory {
                if (try? to.status(newName)) != nil { throw SystemError(errno: EEXIST, syscall: "renameat", path: newName.displayString) }
                try rename(from: from, name, to: to, newName)
            } else {
                try link(from: from, name, to: to, newName)
                try from.removeEntry(name, isDirectory: false)
            }
        }
    }

    func walk(_ sources: [CopySource], peer: FileDescriptor?, visitor: any TreeVisitor, cancellation: CancellationFlag? = nil) throws(CopyError) {
        // One walk per source directory; most copies have one.
        var groups: [(FileDescriptor, [WalkEntry])] = []
        for source in sources {
            let entry = WalkEntry(name: source.name, peerName: source.destinationName, kind: .unknown)
            if let index = groups.firstIndex(where: { $0.0.rawValue == source.directory.rawValue }) {
                groups[index].1.append(entry)
            } else {
                groups.append((source.directory, [entry]))
            }
        }
        for (directory, entries) in groups {
            try runWalk(root: directory, peer: peer, entries: entries, visitor: visitor, cancellation: cancellation ?? options.cancellation)
        }
    }

    func runWalk(root: FileDescriptor, peer: FileDescriptor?, entries: [WalkEntry], visitor: any TreeVisitor, cancellation: CancellationFlag) throws(CopyError) {
        let coordinator = WalkCoordinator(visitor: visitor, cancellation: cancellation)
        do {
            try coordinator.run(root: root, peer: peer, entries: entries,
                                threads: visitor.movesFileData ? options.jobs : options.metadataJobs(on: root))
        } catch {
            throw CopyError.from(error)
        }
    }
}

/// 16 random hex digits: staging-directory and task identifiers.
public func randomIdentifier() -> String {
    var generator = SystemRandomNumberGenerator()
    let value = generator.next() as UInt64
    let hex = String(value, radix: 16)
    return String(repeating: "0", count: 16 - hex.count) + hex
}
