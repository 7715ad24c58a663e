import FerryJobs
@testable import FerryJobsPostgres
import FerryTestSupport
import Foundation
import Synchronization
import Testing

/// The PostgreSQL engine under the contract, where a throwaway cluster can run (root, PostgreSQL 15
/// installed): one cluster for the whole test process, started on first use and stopped at exit;
/// a fresh database per test, dropped afterwards.
let extraStoreEngines: [StoreUnderTest] = PostgresCluster.available ? [
    StoreUnderTest(name: "postgres") {
        let (cluster, database) = try SharedPostgresCluster.newDatabase()
        do {
            let store = try await SharedPostgresCluster.open(cluster, database)
            return (store, {
                await store.shutdown()
                try? cluster.dropDatabase(database)
            })
        } catch {
            try? cluster.dropDatabase(database)
            throw error
        }
    },
] : []

enum SharedPostgresCluster {
    private static let state = Mutex<Result<PostgresCluster, any Error>?>(nil)

    /// The process's cluster, started by the first caller (a failure to start is remembered) and
    /// stopped when the process exits.
    static func get() throws -> PostgresCluster {
        try state.withLock { state in
            if state == nil {
                state = Result { try PostgresCluster() }
                if case .success = state { atexit { SharedPostgresCluster.stop() } }
            }
            return try state!.get()
        }
    }

    static func stop() {
        let cluster = state.withLock { state in try? state?.get() }
        cluster?.stop()
    }

    static func newDatabase() throws -> (PostgresCluster, String) {
        let cluster = try get()
        let database = "t_" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        try cluster.createDatabase(database)
        return (cluster, database)
    }

    static func open(_ cluster: PostgresCluster, _ database: String) async throws -> PostgresTaskStore {
        try await PostgresTaskStore(host: cluster.host, port: cluster.port, user: PostgresCluster.user, password: nil, database: database)
    }
}

/// What only the PostgreSQL engine has: several stores (workers on several machines) on one database.
@Suite("PostgreSQL task store", .serialized, .enabled(if: PostgresCluster.available))
struct PostgresTaskStoreTests {
    /// Two stores on one fresh database, shut down and dropped afterwards.
    /// `defaults`: settings the database gives every session (`ALTER DATABASE … SET`), as a site may.
    func withTwoStores(defaults: [String] = [],
                       _ body: (PostgresCluster, String, PostgresTaskStore, PostgresTaskStore) async throws -> Void) async throws {
        let (cluster, database) = try SharedPostgresCluster.newDatabase()
        defer { try? cluster.dropDatabase(database) }
        for setting in defaults { try cluster.psql(database, "ALTER DATABASE \(database) SET \(setting)") }
        let first = try await SharedPostgresCluster.open(cluster, database)
        let second: PostgresTaskStore
        do { second = try await SharedPostgresCluster.open(cluster, database) } catch { await first.shutdown(); throw error }
        do {
            try await body(cluster, database, first, second)
        } catch {
            await first.shutdown(); await second.shutdown()
            throw error
        }
        await first.shutdown(); await second.shutdown()
    }

    func wakes(_ waiter: PostgresTaskStore, when action: () async throws -> Void) async throws -> Bool {
        await waiter.waitForWork(timeout: .milliseconds(1))  // a wake-up kept from before (listening began)
        // Woken, not timed out: no wall clock, which other tests sharing the machine can stretch.
        async let woke = waiter.waitForWork(timeout: .seconds(120))
        try await Task.sleep(for: .milliseconds(100))
        try await action()
        return await woke
    }

