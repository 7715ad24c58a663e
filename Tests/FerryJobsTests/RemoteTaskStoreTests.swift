import Foundation
import FerryJobs
import FerryTestSupport
import GRDB
import Glibc
import Synchronization
import Testing

/// A pipe whose ends do not leak into processes other tests start.
private func makePipe() -> (read: Int32, write: Int32) {
    var fds: [Int32] = [-1, -1]
    precondition(pipe(&fds) == 0)
    for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    return (fds[0], fds[1])
}

private final class Changes: Sendable {
    let ids = Mutex<[String]>([])
    func append(_ id: String) { ids.withLock { $0.append(id) } }
    var count: Int { ids.withLock { $0.count } }
}

/// A real SQLite store, a relay for one task and worker, and a client talking to it over two pipes,
/// all in this process.
private struct Channel {
    let store: SQLiteTaskStore
    let client: RemoteTaskStore
    let relay: TaskStoreRelay
    let changes = Changes()
    let serving: Task<Void, Never>
    let requests: (read: Int32, write: Int32)
    let responses: (read: Int32, write: Int32)

    init(store: SQLiteTaskStore, taskID: String, worker: String) {
        self.store = store
        requests = makePipe()
        responses = makePipe()
        client = RemoteTaskStore(requests: requests.write, responses: responses.read)
        let relay = TaskStoreRelay(store: store, taskID: taskID, worker: worker) { [changes] in changes.append($0) }
        self.relay = relay
        serving = Task { [requests, responses] in await relay.serve(requests: requests.read, responses: responses.write) }
    }

    /// The runner goes away: the relay sees the end of its requests, finishes, and its side closes.
    func close() async {
        Glibc.close(requests.write)
        await serving.value
        Glibc.close(responses.write)
        Glibc.close(requests.read)
    }
}

/// `lease`: long by default, so that a test stalled behind others (the whole suite shares two
/// cores, and synchronous tests hold the cooperative threads while their child processes run)
/// does not lose its task; the test of expiry passes a short one.
private func withChannel(
    lease: Duration = .seconds(600), _ body: (SQLiteTaskStore, TaskRecord, Channel) async throws -> Void
) async throws {
    try await withChannel(lease: lease) { store, task, channel, _ in try await body(store, task, channel) }
}

/// The same, also giving the database's path.
private func withChannel(
    lease: Duration = .seconds(600), _ body: (SQLiteTaskStore, TaskRecord, Channel, String) async throws -> Void
) async throws {
    let directory = try TemporaryDirectory.make(prefix: "ferry-remote")
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let store = try SQLiteTaskStore(path: directory + "/ferry.sqlite")
    let created = try await store.create(NewTask(kind: .move, sources: [StoredPath("/p/a/data")], destination: StoredPath("/p/b"), owner: "alice"))
    let task = try #require(try await store.claim(id: created.id, worker: "w1", lease: lease))
    let channel = Channel(store: store, taskID: task.id, worker: "w1")
    do {
        try await body(store, task, channel, directory + "/ferry.sqlite")
    } catch {
        await channel.close()
        throw error
    }
    await channel.close()
    // With the server's side closed, the client fails at once rather than waiting forever.
    await #expect(throws: TaskStoreError.database("the server closed the task channel")) { try await channel.client.task(task.id) }
    Glibc.close(channel.responses.read)
}

private func isRefusal(_ error: any Error) -> Bool {
    guard case TaskStoreError.database(let message) = error else { return false }
    return message.hasPrefix("not allowed")
}

