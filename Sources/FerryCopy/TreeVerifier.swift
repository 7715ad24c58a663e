import Crypto
import FerrySystem
import Synchronization
import SystemPackage

/// Compares a copy with its source by an independent walk of both: every source entry must exist in
/// the copy with the same type, size, allocation (sparse files stay sparse), mode, owner, mtime,
/// symlink target and device; each directory must hold as many entries on both sides (so no extra
/// entry hides in the copy); hard-linked source inodes must map one-to-one onto copy inodes; and no
/// source entry may have changed since it was copied. With `.checksum`, file contents are compared by
/// SHA-256 as well.
///
/// "Changed since it was copied" is a source ctime later than the copy's ctime: the copy's metadata
/// is applied after its data (a directory's after all its entries), so any later change to the source
/// carries a later ctime from the same kernel clock. A remembered start time would not do: the kernel
/// stamps ctime with fine-grained timestamps that can run ahead of any clock sampled beforehand.
final class VerifyVisitor: TreeVisitor, @unchecked Sendable {
    private let mode: VerifyMode
    private let checkOwnership: Bool
    private let meter: ProgressMeter
    private let cancellation: CancellationFlag
    private let differences = Locked<[CopyError.Difference]>([])
    private let differenceCount = Atomic<Int>(0)
    /// Source inode → copy inode, and back, for hard-linked files.
    private let linkMap = Locked<(forward: [FileID: FileID], backward: [FileID: FileID])>(([:], [:]))
    static let maximumDifferences = 100
    /// Checksums read every byte of both sides.
    var movesFileData: Bool { mode == .checksum }

    init(mode: VerifyMode, checkOwnership: Bool, meter: ProgressMeter, cancellation: CancellationFlag) {
        self.mode = mode
        self.checkOwnership = checkOwnership
        self.meter = meter
        self.cancellation = cancellation
    }

    var found: [CopyError.Difference] { differences.withLock { $0 } }

    func visit(_ entry: WalkEntry, in directory: WalkDirectory) throws -> VisitOutcome {
        guard let peer = directory.peer else { return .done }
        let path = directory.displayPath(entry.name)
        let source = try directory.source.status(entry.name)
        meter.entries.add(1, ordering: .relaxed)
        guard let copy = try Self.statusIfPresent(peer, entry.peerName) else {
            note(path, "missing in the copy")
            return .done
        }
        if source.changeTime > copy.changeTime {
            throw CopyError.sourceChanged(path: path, detail: "its ctime \(source.changeTime) is after its copy's \(copy.changeTime)")
        }
        guard source.kind == copy.kind else {
            note(path, "is a \(source.kind) in the source but a \(copy.kind) in the copy")
            return .done
        }
        if source.kind != .symlink && source.permissions != copy.permissions {
            note(path, "mode \(octal(source.permissions)) in the source, \(octal(copy.permissions)) in the copy")
        }
        if checkOwnership && (source.uid != copy.uid || source.gid != copy.gid) {
            note(path, "owner \(source.uid):\(source.gid) in the source, \(copy.uid):\(copy.gid) in the copy")
        }
        if source.modificationTime != copy.modificationTime {
            note(path, "mtime \(source.modificationTime) in the source, \(copy.modificationTime) in the copy")
        }
        switch source.kind {
        case .directory:
            return .descend(peer: try peer.openAt(entry.peerName, [.directory, .noFollow]))
        case .regular:
            try compareFile(entry, in: directory, peer: peer, source: source, copy: copy, path: path)
        case .symlink:
            if try directory.source.readSymlink(entry.name) != peer.readSymlink(entry.peerName) {
                note(path, "symlink target differs")
            }
        case .characterDevice, .blockDevice:
            if source.rdevMajor != copy.rdevMajor || source.rdevMinor != copy.rdevMinor {
                note(path, "device number differs")
            }
        default:
            break
        }
        return .done
    }

    func leave(_ directory: WalkDirectory) throws {
        guard let peer = directory.peer else { return }
        // Both listings are read afresh (a new open file description each), names only.
        let sourceCount = try Self.countEntries(directory.source)
        let copyCount = try Self.countEntries(peer)
        if sourceCount != copyCount {
            note(PathDisplay.string(directory.relativePath), "\(sourceCount) entries in the source, \(copyCount) in the copy")
        }
    }

