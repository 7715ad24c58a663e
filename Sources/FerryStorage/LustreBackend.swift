import Foundation
import FerrySystem
import SystemPackage
import Synchronization

/// Lustre: project IDs through the generic fsxattr ioctl (Lustre implements it), quota, layouts and
/// HSM state through `lfs`, whose path comes from configuration or `FERRY_LFS`.
public struct LustreBackend: StorageBackend {
    public var kind: FilesystemKind { .lustre }
    let lfs: CommandRunner

    /// `lfsPath`: the `lfs` program; default `FERRY_LFS` from the environment, else `lfs` in PATH.
    public init(lfsPath: String? = nil, timeout: Double = 60) {
        // Empty is unset, as everywhere else: `Environment=FERRY_LFS=` must not name no program.
        let path = [lfsPath, ProcessInfo.processInfo.environment["FERRY_LFS"]].lazy.compactMap { $0 }.first { !$0.isEmpty } ?? "lfs"
        lfs = CommandRunner(executable: path, timeout: timeout)
    }

    public var lfsPath: String { lfs.executable }

    /// Lustre 2.15 moved a file's project quota on rename (LU-13176); older servers answer EXDEV
    /// for files too. Known from `lfs --version`, asked once per `lfs` program.
    public var renamesFilesAcrossProjects: Bool {
        guard let version = version else { return false }
        return version >= LustreVersion(major: 2, minor: 15)
    }

    /// The version `lfs --version` reports, nil when it cannot be run or read. Only an answer is
    /// kept: a failure (a timeout while a server was down) is asked again next time, rather than
    /// ruling out relink for the life of the process.
    public var version: LustreVersion? {
        let path = lfs.executable
        if let known = Self.versions.withLock({ $0[path] }) { return known }
        let parsed = (try? lfs.run(["--version"])).flatMap { $0.status == 0 ? LustreVersion(lfsOutput: String(decoding: $0.standardOutput, as: UTF8.self)) : nil }
        if let parsed { Self.versions.withLock { $0[path] = parsed } }
        return parsed
    }

    private static let versions = Mutex<[String: LustreVersion]>([:])

    /// The limit of one `lfs find` over a move's source: 12 hours, for tens of millions of entries.
    public static let findTimeout: Double = 12 * 3600

    /// `lfs quota -p ID MOUNT`, parsed; byte figures in bytes. Where `lfs` fails the figures come from
    /// `statvfs`, with the reason in `note`.
    public func quota(of fd: FileDescriptor, path: ByteString) throws(StorageError) -> QuotaReport {
        let project = try projectAttributes(of: fd)?.projectID ?? 0
        let mountPoint = MountTable.current().mount(of: fd, path: path)?.mountPoint ?? String(decoding: path, as: UTF8.self)
        let parsed: LustreQuotaReport
        do {
            parsed = try lustreQuota(project: project, mountPoint: mountPoint)
        } catch {
            return try statvfsQuota(fd, project: project, note: "lfs quota failed: \(error)")
        }
        let fs = try? fd.filesystemStatistics()
        var report = QuotaReport(source: .lfs, projectID: parsed.projectID ?? project)
        report.bytesUsed = parsed.bytesUsed
        report.bytesSoftLimit = parsed.bytesSoftLimit
        report.bytesHardLimit = parsed.bytesHardLimit
        report.bytesFree = LinuxProjectBackend.headroom(limit: Self.enforced(soft: parsed.bytesSoftLimit, hard: parsed.bytesHardLimit, grace: parsed.bytesGrace),
                                                        used: parsed.bytesUsed, filesystem: fs?.availableBytes)
        report.inodesUsed = parsed.inodesUsed
        report.inodesSoftLimit = parsed.inodesSoftLimit
        report.inodesHardLimit = parsed.inodesHardLimit
        report.inodesFree = LinuxProjectBackend.headroom(limit: Self.enforced(soft: parsed.inodesSoftLimit, hard: parsed.inodesHardLimit, grace: parsed.inodesGrace),
                                                         used: parsed.inodesUsed, filesystem: fs?.freeInodes)
        report.overLimit = parsed.bytesOverLimit || parsed.inodesOverLimit
        report.inaccurate = parsed.inaccurate
        return report
    }

    /// The limit Lustre holds writes to: the hard limit; the soft one where there is no hard one
    /// (past it, writes stop when the grace period ends, which a long copy outlasts); the soft one
    /// also once its grace period has run out (usage over it then has no room left at all).
    static func enforced(soft: UInt64?, hard: UInt64?, grace: QuotaGrace) -> UInt64? {
        if let soft, grace.hasRunOut { return min(soft, hard ?? soft) }
        return hard ?? soft
    }

