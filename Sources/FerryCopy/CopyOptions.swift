import FerrySystem
import SystemPackage

/// How thoroughly a copy is compared with its source before it is published.
public enum VerifyMode: String, Sendable, CaseIterable {
    /// Types, sizes, allocated blocks, modes, owners, times, symlink targets, hard-link structure,
    /// entry counts, and source changes (ctime) — no data read.
    case metadata
    /// All of `metadata`, plus SHA-256 of every regular file on both sides.
    case checksum
}

/// Gives each new regular file its source's layout before it receives data (Lustre striping is
/// fixed when a file's first data is written, and cannot be changed afterwards).
public protocol LayoutCloner: Sendable {
    /// Names of the extended attributes that carry a layout: set by `cloneLayout` alone (the
    /// ordinary xattr copy, after the data, skips them).
    var layoutAttributeNames: Set<ByteString> { get }
    /// Added to the flags that create the new file (Lustre: `.delayLayout`).
    var createFlags: OpenFlags { get }
    /// Whether a directory's layout attributes (the default layout of files made in it) are
    /// copied too, by the ordinary xattr copy, a refusal noted: within one filesystem only, since
    /// Lustre lists the filesystem's default for a directory without one of its own, which
    /// elsewhere would pin another filesystem's default (and pools) on every copied directory.
    var directoryLayouts: Bool { get }
    /// Called on the new, empty file. An error is not fatal: the copy goes on, the file keeps the
    /// layout its directory gives it, and the copy's notes say so.
    func cloneLayout(from source: FileDescriptor, to destination: FileDescriptor) throws
}

extension LayoutCloner {
    public var createFlags: OpenFlags { [] }
    public var directoryLayouts: Bool { false }
}

public struct CopyOptions: Sendable {
    /// Parallel copiers; default two per usable CPU (`Processors.usable`).
    public var jobs: Int
    /// Threads for the walks that read no file data (measuring, verifying metadata, relinking,
    /// removing), when given; nil: see `metadataJobs(on:)`.
    public var givenMetadataJobs: Int?
    public var verify: VerifyMode
    /// Preserve owner and group. Defaults to whether the process is privileged; unprivileged, the
    /// copy belongs to the caller and the report says ownership was not preserved.
    public var preserveOwnership: Bool
    /// Try `FICLONE` (reflink) first.
    public var allowClone: Bool
    /// Try `copy_file_range` before read/write.
    public var allowCopyFileRange: Bool
    public var layoutCloner: (any LayoutCloner)?
    /// The layout attributes copied on directories (`LayoutCloner.directoryLayouts`).
    var directoryLayoutAttributes: Set<ByteString> {
        guard let layoutCloner, layoutCloner.directoryLayouts else { return [] }
        return layoutCloner.layoutAttributeNames
    }
    /// Drop each source file's pages from the page cache once its data is copied. A move sets
    /// it: the source is about to be deleted, so its cached pages only crowd out the copy's dirty
    /// ones — measured on this project's loop XFS, keeping 4 GiB of a moved source cached made the
    /// final flush take ~6 s instead of ~1 s.
    public var dropSourceCache: Bool
    /// Fail when the destination refuses an extended attribute (or ACL) of the source, instead of
    /// noting it: a move, whose source is deleted afterwards, sets it.
    public var requireXattrs: Bool
    public var progressInterval: Duration
    public var cancellation: CancellationFlag

    public init(
        jobs: Int? = nil, metadataJobs: Int? = nil, verify: VerifyMode = .metadata, preserveOwnership: Bool? = nil,
        allowClone: Bool = true, allowCopyFileRange: Bool = true, layoutCloner: (any LayoutCloner)? = nil,
        dropSourceCache: Bool = false, requireXattrs: Bool = false, progressInterval: Duration = .milliseconds(200),
        cancellation: CancellationFlag = CancellationFlag()
    ) {
        self.jobs = max(1, jobs ?? Self.defaultJobs)
        self.givenMetadataJobs = (metadataJobs ?? jobs).map { max(1, $0) }
        self.verify = verify
        self.preserveOwnership = preserveOwnership ?? processIsPrivileged
        self.allowClone = allowClone
        self.allowCopyFileRange = allowCopyFileRange
        self.layoutCloner = layoutCloner
        self.dropSourceCache = dropSourceCache
        self.requireXattrs = requireXattrs
        self.progressInterval = progressInterval
        self.cancellation = cancellation
    }

    /// Two per CPU this process can use (`Processors.usable`: affinity and cgroup limits count).
    public static var defaultJobs: Int { max(2, Processors.usable * 2) }
    public static var defaultMetadataJobs: Int { Processors.usable }

    /// Threads for a walk that reads no file data in the tree of `root`. On a local filesystem the
    /// work is the kernel's, on the CPU, so threads beyond the cores only queue: on this project's
    /// 2-core VM a cold measuring walk of 100,000 files took 0.8–0.9 s on two threads and 1.4–1.6 s
    /// on four or eight, with the filesystem image in memory as on disk. On a networked one each
    /// `stat`, `unlink` or `rename` waits for a server, so it gets as many threads as the copiers.
    /// A number given (or `jobs` given) holds for every walk.
    public func metadataJobs(on root: FileDescriptor) -> Int {
        if let givenMetadataJobs { return givenMetadataJobs }
        let networked = (try? root.filesystemStatistics())?.isNetworked ?? false
        return networked ? jobs : Self.defaultMetadataJobs
    }
}
