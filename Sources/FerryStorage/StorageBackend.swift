import FerrySystem
import Foundation
import SystemPackage

/// What Ferry asks of a filesystem, answered per kind: project IDs, quotas, and (Lustre) layouts and
/// HSM state. Implementations: `LinuxProjectBackend` (XFS, ext4), `LustreBackend`, `PosixBackend`.
public protocol StorageBackend: Sendable {
    var kind: FilesystemKind { get }
    /// Project ID and inherit flag of the open file or directory; nil where the filesystem has none.
    func projectAttributes(of fd: FileDescriptor) throws(StorageError) -> ProjectAttributes?
    /// Gives a directory a project ID and the inherit flag, so that what is created inside inherits it.
    func setProjectAttributes(_ attributes: ProjectAttributes, on fd: FileDescriptor) throws(StorageError)
    /// Usage and limits of the project `fd` belongs to (or of the filesystem, where there is no quota).
    func quota(of fd: FileDescriptor, path: ByteString) throws(StorageError) -> QuotaReport
    /// Extended attributes that carry a file's layout, set by `cloneLayout` before any data is
    /// written (so the ordinary xattr copy, after the data, must skip them).
    var layoutAttributeNames: Set<ByteString> { get }
    /// Gives a new, empty file the layout of `source` (Lustre striping is fixed at creation). A
    /// source with no layout (or on a filesystem with none) leaves the file as it is.
    func cloneLayout(from source: FileDescriptor, to destination: FileDescriptor) throws(StorageError)
    /// Flags to create a file with, for `cloneLayout` to be able to give it a layout.
    var layoutCreateFlags: OpenFlags { get }
    /// Whether `rename(2)` moves a *file* (not a directory) into a directory of another project,
    /// the server moving its quota: Lustre 2.15 and later. Then a move can relink instead of copy.
    var renamesFilesAcrossProjects: Bool { get }
}

extension StorageBackend {
    public var renamesFilesAcrossProjects: Bool { false }

    public func projectAttributes(of fd: FileDescriptor) throws(StorageError) -> ProjectAttributes? {
        do {
            return try fd.projectAttributes()
        } catch {
            if error.code == .notSupported { return nil }
            throw StorageError(.system, "could not read the project ID: \(error)", underlying: error)
        }
    }

    public func setProjectAttributes(_ attributes: ProjectAttributes, on fd: FileDescriptor) throws(StorageError) {
        do {
            try fd.setProjectAttributes(attributes)
        } catch {
            throw StorageError(.system, "could not set project \(attributes.projectID): \(error)", underlying: error)
        }
    }

    public var layoutAttributeNames: Set<ByteString> { [] }
    public var layoutCreateFlags: OpenFlags { [] }
    public func cloneLayout(from source: FileDescriptor, to destination: FileDescriptor) throws(StorageError) {}

    /// The filesystem's own free space, for filesystems (or kernels) with no project quota.
    func statvfsQuota(_ fd: FileDescriptor, project: UInt32?, note: String?) throws(StorageError) -> QuotaReport {
        let stats: FilesystemStatistics
        do { stats = try fd.filesystemStatistics() } catch {
            throw StorageError(.system, "could not read free space: \(error)", underlying: error)
        }
        var report = QuotaReport(source: .statvfs, projectID: project)
        report.bytesUsed = stats.usedBytes
        report.bytesFree = stats.availableBytes
        report.bytesHardLimit = stats.totalBytes
        report.inodesUsed = stats.totalInodes &- stats.freeInodes
        report.inodesFree = stats.freeInodes
        report.inodesHardLimit = stats.totalInodes
        report.overLimit = false
        report.inaccurate = false
        report.note = note
        return report
    }
}

/// Any other filesystem: no project quota; free space from `statvfs`.
public struct PosixBackend: StorageBackend {
    public init() {}
    public var kind: FilesystemKind { .posix }
    public func quota(of fd: FileDescriptor, path: ByteString) throws(StorageError) -> QuotaReport {
        try statvfsQuota(fd, project: try? projectAttributes(of: fd)?.projectID, note: nil)
    }
}

