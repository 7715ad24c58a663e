import FerrySystem
import SystemPackage

/// Moves a tree by renaming: directories are recreated under the peer (or reused, when a previous
/// attempt made them), every other entry is renamed into its directory with `RENAME_NOREPLACE`, and
/// each directory gets its source's metadata once its entries are in. No data is copied: on Lustre
/// 2.15+ a *file* may be renamed across projects (the server moves its quota) though a directory
/// may not. Resumable (entries already moved are simply not found again) and reversible (run it
/// from the peer back to the source skeleton). Hard links stay links: each name is renamed.
final class RelinkVisitor: TreeVisitor, @unchecked Sendable {
    private let metadata: MetadataApplier
    private let meter: ProgressMeter
    private let cancellation: CancellationFlag

    init(options: CopyOptions, meter: ProgressMeter, notes: CopyNotes) {
        metadata = MetadataApplier(preserveOwnership: options.preserveOwnership, privileged: processIsPrivileged,
                                   skippedAttributes: [], notes: notes)
        self.meter = meter
        self.cancellation = options.cancellation
    }

    func visit(_ entry: WalkEntry, in directory: WalkDirectory) throws -> VisitOutcome {
        guard let peer = directory.peer else { return .done }
        if cancellation.isCancelled { throw CopyError.cancelled }
        let status = try directory.source.status(entry.name)
        if status.kind == .directory {
            do {
                try peer.makeDirectory(entry.peerName, permissions: 0o700)
            } catch {
                guard error.code == .exists, (try? peer.status(entry.peerName))?.kind == .directory else { throw error }
                try peer.changeMode(entry.peerName, permissions: 0o700)  // reused: writable until left
            }
            return .descend(peer: try peer.openAt(entry.peerName, [.directory, .noFollow]))
        }
        meter.started(directory.displayPath(entry.name))
        try rename(from: directory.source, entry.name, to: peer, entry.peerName, flags: .noReplace)
        meter.entries.add(1, ordering: .relaxed)
        if status.kind == .regular { meter.bytes.add(status.size, ordering: .relaxed) }
        return .done
    }

    func leave(_ directory: WalkDirectory) throws {
        guard let peer = directory.peer, let status = directory.status else { return }
        try metadata.apply(from: directory.source, to: peer, status: status, path: PathDisplay.string(directory.relativePath))
    }
}

/// Removes the directories of a tree that are empty, deepest first, and nothing else: after a
/// relink the source is a skeleton of directories, and anything found in it (a file written there
/// meanwhile) must survive. Returns the paths left because they were not empty.
final class EmptyDirectoryRemover: TreeVisitor, @unchecked Sendable {
    private let left = Locked<[String]>([])

    func visit(_ entry: WalkEntry, in directory: WalkDirectory) throws -> VisitOutcome {
        let status = try directory.source.status(entry.name)
        if status.kind == .directory { return .descend(peer: nil) }
        left.withLock { $0.append(directory.displayPath(entry.name)) }
        return .done
    }

    func leave(_ directory: WalkDirectory) throws {
        _ = try removeIfEmpty(directory)  // one that is not empty holds survivors, listed already
    }

    var survivors: [String] { left.withLock { $0 } }
}

extension CopyEngine {
    /// Relinks the sources into the staging directory (see `RelinkVisitor`). Safe to run again after
    /// an interruption. Never removes anything.
    public func relink(_ sources: [CopySource], into staging: StagingArea, totals: TreeMeasurement? = nil) throws(CopyError) {
        let meter = ProgressMeter(phase: .copying, bytesTotal: totals?.bytes ?? 0, entriesTotal: totals?.entries ?? 0,
                                  interval: options.progressInterval, handler: progressHandler)
        defer { meter.finish() }
        let visitor = RelinkVisitor(options: options, meter: meter, notes: CopyNotes())
        try walk(sources.filter { (try? $0.directory.status($0.name)) != nil }, peer: staging.directory, visitor: visitor)
    }

    /// Puts relinked entries back: renames everything in the staging directory into the sources'
    /// directory skeleton (recreating directories that are missing), then removes the staging
    /// skeleton's empty directories. What cannot be put back stays in staging, never deleted.
    public func unrelink(_ sources: [CopySource], from staging: StagingArea) throws(CopyError) {
        let meter = ProgressMeter(phase: .cleaningUp, bytesTotal: 0, entriesTotal: 0, interval: options.progressInterval, handler: nil)
        defer { meter.finish() }
        let visitor = RelinkVisitor(options: options, meter: meter, notes: CopyNotes())
        for source in sources where (try? staging.directory.status(source.destinationName)) != nil {
            let back = CopySource(directory: staging.directory, name: source.destinationName, destinationName: source.name)
            try walk([back], peer: source.directory, visitor: visitor)
        }
        try removeEmptyDirectories(in: staging.directory)
        try? staging.parent.removeEntry(staging.name, isDirectory: true)
    }

    /// Removes the empty directories under `sources` (a relinked source's skeleton), deepest first.
    /// Returns entries found in them, which are left in place.
    @discardableResult
    public func removeEmptySkeleton(_ sources: [CopySource]) throws(CopyError) -> [String] {
        let visitor = EmptyDirectoryRemover()
        try walk(sources.filter { (try? $0.directory.status($0.name)) != nil }, peer: nil, visitor: visitor)
        return visitor.survivors
    }

    private func removeEmptyDirectories(in directory: FileDescriptor) throws(CopyError) {
        let stream: [WalkEntry]
        do {
            let fresh = try directory.openAt(Array(".".utf8), [.directory])
            defer { fresh.closeQuietly() }
            let listing = DirectoryStream(fresh)
            var names: [WalkEntry] = []
            while let entry = try listing.next() { names.append(WalkEntry(name: entry.name, peerName: entry.name, kind: entry.kind)) }
            stream = names
        } catch { throw .system(path: ".", error) }
        let sources = stream.map { CopySource(directory: directory, name: $0.name) }
        try walk(sources, peer: nil, visitor: EmptyDirectoryRemover())
    }
}
