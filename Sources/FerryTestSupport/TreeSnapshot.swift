import Crypto
import Foundation
import FerrySystem
import Glibc

/// Everything a faithful copy must preserve about one entry, read independently of Ferry's own
/// syscall layer: libc `lstat`/`readdir`/`readlink` by path, content hashed here, and extended
/// attributes (ACLs included) from `getfattr`.
public struct EntrySnapshot: Equatable, Sendable {
    public var kind: String
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: Int64
    public var blocks: Int64
    public var mtimeSeconds: Int
    public var mtimeNanoseconds: Int
    public var symlinkTarget: [UInt8]?
    public var rdev: UInt64
    public var contentHash: String?
    public var xattrs: [String: String]
    /// Paths (relative) sharing this entry's inode inside the tree; empty when it has one link.
    public var linkGroup: [[UInt8]]
}

public struct TreeSnapshot: Sendable {
    /// Relative path bytes → entry. The root itself is "".
    public var entries: [[UInt8]: EntrySnapshot]

    /// Walks `root` (not following symlinks). `hashContents`: SHA-256 every regular file.
    public static func take(_ root: String, hashContents: Bool = true) throws -> TreeSnapshot {
        var raw: [[UInt8]: (EntrySnapshot, UInt64)] = [:]
        var inodes: [UInt64: [[UInt8]]] = [:]
        let rootBytes = Array(root.utf8)
        var stack: [[UInt8]] = [[]]
        while let relative = stack.popLast() {
            let full = relative.isEmpty ? rootBytes : rootBytes + [0x2F] + relative
            var st = stat()
            guard cString(full, { lstat($0, &st) }) == 0 else { throw snapshotError("lstat", full) }
            let type = st.st_mode & S_IFMT
            var snapshot = EntrySnapshot(
                kind: kindName(type), mode: st.st_mode & 0o7777, uid: st.st_uid, gid: st.st_gid,
                size: Int64(st.st_size), blocks: Int64(st.st_blocks),
                mtimeSeconds: st.st_mtim.tv_sec, mtimeNanoseconds: st.st_mtim.tv_nsec,
                symlinkTarget: nil, rdev: UInt64(st.st_rdev), contentHash: nil, xattrs: [:], linkGroup: [])
            switch type {
            case S_IFDIR:
                guard let dir = cString(full, { opendir($0) }) else { throw snapshotError("opendir", full) }
                while let entry = readdir(dir) {
                    let name = withUnsafeBytes(of: entry.pointee.d_name) { bytes in
                        Array(bytes.prefix(while: { $0 != 0 }))
                    }
                    if name == [0x2E] || name == [0x2E, 0x2E] { continue }
                    stack.append(relative.isEmpty ? name : relative + [0x2F] + name)
                }
                closedir(dir)
            case S_IFLNK:
                var buffer = [UInt8](repeating: 0, count: 4097)
                let n = cString(full) { path in buffer.withUnsafeMutableBytes { readlink(path, $0.baseAddress!.assumingMemoryBound(to: CChar.self), 4096) } }
                guard n >= 0 else { throw snapshotError("readlink", full) }
                snapshot.symlinkTarget = Array(buffer[0..<n])
            case S_IFREG:
                if hashContents { snapshot.contentHash = try hash(full) }
                if st.st_nlink > 1 { inodes[UInt64(st.st_ino), default: []].append(relative) }
            default:
                break
            }
            raw[relative] = (snapshot, UInt64(st.st_ino))
        }
        let attributes = try xattrs(root)
        var entries: [[UInt8]: EntrySnapshot] = [:]
        for (path, (snapshot, inode)) in raw {
            var entry = snapshot
            entry.xattrs = attributes[path] ?? [:]
            if let group = inodes[inode], group.count > 1 { entry.linkGroup = group.sorted { $0.lexicographicallyPrecedes($1) } }
            entries[path] = entry
        }
        return TreeSnapshot(entries: entries)
    }

