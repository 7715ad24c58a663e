import FerryCopy
import FerryJobs
import FerryStorage
import FerrySystem
import Foundation

/// How a transfer is carried out, cheapest first.
public enum Strategy: String, Sendable, Codable, CaseIterable {
    /// Same filesystem and project (or no inherited project): `renameat2`, O(1).
    case rename
    /// Lustre ≥ 2.15: files renamed across projects one by one into a new directory skeleton.
    case relink
    /// Everything else: staged copy, verify, publish, then delete the source.
    case copy
}

/// Why a request is refused before anything is written: a stable code and a message with figures.
public struct Refusal: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: String
    public var message: String
    public var description: String { message }

    /// The codes of refusals by the pre-flight check, which `ferry move`/`copy` end with exit 3
    /// (one list, beside the checks that give them, so that a new refusal is not forgotten).
    public static let preflightCodes: Set<String> = [
        "quota.insufficient", "quota.unknown", "destination.exists", "source.missing", "source.mount", "hsm.released", "strategy.unknown",
        "strategy.invalid", "strategy.unavailable", "permission.denied", "relink.read_only",
    ]
}

/// The pre-flight verdict: what would happen, with the figures, and whether it may.
public struct Preflight: Sendable {
    public var kind: TaskKind
    public var strategy: Strategy
    public var measurement: TreeMeasurement
    public var quota: QuotaReport?
    public var destinationProject: ProjectAttributes?
    public var sourceProject: ProjectAttributes?
    public var filesystemKind: FilesystemKind?
    /// Whether a source is on Lustre, the one place where files can be released to tape (HSM).
    public var sourceOnLustre = false
    public var finalPaths: [ByteString]
    public var warnings: [String]
    public var refusal: Refusal?
    /// Threads the run would use: copiers (and checksum verification), and the walks that move no
    /// data (measuring, metadata verification, relinking, removal). 0 for a refusal.
    public var copiers = 0
    public var walkers = 0

    /// In plain words, as the UI and `--dry-run` say it.
    public var summary: String {
        if let refusal { return "Refused: \(refusal.message)" }
        let size = Format.bytes(measurement.bytes)
        let files = measurement.files == 1 ? "1 file" : "\(Format.count(measurement.files)) files"
        switch strategy {
        case .rename:
            return "Instant: same filesystem and project, a rename (no data moves on disk)."
        case .relink:
            return "Relink \(files) (\(size)) into \(projectPhrase): no data is copied; directories are recreated."
        case .copy:
            let free = quota?.bytesFree.map { ", which has \(Format.bytes($0)) free" } ?? ""
            let tail = kind == .move ? "; the source is deleted only after the copy is verified and durable" : "; the copy is verified before it appears"
            return "Copy \(size), \(files) into \(projectPhrase)\(free)\(tail)."
        }
    }

    var projectPhrase: String {
        if let project = destinationProject, project.projectID != 0 { return "project \(project.projectID)" }
        return "the destination"
    }
}

/// Brings HSM-released files back before they are copied: lists them (`lfs find --layout released`),
/// asks for their restore, and waits until `lfs hsm_action` shows no pending request.
public struct Recall: Sendable {
    public var pollInterval: Duration = .seconds(5)
    public var timeout: Duration = .seconds(6 * 3600)
    public init() {}

    /// Returns the number of files restored.
    public func run(_ backend: LustreBackend, sources: [ByteString], progress: (String) -> Void = { _ in }) throws -> Int {
        var released: [ByteString] = []
        for source in sources { released += try backend.releasedFiles(under: source) }
        guard !released.isEmpty else { return 0 }
        progress("restoring \(released.count) files from the HSM archive")
        try backend.restore(released)
        let deadline = ContinuousClock.now + timeout
        while true {
            let pending = try backend.pendingHSMActions(released)
            if pending.isEmpty {
                // Nothing pending says only that the requests ended: one that failed, or a file
                // lost from the archive, leaves the file released, and the copy would block on it.
                var still: [ByteString] = []
                for source in sources { still += try backend.releasedFiles(under: source) }
                guard still.isEmpty else {
                    let named = still.prefix(3).map(\.displayString).joined(separator: ", ") + (still.count > 3 ? " and \(still.count - 3) more" : "")
                    throw Refusal(code: "hsm.restore_failed",
                                  message: "the HSM did not restore \(still.count) of \(released.count) files (\(named)); ask your HSM administrator whether the archive holds them, then retry the task")
                }
                return released.count
            }
            guard ContinuousClock.now < deadline else {
                throw Refusal(code: "hsm.timeout", message: "\(pending.count) files were still being restored from tape after \(timeout.components.seconds / 3600) h; retry the task later")
            }
            progress("\(released.count - pending.count) of \(released.count) files restored")
            Thread.sleep(forTimeInterval: Double(pollInterval.components.seconds) + Double(pollInterval.components.attoseconds) / 1e18)
        }
    }
}

