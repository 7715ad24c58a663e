import Foundation
import FerryJobs
import FerryTestSupport
import Testing

/// A store under test and how to throw it away.
struct StoreUnderTest: Sendable, CustomStringConvertible {
    let name: String
    let make: @Sendable () async throws -> (any TaskStore, @Sendable () async -> Void)
    var description: String { name }
}

/// Every engine must pass the same contract.
let storeEngines: [StoreUnderTest] = {
    var engines = [StoreUnderTest(name: "sqlite") {
        let directory = try TemporaryDirectory.make(prefix: "ferry-jobs")
        let store = try SQLiteTaskStore(path: directory + "/ferry.sqlite")
        return (store, { try? FileManager.default.removeItem(atPath: directory) })
    }]
    engines += extraStoreEngines
    return engines
}()

func newMove(_ owner: String = "alice", sources: [String] = ["/p/a/data"], destination: String = "/p/b") -> NewTask {
    NewTask(kind: .move, sources: sources.map(StoredPath.init), destination: StoredPath(destination), owner: owner)
}

func withStore(_ engine: StoreUnderTest, _ body: (any TaskStore) async throws -> Void) async throws {
    let (store, cleanup) = try await engine.make()
    do { try await body(store) } catch { await cleanup(); throw error }
    await cleanup()
}

