import FerryConfig
import FerryCopy
import FerryJobs
import FerryMove
import FerryStorage
import FerrySystem
import Foundation

/// The agent's side: answers one `AgentRequest` with the filesystem as the user sees it. Runs in a
/// process with the user's credentials, so the kernel decides what may be read.
public struct AgentOperations: Sendable {
    let request: AgentRequest
    var rootPaths: [String] { request.roots.map(\.path) }

    public init(_ request: AgentRequest) { self.request = request }

    /// The JSON answer, or the error to report.
    public func answer() throws(APIError) -> Data {
        do {
            switch request.operation {
            case .list: return try WireJSON.encoder.encode(try list())
            case .stat: return try WireJSON.encoder.encode(try stat())
            case .quota: return try WireJSON.encoder.encode(try quota())
            case .preflight: return try WireJSON.encoder.encode(try preflight())
            }
        } catch let error as APIError {
            throw error
        } catch {
            throw APIError(.internalError, "internal", "\(error)")
        }
    }

    // MARK: resolving

    /// Opens `path` beneath its root (symlinks followed only while they stay beneath it; none as root).
    func open(_ path: ServerPath, _ flags: OpenFlags) throws(APIError) -> FileDescriptor {
        let root: FileDescriptor
        do { root = try FileDescriptor.openDirectory(Array(path.root.utf8)) } catch {
            throw APIError(.unavailable, "root.unavailable", "the shared directory \(path.root) cannot be opened: \(error)")
        }
        defer { root.closeQuietly() }
        do {
            return try PathResolver.open(beneath: root, path.relativeBytes, flags, symlinks: .forThisProcess)
        } catch {
            throw APIError(error, path: path.display)
        }
    }

    func storage(for fd: FileDescriptor, path: ServerPath) throws -> any StorageBackend {
        let choice = request.roots.first { $0.path == path.root }?.backend ?? .auto
        return try Storage.backend(for: fd, choice: choice, lfsPath: request.lfsPath, lfsTimeout: request.lfsTimeoutSeconds)
    }

    // MARK: operations

    func list() throws -> Listing {
        let path = try ServerPath.check(request.path, roots: rootPaths)
        let directory = try open(path, [.directory])
        defer { directory.closeQuietly() }
        let limit = min(max(request.limit ?? 100, 1), 1000)
        let offset = min(max(request.offset ?? 0, 0), 10_000_000)
        let sort = request.sort ?? .name
        let descending = request.descending ?? false
        let names = NameCache()
        let page: DirectoryPage
        do {
            page = try DirectoryPage.read(directory, offset: offset, limit: limit, sort: sort, descending: descending, owner: names.user)
        } catch {
            throw APIError(error, path: path.display)
        }
        let entries = page.entries.compactMap { entry -> FileEntry? in
            guard let status = try? directory.status(entry.name) else { return nil }  // removed meanwhile
            return names.entry(name: entry.name, in: path.path, status: status,
                               target: status.kind == .symlink ? try? directory.readSymlink(entry.name) : nil)
        }
        let rootName = request.roots.first { $0.path == path.root }?.name
        return Listing(path: path.path, parent: path.parent, root: .init(path: path.root, name: rootName), offset: offset, limit: limit,
                       total: page.total, sort: sort, order: descending ? "desc" : "asc", entries: entries)
    }

    func stat() throws -> StatResult {
        let path = try ServerPath.check(request.path, roots: rootPaths)
        let names = NameCache()
        if path.relative.isEmpty {
            let fd = try open(path, [.directory])
            defer { fd.closeQuietly() }
            let status: FileStatus
            do { status = try fd.status() } catch { throw APIError(error, path: path.display) }
            let backend = try storage(for: fd, path: path)
            return StatResult(entry: names.entry(name: path.nameBytes, in: path.parent ?? "", status: status, target: nil, fullPath: path.path),
                              filesystem: backend.kind.rawValue, project: try project(backend, fd))
        }
        let parentPath = try ServerPath.check(path.parent, roots: rootPaths)
        let parent = try open(parentPath, [.directory])
        defer { parent.closeQuietly() }
        let name = path.nameBytes
        let status: FileStatus
        do { status = try parent.status(name) } catch { throw APIError(error, path: path.display) }
        let backend = try storage(for: parent, path: path)
        var project: ProjectInfo?
        if status.kind == .regular || status.kind == .directory, let fd = try? parent.openAt(name, [.nonBlocking, .noFollow]) {
            defer { fd.closeQuietly() }
            project = try self.project(backend, fd)
        }
        return StatResult(entry: names.entry(name: name, in: parentPath.path, status: status,
                                             target: status.kind == .symlink ? try? parent.readSymlink(name) : nil),
                          filesystem: backend.kind.rawValue, project: project)
    }

