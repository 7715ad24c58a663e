import Glibc

/// One line of `/proc/self/mountinfo` (proc(5)): `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS
/// [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS`, with spaces and other bytes in paths escaped as `\ooo`.
public struct MountInfoEntry: Sendable, Equatable {
    /// The directory of the filesystem that is mounted here (not "/" for a bind mount, or for a
    /// cgroup hierarchy seen from inside a cgroup namespace).
    public var root: String
    public var mountPoint: String
    public var filesystemType: String
    public var source: String
    /// The filesystem's own options: for a cgroup v1 hierarchy, its controllers (`rw,cpu,cpuacct`).
    public var superOptions: [String]
    /// The filesystem's device number, "MAJOR:MINOR", as `stat` gives it for any file on it.
    public var device: String = ""

    public init(root: String, mountPoint: String, filesystemType: String, source: String, superOptions: [String], device: String = "") {
        self.device = device
        self.root = root
        self.mountPoint = mountPoint
        self.filesystemType = filesystemType
        self.source = source
        self.superOptions = superOptions
    }

    /// The entries of a mountinfo text; malformed lines are skipped.
    public static func parse(_ text: String) -> [MountInfoEntry] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard fields.count >= 10, let dash = fields.firstIndex(of: "-"), dash >= 6, dash + 2 < fields.count else { return nil }
            return MountInfoEntry(root: unescape(fields[3]), mountPoint: unescape(fields[4]), filesystemType: fields[dash + 1],
                                  source: unescape(fields[dash + 2]),
                                  superOptions: dash + 3 < fields.count ? fields[dash + 3].split(separator: ",").map(String.init) : [],
                                  device: fields[2])
        }
    }

    /// This process's mounts now.
    /// (A host with thousands of mounts has a mountinfo of megabytes: read whole, not cut short.)
    public static func current() -> [MountInfoEntry] { parse(readKernelFile("/proc/self/mountinfo", limit: 256 << 20) ?? "") }

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

/// The text of a small file the kernel makes up (`/proc`, `/sys`), read whole; nil if it cannot
/// be opened or read.
public func readKernelFile(_ path: String, limit: Int = 1 << 20) -> String? {
    let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { Glibc.close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 8192)
    while bytes.count < limit {
        let got = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if got < 0 && errno == EINTR { continue }
        if got < 0 { return nil }
        if got == 0 { break }
        bytes += buffer[0..<got]
    }
    return String(decoding: bytes, as: UTF8.self)
}