@Suite("Task store contract", .serialized)
struct TaskStoreContractTests {
    @Test(arguments: storeEngines)
    func createClaimAdvanceFinish(engine: StoreUnderTest) async throws {
        try await withStore(engine) { store in
            let weird = StoredPath([0x2F, 0x70, 0xFF, 0xFE])  // "/p\xff\xfe": not UTF-8, must survive
            let created = try await store.create(NewTask(kind: .copy, sources: [weird], destination: StoredPath("/dst"), owner: "alice"))
            #expect(created.status == .pending && created.attempts == 0 && created.kind == .copy)
            #expect(created.sources == [weird])
            let claimed = try await store.claim(worker: "w1", limit: 10, lease: .seconds(30))
            #expect(claimed.map(\.id) == [created.id])
            #expect(claimed.first?.attempts == 1 && claimed.first?.leaseOwner == "w1")
            #expect(try await store.claim(worker: "w2", limit: 10, lease: .seconds(30)).isEmpty)

            let plan = TaskPlan(strategy: "copy", bytes: 10, allocatedBytes: 4096, entries: 3, inodes: 3,
                                stagingName: StoredPath(".ferry-staging-\(created.id)"), finalNames: [StoredPath("data")],
                                destinationDirectory: StoredPath("/dst"))
            try await store.advance(id: created.id, worker: "w1", to: .validating, plan: nil, message: "validating")
            try await store.advance(id: created.id, worker: "w1", to: .locked, plan: plan, message: "plan made")
            try await store.updateProgress(id: created.id, worker: "w1", TaskProgress(bytesDone: 5, bytesTotal: 10, entriesDone: 1, entriesTotal: 3, bytesPerSecond: 2))
            var task = try #require(try await store.task(created.id))
            #expect(task.status == .locked && task.plan == plan && task.progress.bytesDone == 5)

            try await store.finish(id: created.id, worker: "w1", status: .completed, failure: nil, message: "done")
            task = try #require(try await store.task(created.id))
            #expect(task.status == .completed && task.leaseOwner == nil && task.finishedAt != nil)
            #expect(try await store.claim(worker: "w2", limit: 10, lease: .seconds(30)).isEmpty)
            let events = try await store.events(created.id).map(\.status)
            #expect(events == [.pending, .pending, .validating, .locked, .completed])
            await #expect(throws: TaskStoreError.self) {
                try await store.finish(id: created.id, worker: "w1", status: .copying, failure: nil, message: "")
            }
        }
    }

    @Test(arguments: storeEngines)
    func expiredLeaseIsTakenOverAndTheOldWorkerFenced(engine: StoreUnderTest) async throws {
        try await withStore(engine) { store in
            let task = try await store.create(newMove())
            // Long enough that a loaded machine still advances within it, short enough to wait out.
            _ = try await store.claim(worker: "dead", limit: 1, lease: .milliseconds(1500))
            try await store.advance(id: task.id, worker: "dead", to: .copying, plan: nil, message: "copying")
            try await Task.sleep(for: .milliseconds(1800))
            let taken = try await store.claim(worker: "alive", limit: 1, lease: .seconds(30))
            #expect(taken.first?.id == task.id)
            #expect(taken.first?.status == .copying)  // resumes from its last committed phase
            #expect(taken.first?.attempts == 2)
            #expect(taken.first?.takenOverFrom == "dead")
            #expect(try await store.events(task.id).last?.message == "claimed by alive (attempt 2) after the lease of dead expired")
            #expect(try await store.heartbeat(id: task.id, worker: "dead", lease: .seconds(1)) == false)
            await #expect(throws: TaskStoreError.leaseLost(task.id)) {
                try await store.advance(id: task.id, worker: "dead", to: .verifying, plan: nil, message: "too late")
            }
            await #expect(throws: TaskStoreError.leaseLost(task.id)) {
                try await store.updateProgress(id: task.id, worker: "dead", TaskProgress(bytesDone: 1, bytesTotal: 2, entriesDone: 1, entriesTotal: 2, bytesPerSecond: 1))
            }
            #expect(try await store.heartbeat(id: task.id, worker: "alive", lease: .seconds(30)))
        }
    }

    /// Expiry alone takes nothing away: a holder whose heartbeat came late (held up behind a slow
    /// disk) renews its lease and carries on, as long as no other worker claimed the task between.
    /// Once renewed, the task is not claimable.
    /// A claim says whose expired lease it took over (what counts a task's unexpected ends), in
    /// the record it returns and in the history; a free task, or one the claimer held itself, is no takeover.
    @Test(arguments: storeEngines)
    func aClaimSaysWhoseExpiredLeaseItTookOver(engine: StoreUnderTest) async throws {
        try await withStore(engine) { store in
            let abandoned = try await store.create(newMove(sources: ["/p/a/one"]))
            let first = try #require(try await store.claim(worker: "dead", limit: 1, lease: .milliseconds(1500)).first)
            #expect(first.takenOverFrom == nil)
            let free = try await store.create(newMove(sources: ["/p/a/two"]))
            let own = try await store.create(newMove(sources: ["/p/a/three"]))
            #expect(try await store.claim(id: own.id, worker: "cli", lease: .milliseconds(1500))?.takenOverFrom == nil)
            try await Task.sleep(for: .milliseconds(1800))
            // Several at once (one PostgreSQL statement with slots): one taken over, one free.
            let taken = try await store.claim(worker: "alive", limit: 3, lease: .seconds(30))
            #expect(Set(taken.map(\.id)) == [abandoned.id, free.id, own.id])
            #expect(taken.first { $0.id == abandoned.id }?.takenOverFrom == "dead")
            #expect(taken.first { $0.id == free.id }?.takenOverFrom == nil)
            #expect(taken.first { $0.id == own.id }?.takenOverFrom == "cli")
            let claims = try await store.events(abandoned.id).filter { $0.message.hasPrefix("claimed by") }
            #expect(claims.map(\.message) == ["claimed by dead (attempt 1)", "claimed by alive (attempt 2) after the lease of dead expired"])
            #expect(claims.map(\.isTakeover) == [false, true])
            #expect(try await store.events(free.id).last?.isTakeover == false)
            // A worker claiming again a task whose lease it held takes over from nobody.
            let again = try await store.create(newMove(sources: ["/p/a/four"]))
            _ = try await store.claim(id: again.id, worker: "cli", lease: .milliseconds(300))
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await store.claim(id: again.id, worker: "cli", lease: .milliseconds(300))?.takenOverFrom == nil)
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await store.claim(id: again.id, worker: "other", lease: .seconds(30))?.takenOverFrom == "cli")
            let messages = try await store.events(again.id).map(\.message).filter { $0.hasPrefix("claimed by") }
            #expect(messages.last == "claimed by other (attempt 3) after the lease of cli expired")
            #expect(messages.filter { TaskEvent(taskID: again.id, at: Date(), status: .pending, message: $0).isTakeover }.count == 1)
        }
    }

    @Test(arguments: storeEngines)
    func anExpiredLeaseNobodyClaimedIsStillItsHolders(engine: StoreUnderTest) async throws {
        try await withStore(engine) { store in
            let task = try await store.create(newMove())
            _ = try await store.claim(worker: "slow", limit: 1, lease: .milliseconds(300))
            try await Task.sleep(for: .milliseconds(600))
            try await store.advance(id: task.id, worker: "slow", to: .validating, plan: nil, message: "late but unchallenged")
            try await store.updateProgress(id: task.id, worker: "slow", TaskProgress(bytesDone: 1, bytesTotal: 2, entriesDone: 1, entriesTotal: 2, bytesPerSecond: 1))
            #expect(try await store.heartbeat(id: task.id, worker: "slow", lease: .seconds(30)))
            #expect(try await store.claim(worker: "other", limit: 1, lease: .seconds(30)).isEmpty)
            #expect(try await store.task(task.id)?.leaseOwner == "slow")
            #expect(try await store.heartbeat(id: task.id, worker: "other", lease: .seconds(30)) == false)
            try await store.finish(id: task.id, worker: "slow", status: .completed, failure: nil, message: "done")
            // Ended, the task has no lease left to renew.
            #expect(try await store.heartbeat(id: task.id, worker: "slow", lease: .seconds(30)) == false)
            await #expect(throws: TaskStoreError.leaseLost(task.id)) {
                try await store.advance(id: task.id, worker: "slow", to: .copying, plan: nil, message: "after the end")
            }
        }
    }

    @Test(arguments: storeEngines)
    func pathLocksConflictOnSameAncestorOrDescendant(engine: StoreUnderTest) async throws {
        try await withStore(engine) { store in
            let first = try await store.create(newMove())
            let second = try await store.create(newMove("bob"))
            let claimed = try await store.claim(worker: "w", limit: 2, lease: .seconds(30))
            #expect(claimed.count == 2)
            try await store.acquireLocks(id: first.id, worker: "w", [PathLock(taskID: first.id, filesystem: "7:0", path: StoredPath("/p/a/data")),
                                                                  PathLock(taskID: first.id, filesystem: "7:0", path: StoredPath("/p/b/data"))])
            for (path, fs, conflicts) in [("/p/a/data", "7:0", true), ("/p/a", "7:0", true), ("/p/a/data/sub/x", "7:0", true),
                                          ("/", "7:0", true), ("/p/a/database", "7:0", false), ("/p/a/data", "8:0", false), ("/p/c", "7:0", false)] {
                let attempt = { try await store.acquireLocks(id: second.id, worker: "w", [PathLock(taskID: second.id, filesystem: fs, path: StoredPath(path))]) }
                if conflicts {
                    await #expect(throws: TaskStoreError.self, "\(path) on \(fs)") { try await attempt() }
                } else {
                    try await attempt()
                }
            }
            // All or nothing: a conflicting set takes none of its locks.
            let before = try await store.locks().count
            await #expect(throws: TaskStoreError.self) {
                try await store.acquireLocks(id: second.id, worker: "w", [PathLock(taskID: second.id, filesystem: "7:0", path: StoredPath("/q")),
                                                                        PathLock(taskID: second.id, filesystem: "7:0", path: StoredPath("/p/b"))])
            }
            #expect(try await store.locks().count == before)
            try await store.finish(id: first.id, worker: "w", status: .completed, failure: nil, message: "done")
            try await store.acquireLocks(id: second.id, worker: "w", [PathLock(taskID: second.id, filesystem: "7:0", path: StoredPath("/p/a"))])
            #expect(try await store.locks().allSatisfy { $0.taskID == second.id })
        }
    }

    @Test(arguments: storeEngines)
    func cancelRetryAndBackoff(engine: StoreUnderTest) async throws {
        try await withStore(engine) { store in
            let waiting = try await store.create(newMove())
            #expect(try await store.requestCancel(waiting.id).status == .cancelled)
            let running = try await store.create(newMove())
            _ = try await store.claim(worker: "w", limit: 1, lease: .seconds(30))
            let marked = try await store.requestCancel(running.id)
            #expect(marked.status == .pending && marked.cancelRequested)
            // A commit is past cancelling: nothing is recorded (its flush failing would take it
            // back to copying, where a recorded cancel would roll back what the user was told is
            // finished).
            let committing = try await store.create(newMove(sources: ["/p/a/committing"], destination: "/p/c"))
            _ = try await store.claim(id: committing.id, worker: "c", lease: .seconds(30))
            try await store.advance(id: committing.id, worker: "c", to: .committing, plan: nil, message: "publishing")
            let eventsBefore = try await store.events(committing.id).count
            let asked = try await store.requestCancel(committing.id)
            #expect(asked.status == .committing && !asked.cancelRequested)
            #expect(try await store.events(committing.id).count == eventsBefore)
            try await store.finish(id: committing.id, worker: "c", status: .completed, failure: nil, message: "done")
            try await store.finish(id: running.id, worker: "w", status: .rolledBack, failure: TaskFailure(code: "cancelled", message: "cancelled by alice"), message: "rolled back")
            let again = try await store.retry(running.id)
            #expect(again.status == .pending && again.failure == nil && !again.cancelRequested && again.plan == nil)
            await #expect(throws: TaskStoreError.self) { try await store.retry(running.id) }
            // A transient failure: released with a retry time, not claimable before it.
            _ = try await store.claim(worker: "w", limit: 1, lease: .seconds(30))
            try await store.release(id: running.id, worker: "w", retryAfter: .milliseconds(300), failure: TaskFailure(code: "io", message: "EIO"), message: "retrying later")
            #expect(try await store.claim(worker: "w", limit: 1, lease: .seconds(30)).isEmpty)
            try await Task.sleep(for: .milliseconds(400))
            #expect(try await store.claim(worker: "w", limit: 1, lease: .seconds(30)).first?.id == running.id)
        }
    }

    /// A task waiting for another's locks (`wait`): not claimable until its delay is up or the
    /// holder ends, whichever is first; its looks (claims, alone or several at once) leave no
    /// history entry and count no attempt, and the wait is recorded once for each holder. Taking
    /// its locks ends the wait and records the run; a takeover is recorded as ever and ends it
    /// too. A cancel makes it claimable at once, and so does a holder already gone.
    @Test(arguments: storeEngines)
    func aTaskWaitingForLocksLooksQuietlyAndWakesWhenTheHolderEnds(engine: StoreUnderTest) async throws {
        try await withStore(engine) { store in
            let holder = try await store.create(newMove())
            let waiter = try await store.create(newMove("bob"))
            _ = try await store.claim(id: holder.id, worker: "h", lease: .seconds(60))
            try await store.acquireLocks(id: holder.id, worker: "h", [PathLock(taskID: holder.id, filesystem: "7:0", path: StoredPath("/p/a"))])
            _ = try await store.claim(id: waiter.id, worker: "w", lease: .seconds(60))
            try await store.advance(id: waiter.id, worker: "w", to: .validating, plan: nil, message: "validating")
            let waitOn = { (other: String, delay: Duration, worker: String) in
                try await store.wait(id: waiter.id, worker: worker, for: other, retryAfter: delay, message: "waiting: /p/a is locked by task \(other)")
            }
            try await waitOn(holder.id, .zero, "w")
            let history = try await store.events(waiter.id).count
            // Looks, one claim at a time and several at once (PostgreSQL's two statements).
            for (index, limit) in [1, 8, 1].enumerated() {
                let worker = "look\(index)"
                let claimed = try await store.claim(worker: worker, limit: limit, lease: .seconds(60))
                #expect(claimed.map(\.id) == [waiter.id] && claimed.first?.attempts == 1, "\(claimed.map(\.attempts))")
                try await waitOn(holder.id, .zero, worker)
            }
            #expect(try await store.events(waiter.id).count == history)
            #expect(try #require(try await store.task(waiter.id)).attempts == 1)
            // Another holder is another line.
            let other = try await store.create(newMove("dave", sources: ["/q"]))
            _ = try await store.claim(id: other.id, worker: "o", lease: .seconds(60))
            try await store.acquireLocks(id: other.id, worker: "o", [PathLock(taskID: other.id, filesystem: "7:0", path: StoredPath("/q"))])
            _ = try #require(try await store.claim(id: waiter.id, worker: "w", lease: .seconds(60)))
            try await waitOn(other.id, .zero, "w")
            let events = try await store.events(waiter.id)
            #expect(events.count == history + 1 && events.last?.message == "waiting: /p/a is locked by task \(other.id)", "\(events.map(\.message))")

            // Waiting for the holder with a long delay: the holder's end wakes it at once.
            _ = try #require(try await store.claim(id: waiter.id, worker: "w", lease: .seconds(60)))
            try await waitOn(holder.id, .seconds(600), "w")
            #expect(try await store.claim(worker: "x", limit: 8, lease: .seconds(60)).isEmpty)
            try await store.finish(id: holder.id, worker: "h", status: .completed, failure: nil, message: "done")
            let woken = try await store.claim(worker: "x", limit: 8, lease: .seconds(60))
            #expect(woken.map(\.id) == [waiter.id] && woken.first?.attempts == 1)
            // Its locks taken, the wait is over, and the run that looked is recorded and counted.
            let looked = try await store.events(waiter.id).count
            try await store.acquireLocks(id: waiter.id, worker: "x", [PathLock(taskID: waiter.id, filesystem: "7:0", path: StoredPath("/p/a"))])
            let running = try await store.events(waiter.id)
            #expect(running.count == looked + 1 && running.last?.message == "claimed by x (attempt 2)", "\(running.map(\.message))")
            #expect(try #require(try await store.task(waiter.id)).attempts == 2)

            // Another task waits for that one. A look whose worker died is taken over: recorded,
            // counted, and the end of the wait (a wait after it is a line again).
            let third = try await store.create(newMove("carol", sources: ["/p/a/sub"]))
            _ = try await store.claim(id: third.id, worker: "w", lease: .seconds(60))
            try await store.advance(id: third.id, worker: "w", to: .validating, plan: nil, message: "validating")
            let waitFor = { (worker: String, delay: Duration) in
                try await store.wait(id: third.id, worker: worker, for: waiter.id, retryAfter: delay, message: "waiting: /p/a is locked by task \(waiter.id)")
            }
            try await waitFor("w", .zero)
            #expect(try await store.claim(worker: "y", limit: 1, lease: .seconds(1)).map(\.attempts) == [1])
            try await Task.sleep(for: .milliseconds(1300))
            let taken = try #require(try await store.claim(worker: "z", limit: 1, lease: .seconds(60)).first)
            #expect(taken.id == third.id && taken.attempts == 2 && taken.takenOverFrom == "y")
            #expect(try await store.events(third.id).last?.isTakeover == true)
            let beforeWait = try await store.events(third.id).count
            try await waitFor("z", .seconds(600))
            #expect(try await store.events(third.id).count == beforeWait + 1)
            #expect(try await store.claim(worker: "q", limit: 8, lease: .seconds(60)).isEmpty)
            // A cancel of a task waiting unheld makes it claimable at once, to be rolled back; the
            // run that rolls it back (a look until then) is recorded before its end.
            #expect(try await store.requestCancel(third.id).cancelRequested)
            let cancelled = try await store.claim(worker: "q", limit: 8, lease: .seconds(60))
            #expect(cancelled.map(\.id) == [third.id] && cancelled.first?.cancelRequested == true && cancelled.first?.attempts == 2)
            try await store.finish(id: third.id, worker: "q", status: .rolledBack, failure: nil, message: "rolled back")
            #expect(try await store.events(third.id).suffix(2).map(\.message) == ["claimed by q (attempt 3)", "rolled back"])

            // In its commit a cancel changes nothing (a commit is not cut short): the wait keeps its
            // delay, also when the cancel comes during a look.
            let fourth = try await store.create(newMove("erin", sources: ["/p/a/other"]))
            _ = try await store.claim(id: fourth.id, worker: "w", lease: .seconds(60))
            try await store.advance(id: fourth.id, worker: "w", to: .committing, plan: nil, message: "committing")
            let waitInCommit = { (worker: String) in
                try await store.wait(id: fourth.id, worker: worker, for: waiter.id, retryAfter: .seconds(600), message: "waiting: /p/a is locked by task \(waiter.id)")
            }
            try await waitInCommit("w")
            _ = try await store.requestCancel(fourth.id)
            #expect(try await store.claim(worker: "q", limit: 8, lease: .seconds(60)).isEmpty)
            _ = try #require(try await store.claim(id: fourth.id, worker: "w", lease: .seconds(60)))
            try await waitInCommit("w")
            #expect(try await store.claim(worker: "q", limit: 8, lease: .seconds(60)).isEmpty)
            // A holder that ends while a look runs leaves nothing to wait for: claimable at once,
            // and the next claim is an ordinary one.
            let looking = try #require(try await store.claim(id: fourth.id, worker: "w", lease: .seconds(60)))
            #expect(looking.attempts == 1)
            try await store.finish(id: waiter.id, worker: "x", status: .completed, failure: nil, message: "done")
            let quiet = try await store.events(fourth.id).count
            try await waitInCommit("w")
            #expect(try await store.events(fourth.id).count == quiet)
            let again = try await store.claim(worker: "r", limit: 1, lease: .seconds(60))
            #expect(again.map(\.id) == [fourth.id] && again.first?.attempts == 2, "\(again.map(\.attempts))")
            #expect(try await store.events(fourth.id).last?.message == "claimed by r (attempt 2)")
        }
    }

    /// A task that failed while committing (its plan marked `stoppedCommitting`) goes back to
    /// `committing` with its plan when retried, and is claimable at once; one that failed before
    /// goes back to `pending`, planned anew. Both retries are the history's `retried`.
    @Test(arguments: storeEngines)
    func aRetryResumesACommitThatStopped(engine: StoreUnderTest) async throws {
        try await withStore(engine) { store in
            var plans: [String: TaskPlan] = [:]
            for stopped in [true, false] {
                let task = try await store.create(newMove())
                _ = try await store.claim(id: task.id, worker: "w", lease: .seconds(30))
                var plan = TaskPlan(strategy: "copy", bytes: 10, allocatedBytes: 4096, entries: 3, inodes: 3,
                                    stagingName: StoredPath(".ferry-staging-\(task.id)"), finalNames: [StoredPath("data")],
                                    destinationDirectory: StoredPath("/p/b"))
                plan.stoppedCommitting = stopped ? true : nil
                try await store.advance(id: task.id, worker: "w", to: .committing, plan: plan, message: "publishing")
                try await store.finish(id: task.id, worker: "w", status: .failed, failure: TaskFailure(code: "permission", message: "EPERM"), message: "failed")
                plans[task.id] = plan
                let again = try await store.retry(task.id)
                #expect(again.status == (stopped ? .committing : .pending), "\(again.status)")
                #expect(again.plan == (stopped ? plan : nil))
                #expect(again.failure == nil && again.finishedAt == nil && again.leaseOwner == nil)
                #expect(try await store.events(task.id).last.map { [$0.status, $0.message] as [AnyHashable] }
                        == [stopped ? TaskStatus.committing : .pending, TaskEvent.retried] as [AnyHashable])
            }
            let claimed = try await store.claim(worker: "w2", limit: 5, lease: .seconds(30))
            #expect(Set(claimed.map(\.id)) == Set(plans.keys))
            for task in claimed { #expect(task.plan == (plans[task.id]?.stoppedCommitting == true ? plans[task.id] : nil)) }
        }
    }

    @Test(arguments: storeEngines)
    func concurrentClaimersNeverShareATask(engine: StoreUnderTest) async throws {
        try await withStore(engine) { store in
            for _ in 0..<200 { _ = try await store.create(newMove()) }
            let claims = try await withThrowingTaskGroup(of: [String].self) { group in
                for worker in 0..<8 {
                    group.addTask {
                        var mine: [String] = []
                        while true {
                            let batch = try await store.claim(worker: "w\(worker)", limit: 3, lease: .seconds(60))
                            if batch.isEmpty { return mine }
                            mine += batch.map(\.id)
                        }
                    }
                }
                var all: [String] = []
                for try await batch in group { all += batch }
                return all
            }
            #expect(claims.count == 200)
            #expect(Set(claims).count == 200)
        }
    }

    @Test(arguments: storeEngines)
    func listingFiltersAndPages(engine: StoreUnderTest) async throws {
        try await withStore(engine) { store in
            for i in 0..<5 { _ = try await store.create(newMove(i % 2 == 0 ? "alice" : "bob")) }
            #expect(try await store.list(TaskFilter(owner: "alice")).count == 3)
            #expect(try await store.list(TaskFilter(statuses: [.pending], limit: 2)).count == 2)
            #expect(try await store.list(TaskFilter(limit: 10, offset: 4)).count == 1)
            #expect(try await store.list(TaskFilter(statuses: [.completed])).isEmpty)
        }
    }

    /// The counts `/metrics` shows, from the store's own query: each state once, over every task.
    @Test(arguments: storeEngines)
    func tasksAreCountedByState(engine: StoreUnderTest) async throws {
        try await withStore(engine) { store in
            #expect(try await store.countByStatus().isEmpty)
            for i in 0..<5 { _ = try await store.create(newMove("owner\(i)")) }
            let claimed = try #require(try await store.claim(worker: "w", limit: 2, lease: .seconds(60)).first)
            try await store.finish(id: claimed.id, worker: "w", status: .completed, failure: nil, message: "done")
            let cancelled = try await store.create(newMove())
            _ = try await store.requestCancel(cancelled.id)
            let counts = try await store.countByStatus()
            #expect(counts == [.pending: 4, .completed: 1, .cancelled: 1], "\(counts)")
        }
    }

    /// A wake-up that finds nobody waiting is kept for the next wait (a worker busy claiming when
    /// work came), and only for one.
    @Test func aWakeUpWithNobodyWaitingIsKeptForTheNextWait() async {
        let wakeup = Wakeup()
        wakeup.signal()
        wakeup.signal()
        #expect(await wakeup.wait(timeout: .seconds(20)))
        #expect(await wakeup.wait(timeout: .milliseconds(300)) == false, "two signals with nobody waiting keep one wake-up, not two")
    }

    @Test(arguments: storeEngines)
    func waitersWakeOnNewWork(engine: StoreUnderTest) async throws {
        try await withStore(engine) { store in
            await store.waitForWork(timeout: .milliseconds(1))  // a wake-up kept from opening
            // Woken, not timed out: no wall clock, which other tests sharing the machine can stretch.
            async let woke = store.waitForWork(timeout: .seconds(120))
            try await Task.sleep(for: .milliseconds(100))
            _ = try await store.create(newMove())
            #expect(await woke)
        }
    }
}