/// Looks before leaping: resolves the request, measures the source, chooses the strategy and checks
/// the destination's room. Writes nothing.
public struct Planner: Sendable {
    public var storage: @Sendable (FileDescriptor, ByteString) throws -> any StorageBackend
    public var jobs: Int?
    /// How often the measurement reports what it has found (an engine sets its own).
    public var progressInterval: Duration = .milliseconds(200)
    public var recall = Recall()
    /// The configured strategy for a destination path, used when a request does not name one.
    public var configuredStrategy: @Sendable (ByteString) -> String? = { _ in nil }

    public init(jobs: Int? = nil, storage: @escaping @Sendable (FileDescriptor, ByteString) throws -> any StorageBackend = { fd, _ in try Storage.backend(for: fd) }) {
        self.storage = storage
        self.jobs = jobs
    }

    /// What `preflight` decides before it measures anything: a refusal found by the cheap checks,
    /// or the strategy with what it was chosen from. Cheap (a few stats and ioctls, no tree walk), so
    /// a caller that only wants to know whether a rename will do asks this instead.
    public enum Choice {
        case refused(Refusal)
        case chosen(Strategy, backend: any StorageBackend, destinationProject: ProjectAttributes?, sourceProject: ProjectAttributes?)
    }

    public func choose(kind: TaskKind, transfer: Transfer, options: TaskOptions) throws -> Choice {
        // Nothing may be overwritten.
        for (source, final) in zip(transfer.sources, transfer.finalPaths) where (try? transfer.destination.status(source.destinationName)) != nil {
            return .refused(Refusal(code: "destination.exists",
                                    message: "\(final.displayString) exists already; Ferry never replaces data — choose another name or remove it first"))
        }
        if let refusal = Self.permissionRefusal(kind, transfer) {
            return .refused(Refusal(code: "permission.denied", message: refusal))
        }
        // A mount point named as a move's source: the move would empty the filesystem mounted
        // there (and could not remove the mount point). A copy may read one.
        if kind == .move {
            for (source, path) in zip(transfer.sources, transfer.sourcePaths) {
                guard let status = try? source.directory.status(source.name), let parent = try? source.directory.status(),
                      status.kind == .directory ? status.isOnAnotherMount(than: parent) : status.isMountRoot else { continue }
                return .refused(Refusal(code: "source.mount", message: "\(path.displayString) is a mount point: moving it would empty "
                    + "the filesystem mounted there, which stays mounted; copy it (ferry copy), or move what it holds"))
            }
        }
        let backend = try storage(transfer.destination, transfer.destinationPath)
        let destinationProject = try backend.projectAttributes(of: transfer.destination)
        let sourceProject = try? backend.projectAttributes(of: transfer.sources[0].directory)

        let strategy: Strategy
        if let forced = options.strategy ?? (kind == .move ? configuredStrategy(transfer.destinationPath) : nil) {
            guard let chosen = Strategy(rawValue: forced) else {
                return .refused(Refusal(code: "strategy.unknown", message: "unknown strategy \(forced): use rename, relink or copy"))
            }
            strategy = chosen
        } else if kind == .copy {
            strategy = .copy
        } else if try Self.renamePossible(transfer, destinationProject: destinationProject) {
            strategy = .rename
        } else if backend.renamesFilesAcrossProjects, try Self.sameFilesystem(transfer) {
            // Lustre 2.15+: files rename across projects, directories do not; no data needs copying.
            strategy = .relink
        } else {
            strategy = .copy
        }
        return .chosen(strategy, backend: backend, destinationProject: destinationProject, sourceProject: sourceProject)
    }

