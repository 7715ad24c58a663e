import FerryConfig
import FerrySystem
import Foundation

/// `ferry serve --demo`: a sandbox to try Ferry on with nothing set up. As root (with xfsprogs
/// and loop devices): a loop-mounted XFS image with three project directories (project IDs 100, 200, 300, inherit flag set), so a
/// move between them meets a real EXDEV; otherwise a plain directory tree. Sample data: a
/// directory of a few GiB of sparse and real files, and one of many small files. The image is
/// kept between runs (mounted again at start, unmounted at exit).
public struct DemoSandbox: Sendable {
    public let directory: String
    /// Root, with XFS tools and loop devices (not so in a plain container): else plain directories.
    public let isLoopXFS: Bool
    public var mountPoint: String { directory + "/mnt" }
    public var projects: String { (isLoopXFS ? mountPoint : directory + "/dirs") + "/projects" }
    public var database: String { directory + "/ferry.sqlite" }

    public init(directory: String) {
        self.directory = directory
        let tools = ["/usr/sbin/mkfs.xfs", "/sbin/mkfs.xfs"].contains { FileManager.default.isExecutableFile(atPath: $0) }
            && ["/usr/sbin/xfs_io", "/sbin/xfs_io", "/usr/bin/xfs_io"].contains { FileManager.default.isExecutableFile(atPath: $0) }
        isLoopXFS = geteuid() == 0 && tools && FileManager.default.fileExists(atPath: "/dev/loop-control")
    }

    public struct Failure: Error, CustomStringConvertible { public var description: String }

    /// Creates (or re-mounts) the sandbox and returns the configuration to serve it with.
    public func prepare(log: (String) -> Void) throws -> FerryConfiguration {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let image = directory + "/fs.img"
        if isLoopXFS {
            let fresh = !FileManager.default.fileExists(atPath: image)
            if fresh {
                log("creating a 6 GiB XFS image (sparse) in \(image)")
                try run("truncate -s 6G \(q(image)) && mkfs.xfs -q -m reflink=0 \(q(image))")
            }
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            if (try? run("mountpoint -q \(q(mountPoint))")) == nil {
                try run("mount -o loop \(q(image)) \(q(mountPoint))")
            }
        }
        let marker = (projects as NSString).deletingLastPathComponent + "/.ferry-demo-populated"
        if !FileManager.default.fileExists(atPath: marker) {
            log("writing sample data into \(projects)")
            try populate()
            FileManager.default.createFile(atPath: marker, contents: Data())
        }
        var configuration = FerryConfiguration()
        configuration.roots = [.init(path: projects, name: "Projects")]
        configuration.database = "sqlite://" + database
        configuration.serve.admins = [UserIdentity.current.name]
        return configuration
    }

    func populate() throws {
        let projectIDs = [("alpha", 100), ("beta", 200), ("gamma", 300)]
        for (name, id) in projectIDs {
            let path = projects + "/" + name
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            if isLoopXFS { try run("xfs_io -c 'chproj \(id)' -c 'chattr +P' \(q(path)) >/dev/null") }
        }
        let results = projects + "/alpha/simulation-results"
        try run("""
            set -e
            mkdir -p \(q(results))/runs \(q(results))/checkpoints
            head -c 256M /dev/urandom > \(q(results))/model-weights.bin
            truncate -s 3G \(q(results))/checkpoints/state.img
            dd if=/dev/urandom of=\(q(results))/checkpoints/state.img bs=1M count=64 seek=1024 conv=notrunc status=none
            dd if=/dev/urandom of=\(q(results))/checkpoints/state.img bs=1M count=64 seek=2560 conv=notrunc status=none
            for i in $(seq 1 200); do head -c 65536 /dev/urandom > \(q(results))/runs/run-$i.dat; done
            ln -f \(q(results))/model-weights.bin \(q(results))/model-weights.hardlink
            ln -sfn model-weights.bin \(q(results))/current
            echo 'Simulation output: a directory of a few GiB, sparse and real.' > \(q(results))/README.txt
            """)
        let small = projects + "/gamma/survey-images"
        try run("""
            set -e
            mkdir -p \(q(small))
            cd \(q(small))
            for d in $(seq -w 1 20); do mkdir -p batch-$d; for f in $(seq -w 1 250); do echo "image $d-$f" > batch-$d/img-$f.txt; done; done
            """)
        try run("mkdir -p \(q(projects))/beta/incoming && echo 'Project beta (200): move data here.' > \(q(projects))/beta/README.txt")
        if isLoopXFS { try run("chmod 1777 \(q(projects))/alpha \(q(projects))/beta \(q(projects))/gamma") }
    }

    /// Unmounts the image (the data stays in it for the next run).
    public func shutdown() {
        if isLoopXFS { _ = try? run("mountpoint -q \(q(mountPoint)) && umount \(q(mountPoint))") }
    }

    @discardableResult
    func run(_ script: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = ["-c", script]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else { throw Failure(description: "demo set-up failed: \(script.prefix(80))…: \(text)") }
        return text
    }

    func q(_ path: String) -> String { "'" + path.replacingOccurrences(of: "'", with: "'\\''") + "'" }
}
