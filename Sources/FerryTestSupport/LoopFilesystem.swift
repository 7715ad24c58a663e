import Foundation
import FerrySystem
import Glibc

/// A loop-mounted XFS for tests: created in a temporary directory, mounted through its own loop
/// device, and always unmounted and detached again — by `withLoopXFS` even when the test body throws.
public final class LoopXFS: @unchecked Sendable {
    public let directory: String
    public let image: String
    public let mountPoint: String
    public private(set) var loopDevice: String?
    private var mounted = false

    /// `sizeMiB` ≥ 300 (mkfs.xfs's minimum). `reflink`: whether files may share extents (FICLONE).
    public init(sizeMiB: Int = 512, reflink: Bool = false) throws {
        directory = try TemporaryDirectory.make(prefix: "ferry-xfs")
        image = directory + "/fs.img"
        mountPoint = directory + "/mnt"
        do {
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            try Shell.run(["truncate", "-s", "\(sizeMiB)M", image])
            try Shell.run(["mkfs.xfs", "-q", "-m", "reflink=\(reflink ? 1 : 0)", image])
            let device = try Shell.run(["losetup", "--find", "--show", image]).trimmingCharacters(in: .whitespacesAndNewlines)
            loopDevice = device
            try Shell.run(["mount", "-t", "xfs", device, mountPoint])
            mounted = true
        } catch {
            tearDown()
            throw error
        }
    }

    /// A directory with its own project ID and the inherit flag, set by `FS_IOC_FSSETXATTR`.
    @discardableResult
    public func makeProjectDirectory(_ name: String, project: UInt32) throws -> String {
        let path = mountPoint + "/" + name
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let fd = try FileDescriptor.openDirectory(Array(path.utf8))
        defer { fd.closeQuietly() }
        try fd.setProjectAttributes(ProjectAttributes(projectID: project, inherit: true))
        return path
    }

    /// Unmounts (retrying while busy, lazily as a last resort), detaches the loop device and removes
    /// the image. Safe to call twice.
    public func tearDown() {
        if mounted {
            var done = false
            for _ in 0..<20 {
                if (try? Shell.run(["umount", mountPoint])) != nil { done = true; break }
                usleep(100_000)
            }
            if !done { _ = try? Shell.run(["umount", "-l", mountPoint]) }
            mounted = false
        }
        if let device = loopDevice {
            _ = try? Shell.run(["losetup", "-d", device])
            loopDevice = nil
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    deinit { tearDown() }
}

/// Runs `body` with a fresh loop XFS and tears it down afterwards, whatever happens.
public func withLoopXFS<T>(sizeMiB: Int = 512, reflink: Bool = false, _ body: (LoopXFS) throws -> T) throws -> T {
    let fs = try LoopXFS(sizeMiB: sizeMiB, reflink: reflink)
    defer { fs.tearDown() }
    return try body(fs)
}

/// Whether this machine can run the tests that mount filesystems.
public enum Environment {
    public static var isRoot: Bool { geteuid() == 0 }
    public static var canMountXFS: Bool {
        isRoot && (FileManager.default.isExecutableFile(atPath: "/usr/sbin/mkfs.xfs") || FileManager.default.isExecutableFile(atPath: "/sbin/mkfs.xfs"))
    }
}

public enum TemporaryDirectory {
    public static func make(prefix: String) throws -> String {
        let base = NSTemporaryDirectory().hasSuffix("/") ? String(NSTemporaryDirectory().dropLast()) : NSTemporaryDirectory()
        var template = Array("\(base)/\(prefix)-XXXXXX".utf8CString)
        guard let result = mkdtemp(&template) else {
            throw ShellError(command: "mkdtemp", status: errno, output: String(cString: strerror(errno)))
        }
        return String(cString: result)
    }
}

public struct ShellError: Error, CustomStringConvertible {
    public var command: String
    public var status: Int32
    public var output: String
    public var description: String { "`\(command)` exited with \(status): \(output)" }
}

/// Runs a program (no shell) and returns its standard output; throws with its output on failure.
public enum Shell {
    public struct Result: Sendable {
        public var status: Int32
        public var standardOutput: String
        public var standardError: String
    }

    @discardableResult
    public static func run(_ arguments: [String], environment: [String: String]? = nil, input: String? = nil) throws -> String {
        let result = try execute(arguments, environment: environment, input: input)
        guard result.status == 0 else {
            throw ShellError(command: arguments.joined(separator: " "), status: result.status, output: result.standardError + result.standardOutput)
        }
        return result.standardOutput
    }

    /// Runs and returns status and output whatever the status.
    public static func execute(_ arguments: [String], environment: [String: String]? = nil, input: String? = nil) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        if let environment {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let out = Pipe(), err = Pipe(), inPipe = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = inPipe
        try process.run()
        if let input { inPipe.fileHandleForWriting.write(Data(input.utf8)) }
        try? inPipe.fileHandleForWriting.close()
        let group = DispatchGroup()
        let box = OutputBox()
        for (pipe, isError) in [(out, false), (err, true)] {
            group.enter()
            DispatchQueue.global().async {
                box.set(pipe.fileHandleForReading.readDataToEndOfFile(), isError: isError)
                group.leave()
            }
        }
        process.waitUntilExit()
        group.wait()
        return Result(status: process.terminationStatus,
                      standardOutput: String(decoding: box.output, as: UTF8.self),
                      standardError: String(decoding: box.error, as: UTF8.self))
    }
}

private final class OutputBox: @unchecked Sendable {
    private let lock = NSLock()
    private var out = Data(), err = Data()
    func set(_ data: Data, isError: Bool) {
        lock.lock(); defer { lock.unlock() }
        if isError { err = data } else { out = data }
    }
    var output: Data { lock.lock(); defer { lock.unlock() }; return out }
    var error: Data { lock.lock(); defer { lock.unlock() }; return err }
}

/// `withLoopXFS` for async test bodies.
public func withLoopXFSAsync<T>(sizeMiB: Int = 512, reflink: Bool = false, _ body: (LoopXFS) async throws -> T) async throws -> T {
    let fs = try LoopXFS(sizeMiB: sizeMiB, reflink: reflink)
    defer { fs.tearDown() }
    return try await body(fs)
}
