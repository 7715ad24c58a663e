import FerrySystem
import Glibc
import Synchronization
import SystemPackage

/// Copies the bytes of one regular file into a new, empty one, as cheaply as the storage allows:
/// `FICLONE` (shared extents), else `copy_file_range` (in-kernel), else `pread`/`pwrite` with a
/// large aligned buffer. A sparse source is copied extent by extent (`SEEK_DATA`/`SEEK_HOLE`), so
/// holes stay holes — `copy_file_range` alone fills them on some filesystems.
///
/// A mechanism the filesystem refuses once is not tried again for the rest of the copy.
final class FileDataCopier: Sendable {
    private let cloneAllowed: Atomic<Bool>
    private let copyRangeAllowed: Atomic<Bool>
    private let dropSourceCache: Bool
    /// Bytes per call: small enough to notice cancellation and report progress, large enough
    /// that per-call overhead vanishes.
    static let chunk = 32 << 20
    static let bufferSize = 1 << 20

    init(allowClone: Bool, allowCopyFileRange: Bool, dropSourceCache: Bool = false) {
        cloneAllowed = Atomic(allowClone)
        copyRangeAllowed = Atomic(allowCopyFileRange)
        self.dropSourceCache = dropSourceCache
    }

    /// Copies `status.size` bytes. `progress` is called with byte counts as they land.
    func copy(
        from source: FileDescriptor, to destination: FileDescriptor, status: FileStatus,
        cancellation: CancellationFlag, progress: (UInt64) -> Void
    ) throws(SystemError) {
        let size = status.size
        guard size > 0 else { return }
        if cloneAllowed.load(ordering: .relaxed) {
            do {
                try destination.cloneContents(of: source)
                progress(size)
                return
            } catch where Self.meansUnsupported(error) {
                cloneAllowed.store(false, ordering: .relaxed)
            }
        }
        defer { if dropSourceCache { try? source.dropCachedPages() } }
        // A file whose allocation is smaller than its size has holes; walk its extents.
        let sparse = status.blocks &* 512 < size
        var offset: UInt64 = 0
        if sparse {
            // Size first: a write that extends EOF makes XFS preallocate past it speculatively, and
            // extending the file afterwards would keep those blocks, filling part of a hole.
            try destination.truncate(to: size)
            while offset < size, let dataStart = try source.seekData(from: offset) {
                if dataStart >= size { break }
                let dataEnd = min(try source.seekHole(from: dataStart), size)
                try copyExtent(source, destination, from: dataStart, to: dataEnd, cancellation: cancellation, progress: progress)
                offset = dataEnd
            }
        } else {
            try copyExtent(source, destination, from: 0, to: size, cancellation: cancellation, progress: progress)
        }
    }

    private func copyExtent(
        _ source: FileDescriptor, _ destination: FileDescriptor, from start: UInt64, to end: UInt64,
        cancellation: CancellationFlag, progress: (UInt64) -> Void
    ) throws(SystemError) {
        var inOffset = start
        var outOffset = start
        while inOffset < end && copyRangeAllowed.load(ordering: .relaxed) {
            if cancellation.shouldStop { return }
            let want = Int(min(UInt64(Self.chunk), end - inOffset))
            let copied: Int
            do {
                copied = try source.copyRange(to: destination, sourceOffset: &inOffset, destinationOffset: &outOffset, length: want)
            } catch where Self.meansUnsupported(error) {
                copyRangeAllowed.store(false, ordering: .relaxed)
                break
            }
            if copied == 0 {
                // The source ended before its recorded size: it shrank while being copied.
                throw SystemError(errno: Errno(rawValue: ENODATA), syscall: "copy_file_range (source ended early)")
            }
            // Large files: let the kernel write each chunk back while the next is read, instead of
            // leaving gigabytes of dirty pages for the final flush. Only a hint: ignore failures.
            if end - start >= UInt64(Self.chunk) {
                try? destination.startWriteback(offset: outOffset - UInt64(copied), length: UInt64(copied))
            }
            progress(UInt64(copied))
        }
        guard inOffset < end else { return }
        try readWriteCopy(source, destination, from: inOffset, to: end, cancellation: cancellation, progress: progress)
    }

    private func readWriteCopy(
        _ source: FileDescriptor, _ destination: FileDescriptor, from start: UInt64, to end: UInt64,
        cancellation: CancellationFlag, progress: (UInt64) -> Void
    ) throws(SystemError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.bufferSize, alignment: 4096)
        defer { buffer.deallocate() }
        var offset = start
        while offset < end {
            if cancellation.shouldStop { return }
            let want = Int(min(UInt64(buffer.count), end - offset))
            let got = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), at: offset)
            if got == 0 {
                throw SystemError(errno: Errno(rawValue: ENODATA), syscall: "pread (source ended early)")
            }
            try destination.writeAll(UnsafeRawBufferPointer(rebasing: buffer[0..<got]), at: offset)
            offset += UInt64(got)
            progress(UInt64(got))
        }
    }

    /// Errors that mean "this filesystem pair cannot do that", not "this copy failed".
    static func meansUnsupported(_ error: SystemError) -> Bool {
        switch error.code {
        case .notSupported, .crossDevice, .invalidArgument, .badFileDescriptor: true
        default: false
        }
    }
}
