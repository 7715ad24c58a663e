import CFerrySystem
import Glibc
import SystemPackage

// Every libc call Ferry makes on files goes through here, once, with EINTR retried in
// `syscallRetrying` and the failure typed as `SystemError`. Names are bytes (`ByteString`).

/// `AT_FDCWD` as a descriptor, for calls given a path rather than a directory.
public let currentWorkingDirectory = FileDescriptor(rawValue: AT_FDCWD)

public struct OpenFlags: OptionSet, Sendable {
    public let rawValue: CInt
    public init(rawValue: CInt) { self.rawValue = rawValue }
    public static let readOnly = OpenFlags([])
    public static let writeOnly = OpenFlags(rawValue: O_WRONLY)
    public static let readWrite = OpenFlags(rawValue: O_RDWR)
    public static let create = OpenFlags(rawValue: O_CREAT)
    public static let exclusive = OpenFlags(rawValue: O_EXCL)
    public static let truncate = OpenFlags(rawValue: O_TRUNC)
    public static let append = OpenFlags(rawValue: O_APPEND)
    public static let directory = OpenFlags(rawValue: O_DIRECTORY)
    public static let noFollow = OpenFlags(rawValue: O_NOFOLLOW)
    public static let path = OpenFlags(rawValue: CFERRY_O_PATH)
    public static let nonBlocking = OpenFlags(rawValue: O_NONBLOCK)
    public static let noAccessTime = OpenFlags(rawValue: CFERRY_O_NOATIME)
    /// Lustre's `O_LOV_DELAY_CREATE`, `O_NOCTTY | FASYNC` since Lustre 2.4 (both mean nothing for a
    /// new regular file elsewhere, and `FASYNC` given to `open` arms no signal): the file is made
    /// without OST objects, so a layout set before its first write becomes its layout. Made
    /// without it, the file gets its directory's default layout at once, and a layout set later is
    /// ignored (the client turns the `EEXIST` into success).
    public static let delayLayout = OpenFlags(rawValue: O_NOCTTY | O_ASYNC)
    /// Always set: no descriptor of Ferry's leaks into a child process.
    static let closeOnExec = OpenFlags(rawValue: O_CLOEXEC)
}

public struct RenameFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Fail with `EEXIST` rather than replace the destination.
    public static let noReplace = RenameFlags(rawValue: CFERRY_RENAME_NOREPLACE)
    /// Swap the two names atomically.
    public static let exchange = RenameFlags(rawValue: CFERRY_RENAME_EXCHANGE)
}

extension FileDescriptor {
    /// Opens `name` relative to this directory. The corresponding C function is `openat`.
    public func openAt(
        _ name: ByteString, _ flags: OpenFlags, permissions: mode_t = 0o600
    ) throws(SystemError) -> FileDescriptor {
        let all = flags.union(.closeOnExec).rawValue
        let fd = try name.withCPath { (path) throws(SystemError) in
            try syscallRetrying("openat", path: name.displayString) { Glibc.openat(rawValue, path, all, permissions) }
        }
        return FileDescriptor(rawValue: fd)
    }

    /// Closes a descriptor that was written through, reporting what `close` reports: NFS and Lustre
    /// deliver delayed write-back failures (ENOSPC, EDQUOT, EIO) here. Not retried on EINTR: Linux
    /// has released the descriptor whatever `close` returns.
    public func closeAfterWriting() throws(SystemError) {
        if Glibc.close(rawValue) != 0 {
            let code = Glibc.errno
            if code != EINTR { throw SystemError(errno: code, syscall: "close") }
        }
    }

    /// Closes the descriptor; errors on close are not actionable for Ferry's read paths, and write
    /// paths check durability with `fsync`/`syncfs` before closing.
    public func closeQuietly() {
        _ = Glibc.close(rawValue)
    }