    private func compareFile(_ entry: WalkEntry, in directory: WalkDirectory, peer: FileDescriptor,
                             source: FileStatus, copy: FileStatus, path: String) throws {
        if source.size != copy.size {
            note(path, "size \(source.size) in the source, \(copy.size) in the copy")
            return
        }
        // A copy that filled a sparse file's holes allocates far more than its source. One that
        // allocates less is fine: the source may hold preallocated, unwritten extents (XFS leaves
        // them after a write past EOF), which read as zeros and which SEEK_DATA rightly skips.
        // A dense source has no holes to fill: a copy of it that allocates more holds XFS's
        // speculative preallocation past EOF, which lasts until write-back trims it (a 1 MiB copy
        // showed 1.9 MiB on a loaded machine). Block size and rounding differences, and such
        // preallocation (up to half the holes, at most 16 MiB), are tolerated.
        let holes = source.size / 512 > source.blocks ? source.size / 512 - source.blocks : 0
        let tolerance = max(64, source.blocks / 64, min(holes / 2, 32_768))
        if holes > 0 && copy.blocks > source.blocks + tolerance {
            note(path, "allocated \(source.blocks * 512) bytes in the source, \(copy.blocks * 512) in the copy (sparseness not preserved)")
        }
        if source.linkCount > 1 || copy.linkCount > 1 {
            let consistent = linkMap.withLock { maps -> Bool in
                let forward = maps.forward[source.fileID]
                let backward = maps.backward[copy.fileID]
                if forward == nil && backward == nil {
                    maps.forward[source.fileID] = copy.fileID
                    maps.backward[copy.fileID] = source.fileID
                    return true
                }
                return forward == copy.fileID && backward == source.fileID
            }
            if !consistent { note(path, "hard links are not the same in the copy") }
        }
        if mode == .checksum {
            meter.started(path)
            let sourceDigest = try Self.digest(directory.source, entry.name, cancellation: cancellation) { self.meter.bytes.add($0, ordering: .relaxed) }
            let copyDigest = try Self.digest(peer, entry.peerName, cancellation: cancellation) { _ in }
            if sourceDigest != copyDigest { note(path, "content differs (SHA-256)") }
        }
    }

    private func note(_ path: String, _ what: String) {
        if differenceCount.add(1, ordering: .relaxed).newValue <= Self.maximumDifferences {
            differences.withLock { $0.append(CopyError.Difference(path: path, what: what)) }
        }
    }

    static func statusIfPresent(_ directory: FileDescriptor, _ name: ByteString) throws(SystemError) -> FileStatus? {
        do {
            return try directory.status(name)
        } catch {
            if error.code == .notFound { return nil }
            throw error
        }
    }

    private func octal(_ value: UInt32) -> String { "0" + String(value, radix: 8) }

    static func countEntries(_ directory: FileDescriptor) throws(SystemError) -> Int {
        let fresh = try directory.openAt(Array(".".utf8), [.directory])
        defer { fresh.closeQuietly() }
        let stream = DirectoryStream(fresh)
        var count = 0
        while try stream.next() != nil { count += 1 }
        return count
    }

    /// SHA-256 of a file's content, read in 1 MiB pieces.
    static func digest(_ directory: FileDescriptor, _ name: ByteString, cancellation: CancellationFlag, progress: (UInt64) -> Void) throws -> SHA256.Digest {
        let (fd, status) = try directory.openRegularForReading(name, [.noFollow])  // a fifo swapped in: see `copyFile`
        defer { fd.closeQuietly() }
        guard status.kind == .regular else {
            throw CopyError.sourceChanged(path: PathDisplay.string(name), detail: "it is no longer a regular file")
        }
        var hasher = SHA256()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        var offset: UInt64 = 0
        while true {
            if cancellation.isCancelled { throw CopyError.cancelled }
            let got = try fd.read(into: buffer, at: offset)
            if got == 0 { break }
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<got]))
            offset += UInt64(got)
            progress(UInt64(got))
        }
        return hasher.finalize()
    }
}
