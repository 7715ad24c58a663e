import CFerrySystem
import Glibc

/// A timestamp to the nanosecond, as `struct statx_timestamp` holds it.
public struct Timespec: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var seconds: Int64
    public var nanoseconds: UInt32

    public init(seconds: Int64, nanoseconds: UInt32) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    /// The wall clock (`CLOCK_REALTIME`) now, as file times are stamped.
    public static var now: Timespec {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return Timespec(seconds: Int64(time.tv_sec), nanoseconds: UInt32(time.tv_nsec))
    }

    public static func < (a: Timespec, b: Timespec) -> Bool {
        (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds)
    }

    public var description: String {
        let nanos = String(nanoseconds)
        return "\(seconds).\(String(repeating: "0", count: 9 - nanos.count))\(nanos)"
    }
}

/// The kind of a directory entry.
public enum FileKind: Sendable, Hashable, CustomStringConvertible {
    case regular, directory, symlink, fifo, socket, characterDevice, blockDevice, unknown

    public init(mode: UInt32) {
        switch mode & UInt32(S_IFMT) {
        case UInt32(S_IFREG): self = .regular
        case UInt32(S_IFDIR): self = .directory
        case UInt32(S_IFLNK): self = .symlink
        case UInt32(S_IFIFO): self = .fifo
        case UInt32(S_IFSOCK): self = .socket
        case UInt32(S_IFCHR): self = .characterDevice
        case UInt32(S_IFBLK): self = .blockDevice
        default: self = .unknown
        }
    }

    /// From a `getdents64` `d_type`; `.unknown` when the filesystem did not say (`DT_UNKNOWN`).
    public init(direntType: UInt8) {
        switch Int32(direntType) {
        case Int32(DT_REG): self = .regular
        case Int32(DT_DIR): self = .directory
        case Int32(DT_LNK): self = .symlink
        case Int32(DT_FIFO): self = .fifo
        case Int32(DT_SOCK): self = .socket
        case Int32(DT_CHR): self = .characterDevice
        case Int32(DT_BLK): self = .blockDevice
        default: self = .unknown
        }
    }

    public var description: String {
        switch self {
        case .regular: "file"
        case .directory: "directory"
        case .symlink: "symlink"
        case .fifo: "fifo"
        case .socket: "socket"
        case .characterDevice: "character device"
        case .blockDevice: "block device"
        case .unknown: "unknown"
        }
    }
}

/// What `statx(2)` says about an inode.
public struct FileStatus: Sendable, Equatable {
    public var kind: FileKind
    /// The full `st_mode`, type bits included.
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: UInt64
    /// Allocated space in 512-byte units (`st_blocks`): less than `size` for a sparse file.
    public var blocks: UInt64
    public var linkCount: UInt32
    public var inode: UInt64
    public var deviceMajor: UInt32
    public var deviceMinor: UInt32
    public var rdevMajor: UInt32
    public var rdevMinor: UInt32
    public var accessTime: Timespec
    public var modificationTime: Timespec
    public var changeTime: Timespec
    public var blockSize: UInt32
    /// The root of a mount (`STATX_ATTR_MOUNT_ROOT`, Linux 5.8+): another filesystem, or a bind
    /// mount, is mounted here, so its entries are not its parent directory's filesystem's.
    public var isMountRoot: Bool
    /// The mount it is on (`STATX_MNT_ID`, Linux 5.8+); 0 where the kernel does not say.
    public var mountID: UInt64

    /// Whether this directory is on another mount than `parent`, its parent directory: by the
    /// kernel's mount ids where it gives them (a btrfs subvolume has a device number of its own
    /// but is no mount), by device numbers before Linux 5.8.
    public func isOnAnotherMount(than parent: FileStatus) -> Bool {
        if isMountRoot { return true }
        if mountID != 0 && parent.mountID != 0 { return mountID != parent.mountID }
        return (deviceMajor, deviceMinor) != (parent.deviceMajor, parent.deviceMinor)
    }

    /// Permission bits including setuid, setgid and sticky.
    public var permissions: UInt32 { mode & 0o7777 }

    /// Identifies the inode on this machine: (device, inode).
    public var fileID: FileID { FileID(deviceMajor: deviceMajor, deviceMinor: deviceMinor, inode: inode) }

    init(_ raw: cferry_statx_t) {
        mode = UInt32(raw.mode)
        kind = FileKind(mode: mode)
        uid = raw.uid
        gid = raw.gid
        size = raw.size
        blocks = raw.blocks
        linkCount = raw.nlink
        inode = raw.ino
        deviceMajor = raw.dev_major
        deviceMinor = raw.dev_minor
        rdevMajor = raw.rdev_major
        rdevMinor = raw.rdev_minor
        accessTime = Timespec(seconds: raw.atime_sec, nanoseconds: raw.atime_nsec)
        modificationTime = Timespec(seconds: raw.mtime_sec, nanoseconds: raw.mtime_nsec)
        changeTime = Timespec(seconds: raw.ctime_sec, nanoseconds: raw.ctime_nsec)
        blockSize = raw.blksize
        isMountRoot = raw.attributes & 0x2000 != 0  // STATX_ATTR_MOUNT_ROOT
        mountID = raw.mnt_id
    }
}

public struct FileID: Sendable, Hashable {
    public var deviceMajor: UInt32
    public var deviceMinor: UInt32
    public var inode: UInt64
}
