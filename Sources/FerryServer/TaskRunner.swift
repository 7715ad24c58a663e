import FerryConfig
import FerryCopy
import FerryJobs
import FerryMove
import FerrySystem
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// The server's workers: claims tasks and runs each in a `ferry agent run-task` process with the
/// task owner's uid, gid and groups, so the kernel checks every file operation as that user. The
/// child's task store is a relay to the real one that only accepts calls about its own task.
/// Graceful shutdown sends the children SIGTERM: each stops at its next checkpoint, keeps what it
/// staged and hands its lease back through the relay, so the next server resumes it at once.
public final class TaskRunner: Service, Sendable {
    let store: any TaskStore
    let executable: String
    let configuration: FerryConfiguration
    let concurrency: Int
    let worker: String
    let lease: Duration
    let feed: ChangeFeed
    let metrics: ServerMetrics
    let logger: Logger
    /// The one owner whose tasks this runner takes, or nil for all: without root's rights it can
    /// run only its own user's (`ClaimScope`).
    let owner: String?
    /// Parallel copiers per task (`ferry worker --jobs`), or nil for the engine's default.
    let jobs: Int?
    /// The running children, by their run's worker name: two runs of one task may overlap here
    /// for a moment (a run handed the task back, and the next claimed it before the first exited).
    private let children = Mutex<[String: ChildProcess]>([:])
    private let runs = Atomic<UInt64>(0)
    private let stopping = CancellationFlag()

    public init(store: any TaskStore, executable: String, configuration: FerryConfiguration, concurrency: Int,
                worker: String, lease: Duration, feed: ChangeFeed, metrics: ServerMetrics, logger: Logger,
                owner: String? = ClaimScope.forThisProcess, jobs: Int? = nil) {
        self.owner = owner
        self.jobs = jobs
        self.store = store
        self.executable = executable
        self.configuration = configuration
        self.concurrency = max(1, concurrency)
        self.worker = worker
        self.lease = lease
        self.feed = feed
        self.metrics = metrics
        self.logger = logger
    }