/// XFS and ext4: project IDs through `FS_IOC_FSGETXATTR`, quota through `quotactl`; where the kernel
/// or the mount has no project quota, the filesystem's free space, marked as `statvfs`.
public struct LinuxProjectBackend: StorageBackend {
    public let kind: FilesystemKind
    public init(kind: FilesystemKind) { self.kind = kind }

    public func quota(of fd: FileDescriptor, path: ByteString) throws(StorageError) -> QuotaReport {
        let project = try projectAttributes(of: fd)?.projectID
        guard let project else { return try statvfsQuota(fd, project: nil, note: "no project ID") }
        let device = MountTable.current().mount(of: fd, path: path)?.source
        let kernel: KernelProjectQuota
        do {
            kernel = try QuotaControl.projectQuota(fd, project: project, device: device.map { Array($0.utf8) })
        } catch where error.code == .notPermitted || error.code == .permissionDenied {
            // Only root may read a project's quota (the kernel lets users read their own user and
            // group quotas alone). The directory's statvfs is still the project's when the quota is
            // enforced: XFS and ext4 report a directory of an inherited project with its limit.
            return try statvfsQuota(fd, project: project, note: "reading project \(project)'s quota takes root (\(error.syscall): \(error.errnoName)); "
                + "figures from statvfs of the directory, which XFS and ext4 limit to the project's quota where it is enforced")
        } catch {
            return try statvfsQuota(fd, project: project, note: "project quota unavailable (\(error.syscall): \(error.errnoName))")
        }
        let fs = try? fd.filesystemStatistics()
        var report = QuotaReport(source: .quotactl, projectID: project)
        report.bytesUsed = kernel.bytesUsed
        report.bytesSoftLimit = kernel.bytesSoftLimit == 0 ? nil : kernel.bytesSoftLimit
        report.bytesHardLimit = kernel.bytesHardLimit == 0 ? nil : kernel.bytesHardLimit
        // The limit writes stop at, as on Lustre: a soft limit alone, or one whose grace has run out, counts.
        let now = UInt64(max(0, Date().timeIntervalSince1970))
        report.bytesFree = Self.headroom(limit: LustreBackend.enforced(soft: report.bytesSoftLimit, hard: report.bytesHardLimit,
                                                                       grace: Self.grace(ends: kernel.bytesGraceEnds, now: now)),
                                         used: kernel.bytesUsed, filesystem: fs?.availableBytes)
        report.inodesUsed = kernel.inodesUsed
        report.inodesSoftLimit = kernel.inodesSoftLimit == 0 ? nil : kernel.inodesSoftLimit
        report.inodesHardLimit = kernel.inodesHardLimit == 0 ? nil : kernel.inodesHardLimit
        report.inodesFree = Self.headroom(limit: LustreBackend.enforced(soft: report.inodesSoftLimit, hard: report.inodesHardLimit,
                                                                        grace: Self.grace(ends: kernel.inodesGraceEnds, now: now)),
                                          used: kernel.inodesUsed, filesystem: fs?.freeInodes)
        report.overLimit = Self.over(kernel.bytesUsed, report.bytesSoftLimit, report.bytesHardLimit)
            || Self.over(kernel.inodesUsed, report.inodesSoftLimit, report.inodesHardLimit)
        report.inaccurate = false
        return report
    }

    /// The kernel's grace timer as `lfs` words it: none running, running, or run out.
    static func grace(ends: UInt64, now: UInt64) -> QuotaGrace {
        if ends == 0 { return .notSet }
        return ends <= now ? .expired : .remaining(seconds: Int(min(ends - now, UInt64(Int.max))))
    }

    /// Headroom under a limit, capped by what the filesystem itself has left.
    static func headroom(limit: UInt64?, used: UInt64, filesystem: UInt64?) -> UInt64? {
        let underLimit = limit.map { $0 > used ? $0 - used : 0 }
        switch (underLimit, filesystem) {
        case let (l?, f?): return min(l, f)
        case let (l?, nil): return l
        case let (nil, f): return f
        }
    }

    static func over(_ used: UInt64, _ soft: UInt64?, _ hard: UInt64?) -> Bool {
        if let soft, used > soft { return true }
        if let hard, used >= hard { return true }
        return false
    }
}
