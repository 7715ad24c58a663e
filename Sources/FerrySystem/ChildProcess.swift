import CFerrySystem
import Dispatch
import Glibc
import Synchronization

/// A program started as a given user, talking over pipes: how `ferry serve` runs every filesystem
/// request and every task as the user who asked.
///
/// The child gets exactly the descriptors 0, 1 and 2, default signal handling, the user's uid, gid
/// and groups (all three ids of each, so it cannot switch back), the working directory, and SIGTERM
/// should the server die first. Ours (`standardInput`, `standardOutput`, `standardError`) are
/// close-on-exec, and the caller's to close.
public final class ChildProcess: Sendable {
    public enum StandardErrorMode: Sendable {
        /// A pipe, read through ``ChildProcess/standardError``.
        case pipe
        /// The server's own standard error.
        case inherit
        /// `/dev/null`.
        case discard
    }

    public enum Termination: Sendable, Equatable, CustomStringConvertible {
        /// Exit status; -1 when someone else reaped the child and the status is unknown.
        case exited(Int32)
        case signalled(Int32)

        public var description: String {
            switch self {
            case .exited(let status): "exited with status \(status)"
            case .signalled(let number): "killed by signal \(number)"
            }
        }
    }

    public let pid: pid_t
    /// The write end of the child's standard input.
    public let standardInput: FileDescriptor
    /// The read end of the child's standard output.
    public let standardOutput: FileDescriptor
    /// The read end of the child's standard error, with `.pipe`.
    public let standardError: FileDescriptor?
    /// Set once the child is reaped; from then on its pid may belong to another process.
    private let reaped = Mutex<Termination?>(nil)

    private init(pid: pid_t, standardInput: FileDescriptor, standardOutput: FileDescriptor, standardError: FileDescriptor?) {
        self.pid = pid
        self.standardInput = standardInput
        self.standardOutput = standardOutput
        self.standardError = standardError
    }

    /// Starts `executable` (a path: there is no `PATH` search) with `arguments` after its name and
    /// exactly `environment`. With `identity` nil the child keeps the server's credentials. Throws
    /// the step that failed, as the child saw it: `execve … (ENOENT)`, `setresuid (EPERM)`,
    /// `chdir /home/alice (EACCES)`.
    public static func spawn(
        executable: String, arguments: [String], environment: [String: String], identity: UserIdentity?,
        workingDirectory: String = "/", standardError mode: StandardErrorMode = .pipe
    ) throws(SystemError) -> ChildProcess {
        try spawn(executable: executable, byteArguments: arguments.map { Array($0.utf8) }, environment: environment, identity: identity,
                  workingDirectory: workingDirectory, standardError: mode)
    }