    /// What differs between two trees, by path: a faithful copy gives none. `ignoreRootTimes`: the
    /// roots' own mtimes are compared unless told otherwise.
    public func differences(to other: TreeSnapshot, compareOwners: Bool = true) -> [String] {
        var out: [String] = []
        for (path, mine) in entries.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            let name = String(decoding: path, as: UTF8.self)
            guard var theirs = other.entries[path] else { out.append("\(name): missing"); continue }
            var mine = mine
            if !compareOwners { theirs.uid = mine.uid; theirs.gid = mine.gid }
            if mine.kind == "symlink" { theirs.mode = mine.mode }  // symlink modes are meaningless
            // Allocation may differ slightly (block rounding); holes filled differ by far more.
            if abs(mine.blocks - theirs.blocks) <= max(64, max(mine.blocks, theirs.blocks) / 64) { theirs.blocks = mine.blocks }
            if mine.kind == "directory" { theirs.size = mine.size; theirs.blocks = mine.blocks }
            mine.linkGroup = mine.linkGroup.sorted { $0.lexicographicallyPrecedes($1) }
            if mine != theirs { out.append("\(name): \(mine) ≠ \(theirs)") }
        }
        for path in other.entries.keys where entries[path] == nil {
            out.append("\(String(decoding: path, as: UTF8.self)): extra in the copy")
        }
        return out
    }

    static func hash(_ path: [UInt8]) throws -> String {
        let fd = cString(path) { open($0, O_RDONLY) }
        guard fd >= 0 else { throw snapshotError("open", path) }
        defer { close(fd) }
        var hasher = SHA256()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let n = read(fd, buffer.baseAddress, buffer.count)
            if n < 0 { throw snapshotError("read", path) }
            if n == 0 { break }
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// `getfattr -R -d -m - -h -e hex`: every attribute the caller can see, ACLs included, by path.
    static func xattrs(_ root: String) throws -> [[UInt8]: [String: String]] {
        let result = try Shell.execute(["getfattr", "-R", "-d", "-m", "-", "-h", "-e", "hex", "--absolute-names", root])
        var out: [[UInt8]: [String: String]] = [:]
        var current: [UInt8]?
        let prefix = Array(root.utf8)
        for line in result.standardOutput.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# file: ") {
                let path = unescapeOctal(String(line.dropFirst(8)))
                current = path == prefix ? [] : Array(path.dropFirst(prefix.count + 1))
            } else if let current, let eq = line.firstIndex(of: "=") {
                out[current, default: [:]][String(line[..<eq])] = String(line[line.index(after: eq)...])
            }
        }
        return out
    }

    /// getfattr escapes unusual bytes in file names as `\ooo`.
    static func unescapeOctal(_ text: String) -> [UInt8] {
        let raw = Array(text.utf8)
        var out: [UInt8] = []
        var i = 0
        while i < raw.count {
            if raw[i] == 0x5C, i + 3 < raw.count, let v = UInt8(String(decoding: raw[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(raw[i])
                i += 1
            }
        }
        return out
    }

    static func kindName(_ type: mode_t) -> String {
        switch type {
        case S_IFREG: "file"
        case S_IFDIR: "directory"
        case S_IFLNK: "symlink"
        case S_IFIFO: "fifo"
        case S_IFSOCK: "socket"
        case S_IFCHR: "char"
        case S_IFBLK: "block"
        default: "unknown"
        }
    }
}

func cString<R>(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>) -> R) -> R {
    var terminated = bytes
    terminated.append(0)
    return terminated.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { body($0.baseAddress!) } }
}

func snapshotError(_ call: String, _ path: [UInt8]) -> ShellError {
    ShellError(command: call, status: errno, output: String(decoding: path, as: UTF8.self) + ": " + String(cString: strerror(errno)))
}

/// Builds test trees with the awkward cases a copy must keep.
public enum TreeBuilder {
    /// Makes `path` a directory that looks like one Ferry made for staging task `id`: the
    /// directory (with its parents) and the mark Ferry sets on it, `user.ferry.staging`.
    /// A directory as Ferry makes one for staging: private to its owner (unless `permissions`
    /// says otherwise) and marked with `id`.
    public static func stagingDirectory(_ path: String, id: String, permissions: mode_t = 0o700) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        guard chmod(path, permissions) == 0 else { throw SystemError(errno: errno, syscall: "chmod", path: path) }
        let directory = try FileDescriptor.openDirectory(Array(path.utf8))
        defer { directory.closeQuietly() }
        let parent = try FileDescriptor.openDirectory(BytePath.split(Array(path.utf8)).parent)
        defer { parent.closeQuietly() }
        let status = try parent.status()
        // As `StagingArea.markValue` writes it: the id, and the directory it was made in.
        let value = "\(id) in \(status.inode)"
        try ExtendedAttributes.set(directory, Array("user.ferry.staging".utf8), Array(value.utf8))
    }

    public static func write(_ path: String, bytes: Int, seed: UInt64 = 1) throws {
        var generator = SplitMix(seed: seed)
        var data = [UInt8](repeating: 0, count: bytes)
        var i = 0
        while i < bytes {
            var value = generator.next()
            for _ in 0..<8 where i < bytes {
                data[i] = UInt8(truncatingIfNeeded: value)
                value >>= 8
                i += 1
            }
        }
        guard FileManager.default.createFile(atPath: path, contents: Data(data)) else {
            throw ShellError(command: "create \(path)", status: 1, output: "")
        }
    }

    /// A file of `size` bytes whose only data is `dataBytes` random bytes at `offset`.
    public static func sparse(_ path: String, size: Int, dataBytes: Int, at offset: Int) throws {
        try Shell.run(["truncate", "-s", String(size), path])
        try Shell.run(["dd", "if=/dev/urandom", "of=\(path)", "bs=1M", "count=\(dataBytes >> 20)", "seek=\(offset >> 20)", "conv=notrunc", "status=none"])
    }
}

public struct SplitMix: RandomNumberGenerator, Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
