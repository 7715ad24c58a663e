@testable import FerryJobsPostgres
@testable import FerryJobs
import FerryTestSupport
import Foundation
import Synchronization
import Testing

/// What the workers of the two-store test saw.
final class Tally: Sendable {
    let held = Mutex<Set<String>>([])
    let doubleHeld = Mutex<[String]>([])
    let ended = Mutex(0)
}

/// How the PostgreSQL store claims: the queue table, the claim statement's plan, claims that
/// share a statement, and the migration that brought them.
@Suite("PostgreSQL claims", .serialized, .enabled(if: PostgresCluster.available))
struct PostgresClaimTests {
    /// A fresh database and a store on it, both thrown away afterwards.
    func withStore(_ body: (PostgresCluster, String, PostgresTaskStore) async throws -> Void) async throws {
        let (cluster, database) = try SharedPostgresCluster.newDatabase()
        defer { try? cluster.dropDatabase(database) }
        let store = try await SharedPostgresCluster.open(cluster, database)
        do { try await body(cluster, database, store) } catch { await store.shutdown(); throw error }
        await store.shutdown()
    }

    /// The largest row count any node of the plan produced, over all its loops.
    static func largestNode(_ plan: [String: Any]) -> Int {
        let own = ((plan["Actual Rows"] as? Int) ?? 0) * ((plan["Actual Loops"] as? Int) ?? 1)
        let children = (plan["Plans"] as? [[String: Any]]) ?? []
        return children.map(largestNode).reduce(own, max)
    }

    /// The claim statement reads a handful of rows however long the backlog and however many
    /// leases are live. Schema version 2 found expired leases by filtering every live lease (the
    /// time came from a CTE, so it could not bound the index scan) and, on a table whose
    /// statistics predate the backlog, sorted the whole backlog to take its oldest task.
    @Test func aClaimReadsAHandfulOfRowsWhateverTheBacklog() async throws {
        try await withStore { cluster, database, store in
            let template = try await store.create(newMove())
            try cluster.psql(database, """
                INSERT INTO tasks (id, kind, sources, destination, options, owner, status, progress, created_at, updated_at)
                SELECT lpad(to_hex(g), 16, '0'), kind, sources, destination, options, owner, status, progress, g, g
                FROM tasks, generate_series(1, 3000) g WHERE id = '\(template.id)'
                """)
            let busy = try await store.claim(worker: "busy", limit: 1500, lease: .seconds(3600))
            #expect(busy.count == 1500)
            #expect(busy.first?.createdAt == Date(timeIntervalSince1970: 1))
            let output = try cluster.psql(database, """
                PREPARE claim_test(text[], float8[]) AS \(ClaimSQL.text(limit: 4));
                EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim_test('{w,w,w,w}', '{60,60,60,60}')
                """)
            let explained = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [[String: Any]]
            let plan = try #require(explained?.first?["Plan"] as? [String: Any])
            #expect(Self.largestNode(plan) <= 16, "\(output)")
            let leased = try cluster.psql(database, "SELECT count(*) FROM tasks WHERE lease_owner = 'w'")
            #expect(leased.trimmingCharacters(in: .whitespacesAndNewlines) == "4")
            // The one-slot statement, which a worker claiming alone runs, likewise; it takes the
            // oldest task left.
            let single = try cluster.psql(database, """
                PREPARE claim_one(text, float8) AS \(ClaimSQL.single);
                EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim_one('alone', 60)
                """)
            let singlePlan = try #require((try JSONSerialization.jsonObject(with: Data(single.utf8)) as? [[String: Any]])?.first?["Plan"] as? [String: Any])
            #expect(Self.largestNode(singlePlan) <= 16, "\(single)")
            let alone = try cluster.psql(database, "SELECT created_at, attempts FROM tasks WHERE lease_owner = 'alone'")
            #expect(alone.trimmingCharacters(in: .whitespacesAndNewlines) == "1505|1", "\(alone)")
        }
    }

