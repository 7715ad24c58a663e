import Foundation

/// The tests' own FUSE filesystem (Tests/Tools/quotafs): passes everything through to a backing
/// directory and answers EDQUOT once `budget` bytes have been written — a real EDQUOT from the
/// kernel's point of view, on a kernel without quota support. Always unmounted by `tearDown`.
public final class QuotaFS: @unchecked Sendable {
    public let directory: String
    public let backing: String
    public let mountPoint: String
    private var mounted = false
    private var process: Process?

    public static var available: Bool {
        Environment.isRoot && FileManager.default.fileExists(atPath: "/dev/fuse")
            && FileManager.default.isExecutableFile(atPath: "/usr/bin/fusermount3")
    }

    /// `writebackCache`: writes land in the page cache and the budget's error comes from their
    /// write-back (seen by `close` and `fsync`/`syncfs`), as on a network filesystem.
    /// `refuseXattrs`: setting any extended attribute fails with EOPNOTSUPP.
    /// `hang`: opening a directory of that name blocks until it is removed from `backing` (a hung
    /// mount: the opener waits in the kernel, and SIGKILL does not end it).
    /// `readErrorIn`: reading a file of that name fails with EIO (a bad sector) until
    /// `liftBudget()`.
    /// `renameFlags: false`: `RENAME_NOREPLACE` fails with EINVAL, as on a filesystem without it.
    /// `logFsync`: every `fsync` that reaches the filesystem is a line of `fsyncLog`
    /// (`file PATH` or `dir PATH`, paths from the mount's root).
    public init(budget: Int, errno: String = "EDQUOT", writebackCache: Bool = false, refuseXattrs: Bool = false, hang: String? = nil,
                readErrorIn: String? = nil, renameFlags: Bool = true, logFsync: Bool = false) throws {
        directory = try TemporaryDirectory.make(prefix: "ferry-quotafs")
        backing = directory + "/backing"
        mountPoint = directory + "/mnt"
        do {
            try FileManager.default.createDirectory(atPath: backing, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            let binary = try Self.build()
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            var arguments = [backing, mountPoint, "--budget", String(budget), "--errno", errno, "-f",
                             "-o", "attr_timeout=0,entry_timeout=0,negative_timeout=0"]
            if writebackCache { arguments.append("--writeback-cache") }
            if refuseXattrs { arguments.append("--refuse-xattrs") }
            if !renameFlags { arguments.append("--no-rename-flags") }
            if let hang { arguments += ["--hang", hang] }
            if let readErrorIn { arguments += ["--read-eio", readErrorIn] }
            if logFsync { arguments += ["--fsync-log", directory + "/fsync.log"] }
            process.arguments = arguments
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            self.process = process
            for _ in 0..<200 where !mounted {
                if (try? Shell.run(["mountpoint", "-q", mountPoint])) != nil { mounted = true } else { usleep(20_000) }
            }
            guard mounted else { throw ShellError(command: "quotafs", status: 1, output: "did not mount") }
        } catch {
            tearDown()
            throw error
        }
    }

    /// The `fsync`s the filesystem received (`logFsync`), in order.
    public var fsyncLog: [String] {
        ((try? String(contentsOfFile: directory + "/fsync.log", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    /// Lifts the budget (and the read errors) for good (SIGUSR1): the fault has passed.
    public func liftBudget() {
        if let process, process.isRunning { kill(process.processIdentifier, SIGUSR1) }
    }

    public func tearDown() {
        if mounted {
            if (try? Shell.run(["fusermount3", "-u", mountPoint])) == nil { _ = try? Shell.run(["fusermount3", "-uz", mountPoint]) }
            mounted = false
        }
        if let process, process.isRunning { process.terminate(); process.waitUntilExit() }
        process = nil
        try? FileManager.default.removeItem(atPath: directory)
    }

    deinit { tearDown() }

    private static let built = Mutex<String?>(nil)

    /// Compiles quotafs once per test process, into a directory removed when the process exits.
    static func build() throws -> String {
        try built.withLock { path in
            if let path { return path }
            atexit {
                guard let binary = QuotaFS.built.withLock({ $0 }) else { return }
                try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: binary).deletingLastPathComponent().path)
            }
            let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("Tests/Tools/quotafs/quotafs.c").path
            let output = try TemporaryDirectory.make(prefix: "ferry-quotafs-bin") + "/quotafs"
            let flags = try Shell.run(["pkg-config", "--cflags", "--libs", "fuse3"]).split(separator: " ").map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) }
            try Shell.run(["gcc", "-O2", "-Wall", source, "-o", output] + flags.filter { !$0.isEmpty })
            path = output
            return output
        }
    }
}

import Synchronization