@Suite("Remote task store over pipes")
struct RemoteTaskStoreTests {
    @Test func everyRunnerCallReachesTheRealStore() async throws {
        try await withChannel { store, task, channel in
            let client = channel.client
            #expect(try await client.task(task.id) == task)

            let before = try #require(try await store.task(task.id)?.leaseExpiresAt)
            try await Task.sleep(for: .milliseconds(20))
            #expect(try await client.heartbeat(id: task.id, worker: "w1", lease: .seconds(1200)))  // past the first lease
            #expect(try #require(try await store.task(task.id)?.leaseExpiresAt) > before)

            let plan = TaskPlan(strategy: "copy", bytes: 10, allocatedBytes: 4096, entries: 3, inodes: 3,
                                stagingName: StoredPath(".ferry-staging-\(task.id)"), finalNames: [StoredPath([0x64, 0xFF])],
                                destinationDirectory: StoredPath("/p/b"))
            try await client.advance(id: task.id, worker: "w1", to: .validating, plan: nil, message: "validating")
            try await client.advance(id: task.id, worker: "w1", to: .locked, plan: plan, message: "planned")
            var real = try #require(try await store.task(task.id))
            #expect(real.status == .locked && real.plan == plan)

            let progress = TaskProgress(bytesDone: 5, bytesTotal: 10, entriesDone: 1, entriesTotal: 3, bytesPerSecond: 2.5)
            try await client.updateProgress(id: task.id, worker: "w1", progress)
            #expect(try await store.task(task.id)?.progress == progress)

            let lock = PathLock(taskID: task.id, filesystem: "7:0", path: StoredPath("/p/a/data"))
            try await client.acquireLocks(id: task.id, worker: "w1", [lock])
            #expect(try await store.locks() == [lock])

            try await client.record(task.id, message: "a note")
            #expect(try await store.events(task.id).contains { $0.message == "a note" })
            #expect(try await client.events(task.id) == (try await store.events(task.id)))

            try await client.finish(id: task.id, worker: "w1", status: .failed, failure: TaskFailure(code: "x.y", message: "why"), message: "done")
            real = try #require(try await store.task(task.id))
            #expect(real.status == .failed && real.failure == TaskFailure(code: "x.y", message: "why") && real.leaseOwner == nil)
            #expect(try await store.locks().isEmpty)
            #expect(try await client.task(task.id) == real)
            // advance twice, progress, locks, record, finish; heartbeats and reads are not changes.
            #expect(channel.changes.ids.withLock { $0 } == Array(repeating: task.id, count: 6))
        }
    }