    /// As `spawn(executable:arguments:…)`, with arguments as the bytes they are: a path that is
    /// not UTF-8 reaches the program unchanged.
    public static func spawn(
        executable: String, byteArguments arguments: [ByteString], environment: [String: String], identity: UserIdentity?,
        workingDirectory: String = "/", standardError mode: StandardErrorMode = .pipe
    ) throws(SystemError) -> ChildProcess {
        let environmentLines = environment.map { "\($0.key)=\($0.value)" }
        let strings = [executable, workingDirectory] + environmentLines
        guard !strings.contains(where: { $0.utf8.contains(0) }), !arguments.contains(where: { $0.contains(0) }),
              !environment.keys.contains(where: { $0.isEmpty || $0.contains("=") }) else {
            throw SystemError(errno: EINVAL, syscall: "execve", path: executable)
        }

        var opened: [FileDescriptor] = []
        func closeAll() { for fd in opened { fd.closeQuietly() } }
        let input: (read: FileDescriptor, write: FileDescriptor)
        let output: (read: FileDescriptor, write: FileDescriptor)
        var errorPipe: (read: FileDescriptor, write: FileDescriptor)?
        var childError: FileDescriptor?
        do {
            input = try makePipe()
            opened += [input.read, input.write]
            output = try makePipe()
            opened += [output.read, output.write]
            switch mode {
            case .pipe:
                let made = try makePipe()
                opened += [made.read, made.write]
                errorPipe = made
                childError = made.write
            case .discard:
                let null = try currentWorkingDirectory.openAt(Array("/dev/null".utf8), .writeOnly)
                opened.append(null)
                childError = null
            case .inherit:
                childError = nil
            }
        } catch {
            closeAll()
            throw error
        }

        var attributes = cferry_spawn_attributes_t()
        attributes.stdin_fd = input.read.rawValue
        attributes.stdout_fd = output.write.rawValue
        attributes.stderr_fd = childError?.rawValue ?? -1
        attributes.change_identity = identity == nil ? 0 : 1
        attributes.uid = identity?.uid ?? 0
        attributes.gid = identity?.gid ?? 0
        let groups = identity?.groups ?? []

        let argv = CStringArray([Array(executable.utf8)] + arguments)
        let envp = CStringArray(environmentLines.map { Array($0.utf8) })
        defer { argv.free(); envp.free() }
        var failedStep: CInt = 0
        var spawnErrno: CInt = 0
        let pid: pid_t = groups.withUnsafeBufferPointer { groupBuffer in
            workingDirectory.withCString { directory in
                attributes.groups = groupBuffer.baseAddress
                attributes.group_count = groupBuffer.count
                attributes.directory = directory
                return Spawner.perform {
                    let pid = cferry_spawn(executable, argv.pointers, envp.pointers, &attributes, &failedStep)
                    spawnErrno = Glibc.errno
                    return pid
                }
            }
        }

        // The child's ends are the child's now.
        input.read.closeQuietly()
        output.write.closeQuietly()
        childError?.closeQuietly()
        guard pid > 0 else {
            input.write.closeQuietly()
            output.read.closeQuietly()
            errorPipe?.read.closeQuietly()
            let step = String(cString: cferry_spawn_step_name(failedStep))
            let subject = step == "chdir" ? workingDirectory : step == "execve" ? executable : nil
            throw SystemError(errno: spawnErrno, syscall: step, path: subject)
        }
        return ChildProcess(pid: pid, standardInput: input.write, standardOutput: output.read, standardError: errorPipe?.read)
    }

    /// Sends a signal, unless the child was already reaped (its pid may be reused by then). The
    /// corresponding C function is `kill`.
    @discardableResult
    public func signal(_ number: Int32) -> Bool {
        reaped.withLock { state in
            guard state == nil else { return false }
            return kill(pid, number) == 0
        }
    }

    /// Blocks until the child ends, and reaps it. The corresponding C functions are `waitid`
    /// (`WNOWAIT`, so ``signal(_:)`` never races the reaping) and `waitpid`.
    public func wait() -> Termination {
        if let known = reaped.withLock({ $0 }) { return known }
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0 && Glibc.errno == EINTR {}
        return reaped.withLock { state in
            if let state { return state }
            var status: CInt = 0
            var result: pid_t
            repeat { result = waitpid(pid, &status, 0) } while result < 0 && Glibc.errno == EINTR
            let termination: Termination = if result != pid {
                .exited(-1)
            } else if status & 0x7F == 0 {
                .exited((status >> 8) & 0xFF)
            } else {
                .signalled(status & 0x7F)
            }
            state = termination
            return termination
        }
    }

    /// How `run` ended.
    public enum Outcome: Sendable {
        /// The child ended by itself, having written these.
        case ended(Termination, standardOutput: [UInt8], standardError: [UInt8])
        /// The deadline came first. The child has been sent SIGKILL and its pipes are closed, but
        /// it is not reaped: `wait()` returns once the kernel lets it die, which a process blocked
        /// on a hung mount (in `D` state) does only when the mount answers.
        case overran(ChildProcess)
    }

    /// Runs a program to its end, or to `deadline`: writes `input` to it, then reads all it writes
    /// to standard output and standard error (both at once, so neither pipe can fill and stall it).
    public static func run(
        executable: String, arguments: [String], environment: [String: String], identity: UserIdentity?,
        workingDirectory: String = "/", input: [UInt8] = [], deadline: ContinuousClock.Instant? = nil
    ) throws(SystemError) -> Outcome {
        try run(executable: executable, byteArguments: arguments.map { Array($0.utf8) }, environment: environment, identity: identity,
                workingDirectory: workingDirectory, input: input, deadline: deadline)
    }

