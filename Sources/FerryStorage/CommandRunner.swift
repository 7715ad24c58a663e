import Foundation

/// Runs a helper program (`lfs`) with arguments, never through a shell, with a time limit: `lfs
/// quota` can hang on an unreachable target, and a hung pre-flight check must fail, not wait forever.
struct CommandRunner: Sendable {
    var executable: String
    var timeout: Double = 60

    struct Output: Sendable {
        var status: Int32
        var standardOutput: Data
        var standardError: String
    }

    func run(_ arguments: [String]) throws(StorageError) -> Output {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: resolvedExecutable())
        process.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        let done = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in done.signal() }
        do {
            try process.run()
        } catch {
            throw StorageError(.command, "could not run \(executable): \(error.localizedDescription); set the path of lfs in the configuration (lfs = \"/usr/bin/lfs\") or FERRY_LFS")
        }
        // Read both pipes while the process runs, so a large output cannot fill a pipe and stall it.
        let collected = OutputCollector()
        let group = DispatchGroup()
        for (pipe, isError) in [(out, false), (err, true)] {
            group.enter()
            DispatchQueue.global().async {
                let data = pipe.fileHandleForReading.readDataToEndOfFile()
                collected.set(data, isError: isError)
                group.leave()
            }
        }
        if done.wait(timeout: .now() + timeout) == .timedOut {
            process.terminate()
            _ = done.wait(timeout: .now() + 5)
            throw StorageError(.command, "\(executable) \(arguments.joined(separator: " ")) did not answer within \(Int(timeout)) s")
        }
        group.wait()
        return Output(status: process.terminationStatus, standardOutput: collected.output,
                      standardError: String(decoding: collected.error, as: UTF8.self))
    }

    /// A bare name is looked up in PATH, as a shell would.
    func resolvedExecutable() -> String {
        if executable.contains("/") { return executable }
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let candidate = "\(directory)/\(executable)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return executable
    }
}

private final class OutputCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: (Data, Data) = (Data(), Data())
    func set(_ data: Data, isError: Bool) {
        lock.lock()
        if isError { stored.1 = data } else { stored.0 = data }
        lock.unlock()
    }
    var output: Data { lock.lock(); defer { lock.unlock() }; return stored.0 }
    var error: Data { lock.lock(); defer { lock.unlock() }; return stored.1 }
}
