import FerryMove
import ArgumentParser
import FerryStorage
import FerrySystem
import Foundation

/// `ferry fs PATH`: what filesystem a path is on, its project and the project's quota.
struct FsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fs", abstract: "Show the filesystem kind, project ID, inherit flag and quota of a path.")

    @Argument(help: "A file or directory.") var path: String
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var storageOptions: StorageOptions

    func run() throws {
        let configuration = try storageOptions.loadConfiguration()
        let bytes = ProcessArguments.pathBytes(path)
        // Readable (non-blocking, so a fifo cannot hang us) for the fsxattr ioctl; O_PATH is
        // enough for statfs where reading is not allowed.
        let readable: FileDescriptor
        do {
            readable = try (try? currentWorkingDirectory.openAt(bytes, [.nonBlocking])) ?? currentWorkingDirectory.openAt(bytes, [.path])
        } catch {
            printError("ferry fs: \(error)")
            throw ExitCode(FerryCommand.Status.failure.rawValue)
        }
        defer { readable.closeQuietly() }
        do {
            let storage = try storageOptions.backend(for: readable, path: bytes, configuration: configuration)
            let project = try storage.projectAttributes(of: readable)
            let quota = try storage.quota(of: readable, path: bytes)
            if json {
                printJSON(Self.json(path: path, kind: storage.kind, project: project, quota: quota))
            } else {
                print(Self.text(path: path, kind: storage.kind, project: project, quota: quota))
            }
        } catch {
            printError("ferry fs: \(path): \(error)")
            throw ExitCode(FerryCommand.Status.failure.rawValue)
        }
    }

    static func json(path: String, kind: FilesystemKind, project: ProjectAttributes?, quota: QuotaReport) -> [String: Any?] {
        [
            "path": path,
            "filesystem": kind.rawValue,
            "project": ["id": project.map { Int($0.projectID) }, "inherit": project?.inherit] as [String: Any?],
            "quota": [
                "source": quota.source.rawValue,
                "bytesUsed": quota.bytesUsed, "bytesSoftLimit": quota.bytesSoftLimit,
                "bytesHardLimit": quota.bytesHardLimit, "bytesFree": quota.bytesFree,
                "inodesUsed": quota.inodesUsed, "inodesSoftLimit": quota.inodesSoftLimit,
                "inodesHardLimit": quota.inodesHardLimit, "inodesFree": quota.inodesFree,
                "overLimit": quota.overLimit, "inaccurate": quota.inaccurate,
            ] as [String: Any?],
        ]
    }

    static func text(path: String, kind: FilesystemKind, project: ProjectAttributes?, quota: QuotaReport) -> String {
        var lines = ["\(path): \(kind.rawValue)"]
        if let project {
            lines.append("  project \(project.projectID), inherit flag \(project.inherit ? "set" : "not set")")
        } else {
            lines.append("  no project ID on this filesystem")
        }
        let origin: String
        switch quota.source {
        case .lfs: origin = "lfs quota"
        case .quotactl: origin = "kernel project quota"
        case .statvfs: origin = "filesystem free space (no project quota available)"
        }
        lines.append("  quota from \(origin)\(quota.inaccurate == true ? " — figures are estimates" : "")\(quota.overLimit == true ? " — OVER LIMIT" : "")")
        func figure(_ used: UInt64?, _ hard: UInt64?, _ free: UInt64?, _ fmt: (UInt64) -> String) -> String {
            let u = used.map(fmt) ?? "?"
            let h = hard.map(fmt) ?? "no limit"
            let f = free.map(fmt) ?? "?"
            return "\(u) used of \(h), \(f) free"
        }
        lines.append("  bytes:  \(figure(quota.bytesUsed, quota.bytesHardLimit, quota.bytesFree, Format.bytes))")
        lines.append("  inodes: \(figure(quota.inodesUsed, quota.inodesHardLimit, quota.inodesFree, Format.count))")
        if let note = quota.note { lines.append("  note: \(note)") }
        return lines.joined(separator: "\n")
    }
}

import SystemPackage

extension BackendChoice: ExpressibleByArgument {}
