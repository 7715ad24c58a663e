import CFerrySystem
import Glibc
import SystemPackage

/// What `fstatfs(2)` says about the filesystem a descriptor is on.
public struct FilesystemStatistics: Sendable, Equatable {
    /// `f_type`, the magic number that names the filesystem (XFS `0x58465342`, Lustre `0x0BD00BD0`).
    public var magic: UInt64
    public var blockSize: UInt64
    public var totalBlocks: UInt64
    public var freeBlocks: UInt64
    /// Blocks an unprivileged user may still use.
    public var availableBlocks: UInt64
    public var totalInodes: UInt64
    public var freeInodes: UInt64

    /// Magic numbers from `<linux/magic.h>` (and Lustre's `LL_SUPER_MAGIC`).
    public static let lustreMagic: UInt64 = 0x0BD0_0BD0
    public static let xfsMagic: UInt64 = 0x5846_5342
    public static let ext4Magic: UInt64 = 0xEF53
    public static let fuseMagic: UInt64 = 0x6573_5546

    /// A filesystem whose metadata operations are round trips to a server (Lustre, NFS, SMB/CIFS,
    /// Ceph, GPFS, BeeGFS), by `f_type` from `<linux/magic.h>` and the filesystems' own headers:
    /// a walk of `stat`s there waits on the network rather than on the CPU.
    public var isNetworked: Bool {
        switch magic {
        case Self.lustreMagic,
             0x6969,  // NFS
             0xFE53_4D42, 0xFF53_4D42,  // SMB2, CIFS
             0x00C3_6400,  // Ceph
             0x4750_4653,  // GPFS
             0x1983_0326:  // BeeGFS
            true
        default: false
        }
    }

    public var availableBytes: UInt64 { availableBlocks &* blockSize }
    public var totalBytes: UInt64 { totalBlocks &* blockSize }
    public var usedBytes: UInt64 { (totalBlocks &- freeBlocks) &* blockSize }
}

extension FileDescriptor {
    /// The corresponding C function is `fstatfs`.
    public func filesystemStatistics() throws(SystemError) -> FilesystemStatistics {
        var raw = cferry_statfs_t()
        _ = try syscallRetrying("fstatfs") { cferry_fstatfs(rawValue, &raw) }
        return FilesystemStatistics(
            magic: raw.type, blockSize: raw.bsize, totalBlocks: raw.blocks, freeBlocks: raw.bfree,
            availableBlocks: raw.bavail, totalInodes: raw.files, freeInodes: raw.ffree)
    }
}

/// One project's quota as the kernel keeps it (`struct fs_disk_quota`), in bytes and inodes.
public struct KernelProjectQuota: Sendable, Equatable {
    public var bytesUsed: UInt64
    public var bytesSoftLimit: UInt64
    public var bytesHardLimit: UInt64
    public var inodesUsed: UInt64
    public var inodesSoftLimit: UInt64
    public var inodesHardLimit: UInt64
    /// When the soft limit's grace period ends, seconds since the epoch; 0 when none is running.
    public var bytesGraceEnds: UInt64 = 0
    public var inodesGraceEnds: UInt64 = 0
}

public enum QuotaControl {
    /// A project's quota on the filesystem of `fd`. The corresponding C call is
    /// `quotactl_fd(Q_XGETQUOTA, PRJQUOTA)`; on kernels without it, `quotactl` on `device`.
    /// A kernel without quota support fails with `.notSupported` (ENOSYS/EOPNOTSUPP) or
    /// `.other` (ESRCH: quota not enabled on this filesystem), never a crash.
    public static func projectQuota(_ fd: FileDescriptor, project: UInt32, device: ByteString?) throws(SystemError) -> KernelProjectQuota {
        var values = [UInt64](repeating: 0, count: 8)
        let r = cferry_quotactl_fd_project(fd.rawValue, Int32(bitPattern: project), &values)
        if r != 0 {
            let first = Glibc.errno
            guard first == ENOSYS, let device else { throw SystemError(errno: first, syscall: "quotactl_fd(Q_XGETQUOTA)") }
            _ = try device.withCPath { (path) throws(SystemError) in
                try syscallRetrying("quotactl(Q_XGETQUOTA)", path: device.displayString) {
                    cferry_quotactl_project(path, Int32(bitPattern: project), &values)
                }
            }
        }
        return KernelProjectQuota(
            bytesUsed: values[0], bytesSoftLimit: values[1], bytesHardLimit: values[2],
            inodesUsed: values[3], inodesSoftLimit: values[4], inodesHardLimit: values[5],
            bytesGraceEnds: values[6], inodesGraceEnds: values[7])
    }
}
