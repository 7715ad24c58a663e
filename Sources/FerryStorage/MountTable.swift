import Foundation
import FerrySystem

/// `/proc/self/mountinfo`, to find the mount point (for `lfs quota`) and the device (for `quotactl`)
/// of a path.
public struct MountTable: Sendable {
    public struct Mount: Sendable, Equatable {
        public var mountPoint: String
        public var filesystemType: String
        public var source: String
        /// "MAJOR:MINOR" of its filesystem.
        public var device: String

        public init(mountPoint: String, filesystemType: String, source: String, device: String = "") {
            self.mountPoint = mountPoint
            self.filesystemType = filesystemType
            self.source = source
            self.device = device
        }
    }

    public var mounts: [Mount]

    public static func current() -> MountTable {
        MountTable(entries: MountInfoEntry.current())
    }

    /// A mountinfo text (see `MountInfoEntry`).
    public init(parsing text: String) { self.init(entries: MountInfoEntry.parse(text)) }

    init(entries: [MountInfoEntry]) {
        mounts = entries.map { Mount(mountPoint: $0.mountPoint, filesystemType: $0.filesystemType, source: $0.source, device: $0.device) }
    }

    /// The mount of the open file `fd` (at `path`): the one of its filesystem's device number, so
    /// that neither a path's spelling nor a later mount hiding a mount point misleads; among bind
    /// mounts of one filesystem, the deepest beneath which `path` lies, else the last mounted.
    /// By the path alone where the device number matches no mount.
    public func mount(of fd: FileDescriptor, path: ByteString) -> Mount? {
        guard let status = try? fd.status() else { return mount(containing: path) }
        let same = mounts.filter { $0.device == "\(status.deviceMajor):\(status.deviceMinor)" }
        if same.count == 1 { return same[0] }
        if same.isEmpty { return mount(containing: path) }
        return Self.deepest(of: same, containing: path) ?? same.last
    }

    /// The mount whose mount point is the longest prefix of `path` (made absolute and free of
    /// symlinks), compared as bytes: Strings compare by characters, and a name beginning with a
    /// combining mark would join the "/" before it and match nothing.
    public func mount(containing path: ByteString) -> Mount? {
        Self.deepest(of: mounts, containing: path)
    }

    static func deepest(of mounts: [Mount], containing path: ByteString) -> Mount? {
        let absolute = BytePath.resolved(path) ?? path
        let slash = UInt8(ascii: "/")
        var best: (mount: Mount, length: Int)?
        for mount in mounts {
            let point = Array(mount.mountPoint.utf8)
            let matches = absolute == point || point == [slash]
                || (absolute.starts(with: point) && absolute.count > point.count && absolute[point.count] == slash)
            // Equal lengths: the later mount, which hides the earlier one.
            if matches && point.count >= (best?.length ?? -1) { best = (mount, point.count) }
        }
        return best?.mount
    }

}