    /// lfs exits non-zero (EIO, EREMOTEIO) when a target did not answer, and still prints the
    /// figures it has, the missing ones `[bracketed]`: those are read, marked inaccurate. A failure
    /// that printed no figures is one; so is one that printed no limit at all, since lfs prints
    /// its zeroed buffer (limits 0, "none") when the quota master itself did not answer.
    public func lustreQuota(project: UInt32, mountPoint: String) throws(StorageError) -> LustreQuotaReport {
        let output = try lfs.run(["quota", "-p", String(project), mountPoint])
        let failed = StorageError(.command, "lfs quota -p \(project) \(mountPoint) exited with \(output.status): "
                                  + output.standardError.trimmingCharacters(in: .whitespacesAndNewlines))
        var report: LustreQuotaReport
        do {
            report = try LfsQuotaParser.parse(String(decoding: output.standardOutput, as: UTF8.self))
        } catch {
            if output.status != 0 { throw failed }
            throw StorageError(.parse, error.description)
        }
        guard output.status != 0 else { return report }
        let limits: [UInt64?] = [report.bytesSoftLimit, report.bytesHardLimit, report.inodesSoftLimit, report.inodesHardLimit]
        guard limits.contains(where: { $0 != nil }) else { throw failed }
        report.inaccurate = true
        return report
    }

    /// The layout lives in the `lustre.lov` xattr (also listed to root as `trusted.lov`). Set on a
    /// file made with `.delayLayout` before its first write, it becomes that file's layout (plain,
    /// composite/PFL and DoM alike), as `lfs setstripe --copy` does through `llapi`. A file made
    /// without that flag already has its directory's default layout, and the set is ignored.
    public static let layoutAttribute: ByteString = Array("lustre.lov".utf8)
    public var layoutAttributeNames: Set<ByteString> { [Self.layoutAttribute, Array("trusted.lov".utf8)] }
    public var layoutCreateFlags: OpenFlags { .delayLayout }

    public func cloneLayout(from source: FileDescriptor, to destination: FileDescriptor) throws(StorageError) {
        let layout: ByteString?
        do {
            layout = try ExtendedAttributes.value(source, Self.layoutAttribute)
        } catch {
            if error.code == .notSupported { return }  // the source is not on Lustre: it has no layout to give
            throw StorageError(.system, "could not read the Lustre layout: \(error)", underlying: error)
        }
        guard let layout, !layout.isEmpty else { return }
        do {
            try ExtendedAttributes.set(destination, Self.layoutAttribute, layout)
        } catch {
            throw StorageError(.system, "could not set the Lustre layout: \(error)", underlying: error)
        }
    }

    /// `lfs setstripe --copy=SOURCE DEST`: creates DEST with SOURCE's layout, for callers that
    /// create files by path.
    public func createFile(withLayoutOf source: String, at destination: String) throws(StorageError) {
        try Self.requireAbsolute([source, destination].map { Array($0.utf8) })
        let output = try lfs.run(["setstripe", "--copy=\(source)", destination])
        guard output.status == 0 else {
            throw StorageError(.command, "lfs setstripe --copy=\(source) \(destination) failed: \(output.standardError)")
        }
    }

    /// `lfs getstripe PATH`, parsed.
    public func layout(of path: String) throws(StorageError) -> [LustreGetstripeEntry] {
        try Self.requireAbsolute([Array(path.utf8)])
        let output = try lfs.run(["getstripe", path])
        guard output.status == 0 else { throw StorageError(.command, "lfs getstripe \(path) failed: \(output.standardError)") }
        do { return try LfsGetstripeParser.parse(String(decoding: output.standardOutput, as: UTF8.self)) } catch {
            throw StorageError(.parse, error.description)
        }
    }

    /// `lfs hsm_state PATH...`, parsed.
    public func hsmState(of paths: [String]) throws(StorageError) -> [LustreHSMState] {
        guard !paths.isEmpty else { return [] }
        try Self.requireAbsolute(paths.map { Array($0.utf8) })
        let output = try lfs.run(["hsm_state"] + paths)
        guard output.status == 0 else { throw StorageError(.command, "lfs hsm_state failed: \(output.standardError)") }
        do { return try LfsHSMStateParser.parse(String(decoding: output.standardOutput, as: UTF8.self)) } catch {
            throw StorageError(.parse, error.description)
        }
    }