    /// A queue row left stale (a data-only restore with triggers off) is not taken on its word:
    /// the task it names, leased to another worker, is not handed out again, and the row goes,
    /// so the tasks behind it are claimed (a claim that comes back short sweeps it away). Before,
    /// the claim stole the lease; then, checked but not removed, the row stopped the queue for good.
    @Test func aStaleQueueRowNeitherStealsALeaseNorStopsTheQueue() async throws {
        try await withStore { cluster, database, store in
            for limit in [1, 2] {
                let held = try await store.create(newMove())
                #expect(try await store.claim(id: held.id, worker: "holder", lease: .seconds(600)) != nil)
                try cluster.psql(database, "INSERT INTO task_queue (task_id, created_at) SELECT id, created_at FROM tasks WHERE id = '\(held.id)'")
                let waiting = try await store.create(newMove())
                var claimed: [TaskRecord] = []
                for _ in 0..<100 where claimed.isEmpty {  // an empty claim sweeps the stale row, in the background
                    claimed = try await store.claim(worker: "other", limit: limit, lease: .seconds(60))
                    if claimed.isEmpty { try await Task.sleep(for: .milliseconds(50)) }
                }
                #expect(claimed.map(\.id) == [waiting.id], "limit \(limit)")
                #expect(try await store.task(held.id)?.leaseOwner == "holder")
                // Swept (in the background) after the claim that came back short.
                var queued = ""
                for _ in 0..<100 {
                    queued = try cluster.psql(database, "SELECT count(*) FROM task_queue WHERE task_id = '\(held.id)'")
                        .trimmingCharacters(in: .whitespacesAndNewlines)
                    if queued == "0" { break }
                    try await Task.sleep(for: .milliseconds(50))
                }
                #expect(queued == "0")
            }
        }
    }