    /// Until a graceful shutdown, or until the service group is cancelled (another service
    /// failed: the HTTP server could not bind its port, say); either way the children are asked
    /// to hand their tasks back, and waited for.
    public func run() async throws {
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await self.runUntilStopped()
            } onGracefulShutdown: {
                self.stop()
            }
        } onCancel: {
            // Cancelled: another service failed, or a graceful shutdown took too long (a task
            // process stuck on a hung mount). The children get SIGTERM, and 10 s later SIGKILL:
            // what a killed process left is handed back and resumed, as after a crash.
            self.stop()
            Task {
                try? await Task.sleep(for: .seconds(10))
                self.children.withLock { all in for child in all.values { child.signal(SIGKILL) } }
            }
        }
    }

    /// Stops claiming and asks every running child to stop at its next checkpoint.
    public func stop() {
        stopping.cancel()
        children.withLock { all in for child in all.values { child.signal(SIGTERM) } }
    }

    /// Each run claims under a name of its own, so that fencing tells apart a child that lost its
    /// lease from the next one running the same task.
    private func runName() -> String { "\(worker)#\(runs.add(1, ordering: .relaxed).newValue)" }

    /// Runs every task claimable now (and those they make claimable), then returns their records:
    /// `ferry worker --once` and the janitor's recovery. A claim that fails (the database down)
    /// goes to `onClaimFailure` and ends the round.
    public func runOnce(onClaimFailure: (any Error) -> Void = { _ in }) async -> [TaskRecord] {
        var finished: [TaskRecord] = []
        var failed = false
        while !stopping.isCancelled && !failed {
            var claimed: [TaskRecord] = []
            var gaveUp = false  // a task given up is claimable again at once, to be rolled back
            for _ in 0..<concurrency {
                let name = runName()
                let task: TaskRecord?
                do {
                    task = try await store.claim(worker: name, limit: 1, lease: lease, scope: owner).first
                } catch {
                    onClaimFailure(error)
                    failed = true
                    break
                }
                guard let task else { break }
                if await UnexpectedEnds.giveUpAfterTakeover(task, worker: name, store: store) { gaveUp = true; continue }
                claimed.append(task)
            }
            if claimed.isEmpty && !gaveUp { break }
            finished += await withTaskGroup(of: TaskRecord?.self) { group in
                for task in claimed { group.addTask { await self.execute(task) } }
                var records: [TaskRecord] = []
                for await record in group { if let record { records.append(record) } }
                return records
            }
        }
        return finished
    }

    /// Claims and runs tasks until `stop()`, then waits for the running ones to hand back.
    public func runUntilStopped() async {
        await withTaskGroup(of: Bool.self) { group in
            var running = 0
            var waking = false
            while true {
                if !stopping.isCancelled && running < concurrency {
                    let claimed: TaskRecord?
                    let name = runName()
                    do {
                        claimed = try await store.claim(worker: name, limit: 1, lease: lease, scope: owner).first
                    } catch {
                        logger.error("claiming tasks failed", metadata: ["error": "\(error)"])
                        claimed = nil
                    }
                    if let task = claimed, await UnexpectedEnds.giveUpAfterTakeover(task, worker: name, store: store) {
                        logger.error("task's runs keep ending unexpectedly; rolling it back", metadata: ["task": "\(task.id)"])
                        continue  // claimed again at once, to be rolled back
                    }
                    if let task = claimed {
                        running += 1
                        // Not cancelled with the group: a run cut short would not hand its task back.
                        group.addTask { _ = await Task { await self.execute(task) }.value; return true }
                        continue
                    }
                }
                if stopping.isCancelled && running == 0 { return }
                // Wake on whichever comes first: a task ending, or (with room for more) new work.
                if !waking && !stopping.isCancelled && running < concurrency {
                    waking = true
                    group.addTask { await self.store.waitForWork(timeout: .seconds(2)); return false }
                }
                guard let taskEnded = await group.next() else { continue }
                if taskEnded { running -= 1 } else { waking = false }
            }
        }
    }

    /// Runs one claimed task in a child process as its owner; returns when the child has exited.
    /// A child that stops heartbeating (stopped with SIGSTOP by its owner, or hung) is killed once
    /// it has been silent for two leases (at least 10 s), so no user can hold a runner, and the
    /// task goes to the next claim; one whose task another run has claimed is killed at once.
    @discardableResult
    func execute(_ task: TaskRecord) async -> TaskRecord? {
        guard let worker = task.leaseOwner else { return nil }
        var log = logger
        log[metadataKey: "task"] = "\(task.id)"
        if task.options.privileged && !configuration.serve.admins.contains(task.owner) {
            // Authorised when it was asked for, by an owner who is an administrator no longer:
            // nothing runs with the server's rights for them now, but what was started as such is
            // undone as such (its staging is the server's), unless it is already committing.
            log.warning("privileged task whose owner is no longer an administrator", metadata: ["owner": "\(task.owner)"])
            let message = "task \(task.id) runs with the server's privileges, and its owner \(task.owner) is no longer an administrator"
            if task.status == .pending {
                try? await store.finish(id: task.id, worker: worker, status: .failed, failure: TaskFailure(code: "forbidden", message: message),
                                        message: message + ": nothing was done")
                return try? await store.task(task.id)
            }
            if !task.cancelRequested && task.status != .committing {  // a commit is past cancelling
                _ = try? await store.requestCancel(task.id)
                try? await store.record(task.id, message: message + ": cancelled, and rolled back unless it is already committing")
            }
        }
        let identity: UserIdentity?
        do {
            identity = task.options.privileged ? nil : try AgentClient.identity(for: task.owner)
        } catch {
            log.error("cannot run the task as its owner", metadata: ["owner": "\(task.owner)", "error": "\(error.message)"])
            // Only an owner the user database says is not there may fail the task in the end.
            await cannotRun(task, worker: worker, failure: TaskFailure(code: "owner.unavailable", message: error.message),
                            mayGiveUp: error.code == "forbidden")
            return try? await store.task(task.id)
        }
        let settings = RunTaskSettings(taskID: task.id, worker: worker, leaseMilliseconds: Int64(lease.components.seconds * 1000 + lease.components.attoseconds / 1_000_000_000_000_000),
                                       roots: configuration.roots.map { AgentRequest.Root(path: $0.path, name: $0.name, backend: $0.backend, strategy: $0.strategy) },
                                       lfsPath: configuration.lfsPath, jobs: jobs)
        let child: ChildProcess
        do {
            // In the environment, not the arguments, which `ps` shows everyone: the task's id and
            // the worker name its relay answers to are nobody else's business.
            var environment = AgentClient.environment()
            environment[RunTaskSettings.variable] = String(decoding: try WireJSON.encoder.encode(settings), as: UTF8.self)
            child = try ChildProcess.spawn(executable: executable, arguments: ["agent", "run-task"], environment: environment,
                                           identity: identity, standardError: .pipe)
        } catch {
            log.error("cannot start the task's process", metadata: ["error": "\(error)"])
            await cannotRun(task, worker: worker, failure: TaskFailure(code: "runner.failed", message: "could not start the task's process: \(error)"))
            return try? await store.task(task.id)
        }
        children.withLock { $0[worker] = child }
        if stopping.isCancelled { child.signal(SIGTERM) }
        log.info("task started", metadata: ["owner": "\(task.owner)", "pid": "\(child.pid)", "status": "\(task.status.rawValue)"])
        let relay = TaskStoreRelay(store: store, taskID: task.id, worker: worker, maximumLease: Self.relayedLease(lease)) { [feed] id in
            feed.notify(id)
        }
        let relayed = Task { await relay.serve(requests: child.standardOutput.rawValue, responses: child.standardInput.rawValue) }
        let complaints = Task { await Self.logStandardError(of: child, log: log) }
        let patience = max(lease * 2, .seconds(10))
        let watchdog = Task { [store, lease] in
            var endedAt: ContinuousClock.Instant?
            while !Task.isCancelled {
                try? await Task.sleep(for: lease / 2)
                if Task.isCancelled { return }
                guard let current = try? await store.task(task.id) else { continue }
                if current.leaseOwner != worker {
                    // Claimed by another run, or handed back: this process must not touch it again.
                    if !current.status.isTerminal {
                        let why = current.leaseOwner == nil ? "task handed back" : "task taken over by another run"
                        log.warning("\(why); stopping its process", metadata: ["pid": "\(child.pid)"])
                        child.signal(SIGKILL)
                        return
                    }
                    // Ended, by this process or by a run that took it over: nothing is left for the
                    // process to do but exit. One that has not within two leases (at least 10 s) is
                    // stopped or hung, and would hold this runner, and a shutdown, forever.
                    let now = ContinuousClock.now
                    if let endedAt, now - endedAt > patience {
                        log.warning("task ended but its process did not exit; stopping it", metadata: ["pid": "\(child.pid)"])
                        child.signal(SIGKILL)
                        return
                    }
                    endedAt = endedAt ?? now
                    continue
                }
                // A lease that ran out while the process kept calling (its heartbeat queued behind a
                // slow commit of the store) is renewed by that heartbeat; only silence kills, and
                // only a long one: two leases (six missed heartbeats), at least 10 s, so that a
                // process starved of CPU for a moment is not taken for a stopped one. Safety does
                // not wait on this: a process whose task another run claimed is stopped above.
                if relay.silence > patience {
                    log.warning("task process missed its heartbeats; stopping it", metadata: ["pid": "\(child.pid)"])
                    child.signal(SIGKILL)
                    return
                }
            }
        }
        let termination = try? await Blocking.run { child.wait() }
        watchdog.cancel()
        // The channel ends with the process, unless another holds it open (it should not be able
        // to: the process makes itself undumpable). Its last answers get 10 s; then the runner
        // moves on, leaving the descriptors to the threads still reading them (closed, their
        // numbers could be reused under those reads).
        if await Blocking.allEnd([relayed, complaints], within: .seconds(10)) {
            child.standardOutput.closeQuietly()
            child.standardInput.closeQuietly()
        } else {
            log.warning("the task process ended but its channel is still open; not waiting for it", metadata: ["pid": "\(child.pid)"])
        }
        children.withLock { _ = $0.removeValue(forKey: worker) }
        if let record = try? await store.task(task.id), record.leaseOwner == worker, !record.status.isTerminal {
            // The child died without handing the task back (a crash, or killed): give it back.
            await handBackAfterUnexpectedEnd(record, worker: worker, termination: termination.map { "\($0)" } ?? "unknown", log: log)
        }
        let record = try? await store.task(task.id)
        feed.notify(task.id)
        if let record {
            log.info("task process ended", metadata: ["status": "\(record.status.rawValue)", "exit": "\(termination.map { "\($0)" } ?? "?")"])
            // Counted by the run that completed it (not also by one it took the task over from).
            if record.status == .completed && relay.endedAs == .completed {
                await metrics.taskCompleted(record, events: (try? await store.events(task.id)) ?? [])
            }
        }
        return try? await store.task(task.id)
    }
}

