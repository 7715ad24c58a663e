import FerrySystem
import Foundation
import Synchronization

// `ferry serve` runs each task in a child process as the task's owner. The child has no access to
// the database: its store is a `RemoteTaskStore`, which sends every call as one JSON line
//
//     {"id": 7, "op": "advance", "args": {"id": "…", "worker": "…", "status": "copying", "message": "…"}}
//
// to a `TaskStoreRelay` in the server, which answers `{"id": 7, "result": …}` or
// `{"id": 7, "error": {"kind": "leaseLost", "message": "…"}}` and forwards to the real store only
// what concerns its one task and worker. Dates travel as seconds since 1970, durations as seconds.

/// The task store of a task runner child: each call is a request to the server's relay. Calls may
/// overlap (the engine's heartbeat runs beside its phases); answers are matched by id.
public final class RemoteTaskStore: TaskStore {
    private let calls = PendingCalls()
    private let writer: LineWriter

    /// `requests` is written to (the child's standard output), `responses` read from (its standard
    /// input). Neither is closed by the store.
    public init(requests: Int32, responses: Int32) {
        writer = LineWriter(requests, label: "ferry.remote-task-store.write")
        let calls = calls
        LineReader.start(responses, label: "ferry.remote-task-store.read") { line in
            calls.answer(line)
        } onEnd: {
            calls.close()
        }
    }

    public func task(_ id: String) async throws -> TaskRecord? {
        try await call("task", ChannelArguments(id: id), TaskRecord.self)
    }

    public func events(_ id: String) async throws -> [TaskEvent] {
        try await call("events", ChannelArguments(id: id), [TaskEvent].self) ?? []
    }

    public func heartbeat(id: String, worker: String, lease: Duration) async throws -> Bool {
        try await call("heartbeat", ChannelArguments(id: id, worker: worker, leaseSeconds: lease.seconds), Bool.self) ?? false
    }

    public func advance(id: String, worker: String, to status: TaskStatus, plan: TaskPlan?, message: String) async throws {
        try await perform("advance", ChannelArguments(id: id, worker: worker, status: status, plan: plan, message: message))
    }

    public func updateProgress(id: String, worker: String, _ progress: TaskProgress) async throws {
        try await perform("updateProgress", ChannelArguments(id: id, worker: worker, progress: progress))
    }

    public func finish(id: String, worker: String, status: TaskStatus, failure: TaskFailure?, message: String) async throws {
        try await perform("finish", ChannelArguments(id: id, worker: worker, status: status, message: message, failure: failure))
    }

    public func release(id: String, worker: String, retryAfter: Duration?, failure: TaskFailure?, message: String) async throws {
        try await perform("release", ChannelArguments(id: id, worker: worker, message: message, failure: failure,
                                                      retryAfterSeconds: retryAfter?.seconds))
    }

    public func wait(id: String, worker: String, for holder: String, retryAfter: Duration, message: String) async throws {
        try await perform("wait", ChannelArguments(id: id, worker: worker, message: message, retryAfterSeconds: retryAfter.seconds,
                                                   holder: holder))
    }

    public func acquireLocks(id: String, worker: String, _ locks: [PathLock]) async throws {
        try await perform("acquireLocks", ChannelArguments(id: id, worker: worker, locks: locks))
    }

    public func record(_ id: String, message: String) async throws {
        try await perform("record", ChannelArguments(id: id, message: message))
    }

    // A task runner has no business with these; they are sent anyway so that the relay is the one
    // place that decides, and answers "not allowed".
    public func create(_ task: NewTask) async throws -> TaskRecord { try await refused("create") }
    public func list(_ filter: TaskFilter) async throws -> [TaskRecord] { try await refused("list") }
    public func claim(worker: String, limit: Int, lease: Duration) async throws -> [TaskRecord] { try await refused("claim") }
    public func claim(id: String, worker: String, lease: Duration) async throws -> TaskRecord? { try await refused("claimTask") }
    public func claim(worker: String, limit: Int, lease: Duration, ownedBy owner: String) async throws -> [TaskRecord] {
        try await refused("claim")
    }
    public func locks() async throws -> [PathLock] { try await refused("locks") }
    public func requestCancel(_ id: String) async throws -> TaskRecord { try await refused("requestCancel") }
    public func retry(_ id: String) async throws -> TaskRecord { try await refused("retry") }

    /// Nothing to wait on over the channel: a runner has its one task.
    @discardableResult
    public func waitForWork(timeout: Duration) async -> Bool {
        try? await Task.sleep(for: timeout)
        return false
    }

    /// The channel belongs to the runner that made this store.
    public func close() async {}

    private func perform(_ op: String, _ arguments: ChannelArguments) async throws {
        _ = try await call(op, arguments, Bool.self)
    }