    func project(_ backend: any StorageBackend, _ fd: FileDescriptor) throws -> ProjectInfo? {
        (try? backend.projectAttributes(of: fd))?.flatMap { $0 }.map { ProjectInfo(id: $0.projectID, inherit: $0.inherit) }
    }

    func quota() throws -> QuotaResult {
        let path = try ServerPath.check(request.path, roots: rootPaths)
        let fd: FileDescriptor
        if let directory = try? open(path, [.directory]) { fd = directory } else { fd = try open(path, [.nonBlocking]) }
        defer { fd.closeQuietly() }
        let backend = try storage(for: fd, path: path)
        let report: QuotaReport
        do { report = try backend.quota(of: fd, path: path.bytes) } catch {
            throw APIError(.internalError, "quota.unavailable", "the quota of \(path.display) cannot be read: \(error)")
        }
        return QuotaResult(path: path.path, filesystem: backend.kind.rawValue, project: try project(backend, fd), quota: QuotaInfo(report))
    }

    func preflight() throws -> PreflightResult {
        guard let transfer = request.transfer else { throw APIError(.badRequest, "request.invalid", "a transfer (kind, sources, destination) is required") }
        let sources = try transfer.sources.map { source throws(APIError) in try ServerPath.check(source, roots: rootPaths) }
        guard !sources.isEmpty else { throw APIError(.badRequest, "request.invalid", "give at least one source") }
        let destination = try ServerPath.check(transfer.destination, roots: rootPaths)
        let options = try Self.taskOptions(transfer.options)
        try checkTransferPaths(sources: sources, destination: destination)
        let opened: Transfer
        do {
            opened = try Transfer(sources: sources.map(\.bytes), destination: destination.bytes,
                                  roots: rootPaths.map { Array($0.utf8) })
        } catch let error as SystemError {
            throw APIError(error, path: error.path ?? destination.display)
        } catch let error as Transfer.UsageError {
            throw APIError(.badRequest, "request.invalid", error.message)
        }
        let planner = Planner.serving(request.roots, lfsPath: request.lfsPath)
        let verdict: Preflight
        do {
            verdict = try planner.preflight(kind: transfer.kind, transfer: opened, options: options)
        } catch let refusal as Refusal {
            return PreflightResult(refusal: refusal, kind: transfer.kind)
        } catch let error as SystemError {
            throw APIError(error, path: error.path ?? sources[0].display)
        } catch let error as CopyError {
            if case .system(let path, let system) = error { throw APIError(system, path: path) }
            throw APIError(.unprocessable, "request.invalid", error.description)
        }
        return PreflightResult(verdict)
    }

    /// Resolves every source and the destination (or, for a new name, its parent) beneath the
    /// roots first, so that each failure gets its precise code (outside the roots, a symlink loop,
    /// permission denied, not found) before the engine's own checks run.
    func checkTransferPaths(sources: [ServerPath], destination: ServerPath) throws(APIError) {
        for source in sources {
            guard let parentPath = source.parent else {
                throw APIError(.badRequest, "request.invalid", "\(source.display) is a shared root itself; choose something inside it")
            }
            let parent = try open(try ServerPath.check(parentPath, roots: rootPaths), [.directory])
            defer { parent.closeQuietly() }
            do { _ = try parent.status(source.nameBytes) } catch { throw APIError(error, path: source.display) }
        }
        do {
            let fd = try open(destination, [.directory])
            fd.closeQuietly()
        } catch {
            guard ["path.not_found", "path.not_directory"].contains(error.code), let parentPath = destination.parent else { throw error }
            let parent = try open(try ServerPath.check(parentPath, roots: rootPaths), [.directory])
            parent.closeQuietly()
        }
    }

    /// The options a request may set; the rest keep their defaults.
    static func taskOptions(_ requested: TransferRequest.Options?) throws(APIError) -> TaskOptions {
        var options = TaskOptions()
        if let verify = requested?.verify {
            guard ["metadata", "checksum"].contains(verify) else { throw APIError(.badRequest, "request.invalid", "verify must be metadata or checksum") }
            options.verify = verify
        }
        if let strategy = requested?.strategy {
            guard Strategy(rawValue: strategy) != nil else { throw APIError(.badRequest, "request.invalid", "strategy must be rename, relink or copy") }
            options.strategy = strategy
        }
        options.recall = requested?.recall ?? false
        options.waitForLocks = requested?.waitForLocks ?? false
        options.allowXattrLoss = requested?.allowXattrLoss ?? false
        options.spaceCheck = requested?.spaceCheck ?? true
        return options
    }
}

