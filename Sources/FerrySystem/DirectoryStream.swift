import CFerrySystem
import Glibc
import SystemPackage

/// One entry of a directory, name as bytes.
public struct DirectoryEntry: Sendable, Hashable {
    public var name: ByteString
    public var inode: UInt64
    /// From `d_type`; `.unknown` where the filesystem does not fill it (then `statx` the name).
    public var kind: FileKind
}

/// Reads a directory with `getdents64` in batches, so a directory of millions of entries is never
/// held in memory at once. The stream reads from the descriptor's own offset: give it a descriptor
/// no one else reads from. It does not own the descriptor. One thread at a time.
public final class DirectoryStream: @unchecked Sendable {
    private let fd: FileDescriptor
    private var buffer: UnsafeMutableRawBufferPointer
    private var filled = 0
    private var position = 0
    private var finished = false

    /// `bufferSize` bounds one `getdents64` call (32 KiB holds about a thousand short names).
    public init(_ directory: FileDescriptor, bufferSize: Int = 32 * 1024) {
        fd = directory
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 8)
    }

    deinit { buffer.deallocate() }

    /// The next entry other than `.` and `..`, or nil at the end. The corresponding C call is
    /// `getdents64`.
    public func next() throws(SystemError) -> DirectoryEntry? {
        while true {
            if position >= filled {
                if finished { return nil }
                let count = try syscallRetrying("getdents64") { cferry_getdents64(fd.rawValue, buffer.baseAddress, buffer.count) }
                if count == 0 { finished = true; return nil }
                filled = count
                position = 0
            }
            // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
            let base = buffer.baseAddress! + position
            let inode = base.loadUnaligned(as: UInt64.self)
            let recordLength = Int(base.loadUnaligned(fromByteOffset: 16, as: UInt16.self))
            let type = base.load(fromByteOffset: 18, as: UInt8.self)
            let namePointer = (base + 19).assumingMemoryBound(to: UInt8.self)
            let nameLength = strnlen(UnsafeRawPointer(namePointer).assumingMemoryBound(to: CChar.self), recordLength - 19)
            position += recordLength
            if nameLength == 1 && namePointer[0] == 0x2E { continue }
            if nameLength == 2 && namePointer[0] == 0x2E && namePointer[1] == 0x2E { continue }
            let name = ByteString(UnsafeBufferPointer(start: namePointer, count: nameLength))
            return DirectoryEntry(name: name, inode: inode, kind: FileKind(direntType: type))
        }
    }

    /// Calls `body` with every entry other than `.` and `..`, its name still in the read buffer (valid
    /// only during the call): for scans of huge directories that keep few of the names they see.
    public func scan(_ body: (UnsafeBufferPointer<UInt8>, FileKind) throws(SystemError) -> Void) throws(SystemError) {
        while true {
            if position >= filled {
                if finished { return }
                let count = try syscallRetrying("getdents64") { cferry_getdents64(fd.rawValue, buffer.baseAddress, buffer.count) }
                if count == 0 { finished = true; return }
                filled = count
                position = 0
            }
            let base = buffer.baseAddress! + position
            let recordLength = Int(base.loadUnaligned(fromByteOffset: 16, as: UInt16.self))
            let type = base.load(fromByteOffset: 18, as: UInt8.self)
            let namePointer = (base + 19).assumingMemoryBound(to: UInt8.self)
            let nameLength = strnlen(UnsafeRawPointer(namePointer).assumingMemoryBound(to: CChar.self), recordLength - 19)
            position += recordLength
            if nameLength <= 2 && namePointer[0] == 0x2E && (nameLength == 1 || namePointer[1] == 0x2E) { continue }
            try body(UnsafeBufferPointer(start: namePointer, count: nameLength), FileKind(direntType: type))
        }
    }

    /// Reads up to `limit` entries: the unit of work a parallel walker hands out.
    public func nextBatch(limit: Int) throws(SystemError) -> [DirectoryEntry] {
        var batch: [DirectoryEntry] = []
        batch.reserveCapacity(min(limit, 256))
        while batch.count < limit, let entry = try next() { batch.append(entry) }
        return batch
    }
}