extension TaskRunner {
    /// The longest lease a task's process may ask its relay for: the one it was given (it
    /// heartbeats every third of it), and 10 minutes at least.
    static func relayedLease(_ lease: Duration) -> Duration { max(lease, .seconds(600)) }

    /// The history's words for a run that could not start (`cannotRun`).
    static let couldNotRun = "could not run the task: "

    /// Hands back a task whose process could not be started (its owner has no account here any
    /// more, the user database did not answer, or the spawn failed), to be tried again later:
    /// after 1 minute, then 2, 4… (at most an hour), so that a task nobody can run costs a few
    /// history entries a day, not one a minute. With `mayGiveUp` (its owner is known to be gone),
    /// a task that has not started (pending: nothing staged, nothing to roll back) fails at its
    /// third such try, with the cause; any other stays, since a passing outage must not fail a
    /// queue, and only its owner's rights can roll a task back.
    func cannotRun(_ task: TaskRecord, worker: String, failure: TaskFailure, mayGiveUp: Bool = false,
                   firstDelay: Duration = .seconds(60)) async {
        let tries = TaskEvent.count((try? await store.events(task.id)) ?? [], beginningWith: Self.couldNotRun) + 1
        let message = Self.couldNotRun + failure.message
        if mayGiveUp && task.status == .pending && tries >= 3 {
            try? await store.finish(id: task.id, worker: worker, status: .failed, failure: failure, message: message + " (\(tries) times: given up)")
            return
        }
        let delay = min(.seconds(3600), firstDelay * (1 << min(tries - 1, 6)))
        try? await store.release(id: task.id, worker: worker, retryAfter: delay, failure: failure,
                                 message: message + " (retried in \(Format.duration(Double(delay.components.seconds))))")
    }