extension PreflightResult {
    init(_ verdict: Preflight) {
        let m = verdict.measurement
        self.init(kind: verdict.kind, strategy: verdict.strategy.rawValue, bytes: m.bytes, allocatedBytes: m.allocatedBytes,
                  files: m.files, directories: m.directories, entries: m.entries, inodes: m.entries,
                  filesystem: verdict.filesystemKind?.rawValue, sourceProject: verdict.sourceProject?.projectID,
                  destinationProject: verdict.destinationProject?.projectID, quota: verdict.quota.map(QuotaInfo.init),
                  finalPaths: verdict.finalPaths.map { PathText.encode($0) }, warnings: verdict.warnings,
                  refusal: verdict.refusal.map { RefusalInfo(code: $0.code, message: $0.message) },
                  allowed: verdict.refusal == nil, summary: verdict.summary)
    }

    init(refusal: Refusal, kind: TaskKind) {
        self.init(kind: kind, strategy: "none", bytes: 0, allocatedBytes: 0, files: 0, directories: 0, entries: 0, inodes: 0,
                  filesystem: nil, sourceProject: nil, destinationProject: nil, quota: nil, finalPaths: [], warnings: [],
                  refusal: RefusalInfo(code: refusal.code, message: refusal.message), allowed: false, summary: "Refused: \(refusal.message)")
    }
}

/// User and group names by id, looked up once per agent.
final class NameCache {
    private var users: [UInt32: String] = [:]
    private var groups: [UInt32: String] = [:]

    func user(_ uid: UInt32) -> String {
        if let name = users[uid] { return name }
        let name = (try? UserIdentity.lookup(uid: uid))??.name ?? String(uid)
        users[uid] = name
        return name
    }

    func group(_ gid: UInt32) -> String {
        if let name = groups[gid] { return name }
        var entry = group_t()
        var result: UnsafeMutablePointer<group_t>?
        var buffer = [CChar](repeating: 0, count: 4096)
        let name = (getgrgid_r(gid, &entry, &buffer, buffer.count, &result) == 0 && result != nil) ? String(cString: entry.gr_name) : String(gid)
        groups[gid] = name
        return name
    }

    func entry(name: ByteString, in directory: String, status: FileStatus, target: ByteString?, fullPath: String? = nil) -> FileEntry {
        let text = PathText.encode(name)
        let type: String
        switch status.kind {
        case .regular: type = "file"
        case .directory: type = "directory"
        case .symlink: type = "symlink"
        case .fifo: type = "fifo"
        case .socket: type = "socket"
        case .characterDevice, .blockDevice: type = "device"
        case .unknown: type = "unknown"
        }
        let octal = String(status.permissions, radix: 8)
        return FileEntry(
            name: text, path: fullPath ?? (directory == "/" ? "/" + text : directory + "/" + text), type: type,
            size: status.size, allocated: status.blocks * 512,
            modified: Double(status.modificationTime.seconds) + Double(status.modificationTime.nanoseconds) / 1e9,
            owner: user(status.uid), uid: status.uid, group: group(status.gid), gid: status.gid,
            mode: String(repeating: "0", count: max(0, 4 - octal.count)) + octal,
            symlinkTarget: target.map { PathText.encode($0) })
    }
}

typealias group_t = Glibc.group

extension Planner {
    /// The planner of an agent: each path's backend and default strategy are those of the deepest
    /// configured root containing it (as `FerryConfiguration.root(containing:)` decides).
    static func serving(_ roots: [AgentRequest.Root], lfsPath: String?, jobs: Int? = nil) -> Planner {
        let configuration = FerryConfiguration(roots: roots.map { .init(path: $0.path, name: $0.name, backend: $0.backend, strategy: $0.strategy) })
        var planner = Planner(jobs: jobs) { fd, path in
            try Storage.backend(for: fd, choice: configuration.backend(for: String(decoding: path, as: UTF8.self)), lfsPath: lfsPath)
        }
        planner.configuredStrategy = { path in configuration.root(containing: String(decoding: path, as: UTF8.self), resolvingSymlinks: true)?.strategy }
        return planner
    }
}