    /// The privileged janitor searches a plan's destination directory; a runner (running as an
    /// ordinary user) must not be able to point it anywhere else.
    @Test func plansOutsideTheTasksDestinationAreRefused() async throws {
        try await withChannel { store, task, channel in
            let client = channel.client
            try await client.advance(id: task.id, worker: "w1", to: .validating, plan: nil, message: "validating")
            func plan(_ directory: String, staging: String? = nil, names: [String] = ["data"]) -> TaskPlan {
                TaskPlan(strategy: "copy", bytes: 1, allocatedBytes: 1, entries: 1, inodes: 1,
                         stagingName: StoredPath(staging ?? ".ferry-staging-\(task.id)"), finalNames: names.map(StoredPath.init),
                         destinationDirectory: StoredPath(directory))
            }
            for bad in [plan("/etc"), plan("/p/b/sub"), plan("/p/b", staging: ".ferry-staging-other"), plan("/p/b", names: ["../x"]),
                        plan("/p/b", names: ["a", "b"])] {
                await #expect(performing: { try await client.advance(id: task.id, worker: "w1", to: .locked, plan: bad, message: "") },
                              throws: { isRefusal($0) })
            }
            #expect(try await store.task(task.id)?.plan == nil)
            // The destination itself (an existing directory), or its parent (a new name).
            try await client.advance(id: task.id, worker: "w1", to: .locked, plan: plan("/p/b"), message: "ok")
            try await client.advance(id: task.id, worker: "w1", to: .locked, plan: plan("/p", names: ["b"]), message: "ok")
            #expect(try await store.task(task.id)?.plan?.destinationDirectory == StoredPath("/p"))
        }
    }

    /// A runner may lock what its task names (the source; a final name in the destination, or the
    /// destination itself as a new name) and nothing else: not the filesystem's root, nor a
    /// neighbour, nor another name in the destination (a colleague's tree there, which it could
    /// otherwise keep locked for as long as it kept its task alive).
    @Test func locksOnPathsTheTaskDoesNotNameAreRefused() async throws {
        try await withChannel { store, task, channel in
            let client = channel.client
            for path in ["/", "/p", "/p/a", "/p/a/data/inner", "/p/b/sub/data", "/etc/passwd", "/p/a/other", "/p/newname", "/p/b/other"] {
                await #expect(performing: {
                    try await client.acquireLocks(id: task.id, worker: "w1", [PathLock(taskID: task.id, filesystem: "7:0", path: StoredPath(path))])
                }, throws: { isRefusal($0) })
            }
            #expect(try await store.locks().isEmpty)
            let named = ["/p/a/data", "/p/b/data", "/p/b"].map { PathLock(taskID: task.id, filesystem: "7:0", path: StoredPath($0)) }
            try await client.acquireLocks(id: task.id, worker: "w1", named)
            #expect(Set(try await store.locks().map(\.path)) == Set(named.map(\.path)))
        }
    }

    /// The engine locks paths as the kernel resolves their directories: a task named through a
    /// symlinked directory (a root configured as a symlink, say) locks the real directory's paths,
    /// which the relay allows for being the same directories on disk. Before, it refused them and
    /// every such task failed at validation. Another directory's paths are still refused.
    @Test func locksOnTheResolvedPathsOfTheTasksDirectoriesAreAllowed() async throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-remote-links")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for path in ["/real/a/data", "/real/b", "/other/data"] {
            try FileManager.default.createDirectory(atPath: directory + path, withIntermediateDirectories: true)
        }
        try FileManager.default.createSymbolicLink(atPath: directory + "/link", withDestinationPath: "real")
        let store = try SQLiteTaskStore(path: directory + "/ferry.sqlite")
        let created = try await store.create(NewTask(kind: .move, sources: [StoredPath(directory + "/link/a/data")],
                                                     destination: StoredPath(directory + "/link/b"), owner: "alice"))
        let task = try #require(try await store.claim(id: created.id, worker: "w1", lease: .seconds(600)))
        let channel = Channel(store: store, taskID: task.id, worker: "w1")
        for path in ["/other/data", "/real/a/other", "/real/data", "/real/b/sub/data", "/real/b/other"] {
            await #expect(performing: {
                try await channel.client.acquireLocks(id: task.id, worker: "w1", [PathLock(taskID: task.id, filesystem: "7:0", path: StoredPath(directory + path))])
            }, throws: { isRefusal($0) })
        }
        let resolved = ["/real/a/data", "/real/b/data", "/real/b"].map { PathLock(taskID: task.id, filesystem: "7:0", path: StoredPath(directory + $0)) }
        try await channel.client.acquireLocks(id: task.id, worker: "w1", resolved)
        #expect(Set(try await store.locks().map(\.path)) == Set(resolved.map(\.path)))
        await channel.close()
        Glibc.close(channel.responses.read)
    }

    @Test func concurrentCallsAreAllAnswered() async throws {
        try await withChannel { store, task, channel in
            let client = channel.client
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for i in 0..<50 {
                    group.addTask { try await client.heartbeat(id: task.id, worker: "w1", lease: .seconds(600)) }
                    group.addTask {
                        try await client.updateProgress(id: task.id, worker: "w1", TaskProgress(bytesDone: UInt64(i), bytesTotal: 50,
                                                                                               entriesDone: 0, entriesTotal: 0, bytesPerSecond: 0))
                        return true
                    }
                    group.addTask { try await client.task(task.id)?.id == task.id }
                }
                var answered = 0
                for try await ok in group {
                    #expect(ok)
                    answered += 1
                }
                #expect(answered == 150)
            }
            #expect(try await store.task(task.id)?.progress.bytesTotal == 50)
            #expect(channel.changes.count == 50)
        }
    }

    @Test func otherTasksWorkersAndStoreWideCallsAreRefused() async throws {
        try await withChannel { store, task, channel in
            let other = try await store.create(NewTask(kind: .copy, sources: [StoredPath("/q")], destination: StoredPath("/r"), owner: "bob"))
            _ = try await store.claim(id: other.id, worker: "w1", lease: .seconds(30))
            let before = (try await store.list(TaskFilter()), try await store.events(task.id), try await store.events(other.id))
            let client = channel.client
            let attempts: [(String, () async throws -> Void)] = [
                ("task of another", { _ = try await client.task(other.id) }),
                ("events of another", { _ = try await client.events(other.id) }),
                ("advance another", { try await client.advance(id: other.id, worker: "w1", to: .copying, plan: nil, message: "") }),
                ("advance as another worker", { try await client.advance(id: task.id, worker: "w2", to: .copying, plan: nil, message: "") }),
                ("heartbeat as another worker", { _ = try await client.heartbeat(id: task.id, worker: "w2", lease: .seconds(30)) }),
                ("finish another", { try await client.finish(id: other.id, worker: "w1", status: .completed, failure: nil, message: "") }),
                ("release another", { try await client.release(id: other.id, worker: "w1", retryAfter: nil, failure: nil, message: "") }),
                ("progress of another", { try await client.updateProgress(id: other.id, worker: "w1", TaskProgress()) }),
                ("record on another", { try await client.record(other.id, message: "x") }),
                ("locks for another", {
                    try await client.acquireLocks(id: task.id, worker: "w1", [PathLock(taskID: other.id, filesystem: "7:0", path: StoredPath("/z"))])
                }),
                ("create", { _ = try await client.create(NewTask(kind: .move, sources: [StoredPath("/x")], destination: StoredPath("/y"), owner: "eve")) }),
                ("list", { _ = try await client.list(TaskFilter()) }),
                ("claim", { _ = try await client.claim(worker: "w1", limit: 10, lease: .seconds(30)) }),
                ("claim one", { _ = try await client.claim(id: other.id, worker: "w1", lease: .seconds(30)) }),
                ("locks", { _ = try await client.locks() }),
                ("cancel", { _ = try await client.requestCancel(other.id) }),
                ("retry", { _ = try await client.retry(other.id) }),
            ]
            for (name, attempt) in attempts {
                do {
                    try await attempt()
                    Issue.record("\(name) was allowed")
                } catch {
                    #expect(isRefusal(error), "\(name): \(error)")
                }
            }
            let after = (try await store.list(TaskFilter()), try await store.events(task.id), try await store.events(other.id))
            #expect(after.0 == before.0 && after.1 == before.1 && after.2 == before.2)
            #expect(try await store.locks().isEmpty)
            #expect(channel.changes.count == 0)
        }
    }

    /// What the task runner's watchdog goes by: a runner is silent from its last call (arrived or
    /// answered), never while a call waits on the store (here another connection holds SQLite's
    /// write lock, as a slow commit would).
    @Test func silenceCountsFromTheLastCallAndNeverWhileOneWaitsOnTheStore() async throws {
        // Only lower bounds on time, and upper bounds against a clock read by the test itself:
        // the suite shares two cores, and any step here may be held up for seconds.
        try await withChannel { _, task, channel, path in
            var asked = ContinuousClock.now
            _ = try await channel.client.task(task.id)
            #expect(channel.relay.silence <= ContinuousClock.now - asked)
            try await Task.sleep(for: .milliseconds(400))
            #expect(channel.relay.silence >= .milliseconds(400))

            // Another connection holds the write lock until told to let go.
            let blocker = try DatabaseQueue(path: path)
            let held = DispatchSemaphore(value: 0), letGo = DispatchSemaphore(value: 0), released = DispatchSemaphore(value: 0)
            Thread.detachNewThread {  // not on the cooperative pool, which the relay needs
                try? blocker.inTransaction(.immediate) { _ in
                    held.signal()
                    letGo.wait()
                    return .commit
                }
                released.signal()
            }
            held.wait()
            let beat = Task { try await channel.client.heartbeat(id: task.id, worker: "w1", lease: .seconds(600)) }
            let deadline = ContinuousClock.now + .seconds(30)
            while channel.relay.silence != .zero && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
            try await Task.sleep(for: .milliseconds(300))
            #expect(channel.relay.silence == .zero)  // the heartbeat still waits for the write lock
            asked = ContinuousClock.now
            letGo.signal()
            #expect(try await beat.value)
            released.wait()
            #expect(channel.relay.silence <= ContinuousClock.now - asked)
        }
    }

    /// What the server shows and counts from a runner's words (its owner can write into the
    /// channel) is bounded: a strategy the engine has, a finite rate, a bounded number of notes
    /// and only while the run holds the task; and only the run that ended the task says so.
    @Test func aRunnersFiguresAndNotesAreBounded() async throws {
        try await withChannel { store, task, channel in
            let client = channel.client
            try await client.advance(id: task.id, worker: "w1", to: .validating, plan: nil, message: "validating")
            let odd = TaskPlan(strategy: String(repeating: "x", count: 4096), bytes: 1, allocatedBytes: 1, entries: 1, inodes: 1,
                               stagingName: StoredPath(".ferry-staging-\(task.id)"), finalNames: [StoredPath("data")],
                               destinationDirectory: StoredPath("/p/b"))
            await #expect(performing: { try await client.advance(id: task.id, worker: "w1", to: .locked, plan: odd, message: "") },
                          throws: { isRefusal($0) })
            let backwards = TaskProgress(bytesDone: 1, bytesTotal: 2, entriesDone: 0, entriesTotal: 1, bytesPerSecond: -5)
            await #expect(performing: { try await client.updateProgress(id: task.id, worker: "w1", backwards) }, throws: { isRefusal($0) })
            // A rate too small for a finite ETA gives none (JSON has no infinity).
            let crawling = TaskProgress(bytesDone: 0, bytesTotal: .max, entriesDone: 0, entriesTotal: 1, bytesPerSecond: .leastNonzeroMagnitude)
            try await client.updateProgress(id: task.id, worker: "w1", crawling)
            #expect(try await store.task(task.id)?.progress.secondsRemaining == nil)

            // The change to validating was one entry of the run's history; a change to the phase
            // it is in, repeated, counts as well (it adds an entry each time).
            try await client.advance(id: task.id, worker: "w1", to: .validating, plan: nil, message: String(repeating: "v", count: 100_000))
            #expect(try await store.events(task.id).last?.message.utf8.count == 65_536)
            for i in 0..<TaskStoreRelay.noteLimit - 2 { try await client.record(task.id, message: "note \(i)") }
            await #expect(performing: { try await client.record(task.id, message: "one too many") }, throws: { isRefusal($0) })
            await #expect(performing: { try await client.advance(id: task.id, worker: "w1", to: .validating, plan: nil, message: "again") },
                          throws: { isRefusal($0) })
            #expect(try await store.events(task.id).filter { $0.message.hasPrefix("note ") }.count == TaskStoreRelay.noteLimit - 2)

            #expect(channel.relay.endedAs == nil)
            try await client.finish(id: task.id, worker: "w1", status: .completed, failure: nil, message: "done")
            #expect(channel.relay.endedAs == .completed)
        }
        // A run that no longer holds its task adds nothing to its history.
        try await withChannel(lease: .milliseconds(200)) { store, task, channel in
            try await Task.sleep(for: .milliseconds(400))
            #expect(try await store.claim(worker: "w2", limit: 1, lease: .seconds(30)).first?.id == task.id)
            await #expect(throws: TaskStoreError.leaseLost(task.id)) { try await channel.client.record(task.id, message: "late") }
            #expect(try await store.events(task.id).contains { $0.message == "late" } == false)
        }
    }

    @Test func aLostLeaseSurfacesAsLeaseLost() async throws {
        try await withChannel(lease: .milliseconds(200)) { store, task, channel in
            try await Task.sleep(for: .milliseconds(400))
            #expect(try await store.claim(worker: "w2", limit: 1, lease: .seconds(30)).first?.id == task.id)
            #expect(try await channel.client.heartbeat(id: task.id, worker: "w1", lease: .seconds(30)) == false)
            await #expect(throws: TaskStoreError.leaseLost(task.id)) {
                try await channel.client.advance(id: task.id, worker: "w1", to: .copying, plan: nil, message: "")
            }
            #expect(try await store.task(task.id)?.leaseOwner == "w2")
            #expect(channel.changes.count == 0)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aClosedChannelFailsPendingAndLaterCalls() async throws {
        let closed = TaskStoreError.database("the server closed the task channel")
        // Nobody answers: the call waits until the server's side closes, then fails.
        let requests = makePipe(), responses = makePipe()
        let client = RemoteTaskStore(requests: requests.write, responses: responses.read)
        let pending = Task { try await client.task("0123456789abcdef") }
        try await Task.sleep(for: .milliseconds(100))
        Glibc.close(responses.write)
        await #expect(throws: closed) { try await pending.value }
        await #expect(throws: closed) { try await client.heartbeat(id: "0123456789abcdef", worker: "w1", lease: .seconds(1)) }
        for fd in [requests.read, requests.write, responses.read] { Glibc.close(fd) }

        // Nobody reads: the write fails with EPIPE (not SIGPIPE), and so does the call.
        let requests2 = makePipe(), responses2 = makePipe()
        Glibc.close(requests2.read)
        let deaf = RemoteTaskStore(requests: requests2.write, responses: responses2.read)
        await #expect(throws: closed) { try await deaf.record("0123456789abcdef", message: "hello") }
        await #expect(throws: closed) { try await deaf.record("0123456789abcdef", message: "again") }
        Glibc.close(responses2.write)
        Glibc.close(requests2.write)
    }

    @Test func recordsRoundTripThroughJSON() async throws {
        try await withChannel { store, task, _ in
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = .secondsSince1970
            let decoder = JSONDecoder()
            decoder.dateDecodingStrategy = .secondsSince1970
            let real = try #require(try await store.task(task.id))
            #expect(try decoder.decode(TaskRecord.self, from: encoder.encode(real)) == real)
            let events = try await store.events(task.id)
            #expect(try decoder.decode([TaskEvent].self, from: encoder.encode(events)) == events)
            let lock = PathLock(taskID: task.id, filesystem: "7:0", path: StoredPath([0x2F, 0xFF]))
            #expect(try decoder.decode(PathLock.self, from: encoder.encode(lock)) == lock)
        }
    }
}
