import FerryCopy
import FerryJobs
import FerryMove
import FerryTestSupport
import Foundation
import Synchronization
import Testing

@Suite("A database that fails a call mid-task", .serialized)
struct DatabaseFaultTests {
    /// A connection reset or a failover fails one call of the engine's. That is a passing fault,
    /// retried with backoff and rolling nothing back, as the filesystem's passing faults are.
    /// Before, a database error anywhere before the commit failed the task and removed what it
    /// had staged: a failover cost every running move its copy.
    @Test func aFailedCallIsRetriedNotRolledBack() async throws {
        let failing = Mutex(true)
        let directory = try TemporaryDirectory.make(prefix: "ferry-database-fault")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = HookedStore(try SQLiteTaskStore(path: directory + "/ferry.sqlite"), beforeAdvance: { _, status in
            guard status == .verifying, failing.withLock({ let was = $0; $0 = false; return was }) else { return }
            throw TaskStoreError.database("connection reset by peer")
        })
        let engine = MoveEngine(store: store, settings: .init(worker: "test-worker", lease: .seconds(30), jobs: 2))
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeTree(a + "/one", files: 5)
            let before = try TreeSnapshot.take(a + "/one")
            let created = try await store.create(NewTask(kind: .move, sources: [StoredPath(a + "/one")], destination: StoredPath(b), owner: "test"))
            let claimed = try #require(try await store.claim(id: created.id, worker: "test-worker", lease: .seconds(30)))
            _ = await engine.run(claimed)
            let record = try #require(try await store.task(created.id))
            let history = try await store.events(created.id).map(\.message)
            #expect(!record.status.isTerminal && record.leaseOwner == nil && record.notBefore != nil, "\(record.status) \(history)")
            #expect(history.last?.hasPrefix("retrying in 2 s: database: connection reset by peer") == true, "\(history)")
            #expect(listing(b) == [".ferry-staging-\(created.id)"])
            #expect(try before.differences(to: TreeSnapshot.take(a + "/one")).isEmpty)
            // Run again when its time comes: it goes on from what it staged, to the end.
            try await Task.sleep(for: .milliseconds(2200))
            let again = try #require(try await store.claim(id: created.id, worker: "test-worker", lease: .seconds(30)))
            let finished = await engine.run(again)
            let events = try await store.events(created.id).map(\.message)
            #expect(finished.status == .completed, "\(events)")
            #expect(try before.differences(to: TreeSnapshot.take(b + "/one")).isEmpty)
            #expect(listing(a).isEmpty)
        }
    }

    /// A worker whose claims fail (the database down) says so each time: run `once` (from cron),
    /// it stops at the first, for its caller to exit non-zero; run until stopped, it tries again
    /// after its wait, not in a loop. Before, a failed claim read as "no work".
    @Test func aWorkerThatCannotClaimSaysSo() async throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-claim-fault")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = HookedStore(try SQLiteTaskStore(path: directory + "/ferry.sqlite"), beforeClaim: {
            throw TaskStoreError.database("the database is down")
        })
        let engine = MoveEngine(store: store, settings: .init(worker: "w"))
        let failures = Mutex(0)
        let worker = Worker(engine: engine, concurrency: 2, owner: nil, onClaimFailure: { _ in failures.withLock { $0 += 1 } })
        #expect(await worker.run(once: true).isEmpty)
        #expect(failures.withLock { $0 } == 1)
        let stop = CancellationFlag()
        let started = ContinuousClock.now
        let running = Task { await worker.run(stop: stop) }
        // It tries again (twice, however slow this machine is)…
        while failures.withLock({ $0 }) < 3 && ContinuousClock.now - started < .seconds(60) { try await Task.sleep(for: .milliseconds(50)) }
        stop.cancel()
        _ = await running.value
        let again = failures.withLock { $0 } - 1
        let seconds = Double((ContinuousClock.now - started).components.seconds) + 1
        #expect(again >= 2, "\(again) claims in \(seconds) s")
        // …after its wait of 2 s each time, not in a loop.
        #expect(Double(again) <= seconds / 2 + 2, "\(again) claims in \(seconds) s: one each wait of 2 s")
    }
}