    @Test func anotherStoresNewWorkWakesTheWaiters() async throws {
        try await withTwoStores { cluster, database, waiter, creator in
            #expect(try await wakes(waiter) { _ = try await creator.create(newMove()) })
            // The listening connections are killed: each store listens again and still wakes. A
            // store is ready only once it listens; a listening connection's last statement is its
            // LISTEN, or, 30 s on, its keep-alive ping (which under load came before this point,
            // and the test had looked for LISTEN alone).
            // Five times over: once, a LISTEN sent on the connection that replaced a terminated
            // one never completed, and the store neither woke again nor shut down.
            for round in 1...5 {
                // Both stores listening again first (each reconnects on its own time).
                for _ in 0..<100 {
                    let listening = try cluster.psql(database, """
                        SELECT count(*) FROM pg_stat_activity
                        WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'
                        """)
                    if (Int(listening.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) >= 2 { break }
                    try await Task.sleep(for: .milliseconds(100))
                }
                let killed = try cluster.psql(database, """
                    SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                    WHERE datname = current_database() AND pid <> pg_backend_pid() AND (query ILIKE 'LISTEN%' OR query = 'SELECT 1')
                    """)
                #expect((Int(killed.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) >= 2, "round \(round)")
                try await Task.sleep(for: .seconds(1))
                #expect(try await wakes(waiter) { _ = try await creator.create(newMove()) }, "round \(round)")
            }
        }
    }

    @Test func claimByIDRecordAndHistory() async throws {
        try await withTwoStores { _, _, one, two in
            let task = try await one.create(newMove())
            let mine = try #require(try await one.claim(id: task.id, worker: "cli", lease: .seconds(30)))
            #expect(mine.attempts == 1 && mine.leaseOwner == "cli")
            #expect(try await two.claim(id: task.id, worker: "other", lease: .seconds(30)) == nil)
            #expect(try await two.claim(id: task.id, worker: "cli", lease: .seconds(30))?.attempts == 2)  // its own lease
            #expect(try await two.claim(worker: "other", limit: 5, lease: .seconds(30)).isEmpty)
            try await two.record(task.id, message: "note")
            await #expect(throws: TaskStoreError.notFound("nope")) { try await one.record("nope", message: "x") }
            await #expect(throws: TaskStoreError.notFound("nope")) {
                try await one.updateProgress(id: "nope", worker: "cli", TaskProgress())
            }
            await #expect(throws: TaskStoreError.leaseLost(task.id)) {
                try await one.updateProgress(id: task.id, worker: "other", TaskProgress())
            }
            let messages = try await one.events(task.id).map(\.message)
            #expect(messages.count == 4 && messages.last == "note")
            #expect(messages[1] == "claimed by cli (attempt 1)" && messages[2] == "claimed by cli (attempt 2)")
        }
    }

    /// A task on each store, claimed, then both locking overlapping paths (`/x/y` and `/x` on
    /// `filesystem`) at once, after `meanwhile`: which of the two took its locks.
    func raceForOverlappingLocks(_ one: PostgresTaskStore, _ two: PostgresTaskStore, filesystem: String,
                                 meanwhile: () async throws -> Void = {}) async throws -> (Bool, Bool) {
        let a = try await one.create(newMove())
        let b = try await two.create(newMove())
        #expect(try await one.claim(id: a.id, worker: "wa", lease: .seconds(30)) != nil)
        #expect(try await two.claim(id: b.id, worker: "wb", lease: .seconds(30)) != nil)
        try await meanwhile()
        async let first: Bool = (try? await one.acquireLocks(id: a.id, worker: "wa", [
            PathLock(taskID: a.id, filesystem: filesystem, path: StoredPath("/x/y")),
        ])) != nil
        async let second: Bool = (try? await two.acquireLocks(id: b.id, worker: "wb", [
            PathLock(taskID: b.id, filesystem: filesystem, path: StoredPath("/x")),
        ])) != nil
        return await (first, second)
    }

    @Test func racingLockTakersOnTwoStoresNeverBothWin() async throws {
        try await withTwoStores { _, _, one, two in
            for round in 0..<20 {
                let (wonA, wonB) = try await raceForOverlappingLocks(one, two, filesystem: "9:\(round)")
                #expect(wonA != wonB, "round \(round): exactly one of the two overlapping lock sets is taken")
            }
        }
    }

    /// A site may make REPEATABLE READ its default. The lock check after the advisory lock then
    /// read the snapshot its transaction took at its first statement, before the lock was granted:
    /// two tasks that reached the advisory lock together both took their overlapping locks. The
    /// store begins its transactions in READ COMMITTED whatever the default. Here a third session holds
    /// the advisory lock until both takers have begun and wait for it.
    /// Claims from many stores at once under a REPEATABLE READ default: a claim whose snapshot
    /// predates another's (the queue row it locks was deleted since) is undone by the server
    /// (40001) and run again, so no claim fails and no task is claimed twice.
    @Test func concurrentClaimsUnderARepeatableReadDefaultNeitherFailNorDoubleUp() async throws {
        let (cluster, database) = try SharedPostgresCluster.newDatabase()
        defer { try? cluster.dropDatabase(database) }
        try cluster.psql(database, "ALTER DATABASE \(database) SET default_transaction_isolation = 'repeatable read'")
        var stores: [PostgresTaskStore] = []
        for _ in 0..<6 { stores.append(try await SharedPostgresCluster.open(cluster, database)) }
        for index in 0..<300 { _ = try await stores[0].create(newMove(sources: ["/p/a/\(index)"])) }
        let claimed = try await withThrowingTaskGroup(of: [String].self) { group in
            for (number, store) in stores.enumerated() {
                group.addTask {
                    var mine: [String] = []
                    while let task = try await store.claim(worker: "w\(number)-\(mine.count)", limit: 1, lease: .seconds(60)).first {
                        mine.append(task.id)
                    }
                    return mine
                }
            }
            return try await group.reduce(into: [String]()) { $0 += $1 }
        }
        #expect(claimed.count == 300 && Set(claimed).count == 300, "\(claimed.count) claims of \(Set(claimed).count) tasks")
        for store in stores { await store.shutdown() }
    }

    /// A role with no CREATE on the schema (PostgreSQL 15's default on `public`) opens a store on
    /// a database whose owner brought the schema up to date, and claims from it.
    @Test func aRoleWithoutCreateUsesTheSchemaItsOwnerMade() async throws {
        let (cluster, database) = try SharedPostgresCluster.newDatabase()
        let role = "worker_" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        defer {
            _ = try? cluster.psql(database, "DROP OWNED BY \(role)")
            try? cluster.dropDatabase(database)
            _ = try? cluster.psql("postgres", "DROP ROLE IF EXISTS \(role)")
        }
        await (try await SharedPostgresCluster.open(cluster, database)).shutdown()
        try cluster.psql(database, """
            CREATE ROLE \(role) LOGIN; REVOKE CREATE ON SCHEMA public FROM PUBLIC; GRANT USAGE ON SCHEMA public TO \(role);
            GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO \(role);
            GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO \(role)
            """)
        let worker = try await PostgresTaskStore(host: cluster.host, port: cluster.port, user: role, password: nil, database: database)
        let task = try await worker.create(newMove())
        let claimed = try await worker.claim(worker: "w", limit: 1, lease: .seconds(30))
        await worker.shutdown()
        #expect(claimed.map(\.id) == [task.id])
    }

    @Test func overlappingLocksStayExclusiveUnderARepeatableReadDefault() async throws {
        try await withTwoStores(defaults: ["default_transaction_isolation = 'repeatable read'"]) { cluster, database, one, two in
            for round in 0..<3 {
                let released = DispatchSemaphore(value: 0)
                let (wonA, wonB) = try await raceForOverlappingLocks(one, two, filesystem: "8:\(round)") {
                    Thread.detachNewThread {
                        _ = try? cluster.psql(database, "SELECT pg_advisory_xact_lock(\(PostgresSchema.pathLock)), pg_sleep(1.5)")
                        released.signal()
                    }
                    try await Task.sleep(for: .milliseconds(400))
                }
                released.wait()
                #expect(wonA != wonB, "round \(round): exactly one of the two overlapping lock sets is taken")
            }
        }
    }
}