    /// The corresponding C function is `statx` (with `AT_EMPTY_PATH` when `name` is nil).
    public func status(_ name: ByteString? = nil, followSymlinks: Bool = false) throws(SystemError) -> FileStatus {
        var raw = cferry_statx_t()
        let mask = CFERRY_STATX_BASIC_STATS
        let nofollow = followSymlinks ? 0 : AT_SYMLINK_NOFOLLOW
        if let name {
            _ = try name.withCPath { (path) throws(SystemError) in
                try syscallRetrying("statx", path: name.displayString) {
                    cferry_statx(rawValue, path, nofollow | CFERRY_AT_STATX_SYNC_AS_STAT, mask, &raw)
                }
            }
        } else {
            _ = try syscallRetrying("statx") {
                cferry_statx(rawValue, "", CFERRY_AT_EMPTY_PATH | nofollow | CFERRY_AT_STATX_SYNC_AS_STAT, mask, &raw)
            }
        }
        return FileStatus(raw)
    }

    /// Whether this process (its effective ids) may `mode` (`W_OK | X_OK`, …) `name` in this
    /// directory, or the directory itself when `name` is nil. The corresponding C function is
    /// `faccessat` with `AT_EACCESS`.
    public func isAccessible(_ name: ByteString? = nil, mode: CInt) -> Bool {
        let flags = AT_EACCESS | (name == nil ? CFERRY_AT_EMPTY_PATH : AT_SYMLINK_NOFOLLOW)
        return (name ?? []).withCPath { path in faccessat(rawValue, path, mode, flags) == 0 }
    }

    /// The corresponding C function is `mkdirat`.
    public func makeDirectory(_ name: ByteString, permissions: mode_t = 0o700) throws(SystemError) {
        _ = try name.withCPath { (path) throws(SystemError) in
            try syscallRetrying("mkdirat", path: name.displayString) { mkdirat(rawValue, path, permissions) }
        }
    }

    /// The corresponding C function is `unlinkat` (`AT_REMOVEDIR` for a directory).
    public func removeEntry(_ name: ByteString, isDirectory: Bool) throws(SystemError) {
        _ = try name.withCPath { (path) throws(SystemError) in
            try syscallRetrying(isDirectory ? "unlinkat(AT_REMOVEDIR)" : "unlinkat", path: name.displayString) {
                unlinkat(rawValue, path, isDirectory ? AT_REMOVEDIR : 0)
            }
        }
    }

    /// The corresponding C function is `symlinkat`; the target bytes are stored verbatim.
    public func makeSymlink(_ name: ByteString, target: ByteString) throws(SystemError) {
        _ = try target.withCPath { (targetPath) throws(SystemError) in
            try name.withCPath { (path) throws(SystemError) in
                try syscallRetrying("symlinkat", path: name.displayString) { symlinkat(targetPath, rawValue, path) }
            }
        }
    }

    /// The corresponding C function is `readlinkat`; returns the target's bytes, whatever its length.
    public func readSymlink(_ name: ByteString) throws(SystemError) -> ByteString {
        var capacity = 256
        while true {
            var buffer = [UInt8](repeating: 0, count: capacity)
            let count = try name.withCPath { (path) throws(SystemError) in
                try syscallRetrying("readlinkat", path: name.displayString) {
                    buffer.withUnsafeMutableBytes { readlinkat(rawValue, path, $0.baseAddress!.assumingMemoryBound(to: CChar.self), capacity) }
                }
            }
            if count < capacity { return Array(buffer[0..<count]) }
            capacity *= 4
        }
    }

    /// The corresponding C function is `mknodat` (fifos, sockets, device nodes).
    public func makeNode(_ name: ByteString, mode: UInt32, deviceMajor: UInt32 = 0, deviceMinor: UInt32 = 0) throws(SystemError) {
        _ = try name.withCPath { (path) throws(SystemError) in
            try syscallRetrying("mknodat", path: name.displayString) {
                cferry_mknodat(rawValue, path, mode, deviceMajor, deviceMinor)
            }
        }
    }