    private func refused<T>(_ op: String) async throws -> T {
        _ = try await call(op, ChannelArguments(), Bool.self)
        throw TaskStoreError.database("the relay answered \(op), which it never allows")
    }

    private func call<T: Decodable>(_ op: String, _ arguments: ChannelArguments, _ type: T.Type) async throws -> T? {
        let line: Data = try await withCheckedThrowingContinuation { continuation in
            guard let id = calls.register(continuation) else { return }
            do {
                writer.send(try ChannelCoding.encoder.encode(ChannelRequest(id: id, op: op, args: arguments))) { [calls] written in
                    if !written { calls.close() }
                }
            } catch {
                calls.fail(id, TaskStoreError.database("cannot encode \(op): \(error)"))
            }
        }
        let reply: ChannelReply<T>
        do {
            reply = try ChannelCoding.decoder.decode(ChannelReply<T>.self, from: line)
        } catch {
            throw TaskStoreError.database("unreadable answer to \(op): \(error)")
        }
        if let failure = reply.error { throw failure.storeError }
        return reply.result
    }
}

/// The server's end of a task runner's channel: answers one runner's calls from the real store,
/// and only those about its task under its worker name.
public final class TaskStoreRelay: Sendable {
    private let store: any TaskStore
    private let taskID: String
    private let worker: String
    private let maximumLease: Duration
    private let onChange: @Sendable (String) -> Void
    /// When the runner was last heard from, and how many of its calls are being answered.
    private let heard = Mutex<(last: ContinuousClock.Instant, answering: Int)>((ContinuousClock.now, 0))
    /// The notes the runner added to the history, and their bytes (`noteLimit`, `noteBytes`).
    private let notes = Mutex<(count: Int, bytes: Int)>((0, 0))
    /// How the runner ended the task, if it did (`finish` answered).
    private let ending = Mutex<TaskStatus?>(nil)
    /// A run's notes: the engine adds a handful; a runner (its owner can write into the channel)
    /// may not grow the shared history without bound.
    public static let noteLimit = 256
    public static let noteBytes = 1 << 20

    /// The state this runner ended its task in, if it ended it: a task another run ended (one that
    /// took it over) is not this run's work.
    public var endedAs: TaskStatus? { ending.withLock { $0 } }

    /// `onChange` is called with the task id after every call that changed the task (heartbeats
    /// aside). A runner may ask for leases of at most `maximumLease`.
    public init(store: any TaskStore, taskID: String, worker: String, maximumLease: Duration = .seconds(600),
                onChange: @escaping @Sendable (String) -> Void) {
        self.store = store
        self.taskID = taskID
        self.worker = worker
        self.maximumLease = maximumLease
        self.onChange = onChange
    }

    /// How long the runner has been silent: the time since its last call arrived or was answered,
    /// and zero while one is being answered (then it waits on the store, not the other way round).
    /// A runner alive heartbeats every third of its lease, whatever the store's disk is doing.
    public var silence: Duration {
        heard.withLock { $0.answering > 0 ? .zero : ContinuousClock.now - $0.last }
    }

