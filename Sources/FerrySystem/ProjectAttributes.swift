import CFerrySystem
import Glibc
import SystemPackage

/// A project ID and the inherit flag (`FS_XFLAG_PROJINHERIT`): with it set on a directory, every
/// entry created inside takes the directory's project ID, and the kernel refuses `rename`/`link`
/// from another project with `EXDEV`.
public struct ProjectAttributes: Sendable, Equatable {
    public var projectID: UInt32
    public var inherit: Bool
    public init(projectID: UInt32, inherit: Bool) {
        self.projectID = projectID
        self.inherit = inherit
    }
}

extension FileDescriptor {
    /// The corresponding C call is `ioctl(FS_IOC_FSGETXATTR)` (XFS, ext4, Lustre and others).
    public func projectAttributes() throws(SystemError) -> ProjectAttributes {
        var flags: UInt32 = 0, project: UInt32 = 0, extentSize: UInt32 = 0, extents: UInt32 = 0
        _ = try syscallRetrying("ioctl(FS_IOC_FSGETXATTR)") { cferry_fsgetxattr(rawValue, &flags, &project, &extentSize, &extents) }
        return ProjectAttributes(projectID: project, inherit: flags & CFERRY_FS_XFLAG_PROJINHERIT != 0)
    }

    /// Sets the project ID and the inherit flag, keeping the other flags. The corresponding C call is
    /// `ioctl(FS_IOC_FSSETXATTR)`.
    public func setProjectAttributes(_ attributes: ProjectAttributes) throws(SystemError) {
        var flags: UInt32 = 0, project: UInt32 = 0, extentSize: UInt32 = 0, extents: UInt32 = 0
        _ = try syscallRetrying("ioctl(FS_IOC_FSGETXATTR)") { cferry_fsgetxattr(rawValue, &flags, &project, &extentSize, &extents) }
        let inherit = CFERRY_FS_XFLAG_PROJINHERIT
        let newFlags = attributes.inherit ? flags | inherit : flags & ~inherit
        _ = try syscallRetrying("ioctl(FS_IOC_FSSETXATTR)") { cferry_fssetxattr(rawValue, newFlags, attributes.projectID) }
    }
}
