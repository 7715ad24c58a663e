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
        let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        return MountTable(parsing: text)
    }

    /// mountinfo lines: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`,
    /// with spaces and other bytes in paths escaped as `\ooo`.
    public init(parsing text: String) {
        mounts = text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard fields.count >= 10, let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { return nil }
            return Mount(mountPoint: Self.unescape(fields[4]), filesystemType: fields[dash + 1], source: Self.unescape(fields[dash + 2]))
        }
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

    static func unescape(_ field: String) -> String {
        guard field.contains("\\") else { return field }
        var bytes: [UInt8] = []
        let raw = Array(field.utf8)
        var i = 0
        while i < raw.count {
            if raw[i] == UInt8(ascii: "\\"), i + 3 < raw.count,
               let value = UInt8(String(decoding: raw[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                bytes.append(value)
                i += 4
            } else {
                bytes.append(raw[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
