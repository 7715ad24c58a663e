import Glibc
import FerrySystem
import Synchronization
import SystemPackage

/// A directory being walked: its descriptor, the matching directory on the other side (the copy, for
/// a copy or a verification), and how many of its entries are still in progress.
public final class WalkDirectory: @unchecked Sendable {
    public let parent: WalkDirectory?
    /// The name in the parent on the source side ("" for the walk's root).
    public let name: ByteString
    /// The name on the other side, when it differs (a copy to a new name).
    public let peerName: ByteString
    public let source: FileDescriptor
    public let peer: FileDescriptor?
    /// The source directory's status when it was opened (nil for the walk's root).
    public let status: FileStatus?
    public var isRoot: Bool { parent == nil }

    let stream: DirectoryStream
    /// Entries handed out and not yet finished, plus one while the listing is still being read.
    let pending = Atomic<Int>(1)
    unowned let walk: WalkCoordinator

    init(walk: WalkCoordinator, parent: WalkDirectory?, name: ByteString, peerName: ByteString,
         source: FileDescriptor, peer: FileDescriptor?, status: FileStatus?) {
        self.walk = walk
        self.parent = parent
        self.name = name
        self.peerName = peerName
        self.source = source
        self.peer = peer
        self.status = status
        self.stream = DirectoryStream(source)
    }

    deinit {
        source.closeQuietly()
        peer?.closeQuietly()
    }

    /// The path from the walk's root, for messages and for links made later from the root.
    public var relativePath: ByteString { path(\.name) }
    /// The same path on the peer side.
    public var peerRelativePath: ByteString { path(\.peerName) }

    private func path(_ key: KeyPath<WalkDirectory, ByteString>) -> ByteString {
        var parts: [ByteString] = []
        var node: WalkDirectory? = self
        while let current = node, !current.isRoot {
            parts.append(current[keyPath: key])
            node = current.parent
        }
        return Array(parts.reversed().joined(separator: [UInt8(ascii: "/")]))
    }

    public func displayPath(_ entry: ByteString) -> String {
        PathDisplay.string(BytePath.join(relativePath, entry))
    }

    /// For an entry whose visit returned `.deferred`: it is finished now.
    public func finishDeferredEntry() { walk.finishEntry(in: self) }
}

/// What a visitor did with an entry.
public enum VisitOutcome: Sendable {
    /// Finished.
    case done
    /// A directory to walk into; `peer` is the matching directory on the other side, if any.
    case descend(peer: FileDescriptor?)
    /// Another thread will finish it and call `finishDeferredEntry()` on its directory.
    case deferred
}

/// One entry handed to a visitor.
public struct WalkEntry: Sendable {
    public var name: ByteString
    /// The name on the other side (differs only for a top-level item copied to a new name).
    public var peerName: ByteString
    public var kind: FileKind
}

/// What a parallel tree operation does at each entry and after each directory.
public protocol TreeVisitor: Sendable {
    /// Called once for every entry, on any thread.
    func visit(_ entry: WalkEntry, in directory: WalkDirectory) throws -> VisitOutcome
    /// Called once all of a directory's entries are finished (post-order), before its descriptors
    /// close; not called for the walk's root.
    func leave(_ directory: WalkDirectory) throws
    /// True: the entries the listing says are not directories are visited by the thread that
    /// read them, one directory at a time per thread, instead of each on any thread. For work
    /// that changes the directory itself (removing entries takes its lock), where threads in one
    /// directory would only queue for that lock; threads still spread over directories.
    var visitsFilesWhereListed: Bool { get }
    /// True: the walk reads or writes file data, and waits for the disk, so it runs on
    /// `CopyOptions.jobs` threads (more than the cores); otherwise on `metadataJobs`.
    var movesFileData: Bool { get }
}

extension TreeVisitor {
    public var visitsFilesWhereListed: Bool { false }
    public var movesFileData: Bool { false }
}

/// Why a walk stopped: the first error a visitor threw, with the path it was about.
public struct WalkFailure: Error, Sendable {
    public var path: String
    public var error: any Error
}

/// Walks trees in parallel with bounded memory: directory listings are read in batches, and each
/// directory is left (post-order) as soon as all its entries are done.
final class WalkCoordinator: @unchecked Sendable {
    enum Item {
        case list(WalkDirectory)
        case entry(WalkDirectory, WalkEntry)
    }

    private let pool = WorkPool<Item>()
    private let visitor: any TreeVisitor
    private let cancellation: CancellationFlag
    private let failure = Locked<WalkFailure?>(nil)
    let batchSize: Int
    var peakPendingItems: Int { pool.peakPending }

    init(visitor: any TreeVisitor, cancellation: CancellationFlag, batchSize: Int = 256) {
        self.visitor = visitor
        self.cancellation = cancellation
        self.batchSize = batchSize
    }

    /// Walks the given top-level entries of `root` (a directory whose own listing is not read) on
    /// `threads` threads. `root` and `peer` are borrowed: the caller keeps ownership.
    func run(root: FileDescriptor, peer: FileDescriptor?, entries: [WalkEntry], threads: Int) throws(WalkFailure) {
        // The root node owns duplicates (its deinit closes them); a failed dup fails the walk rather
        // than walking with a missing peer, which would check nothing.
        let source: FileDescriptor, peerCopy: FileDescriptor?
        do {
            source = try root.duplicateDescriptor()
            do { peerCopy = try peer?.duplicateDescriptor() } catch { source.closeQuietly(); throw error }
        } catch {
            throw WalkFailure(path: ".", error: error)
        }
        let rootNode = WalkDirectory(walk: self, parent: nil, name: [], peerName: [], source: source, peer: peerCopy, status: nil)
        rootNode.pending.store(entries.count + 1, ordering: .relaxed)
        pool.push(contentsOf: entries.map { .entry(rootNode, $0) })
        finishEntry(in: rootNode)  // the root's listing is not read
        pool.run(threads: threads) { [self] item in self.perform(item) }
        if let failure = failure.withLock({ $0 }) { throw failure }
        if cancellation.isCancelled { throw WalkFailure(path: "", error: CopyError.cancelled) }
    }