    /// A store that has taken many tasks from the queue vacuums it (in the background), so that
    /// claims do not step over the index entries of every task taken since autovacuum last came.
    @Test func takingManyTasksVacuumsTheQueue() async throws {
        try await withStore { cluster, database, store in
            let template = try await store.create(newMove())
            try cluster.psql(database, """
                INSERT INTO tasks (id, kind, sources, destination, options, owner, status, progress, created_at, updated_at)
                SELECT lpad(to_hex(g), 16, '0'), kind, sources, destination, options, owner, status, progress, g, g
                FROM tasks, generate_series(1, \(store.queueVacuum.every)) g WHERE id = '\(template.id)'
                """)
            func vacuums() throws -> Int {
                Int(try cluster.psql(database, "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'task_queue'")
                    .trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
            }
            #expect(try vacuums() == 0)
            let taken = try await store.claim(worker: "w", limit: store.queueVacuum.every, lease: .seconds(60))
            #expect(taken.count == store.queueVacuum.every)
            let deadline = ContinuousClock.now + .seconds(20)
            while try vacuums() == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
            #expect(try vacuums() == 1)
            #expect(try await store.claim(worker: "w", limit: 10, lease: .seconds(60)).map(\.id) == [template.id])
        }
    }

    /// Claims made at once through one store may share a statement; each still gets its own
    /// worker, lease length and limit, oldest tasks first, its attempt counted and recorded.
    @Test func concurrentClaimsKeepTheirOwnWorkerLeaseAndLimit() async throws {
        try await withStore { _, _, store in
            for _ in 0..<40 { _ = try await store.create(newMove()) }
            let got = try await withThrowingTaskGroup(of: (Int, [TaskRecord]).self) { group in
                for i in 0..<10 {
                    group.addTask {
                        (i, try await store.claim(worker: "w\(i)", limit: i % 3 + 1, lease: .seconds(Double(10 * (i + 1)))))
                    }
                }
                var got: [Int: [TaskRecord]] = [:]
                for try await (i, tasks) in group { got[i] = tasks }
                return got
            }
            var all: [String] = []
            for (i, tasks) in got {
                #expect(tasks.count == i % 3 + 1)
                #expect(tasks.map(\.createdAt) == tasks.map(\.createdAt).sorted())
                for task in tasks {
                    all.append(task.id)
                    #expect(task.leaseOwner == "w\(i)" && task.attempts == 1)
                    let lease = try #require(task.leaseExpiresAt).timeIntervalSince(task.updatedAt)
                    #expect(abs(lease - Double(10 * (i + 1))) < 0.01)
                    #expect(try await store.events(task.id).last?.message == "claimed by w\(i) (attempt 1)")
                }
            }
            #expect(all.count == 19 && Set(all).count == 19)
            // The 19 oldest were taken; the others are still there, oldest first.
            let rest = try await store.claim(worker: "rest", limit: 100, lease: .seconds(30))
            #expect(rest.count == 21)
            let taken = try await store.list(TaskFilter(limit: 100)).filter { $0.leaseOwner?.hasPrefix("w") == true }
            #expect(taken.map(\.createdAt).max()! <= rest.map(\.createdAt).min()!)
        }
    }

    /// Workers on two stores claim, release for a retry, finish, while another client cancels:
    /// no task is ever held by two workers at once, and every task ends.
    @Test func workersOnTwoStoresWithRetriesAndCancelsTakeEveryTaskOnceAtATime() async throws {
        let (cluster, database) = try SharedPostgresCluster.newDatabase()
        defer { try? cluster.dropDatabase(database) }
        var stores: [PostgresTaskStore] = []
        do {
            for _ in 0..<2 { stores.append(try await SharedPostgresCluster.open(cluster, database)) }
            var created: [String] = []
            for _ in 0..<150 { created.append(try await stores[0].create(newMove()).id) }
            let ids = created, both = stores
            let tally = Tally()
            let deadline = ContinuousClock.now + .seconds(60)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for worker in 0..<6 {
                    let store = both[worker % 2]
                    group.addTask {
                        while tally.ended.withLock({ $0 }) < ids.count && ContinuousClock.now < deadline {
                            let batch = try await store.claim(worker: "w\(worker)", limit: worker % 3 + 1, lease: .seconds(60))
                            if batch.isEmpty {
                                try await Task.sleep(for: .milliseconds(5))
                                continue
                            }
                            for task in batch {
                                tally.held.withLock { held in
                                    if !held.insert(task.id).inserted { tally.doubleHeld.withLock { $0.append(task.id) } }
                                }
                            }
                            for task in batch {
                                tally.held.withLock { _ = $0.remove(task.id) }  // before the change commits
                                if task.cancelRequested {
                                    try await store.finish(id: task.id, worker: "w\(worker)", status: .cancelled, failure: nil, message: "cancelled")
                                    tally.ended.withLock { $0 += 1 }
                                } else if task.attempts == 1 && task.id.last!.hexDigitValue! % 2 == 0 {
                                    try await store.release(id: task.id, worker: "w\(worker)", retryAfter: nil,
                                                            failure: TaskFailure(code: "io", message: "EIO"), message: "retry")
                                } else {
                                    try await store.finish(id: task.id, worker: "w\(worker)", status: .completed, failure: nil, message: "done")
                                    tally.ended.withLock { $0 += 1 }
                                }
                            }
                        }
                    }
                }
                group.addTask {
                    for id in ids.prefix(30) {
                        if try await both[1].requestCancel(id).status == .cancelled { tally.ended.withLock { $0 += 1 } }
                    }
                }
                try await group.waitForAll()
            }
            #expect(tally.doubleHeld.withLock { $0 }.isEmpty)
            #expect(tally.ended.withLock { $0 } == ids.count)
            let tasks = try await stores[0].list(TaskFilter(limit: 1000))
            #expect(tasks.count == ids.count && tasks.allSatisfy { $0.status.isTerminal })
            #expect(try cluster.psql(database, "SELECT count(*) FROM task_queue").trimmingCharacters(in: .whitespacesAndNewlines) == "0")
        } catch {
            for store in stores { await store.shutdown() }
            throw error
        }
        for store in stores { await store.shutdown() }
    }

