import Foundation
import FerrySystem

/// Runs a helper program (`lfs`) with arguments, never through a shell, with a time limit: `lfs
/// quota` can hang on an unreachable target, and a hung pre-flight check must fail, not wait forever.
/// Arguments are bytes (`FerrySystem.ChildProcess`): a path that is not UTF-8 reaches `lfs` as the
/// name it is, not as a lossy rendering of it that names another file, or none.
struct CommandRunner: Sendable {
    var executable: String
    var timeout: Double = 60

    struct Output: Sendable {
        var status: Int32
        var standardOutput: [UInt8]
        var standardError: String
    }

    func run(_ arguments: [String]) throws(StorageError) -> Output {
        try run(bytes: arguments.map { Array($0.utf8) })
    }

    /// `timeout`: this call's own limit in seconds, when it is not the runner's (a walk of a
    /// whole tree by `lfs find` takes as long as the tree is large).
    func run(bytes arguments: [ByteString], timeout: Double? = nil) throws(StorageError) -> Output {
        let timeout = timeout ?? self.timeout
        let outcome: ChildProcess.Outcome
        do {
            outcome = try ChildProcess.run(executable: resolvedExecutable(), byteArguments: arguments,
                                           environment: Self.environment(), identity: nil,
                                           // "/": the caller's directory may be gone (a tree moved
                                           // away under a shell) or on a hung mount; every argument
                                           // is absolute.
                                           workingDirectory: "/",
                                           deadline: .now + .milliseconds(Int64(timeout * 1000)))
        } catch {
            throw StorageError(.command, "could not run \(executable): \(error); set the path of lfs in the configuration (lfs = \"/usr/bin/lfs\") or FERRY_LFS")
        }
        switch outcome {
        case .overran(let child):
            // Killed; reaped once the kernel lets it die (a process stuck on a hung mount waits for it).
            Thread.detachNewThread { _ = child.wait() }
            throw StorageError(.command, "\(executable) \(arguments.map { PathDisplay.string($0) }.joined(separator: " ")) did not answer within \(Int(timeout)) s")
        case .ended(let termination, let output, let error):
            let status: Int32 = switch termination {
            case .exited(let code): code
            case .signalled(let number): 128 + number
            }
            return Output(status: status, standardOutput: output, standardError: String(decoding: error, as: UTF8.self))
        }
    }

    /// What the helper is given of the environment: where to find programs, and the C locale, in
    /// which its output is what the parsers read. Nothing else: the server's and the CLI's
    /// secrets (`FERRY_AUTH_TOKEN`, `FERRY_DATABASE_URL` with its password) are not its business.
    static func environment() -> [String: String] {
        var kept = ["LC_ALL": "C"]
        let own = ProcessInfo.processInfo.environment
        // LD_LIBRARY_PATH: a site's lfs built into a modules tree finds its libraries by it.
        for name in ["PATH", "HOME", "TZ", "LD_LIBRARY_PATH"] { if let value = own[name] { kept[name] = value } }
        return kept
    }

    /// A bare name is looked up in PATH, as a shell would; a relative path (or PATH entry) is
    /// taken from the current directory, as the program then runs in "/".
    func resolvedExecutable() -> String {
        func absolute(_ path: String) -> String {
            path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        }
        if executable.contains("/") { return absolute(executable) }
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":", omittingEmptySubsequences: false) {
            // An empty entry is the current directory.
            let candidate = absolute((directory.isEmpty ? "." : String(directory)) + "/" + executable)
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return executable
    }
}
