import Foundation
import FerrySystem

/// `/proc/self/mountinfo`, to find the mount point (for `lfs quota`) and the device (for `quotactl`)
/// of a path.
public struct MountTable: Sendable {
    public struct Mount: Sendable, Equatable {
        public var mountPoint: String
        public var filesystemType: String
        public var source: String

        public init(mountPoint: String, filesystemType: String, source: String) {
            self.mountPoint = mountPoint
            self.filesystemType = filesystemType
            self.source = source
        }
    }

    public var mounts: [Mount]

    public static func current() -> MountTable {
        MountTable(entries: MountInfoEntry.current())
    }

    /// A mountinfo text (see `MountInfoEntry`).
    public init(parsing text: String) { self.init(entries: MountInfoEntry.parse(text)) }

    init(entries: [MountInfoEntry]) {
        mounts = entries.map { Mount(mountPoint: $0.mountPoint, filesystemType: $0.filesystemType, source: $0.source) }
    }

    /// The mount whose mount point is the longest prefix of `path` (made absolute and free of symlinks).
    public func mount(containing path: ByteString) -> Mount? {
        let display = String(decoding: path, as: UTF8.self)
        let absolute = URL(fileURLWithPath: display).resolvingSymlinksInPath().path
        var best: Mount?
        for mount in mounts {
            let point = mount.mountPoint
            let matches = absolute == point || point == "/" || absolute.hasPrefix(point.hasSuffix("/") ? point : point + "/")
            if matches && point.count >= (best?.mountPoint.count ?? -1) { best = mount }
        }
        return best
    }
}