    /// The corresponding C function is `fchownat(AT_SYMLINK_NOFOLLOW)`, or `fchown` when `name` is nil.
    public func changeOwner(_ name: ByteString? = nil, uid: UInt32, gid: UInt32) throws(SystemError) {
        if let name {
            _ = try name.withCPath { (path) throws(SystemError) in
                try syscallRetrying("fchownat", path: name.displayString) { fchownat(rawValue, path, uid, gid, AT_SYMLINK_NOFOLLOW) }
            }
        } else {
            _ = try syscallRetrying("fchown") { fchown(rawValue, uid, gid) }
        }
    }

    /// Sets the permissions of the directory `name` in this one through a descriptor opened
    /// `O_NOFOLLOW`: `fchmodat` would follow a symlink swapped in for it.
    public func changeDirectoryMode(_ name: ByteString, permissions: UInt32) throws(SystemError) {
        let directory = try openAt(name, [.directory, .noFollow])
        defer { directory.closeQuietly() }
        try directory.changeMode(permissions: permissions)
    }

    /// The corresponding C function is `fchmodat`, or `fchmod` when `name` is nil.
    public func changeMode(_ name: ByteString? = nil, permissions: UInt32) throws(SystemError) {
        if let name {
            _ = try name.withCPath { (path) throws(SystemError) in
                try syscallRetrying("fchmodat", path: name.displayString) { fchmodat(rawValue, path, mode_t(permissions), 0) }
            }
        } else {
            _ = try syscallRetrying("fchmod") { fchmod(rawValue, mode_t(permissions)) }
        }
    }

    /// Sets access and modification times to the nanosecond. The corresponding C function is
    /// `utimensat(AT_SYMLINK_NOFOLLOW)`, or `futimens` when `name` is nil.
    public func setTimes(_ name: ByteString? = nil, access: Timespec, modification: Timespec) throws(SystemError) {
        if let name {
            _ = try name.withCPath { (path) throws(SystemError) in
                try syscallRetrying("utimensat", path: name.displayString) {
                    cferry_utimensat(rawValue, path, access.seconds, Int64(access.nanoseconds),
                                     modification.seconds, Int64(modification.nanoseconds), AT_SYMLINK_NOFOLLOW)
                }
            }
        } else {
            _ = try syscallRetrying("futimens") {
                cferry_futimens(rawValue, access.seconds, Int64(access.nanoseconds), modification.seconds, Int64(modification.nanoseconds))
            }
        }
    }

    /// The corresponding C function is `fsync`.
    public func sync() throws(SystemError) { _ = try syscallRetrying("fsync") { fsync(rawValue) } }

    /// The corresponding C function is `fdatasync`.
    public func dataSync() throws(SystemError) { _ = try syscallRetrying("fdatasync") { fdatasync(rawValue) } }

    /// Flushes the whole filesystem this descriptor is on: one call for a staged tree instead of an
    /// `fsync` per file. The corresponding C function is `syncfs`.
    public func syncFilesystem() throws(SystemError) { _ = try syscallRetrying("syncfs") { cferry_syncfs(rawValue) } }

    /// Starts writing a range back to storage without waiting for it, so the flush at the end of a
    /// large copy has less left to do. The corresponding C function is
    /// `sync_file_range(SYNC_FILE_RANGE_WRITE)`; it is a hint, and durability still comes from
    /// `fsync`/`syncfs`.
    public func startWriteback(offset: UInt64, length: UInt64) throws(SystemError) {
        _ = try syscallRetrying("sync_file_range") { cferry_start_writeback(rawValue, Int64(offset), Int64(length)) }
    }

    /// `posix_fadvise(POSIX_FADV_DONTNEED)` over the whole file: drops its clean cached pages.
    /// Like `startWriteback`, a hint.
    public func dropCachedPages() throws(SystemError) {
        let result = posix_fadvise(rawValue, 0, 0, POSIX_FADV_DONTNEED)
        if result != 0 { throw SystemError(errno: Errno(rawValue: result), syscall: "posix_fadvise") }
    }