    /// Answers requests read from `requests` on `responses` until `requests` ends, then returns
    /// once every answer is written. Neither descriptor is closed here.
    public func serve(requests: Int32, responses: Int32) async {
        let writer = LineWriter(responses, label: "ferry.task-relay.write")
        let inFlight = DispatchGroup()
        // A runner is the user's process: it gets a few calls at once, not as many as it can send.
        let slots = DispatchSemaphore(value: 8)
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            LineReader.start(requests, label: "ferry.task-relay.read") { line in
                self.heard.withLock { $0 = (.now, $0.answering + 1) }
                slots.wait()
                inFlight.enter()
                Task {
                    if let answer = await self.answer(line) { writer.send(answer) }
                    self.heard.withLock { $0 = (.now, $0.answering - 1) }
                    slots.signal()
                    inFlight.leave()
                }
            } onEnd: {
                // On the writer's queue, so after every answer sent before it.
                inFlight.notify(queue: writer.queue) { done.resume() }
            }
        }
    }

    private func answer(_ line: Data) async -> Data? {
        guard let header = try? ChannelCoding.decoder.decode(ChannelHeader.self, from: line) else { return nil }
        let reply: ChannelReply<ChannelValue>
        do {
            let request = try ChannelCoding.decoder.decode(ChannelRequest.self, from: line)
            reply = ChannelReply(id: header.id, result: try await forward(request.op, request.args))
        } catch {
            let storeError = error as? TaskStoreError ?? .database(String(describing: error))
            reply = ChannelReply(id: header.id, error: ChannelError(storeError))
        }
        return try? ChannelCoding.encoder.encode(reply)
    }

    private func forward(_ op: String, _ a: ChannelArguments) async throws -> ChannelValue {
        switch op {
        case "task":
            try own(op, a, worker: false)
            return .task(try await store.task(taskID))
        case "events":
            try own(op, a, worker: false)
            return .events(try await store.events(taskID))
        case "heartbeat":
            try own(op, a)
            let seconds = try required(a.leaseSeconds, op, "leaseSeconds")
            guard seconds.isFinite, seconds > 0 else { throw TaskStoreError.database("not allowed: a lease of \(seconds) s") }
            // Bounded before it becomes a `Duration` (which traps on a value as large as 1e300).
            let longest = Double(maximumLease.components.seconds)
            return .bool(try await store.heartbeat(id: taskID, worker: worker, lease: .seconds(min(seconds, longest))))
        case "advance":
            try own(op, a)
            if let plan = a.plan { try await check(plan) }
            try await store.advance(id: taskID, worker: worker, to: try required(a.status, op, "status"), plan: a.plan,
                                    message: try admitted(a.message))
        case "updateProgress":
            try own(op, a)
            let progress = try required(a.progress, op, "progress")
            guard progress.bytesPerSecond.isFinite, progress.bytesPerSecond >= 0 else {
                throw TaskStoreError.database("not allowed: a rate of \(progress.bytesPerSecond) bytes/s")
            }
            try await store.updateProgress(id: taskID, worker: worker, progress)
        case "finish":
            try own(op, a)
            let status = try required(a.status, op, "status")
            try await store.finish(id: taskID, worker: worker, status: status, failure: Self.bounded(a.failure), message: Self.bounded(a.message ?? ""))
            ending.withLock { $0 = status }
        case "release":
            try own(op, a)
            var retryAfter: Duration?
            if let seconds = a.retryAfterSeconds {
                guard seconds.isFinite, seconds >= 0 else { throw TaskStoreError.database("not allowed: retry after \(seconds) s") }
                retryAfter = .seconds(min(seconds, 86_400))  // a day at most; a `Duration` traps past ~1e19 s
            }
            try await store.release(id: taskID, worker: worker, retryAfter: retryAfter, failure: Self.bounded(a.failure), message: Self.bounded(a.message ?? ""))
        case "wait":
            try own(op, a)
            let seconds = try required(a.retryAfterSeconds, op, "retryAfterSeconds")
            guard seconds.isFinite, seconds >= 0 else { throw TaskStoreError.database("not allowed: retry after \(seconds) s") }
            // Whatever task it names, a runner only changes when its own task is looked at again.
            try await store.wait(id: taskID, worker: worker, for: try required(a.holder, op, "holder"),
                                 retryAfter: .seconds(min(seconds, 86_400)), message: Self.bounded(a.message ?? ""))
        case "acquireLocks":
            try own(op, a)
            let locks = try required(a.locks, op, "locks")
            guard locks.allSatisfy({ $0.taskID == taskID }) else {
                throw TaskStoreError.database("not allowed: locks for another task than \(taskID)")
            }
            try await checkLockPaths(locks)
            try await store.acquireLocks(id: taskID, worker: worker, locks)
        case "record":
            try own(op, a, worker: false)  // the call names no worker: the lease is checked below
            // A note, not a dump: at most 64 KiB of it is kept, and a run adds a bounded number,
            // only while it holds the task.
            let message = Self.bounded(try required(a.message, op, "message"))
            guard try await store.task(taskID)?.leaseOwner == worker else { throw TaskStoreError.leaseLost(taskID) }
            try await store.record(taskID, message: try admitted(message))
        default:
            throw TaskStoreError.database("not allowed: \(op)")
        }
        onChange(taskID)
        return .nothing
    }

    /// A message of the history (and a failure's) is a note, not a dump: at most 64 KiB of it is kept.
    static func bounded(_ message: String) -> String {
        message.utf8.count > 65_536 ? String(decoding: Array(message.utf8.prefix(65_536)), as: UTF8.self) : message
    }

    static func bounded(_ failure: TaskFailure?) -> TaskFailure? {
        failure.map { TaskFailure(code: String($0.code.prefix(200)), message: bounded($0.message)) }
    }

    /// The calls a run may repeat that add to the shared history (a note; a change of phase, even
    /// to the one it is in) count against the run's `noteLimit` and `noteBytes`: a runner may not
    /// grow it without bound. Those that end the run (finish, release, wait) cannot be repeated:
    /// the run no longer holds the task after them.
    private func admitted(_ message: String?) throws -> String {
        let text = Self.bounded(message ?? "")
        let size = text.utf8.count
        let allowed = notes.withLock { notes in
            guard notes.count < Self.noteLimit, notes.bytes + size <= Self.noteBytes else { return false }
            notes = (notes.count + 1, notes.bytes + size)
            return true
        }
        guard allowed else {
            throw TaskStoreError.database("not allowed: more than \(Self.noteLimit) entries or \(Self.noteBytes) bytes of history in one run")
        }
        return text
    }

    /// A runner may not point its plan anywhere but its own task's destination: the privileged
    /// janitor later searches a plan's destination directory for staging directories to remove.
    private func check(_ plan: TaskPlan) async throws {
        guard let task = try await store.task(taskID) else { throw TaskStoreError.notFound(taskID) }
        let slash = UInt8(ascii: "/")
        var destination = task.destination.bytes
        while destination.count > 1 && destination.last == slash { destination.removeLast() }
        let parent: [UInt8] = destination.lastIndex(of: slash).map { $0 == 0 ? [slash] : Array(destination[..<$0]) } ?? []
        let directory = plan.destinationDirectory.bytes
        guard directory == destination || directory == parent, ["rename", "relink", "copy"].contains(plan.strategy),
              plan.stagingName.bytes == Array(".ferry-staging-\(taskID)".utf8),
              plan.finalNames.allSatisfy({ BytePath.isPlainName($0.bytes) }), plan.finalNames.count == task.sources.count else {
            throw TaskStoreError.database("not allowed: a plan outside the task's destination \(task.destination)")
        }
    }

    /// A runner may lock only the paths its task names: each source, and each final name in the
    /// destination directory (or the destination itself, when it is a new name). A lock elsewhere — on `/`, say — would
    /// hold up every other task and same-project move on that filesystem for as long as the
    /// runner kept its lease.
    /// The engine locks each path as the kernel resolves its directory (symlinks followed), so a
    /// lock's directory may be named otherwise than the task names it: it is the same when it is
    /// the same directory on disk.
    private func checkLockPaths(_ locks: [PathLock]) async throws {
        guard let task = try await store.task(taskID) else { throw TaskStoreError.notFound(taskID) }
        let sources = task.sources.map { BytePath.lexicallyNormalized($0.bytes) }
        let destination = BytePath.lexicallyNormalized(task.destination.bytes)
        // Each named entry (the sources, the destination as a new name) by its directory and name.
        let named = (sources + [destination]).map { BytePath.split($0) }
        // In the destination directory, only the sources' own names: any name there would let a
        // runner (whose owner can write into its channel) lock a colleague's tree beside it.
        let sourceNames = sources.map { BytePath.split($0).name }
        for lock in locks {
            let path = lock.path.bytes
            if sources.contains(path) || path == destination { continue }
            let (directory, name) = BytePath.split(path)
            // Compared on disk only in the form the engine locks (no `.` or `..`): a path through
            // `..` would let a runner ask root, by the answer, what lies in directories it may not read.
            guard BytePath.isPlainName(name), BytePath.lexicallyNormalized(directory) == directory else { throw Self.notNamed(lock, taskID) }
            if sourceNames.contains(name), directory == destination || Self.sameDirectory(directory, destination) { continue }
            if named.contains(where: { $0.name == name && Self.sameDirectory(directory, $0.parent) }) { continue }
            throw Self.notNamed(lock, taskID)
        }
    }

    private static func notNamed(_ lock: PathLock, _ taskID: String) -> TaskStoreError {
        TaskStoreError.database("not allowed: a lock on \(lock.path), which task \(taskID) does not name")
    }

    /// Whether two paths name one directory (`stat`, symlinks followed: device and inode).
    private static func sameDirectory(_ a: ByteString, _ b: ByteString) -> Bool {
        func identity(_ path: ByteString) -> (UInt64, UInt64)? {
            var status = stat()
            let result = path.withCPath { stat($0, &status) }
            guard result == 0, (status.st_mode & S_IFMT) == S_IFDIR else { return nil }
            return (UInt64(status.st_dev), UInt64(status.st_ino))
        }
        guard let first = identity(a), let second = identity(b) else { return false }
        return first == second
    }

    /// The call must be about this relay's task (and, for the fenced calls, its worker).
    private func own(_ op: String, _ a: ChannelArguments, worker checkWorker: Bool = true) throws(TaskStoreError) {
        guard a.id == taskID else { throw TaskStoreError.database("not allowed: \(op) for task \(a.id ?? "(none)")") }
        if checkWorker, a.worker != worker {
            throw TaskStoreError.database("not allowed: \(op) as worker \(a.worker ?? "(none)")")
        }
    }

    private func required<T>(_ value: T?, _ op: String, _ name: String) throws(TaskStoreError) -> T {
        guard let value else { throw TaskStoreError.database("\(op) needs \(name)") }
        return value
    }
}