    /// Gives back a task whose process ended without handing it back. It is resumed after 5 s,
    /// then 10 s, 20 s… (at most 5 minutes); at the `UnexpectedEnds.limit`th unexpected end since
    /// its last retry (these, and its workers' deaths) it is cancelled, so the next run rolls it
    /// back (staging removed, source untouched) with a failure that says why. Past the point of no
    /// return (committing) it is resumed, and the engine stops it at its `UnexpectedEnds.limit`th
    /// such end while committing (nothing rolled back; a retry finishes it).
    func handBackAfterUnexpectedEnd(_ record: TaskRecord, worker: String, termination: String, log: Logger) async {
        // A measurement cut short: its counts are not what the next run will find.
        if record.status == .validating { try? await store.updateProgress(id: record.id, worker: worker, TaskProgress()) }
        let ends = UnexpectedEnds.count((try? await store.events(record.id)) ?? []) + 1
        if ends >= UnexpectedEnds.limit && record.status != .committing {
            log.error("task's runs keep ending unexpectedly; rolling the task back", metadata: ["ends": "\(ends)", "exit": "\(termination)"])
            await UnexpectedEnds.giveUp(record.id, worker: worker, store: store, ends: ends, last: "its process, \(termination)",
                                        message: "\(UnexpectedEnds.processEnded) (\(termination)), \(ends) times: rolling it back")
            return
        }
        let delay = Duration.seconds(min(300, 5 << min(ends - 1, 6)))
        try? await store.release(id: record.id, worker: worker, retryAfter: delay,
                                 failure: TaskFailure(code: "runner.exited", message: "the task's process ended unexpectedly (\(termination))"),
                                 message: "\(UnexpectedEnds.processEnded) (\(termination)); resuming it in \(delay.components.seconds) s")
    }

    /// Bytes of one task process's standard error that reach the server's log, and of one line.
    static let standardErrorBudget = 64 * 1024
    static let standardErrorLine = 2048

    /// Logs what a task's process writes to standard error, one server log entry per line with
    /// the line in `line` and the task in `task`. The process runs as the task's owner, who must
    /// not be able to write into the server's log directly: forged entries, or enough to fill the
    /// disk. Lines are cut at `standardErrorLine` bytes, and past `standardErrorBudget` the rest
    /// is read, counted, and reported in one last entry. Returns when the process's end of the
    /// pipe is closed (it and anything it started have exited).
    static func logStandardError(of child: ChildProcess, log: Logger) async {
        guard let fd = child.standardError else { return }
        _ = try? await Blocking.run {
            defer { fd.closeQuietly() }
            var budget = standardErrorBudget
            var dropped = 0
            var line: [UInt8] = []
            var cut = false
            func emit() {
                defer { line.removeAll(keepingCapacity: true); cut = false }
                guard !line.isEmpty || cut else { return }
                guard budget > 0 else { dropped += line.count; return }
                budget -= line.count
                log.warning("task process wrote to standard error", metadata: [
                    "pid": "\(child.pid)", "line": "\(String(decoding: line, as: UTF8.self))\(cut ? " [cut]" : "")"])
            }
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = (try? buffer.withUnsafeMutableBytes { raw in try fd.read(into: raw) }) ?? 0
                if count == 0 { break }
                for byte in buffer[0..<count] {
                    if byte == 0x0A {
                        emit()
                    } else if line.count < standardErrorLine {
                        line.append(byte)
                    } else {
                        cut = true
                        dropped += 1
                    }
                }
            }
            emit()
            if dropped > 0 {
                log.warning("task process wrote more to standard error than the server logs", metadata: ["pid": "\(child.pid)", "dropped bytes": "\(dropped)"])
            }
        }
    }
}

/// What `ferry agent run-task` needs to carry a task on, as JSON in the variable `variable`.
public struct RunTaskSettings: Codable, Sendable {
    public static let variable = "FERRY_RUN_TASK"
    public var taskID: String
    public var worker: String
    public var leaseMilliseconds: Int64
    public var roots: [AgentRequest.Root]
    public var lfsPath: String?
    public var jobs: Int?
}