    /// The corresponding C function is `ftruncate`.
    public func truncate(to size: UInt64) throws(SystemError) {
        _ = try syscallRetrying("ftruncate") { ftruncate(rawValue, off_t(size)) }
    }

    /// The corresponding C function is `fallocate`.
    public func allocate(offset: UInt64, length: UInt64, keepSize: Bool = false) throws(SystemError) {
        let mode = keepSize ? CFERRY_FALLOC_FL_KEEP_SIZE : 0
        _ = try syscallRetrying("fallocate") { cferry_fallocate(rawValue, mode, Int64(offset), Int64(length)) }
    }

    /// Next data region at or after `offset`; nil past the last one. The corresponding C function is
    /// `lseek(SEEK_DATA)`.
    public func seekData(from offset: UInt64) throws(SystemError) -> UInt64? {
        let r = Glibc.lseek(rawValue, off_t(offset), CFERRY_SEEK_DATA)
        if r < 0 {
            if Glibc.errno == ENXIO { return nil }
            throw SystemError(errno: Glibc.errno, syscall: "lseek(SEEK_DATA)")
        }
        return UInt64(r)
    }

    /// Next hole at or after `offset` (the end of the file counts as a hole). The corresponding C
    /// function is `lseek(SEEK_HOLE)`.
    public func seekHole(from offset: UInt64) throws(SystemError) -> UInt64 {
        let r = Glibc.lseek(rawValue, off_t(offset), CFERRY_SEEK_HOLE)
        if r < 0 { throw SystemError(errno: Glibc.errno, syscall: "lseek(SEEK_HOLE)") }
        return UInt64(r)
    }

    /// Copies up to `length` bytes inside the kernel; returns bytes copied (0 at end of input). The
    /// corresponding C function is `copy_file_range`.
    public func copyRange(
        to destination: FileDescriptor, sourceOffset: inout UInt64, destinationOffset: inout UInt64, length: Int
    ) throws(SystemError) -> Int {
        var inOff = Int64(sourceOffset)
        var outOff = Int64(destinationOffset)
        let n = try syscallRetrying("copy_file_range") {
            cferry_copy_file_range(rawValue, &inOff, destination.rawValue, &outOff, length)
        }
        sourceOffset = UInt64(inOff)
        destinationOffset = UInt64(outOff)
        return n
    }

    /// Makes this (empty) file share the source's extents. The corresponding C call is
    /// `ioctl(FICLONE)`.
    public func cloneContents(of source: FileDescriptor) throws(SystemError) {
        _ = try syscallRetrying("ioctl(FICLONE)") { cferry_ficlone(rawValue, source.rawValue) }
    }

