import CFerrySystem
import Glibc
import SystemPackage

/// Opens paths beneath a root directory so that no `..`, absolute path or symlink leads outside it.
///
/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` does this in the kernel, atomically. Where the
/// kernel lacks `openat2` (before 5.6, or a seccomp filter refusing it), the same guarantee comes
/// from a walk one component at a time with `O_NOFOLLOW`, which refuses every symlink on the way.
public enum PathResolver {
    public enum SymlinkPolicy: Sendable {
        /// Refuse any symlink in the path (RESOLVE_NO_SYMLINKS).
        case refuse
        /// Follow symlinks that stay beneath the root; one that points outside fails.
        case followBeneath

        /// What a request resolved beneath the roots may follow in this process: any symlink that
        /// stays beneath them for a user acting as themselves (the kernel checks what they may do
        /// wherever it leads), none as root. A symlink inside the roots is anyone's to plant in a
        /// directory of theirs: followed by root (an admin's task, preview or listing), it would
        /// have root act on whatever tree it names, one the user could not touch.
        public static var forThisProcess: SymlinkPolicy { geteuid() == 0 ? .refuse : .followBeneath }
    }

    /// Open `path` (relative to `root`, as bytes) with `flags`. An attempt to leave the root fails
    /// with code `.escapesRoot`; a symlink met where none is followed with `.symlinkRefused`; a
    /// loop among followed symlinks with `.symlinkLoop`.
    public static func open(
        beneath root: FileDescriptor, _ path: ByteString, _ flags: OpenFlags,
        permissions: mode_t = 0o600, symlinks: SymlinkPolicy = .refuse, forceWalk: Bool = false
    ) throws(SystemError) -> FileDescriptor {
        if path.contains(0) {
            throw SystemError(errno: Errno(rawValue: EINVAL), syscall: "openat2", path: path.displayString)
        }
        // The kernel answers EAGAIN when a rename raced the lookup of a path with `..` in it: tried
        // again a bounded number of times (a caller renaming in a loop must not make this recurse
        // without end), then EAGAIN is the answer.
        var attempts = 0
        while !forceWalk {
            var resolve = CFERRY_RESOLVE_BENEATH | CFERRY_RESOLVE_NO_MAGICLINKS
            if symlinks == .refuse { resolve |= CFERRY_RESOLVE_NO_SYMLINKS }
            let all = flags.union(.closeOnExec).rawValue
            let target = path.isEmpty ? Array(".".utf8) : path
            let (fd, code) = target.withCPath { path -> (CInt, CInt) in
                let fd = cferry_openat2(root.rawValue, path, all, UInt32(permissions), resolve)
                return (fd, fd < 0 ? Glibc.errno : 0)
            }
            if fd >= 0 { return FileDescriptor(rawValue: fd) }
            switch code {
            case ENOSYS:
                return try walkRefusingSymlinks(root, path, flags, permissions: permissions)  // no openat2 here
            case EXDEV:
                throw SystemError(errno: Errno(rawValue: code), syscall: "openat2(RESOLVE_BENEATH)",
                                  path: path.displayString, refinedCode: .escapesRoot)
            case EAGAIN, EINTR:
                attempts += 1
                if attempts < 100 { continue }
                throw SystemError(errno: Errno(rawValue: code), syscall: "openat2", path: path.displayString)
            default:
                throw SystemError(errno: Errno(rawValue: code), syscall: "openat2", path: path.displayString,
                                  refinedCode: code == ELOOP && symlinks == .refuse ? .symlinkRefused : nil)
            }
        }
        return try walkRefusingSymlinks(root, path, flags, permissions: permissions)
    }

    /// `walk`, whose ELOOP (`O_NOFOLLOW` meeting a symlink: it follows none) is `.symlinkRefused`.
    static func walkRefusingSymlinks(_ root: FileDescriptor, _ path: ByteString, _ flags: OpenFlags,
                                     permissions: mode_t) throws(SystemError) -> FileDescriptor {
        do {
            return try walk(root, path, flags, permissions: permissions)
        } catch {
            var refused = error
            if error.code == .symlinkLoop { refused.refinedCode = .symlinkRefused }
            throw refused
        }
    }

    /// The fallback: every intermediate component must be a real directory (`O_NOFOLLOW`), `..` and
    /// absolute paths are refused, the last component is opened with `O_NOFOLLOW` too.
    static func walk(_ root: FileDescriptor, _ path: ByteString, _ flags: OpenFlags, permissions: mode_t) throws(SystemError) -> FileDescriptor {
        if path.first == UInt8(ascii: "/") {
            throw SystemError(errno: Errno(rawValue: EXDEV), syscall: "openat(walk)", path: path.displayString, refinedCode: .escapesRoot)
        }
        let components = path.split(separator: UInt8(ascii: "/")).map(Array.init).filter { $0 != [UInt8(ascii: ".")] }
        if components.contains([UInt8(ascii: "."), UInt8(ascii: ".")]) {
            throw SystemError(errno: Errno(rawValue: EXDEV), syscall: "openat(walk)", path: path.displayString, refinedCode: .escapesRoot)
        }
        guard let last = components.last else {
            return try root.openAt(Array(".".utf8), flags.union(.noFollow), permissions: permissions)
        }
        var current = try root.duplicateDescriptor()
        defer { current.closeQuietly() }
        for component in components.dropLast() {
            let next = try current.openAt(component, [.path, .directory, .noFollow])
            current.closeQuietly()
            current = next
        }
        return try current.openAt(last, flags.union(.noFollow), permissions: permissions)
    }
}

/// Splitting and joining byte paths (no normalisation: `..` is the resolver's business).
public enum BytePath {
    /// `realpath(3)`: the path absolute, without symlinks, `.` or `..`; nil if it cannot be
    /// resolved (a component missing or unreadable). Follows every symlink: for finding where a
    /// path leads, never for deciding what may be touched (`PathResolver` does that).
    public static func resolved(_ path: ByteString) -> ByteString? {
        guard let real = path.withCPath({ realpath($0, nil) }) else { return nil }
        defer { free(real) }
        return Array(UnsafeBufferPointer(start: UnsafeRawPointer(real).assumingMemoryBound(to: UInt8.self), count: strlen(real)))
    }

    /// (parent, last component) of a path; the parent of `name` is `.`, of `/name` is `/`.
    public static func split(_ path: ByteString) -> (parent: ByteString, name: ByteString) {
        var trimmed = path
        while trimmed.count > 1, trimmed.last == UInt8(ascii: "/") { trimmed.removeLast() }
        guard let slash = trimmed.lastIndex(of: UInt8(ascii: "/")) else { return (Array(".".utf8), trimmed) }
        let name = Array(trimmed[(slash + 1)...])
        let parent = slash == 0 ? Array("/".utf8) : Array(trimmed[..<slash])
        return (parent, name)
    }

    /// A name that stays in its directory: not empty, `.` or `..`, without `/` or NUL.
    public static func isPlainName(_ name: ByteString) -> Bool {
        !name.isEmpty && name != Array(".".utf8) && name != Array("..".utf8) && !name.contains(UInt8(ascii: "/")) && !name.contains(0)
    }

    /// An absolute path with `.`, `..` and repeated or trailing slashes resolved lexically (no
    /// symlink is looked at): how a request's paths are named in path locks.
    public static func lexicallyNormalized(_ absolute: ByteString) -> ByteString {
        var parts: [ByteString] = []
        for part in absolute.split(separator: UInt8(ascii: "/")) {
            if part.elementsEqual(".".utf8) { continue }
            if part.elementsEqual("..".utf8) { _ = parts.popLast(); continue }
            parts.append(Array(part))
        }
        return [UInt8(ascii: "/")] + Array(parts.joined(separator: [UInt8(ascii: "/")]))
    }

    public static func join(_ parent: ByteString, _ name: ByteString) -> ByteString {
        if parent.isEmpty { return name }
        if parent.last == UInt8(ascii: "/") { return parent + name }
        return parent + [UInt8(ascii: "/")] + name
    }
}

extension FileDescriptor {
    /// Opens a path given by a user (absolute or relative to the working directory) as a directory,
    /// without following a final symlink. The corresponding C function is `openat(AT_FDCWD)`.
    public static func openDirectory(_ path: ByteString, followFinalSymlink: Bool = true) throws(SystemError) -> FileDescriptor {
        var flags: OpenFlags = [.directory]
        if !followFinalSymlink { flags.insert(.noFollow) }
        return try currentWorkingDirectory.openAt(path, flags)
    }

    /// Opens an absolute directory path through no symlink at all (`RESOLVE_NO_SYMLINKS` from
    /// `/`): for privileged code acting on paths that users can change, so that a component
    /// swapped for a symlink cannot send it elsewhere.
    public static func openDirectoryWithoutSymlinks(_ path: ByteString) throws(SystemError) -> FileDescriptor {
        let root = try currentWorkingDirectory.openAt(Array("/".utf8), [.directory])
        defer { root.closeQuietly() }
        let relative = Array(path.drop(while: { $0 == UInt8(ascii: "/") }))
        return try PathResolver.open(beneath: root, relative, [.directory], symlinks: .refuse)
    }
}

extension FileDescriptor {
    /// Where the kernel has this descriptor's file (`/proc/self/fd/N`): absolute, every symlink on
    /// the way resolved, so that two names for one directory give one path. Nil when it cannot
    /// tell (no `/proc`, the file removed, or outside this process's root).
    public func resolvedPath() -> ByteString? {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = buffer.withUnsafeMutableBytes { bytes in
            readlink("/proc/self/fd/\(rawValue)", bytes.baseAddress!.assumingMemoryBound(to: CChar.self), bytes.count)
        }
        guard count > 0, count < buffer.count, buffer[0] == UInt8(ascii: "/") else { return nil }
        let path = Array(buffer[0..<count])
        if path.count > 1 && path.last == UInt8(ascii: ")") && path.ends(with: Array(" (deleted)".utf8)) { return nil }
        return path
    }
}

extension Array where Element == UInt8 {
    fileprivate func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}