    /// As `run(executable:arguments:…)`, with arguments as bytes (see `spawn`).
    public static func run(
        executable: String, byteArguments arguments: [ByteString], environment: [String: String], identity: UserIdentity?,
        workingDirectory: String = "/", input: [UInt8] = [], deadline: ContinuousClock.Instant? = nil
    ) throws(SystemError) -> Outcome {
        let child = try spawn(executable: executable, byteArguments: arguments, environment: environment, identity: identity,
                              workingDirectory: workingDirectory, standardError: .pipe)
        var streams = ChildProcessStreams(input: child.standardInput, output: child.standardOutput, error: child.standardError!)
        let finished: Bool
        do {
            finished = try streams.exchange(input, until: deadline)
        } catch {
            streams.closeAll()
            child.signal(SIGKILL)
            _ = child.wait()
            throw error
        }
        streams.closeAll()
        guard finished else {
            child.signal(SIGKILL)
            return .overran(child)
        }
        return .ended(child.wait(), standardOutput: streams.output, standardError: streams.error)
    }

    private static func makePipe() throws(SystemError) -> (read: FileDescriptor, write: FileDescriptor) {
        var fds: [CInt] = [-1, -1]
        _ = try syscallRetrying("pipe2") { cferry_pipe2(&fds, O_CLOEXEC) }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }
}

extension ChildProcess.Outcome {
    /// How the child ended; nil if it overran its deadline.
    public var termination: ChildProcess.Termination? {
        if case .ended(let termination, _, _) = self { termination } else { nil }
    }
    /// What the child wrote to standard output (nothing is kept of an overrun).
    public var standardOutput: [UInt8] {
        if case .ended(_, let output, _) = self { output } else { [] }
    }
    public var standardError: [UInt8] {
        if case .ended(_, _, let error) = self { error } else { [] }
    }
}

/// A NULL-terminated `char *[]` for `execve`, built before the fork (the child may not allocate).
private struct CStringArray {
    let pointers: [UnsafeMutablePointer<CChar>?]
    /// Each string's bytes (none of them NUL), with a NUL after them.
    init(_ strings: [ByteString]) {
        pointers = strings.map { bytes in
            let copy = UnsafeMutablePointer<CChar>.allocate(capacity: bytes.count + 1)
            bytes.withUnsafeBufferPointer { source in
                guard let base = source.baseAddress, !source.isEmpty else { return }
                base.withMemoryRebound(to: CChar.self, capacity: source.count) { copy.update(from: $0, count: source.count) }
            }
            copy[bytes.count] = 0
            return copy
        } + [nil]
    }
    func free() { for pointer in pointers { pointer?.deallocate() } }
}

/// Children are forked from one thread that never ends: the kernel sends PR_SET_PDEATHSIG's signal
/// when the forking *thread* exits, and the threads of Swift's cooperative pool come and go.
private final class Spawner: Sendable {
    private let jobs = Mutex<[SpawnJob]>([])
    private let wakeup = DispatchSemaphore(value: 0)

    private static let shared: Spawner? = {
        let spawner = Spawner()
        let box = Unmanaged.passRetained(spawner).toOpaque()
        var handle = pthread_t()
        guard pthread_create(&handle, nil, { raw in
            Unmanaged<Spawner>.fromOpaque(raw!).takeRetainedValue().serve()
            return nil
        }, box) == 0 else {
            Unmanaged<Spawner>.fromOpaque(box).release()
            return nil
        }
        pthread_detach(handle)
        return spawner
    }()

    /// Runs `body` on the spawning thread (or here, should that thread never have started).
    static func perform<T>(_ body: () -> T) -> T {
        guard let spawner = shared else { return body() }
        var result: T?
        withoutActuallyEscaping({ result = body() }) { escapable in
            let job = SpawnJob(escapable)
            spawner.jobs.withLock { $0.append(job) }
            spawner.wakeup.signal()
            job.done.wait()
        }
        return result!
    }

    private func serve() {
        // Signals are for the other threads; cferry_spawn masks them around fork anyway.
        var all = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_SETMASK, &all, nil)
        while true {
            wakeup.wait()
            for job in jobs.withLock({ queued in defer { queued.removeAll() }; return queued }) {
                job.body?()
                job.body = nil  // the caller's closure must not outlive its withoutActuallyEscaping
                job.done.signal()
            }
        }
    }
}

// The body is handed over and dropped under the `done` semaphore's ordering.
private final class SpawnJob: @unchecked Sendable {
    var body: (() -> Void)?
    let done = DispatchSemaphore(value: 0)
    init(_ body: @escaping () -> Void) { self.body = body }
}