    /// `progress`: told what the measurement of the source has found so far (phase `.measuring`).
    /// `cancellation`: stops the measurement (`CopyError.cancelled`), which can take minutes.
    public func preflight(kind: TaskKind, transfer: Transfer, options: TaskOptions, cancellation: CancellationFlag = CancellationFlag(),
                          progress: ProgressHandler? = nil) throws -> Preflight {
        var warnings: [String] = []
        var strategy: Strategy
        let backend: any StorageBackend, destinationProject: ProjectAttributes?, sourceProject: ProjectAttributes?
        switch try choose(kind: kind, transfer: transfer, options: options) {
        case .refused(let refusal): return refused(kind, transfer, code: refusal.code, refusal.message)
        case let .chosen(chosen, chosenBackend, destination, source):
            (strategy, backend, destinationProject, sourceProject) = (chosen, chosenBackend, destination, source)
        }
        // A rename is O(1) whatever the tree's size: only a copy needs the source measured.
        if strategy == .relink, !(try Self.sameFilesystem(transfer)) {
            return refused(kind, transfer, code: "strategy.invalid", "relink renames files, so the source and the destination must be on one filesystem")
        }
        // A rename asked for where the kernel would refuse it (EXDEV) is refused now, not at the run.
        if kind == .move, strategy == .rename, let possible = try? Self.renamePossible(transfer, destinationProject: destinationProject), !possible,
           let sameFilesystem = try? Self.sameFilesystem(transfer) {
            let filesOnly = transfer.sources.allSatisfy { (try? $0.directory.status($0.name))?.kind != .directory }
            if !sameFilesystem || !(backend.renamesFilesAcrossProjects && filesOnly) {
                let why = sameFilesystem ? "the destination's project (inherited) differs from the source's" : "the source and the destination are on different filesystems"
                return refused(kind, transfer, code: "strategy.invalid", "a rename cannot do this move: \(why); move by copy (--strategy copy), or let Ferry choose")
            }
        }
        var measurement = TreeMeasurement()
        let copyOptions = CopyOptions(jobs: options.jobs ?? jobs, progressInterval: progressInterval, cancellation: cancellation)
        if strategy != .rename {
            do { measurement = try CopyEngine(options: copyOptions, progress: progress).measure(transfer.sources) } catch {
                if let code = error.systemCode, code == .notFound {
                    return refused(kind, transfer, code: "source.missing", "\(error)")
                }
                if case .mountPoint = error { return refused(kind, transfer, code: "source.mount", "\(error)") }
                throw error
            }
        }
        // A relink renames each file out of its directory, which takes write permission there; a
        // read-only directory (0555) of the user's would stop it part way (and be rolled back).
        // Chosen by Ferry, it gives way to a copy; asked for, it is refused.
        let stuck = measurement.entriesInReadOnlyDirectories
        if strategy == .relink && geteuid() != 0 && stuck > 0 {
            guard options.strategy == nil && (kind != .move || configuredStrategy(transfer.destinationPath) == nil) else {
                return refused(kind, transfer, code: "relink.read_only",
                               "a relink renames each file out of its directory, and \(Format.count(stuck)) entries are in directories without write permission for their owner; make them writable first (chmod -R u+w), or move by copy (--strategy copy)")
            }
            strategy = .copy
            warnings.append("\(Format.count(stuck)) entries are in directories without write permission for their owner, out of which a relink cannot rename them: the data is copied instead")
        }
        if kind == .copy && strategy != .copy {
            return refused(kind, transfer, code: "strategy.invalid", "a copy can only use the copy strategy")
        }
        // Only a source can hold released files: the destination's filesystem says nothing of that
        // (a sparse file on XFS has no blocks either, and is no tape file). Only a copy reads them:
        // a relink renames them as they are.
        let sourceOnLustre = strategy == .copy && zip(transfer.sources, transfer.sourcePaths).contains { source, path in
            (try? storage(source.directory, BytePath.split(path).0))?.kind == .lustre
        }
        let released = sourceOnLustre ? measurement.releasedFiles : 0
        if released > 0 && options.recall {
            warnings.append("\(released) files (\(Format.bytes(measurement.releasedBytes))) are released to tape (HSM); they are restored before the copy starts")
        }
        if released > 0 && !options.recall {
            return refused(kind, transfer, code: "hsm.released",
                           "\(measurement.releasedFiles) files are released to tape (HSM) and would have to be read back; run with --recall to restore them first")
        }
        if let project = destinationProject, project.projectID != 0, !project.inherit {
            warnings.append("the destination directory has project \(project.projectID) without the inherit flag: new files will not be charged to that project")
        }

        var quota: QuotaReport?
        var refusal: Refusal?
        if strategy == .copy || strategy == .relink {
            let report = try backend.quota(of: transfer.destination, path: transfer.destinationPath)
            quota = report
            // A released file holds no blocks until it is recalled, then all of its size.
            let needBytes = UInt64(Double(measurement.allocatedBytes + (released > 0 ? measurement.releasedBytes : 0)) * (1 + options.margin))
            let needInodes = UInt64(Double(measurement.inodes) * (1 + options.margin))
            let bytesShort = options.spaceCheck && (report.bytesFree.map { needBytes > $0 } ?? false)
            let inodesShort = options.spaceCheck && (report.inodesFree.map { needInodes > $0 } ?? false)
            if bytesShort || inodesShort {
                let subject = destinationProject.map { $0.projectID != 0 && report.source != .statvfs ? "project \($0.projectID)" : "the destination filesystem" } ?? "the destination filesystem"
                let free = "\(report.bytesFree.map(Format.bytes) ?? "?") and \(report.inodesFree.map(Format.count) ?? "?") inodes free"
                let need = "\(Format.bytes(needBytes)) and \(Format.count(needInodes)) inodes (with a \(Int((options.margin * 100).rounded()))% margin)"
                refusal = Refusal(code: "quota.insufficient", message: "\(subject) has \(free); this \(kind.rawValue) needs \(need)")
            }
            // Lustre enforces project quotas on its servers: figures that could not be read are
            // no reason to think the move fits (the filesystem's free space says nothing of them).
            if refusal == nil, options.spaceCheck, backend.kind == .lustre, report.source == .statvfs,
               let project = destinationProject, project.projectID != 0 {
                refusal = Refusal(code: "quota.unknown", message: "project \(project.projectID)'s quota could not be read (\(report.note ?? "lfs quota failed")), "
                    + "so whether this \(kind.rawValue) fits in it is unknown; put lfs right, or \(kind.rawValue) with the space check off (--no-space-check; the API's spaceCheck: false) "
                    + "(one that meets the quota stops there and is rolled back, losing nothing)")
            }
            if report.inaccurate == true { warnings.append("the quota figures are estimates (lfs could not reach every target)") }
            if let note = report.note, report.source == .statvfs, destinationProject.map({ $0.projectID != 0 }) ?? false {
                warnings.append("the free space is the filesystem's, not the project's (\(note)): a project quota may stop the copy sooner")
            }
        }
        var verdict = Preflight(kind: kind, strategy: strategy, measurement: measurement, quota: quota,
                                destinationProject: destinationProject, sourceProject: sourceProject, filesystemKind: backend.kind,
                                finalPaths: transfer.finalPaths, warnings: warnings, refusal: refusal)
        verdict.sourceOnLustre = sourceOnLustre
        verdict.copiers = copyOptions.jobs
        verdict.walkers = copyOptions.metadataJobs(on: transfer.sources[0].directory)
        return verdict
    }