    /// Files under `directory` whose data is on tape only: `lfs find DIR --layout released --print0`
    /// (there is no `lfs find -hsm`). Paths as bytes, both ways.
    /// It walks the tree on the metadata servers, which takes as long as the tree is large: its
    /// limit is `findTimeout`, not the runner's.
    public func releasedFiles(under directory: ByteString) throws(StorageError) -> [ByteString] {
        try Self.requireAbsolute([directory])
        let output = try lfs.run(bytes: [Array("find".utf8), directory] + ["--layout", "released", "--print0"].map { Array($0.utf8) },
                                 timeout: max(lfs.timeout, Self.findTimeout))
        guard output.status == 0 else {
            throw StorageError(.command, "lfs find \(PathDisplay.string(directory)) --layout released failed: \(output.standardError)")
        }
        return LfsFindParser.parsePrint0(output.standardOutput)
    }
}

extension LustreBackend {
    /// Asks the HSM to bring released files back from the archive (`lfs hsm_restore`), in batches.
    public func restore(_ paths: [ByteString]) throws(StorageError) {
        try Self.requireAbsolute(paths)
        for start in stride(from: 0, to: paths.count, by: 100) {
            let output = try lfs.run(bytes: [Array("hsm_restore".utf8)] + paths[start..<min(start + 100, paths.count)])
            guard output.status == 0 else { throw StorageError(.command, "lfs hsm_restore failed: \(output.standardError)") }
        }
    }

    /// The paths whose HSM request is still pending (`lfs hsm_action`), as `lfs` prints them (for
    /// counting and showing): empty once all restores ended.
    public func pendingHSMActions(_ paths: [ByteString]) throws(StorageError) -> [String] {
        try Self.requireAbsolute(paths)
        var pending: [String] = []
        for start in stride(from: 0, to: paths.count, by: 100) {
            let output = try lfs.run(bytes: [Array("hsm_action".utf8)] + paths[start..<min(start + 100, paths.count)])
            guard output.status == 0 else { throw StorageError(.command, "lfs hsm_action failed: \(output.standardError)") }
            do {
                pending += try LfsHSMActionParser.parse(String(decoding: output.standardOutput, as: UTF8.self)).filter { !$0.isIdle }.map(\.path)
            } catch {
                throw StorageError(.parse, error.description)
            }
        }
        return pending
    }
}

extension LustreBackend {
    /// Paths given to `lfs` are absolute: lfs reads its options with getopt, which takes an
    /// argument beginning with `-` for one wherever it stands (`-delete` would be an option).
    static func requireAbsolute(_ paths: [ByteString]) throws(StorageError) {
        if let relative = paths.first(where: { $0.first != UInt8(ascii: "/") }) {
            throw StorageError(.unsupported, "\(PathDisplay.string(relative)) is not an absolute path; lfs is given absolute paths only")
        }
    }
}

/// Chooses the backend for a path: detected from `statfs` magic, or forced by configuration.
public enum Storage {
    /// `lfsTimeout`: the limit of one `lfs` call (default 60 s).
    public static func backend(for fd: FileDescriptor, choice: BackendChoice = .auto, lfsPath: String? = nil,
                               lfsTimeout: Double? = nil) throws(StorageError) -> any StorageBackend {
        let kind: FilesystemKind
        switch choice {
        case .auto:
            do { kind = FilesystemKind(magic: try fd.filesystemStatistics().magic) } catch {
                throw StorageError(.system, "could not identify the filesystem: \(error)", underlying: error)
            }
        case .lustre: kind = .lustre
        case .xfs: kind = .xfs
        case .ext4: kind = .ext4
        case .posix: kind = .posix
        }
        switch kind {
        case .lustre: return LustreBackend(lfsPath: lfsPath, timeout: lfsTimeout ?? 60)
        case .xfs, .ext4: return LinuxProjectBackend(kind: kind)
        case .posix: return PosixBackend()
        }
    }
}

/// A Lustre release, as `lfs --version` prints it ("lfs 2.15.4", "lfs version 2.12.9_ddn12").
public struct LustreVersion: Sendable, Equatable, Comparable, CustomStringConvertible {
    public var major: Int
    public var minor: Int
    public var patch: Int = 0

    public init(major: Int, minor: Int, patch: Int = 0) {
        self.major = major
        self.minor = minor
        self.patch = patch
    }

    public init?(lfsOutput text: String) {
        for word in text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }) {
            let numbers = word.prefix { $0.isNumber || $0 == "." }.split(separator: ".").compactMap { Int($0) }
            if numbers.count >= 2 {
                self.init(major: numbers[0], minor: numbers[1], patch: numbers.count > 2 ? numbers[2] : 0)
                return
            }
        }
        return nil
    }

    public static func < (a: LustreVersion, b: LustreVersion) -> Bool {
        (a.major, a.minor, a.patch) < (b.major, b.minor, b.patch)
    }

    public var description: String { "\(major).\(minor).\(patch)" }
}