    /// A database at schema version 2 is migrated: its running, unleased tasks are queued, and a
    /// ferry of the previous version still writing to it (plain updates of `tasks`) keeps the
    /// queue right, through the trigger.
    @Test func migrationFromVersion2QueuesTheClaimableTasks() async throws {
        let (cluster, database) = try SharedPostgresCluster.newDatabase()
        defer { try? cluster.dropDatabase(database) }
        try cluster.psql(database, """
            CREATE TABLE ferry_schema_version (version integer PRIMARY KEY, applied_at double precision NOT NULL);
            \(PostgresSchema.migrations[0].joined(separator: ";\n"));
            \(PostgresSchema.migrations[1].joined(separator: ";\n"));
            INSERT INTO ferry_schema_version VALUES (1, 0), (2, 0)
            """)
        let sources = try PostgresSchema.json([StoredPath("/p/a/data")]), destination = try PostgresSchema.json(StoredPath("/p/b"))
        let options = try PostgresSchema.json(TaskOptions()), progress = try PostgresSchema.json(TaskProgress())
        let far = Date().timeIntervalSince1970 + 3600
        // id, status, lease owner, lease expiry, not before (created_at is the row number)
        let rows: [(String, String, String?, Double?, Double?)] = [
            ("a", "pending", nil, nil, nil),
            ("b", "copying", "old", far, nil),
            ("c", "completed", nil, nil, nil),
            ("d", "pending", nil, nil, far),
            ("e", "verifying", nil, nil, nil),
            ("f", "pending", "gone", 10, nil),
        ]
        func sql(_ text: String?) -> String { text.map { "'\($0)'" } ?? "NULL" }
        func sql(_ number: Double?) -> String { number.map { "\($0)" } ?? "NULL" }
        let values = rows.enumerated().map { index, row in
            "('\(row.0)', 'move', '\(sources)', '\(destination)', '\(options)', 'alice', '\(row.1)', '\(progress)', " +
                "\(sql(row.2)), \(sql(row.3)), \(sql(row.4)), \(index + 1), \(index + 1))"
        }
        try cluster.psql(database, """
            INSERT INTO tasks (id, kind, sources, destination, options, owner, status, progress,
                               lease_owner, lease_expires_at, not_before, created_at, updated_at)
            VALUES \(values.joined(separator: ", "))
            """)

        let store = try await SharedPostgresCluster.open(cluster, database)
        do {
            let version = try cluster.psql(database, "SELECT max(version) FROM ferry_schema_version")
            #expect(version.trimmingCharacters(in: .whitespacesAndNewlines) == String(PostgresSchema.migrations.count))
            let queued = try cluster.psql(database, "SELECT string_agg(task_id, ',' ORDER BY created_at) FROM task_queue")
            #expect(queued.trimmingCharacters(in: .whitespacesAndNewlines) == "a,d,e")
            // The free ones and the one whose lease expired, oldest first; not the one waiting to retry.
            let claimed = try await store.claim(worker: "new", limit: 10, lease: .seconds(30))
            #expect(claimed.map(\.id) == ["a", "e", "f"])
            #expect(claimed.map(\.attempts) == [1, 1, 1])
            // The previous version gives "b" back and retries "c" with plain updates.
            try cluster.psql(database, "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL WHERE id = 'b'")
            try cluster.psql(database, "UPDATE tasks SET status = 'pending' WHERE id = 'c'")
            #expect(try await store.claim(worker: "new", limit: 10, lease: .seconds(30)).map(\.id) == ["b", "c"])
            try cluster.psql(database, "UPDATE tasks SET not_before = NULL WHERE id = 'd'")
            #expect(try await store.claim(worker: "new", limit: 10, lease: .seconds(30)).map(\.id) == ["d"])
            #expect(try cluster.psql(database, "SELECT count(*) FROM task_queue").trimmingCharacters(in: .whitespacesAndNewlines) == "0")
        } catch {
            await store.shutdown()
            throw error
        }
        await store.shutdown()
    }
}