    private func refused(_ kind: TaskKind, _ transfer: Transfer, code: String, _ message: String) -> Preflight {
        Preflight(kind: kind, strategy: .copy, measurement: TreeMeasurement(), quota: nil, destinationProject: nil, sourceProject: nil,
                  filesystemKind: nil, finalPaths: transfer.finalPaths, warnings: [], refusal: Refusal(code: code, message: message))
    }

    /// What the kernel would refuse at the end of the task: creating entries in the destination,
    /// and, for a move, removing (or renaming) the source from its directory — write and search
    /// permission there, and in a sticky directory (such as /tmp or a shared project root) owning
    /// the entry or the directory. Found now, rather than after a long copy.
    static func permissionRefusal(_ kind: TaskKind, _ transfer: Transfer) -> String? {
        if !transfer.destination.isAccessible(mode: W_OK | X_OK) {
            return "you may not create entries in \(transfer.destinationPath.displayString) (no write permission there)"
        }
        guard kind == .move else { return nil }
        let euid = geteuid()
        for (source, path) in zip(transfer.sources, transfer.sourcePaths) {
            let parent = BytePath.split(path).0.displayString
            if !source.directory.isAccessible(mode: W_OK | X_OK) {
                return "you may not remove entries from \(parent) (no write permission there), so \(path.displayString) cannot be moved; copy it instead"
            }
            if euid != 0, let directory = try? source.directory.status(), directory.mode & UInt32(S_ISVTX) != 0,
               let entry = try? source.directory.status(source.name), entry.uid != euid, directory.uid != euid {
                return "\(parent) is a sticky directory and \(path.displayString) belongs to someone else, so only its owner may move it; copy it instead"
            }
        }
        return nil
    }

    static func sameFilesystem(_ transfer: Transfer) throws -> Bool {
        let destination = try transfer.destination.status()
        return try transfer.sources.allSatisfy { source in
            let status = try source.directory.status()
            return status.deviceMajor == destination.deviceMajor && status.deviceMinor == destination.deviceMinor
        }
    }

    /// `rename(2)` works within one filesystem unless the destination directory carries the inherit
    /// flag with another project than the entry's (then the kernel answers EXDEV).
    static func renamePossible(_ transfer: Transfer, destinationProject: ProjectAttributes?) throws -> Bool {
        let destination = try transfer.destination.status()
        for source in transfer.sources {
            let status = try source.directory.status(source.name)
            guard status.deviceMajor == destination.deviceMajor && status.deviceMinor == destination.deviceMinor else { return false }
            guard let project = destinationProject, project.inherit else { continue }
            let entryProject: UInt32
            if status.kind == .regular || status.kind == .directory,
               let fd = try? source.directory.openAt(source.name, [.nonBlocking, .noFollow]) {
                defer { fd.closeQuietly() }
                entryProject = (try? fd.projectAttributes().projectID) ?? 0
            } else {
                entryProject = (try? source.directory.projectAttributes().projectID) ?? 0
            }
            if entryProject != project.projectID { return false }
        }
        return true
    }
}