    private func perform(_ item: Item) {
        if cancellation.shouldStop { pool.stop(); return }
        switch item {
        case .list(let directory):
            do {
                let batch = try directory.stream.nextBatch(limit: batchSize)
                if batch.isEmpty {
                    finishEntry(in: directory)  // listing done
                } else {
                    directory.pending.add(batch.count, ordering: .acquiringAndReleasing)
                    let entries = batch.map { WalkEntry(name: $0.name, peerName: $0.name, kind: $0.kind) }
                    if visitor.visitsFilesWhereListed {
                        // Subdirectories (and entries of unknown kind) go to any thread; the rest
                        // are visited here, and only then may the listing go on, so that no
                        // other thread works in this directory meanwhile. After a failure the
                        // rest are left, as the pool drops what is queued.
                        let elsewhere = entries.filter { $0.kind == .directory || $0.kind == .unknown }
                        pool.push(contentsOf: elsewhere.map { .entry(directory, $0) })
                        for entry in entries where entry.kind != .directory && entry.kind != .unknown {
                            if failure.withLock({ $0 }) != nil { return }
                            perform(.entry(directory, entry))
                        }
                        pool.push(.list(directory))
                    } else {
                        // The listing's continuation goes under its entries, in the same push: the
                        // entries are served first, and no idle thread can read ahead in between.
                        pool.push(contentsOf: entries.map { .entry(directory, $0) } + [.list(directory)])
                    }
                }
            } catch {
                fail(path: PathDisplay.string(directory.relativePath), error)
            }
        case .entry(let directory, let entry):
            do {
                switch try visitor.visit(entry, in: directory) {
                case .done:
                    finishEntry(in: directory)
                case .deferred:
                    break
                case .descend(let peer):
                    let fd: FileDescriptor
                    do {
                        fd = try directory.source.openAt(entry.name, [.directory, .noFollow])
                    } catch {
                        peer?.closeQuietly()
                        throw error
                    }
                    let status: FileStatus
                    do {
                        status = try fd.status()
                        // Never into another mount below what was named (a named source may be one):
                        // what a walk finds there is not the tree's, and a move's removal of the
                        // source would remove it.
                        if let parent = directory.status, status.isOnAnotherMount(than: parent) {
                            throw CopyError.mountPoint(path: directory.displayPath(entry.name))
                        }
                    } catch {
                        fd.closeQuietly()
                        peer?.closeQuietly()
                        throw error
                    }
                    let child = WalkDirectory(
                        walk: self, parent: directory, name: entry.name, peerName: entry.peerName,
                        source: fd, peer: peer, status: status)
                    pool.push(.list(child))
                }
            } catch {
                fail(path: directory.displayPath(entry.name), error)
            }
        }
    }

    /// One entry of `directory` is finished; when it was the last, leave the directory and finish
    /// its own entry in the parent, up the tree.
    func finishEntry(in directory: WalkDirectory) {
        var node = directory
        while node.pending.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
            guard let parent = node.parent else { return }
            if failure.withLock({ $0 }) == nil && !cancellation.isCancelled {
                do { try visitor.leave(node) } catch {
                    fail(path: PathDisplay.string(node.relativePath), error)
                    return
                }
            }
            node = parent
        }
    }

    private func fail(path: String, _ error: any Error) {
        failure.withLock { if $0 == nil { $0 = WalkFailure(path: path, error: error) } }
        pool.stop()
    }
}

/// Cooperative cancellation: long operations check it between files and between chunks.
/// It can also be held: past a deadline it is given (`holdAfter`), the threads doing the work wait
/// at their next such check, doing nothing, until a later deadline is given or it is cancelled (a
/// task's run whose lease is not confirmed). The threads decide this themselves, from the clock:
/// nothing else has to run for them to stop.
public final class CancellationFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    /// CLOCK_BOOTTIME nanoseconds; never, until one is given.
    private let deadline = Atomic<UInt64>(.max)
    public init() {}
    public func cancel() { flag.store(true, ordering: .releasing) }
    public var isCancelled: Bool { flag.load(ordering: .acquiring) }

    /// Held from `deadline` (`CancellationFlag.now()` nanoseconds) on, unless a later one is given first.
    public func holdAfter(_ deadline: UInt64) { self.deadline.store(deadline, ordering: .releasing) }
    public var isHeld: Bool {
        let deadline = deadline.load(ordering: .acquiring)
        return deadline != .max && Self.now() > deadline
    }

    /// CLOCK_BOOTTIME, in nanoseconds: unlike CLOCK_MONOTONIC it goes on while the machine is
    /// suspended, as the lease's time in the database does, so a run resumed after a suspend
    /// longer than its lease is held at once instead of writing on as if its lease were confirmed.
    public static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_BOOTTIME, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// For the threads doing the work (never the cooperative pool's): waits while held, then
    /// answers whether to stop.
    public var shouldStop: Bool {
        while isHeld && !flag.load(ordering: .acquiring) { usleep(5_000) }
        return flag.load(ordering: .acquiring)
    }
}
