import FerrySystem

/// The kind of filesystem a path is on, from `statfs` `f_type`, or as configured.
public enum FilesystemKind: String, Sendable, CaseIterable, Codable {
    case lustre, xfs, ext4, posix

    public static let lustreMagic = FilesystemStatistics.lustreMagic
    public static let xfsMagic = FilesystemStatistics.xfsMagic
    public static let ext4Magic = FilesystemStatistics.ext4Magic

    public init(magic: UInt64) {
        switch magic {
        case Self.lustreMagic: self = .lustre
        case Self.xfsMagic: self = .xfs
        case Self.ext4Magic: self = .ext4
        default: self = .posix
        }
    }
}

/// How a path's backend is chosen: detected, or forced by configuration (`backend = "xfs"`).
public enum BackendChoice: String, Sendable, CaseIterable, Codable {
    case auto, lustre, xfs, ext4, posix
}

/// Where quota figures came from: `lfs quota`, the kernel's `quotactl`, or (no quota available)
/// the filesystem's own free space from `statvfs`.
public enum QuotaSource: String, Sendable, Codable {
    case lfs, quotactl, statvfs
}

/// A project's usage and limits, in bytes and inodes. Limits are nil where none is set.
public struct QuotaReport: Sendable, Equatable {
    public var source: QuotaSource
    public var projectID: UInt32?
    public var bytesUsed: UInt64?
    public var bytesSoftLimit: UInt64?
    public var bytesHardLimit: UInt64?
    /// What may still be written: the smaller of the hard limit's headroom and the filesystem's space.
    public var bytesFree: UInt64?
    public var inodesUsed: UInt64?
    public var inodesSoftLimit: UInt64?
    public var inodesHardLimit: UInt64?
    public var inodesFree: UInt64?
    /// A soft or hard limit is exceeded (Lustre prints `*`).
    public var overLimit: Bool?
    /// Figures Lustre could not gather from every target (`[…]`): treat them as estimates.
    public var inaccurate: Bool?
    /// Why the preferred source was not used, when it was not (e.g. "quotactl: ENOSYS").
    public var note: String?

    public init(source: QuotaSource, projectID: UInt32? = nil) {
        self.source = source
        self.projectID = projectID
    }
}

/// Why a storage question could not be answered.
public struct StorageError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable, Equatable { case system, command, parse, unsupported }
    public var code: Code
    public var message: String
    public var underlying: SystemError?

    public init(_ code: Code, _ message: String, underlying: SystemError? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String { message }
}