    /// Reads what is there now, from the current position (a pipe, say); 0 at the end. The
    /// corresponding C function is `read`.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        try syscallRetrying("read") { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// The corresponding C function is `pread`.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
        try syscallRetrying("pread") { Glibc.pread(rawValue, buffer.baseAddress, buffer.count, off_t(offset)) }
    }

    /// Writes the whole buffer at `offset`. The corresponding C function is `pwrite`.
    public func writeAll(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(SystemError) {
        var done = 0
        while done < buffer.count {
            let n = try syscallRetrying("pwrite") {
                Glibc.pwrite(rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            done += n
        }
    }

    /// Sets the open file's status flags to those of `flags` that `F_SETFL` changes and Ferry uses (`O_NONBLOCK`
    /// among them): one call, where reading them first would be two. The corresponding C
    /// function is `fcntl(F_SETFL)`.
    public func setStatusFlags(_ flags: OpenFlags) throws(SystemError) {
        let changeable = O_APPEND | CFERRY_O_NOATIME | O_NONBLOCK
        _ = try syscallRetrying("fcntl(F_SETFL)") { fcntl(rawValue, F_SETFL, flags.rawValue & changeable) }
    }

    /// Opens a file to read that the caller takes for a regular file, without waiting if it is
    /// not (`O_NONBLOCK`: a fifo swapped in would wait for a writer for ever). Once open it reads
    /// as blocking, for filesystems that heed the flag on regular files (Lustre's locks); an open
    /// that a lease holder makes wait (EAGAIN) is made again, blocking, as any reader's would be.
    /// Returns it with its status, which the caller checks.
    public func openRegularForReading(_ name: ByteString, _ flags: OpenFlags) throws(SystemError) -> (FileDescriptor, FileStatus) {
        let file: FileDescriptor
        var blocking = false
        do {
            file = try openAt(name, flags.union(.nonBlocking))
        } catch where error.errno.rawValue == EAGAIN {
            file = try openAt(name, flags)
            blocking = true
        }
        do {
            let status = try file.status()
            if status.kind == .regular && !blocking { try file.setStatusFlags(flags) }  // as opened, but blocking
            return (file, status)
        } catch {
            file.closeQuietly()
            throw error
        }
    }

    /// A second descriptor for the same open file. The corresponding C function is `fcntl(F_DUPFD_CLOEXEC)`.
    public func duplicateDescriptor() throws(SystemError) -> FileDescriptor {
        FileDescriptor(rawValue: try syscallRetrying("fcntl(F_DUPFD_CLOEXEC)") { fcntl(rawValue, F_DUPFD_CLOEXEC, 0) })
    }
}

/// Renames across (or within) directories. The corresponding C function is `renameat2`.
public func rename(
    from sourceDirectory: FileDescriptor, _ sourceName: ByteString,
    to destinationDirectory: FileDescriptor, _ destinationName: ByteString,
    flags: RenameFlags = []
) throws(SystemError) {
    _ = try sourceName.withCPath { (from) throws(SystemError) in
        try destinationName.withCPath { (to) throws(SystemError) in
            try syscallRetrying("renameat2", path: "\(sourceName.displayString) → \(destinationName.displayString)") {
                cferry_renameat2(sourceDirectory.rawValue, from, destinationDirectory.rawValue, to, flags.rawValue)
            }
        }
    }
}

/// Makes a hard link; never follows a symlink at the source. The corresponding C function is `linkat`.
public func link(
    from sourceDirectory: FileDescriptor, _ sourceName: ByteString,
    to destinationDirectory: FileDescriptor, _ destinationName: ByteString
) throws(SystemError) {
    _ = try sourceName.withCPath { (from) throws(SystemError) in
        try destinationName.withCPath { (to) throws(SystemError) in
            try syscallRetrying("linkat", path: "\(sourceName.displayString) → \(destinationName.displayString)") {
                linkat(sourceDirectory.rawValue, from, destinationDirectory.rawValue, to, 0)
            }
        }
    }
}

/// Raises the soft limit on open descriptors to the hard limit: a parallel tree walk keeps a
/// descriptor per directory in progress. The corresponding C function is `setrlimit(RLIMIT_NOFILE)`.
public func raiseOpenFileLimit() {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
}

/// Whether this process may preserve ownership and write `trusted.*` attributes (CAP_CHOWN etc.).
public var processIsPrivileged: Bool { geteuid() == 0 }

/// This machine and its current boot: the host name and the kernel's random boot id
/// (`/proc/sys/kernel/random/boot_id`), which changes at every start. Data written here and not
/// yet flushed survives a process crash (it is in the page cache) but not a restart, nor a move
/// of the work to another machine; comparing this tells the two apart. Nil parts read as "?".
public let bootIdentity: String = {
    var host = [CChar](repeating: 0, count: 256)
    let name = gethostname(&host, host.count - 1) == 0 ? String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
    let read = readKernelFile("/proc/sys/kernel/random/boot_id", limit: 64)?.filter { $0 != "\n" && $0 != " " } ?? ""
    return "\(name) \(read.isEmpty ? "?" : read)"
}()
