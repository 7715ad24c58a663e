import FerryJobs
import Foundation
import PostgresNIO

/// The task store for many workers on many machines: PostgreSQL through a connection pool.
/// Same contract and history messages as `SQLiteTaskStore`. Claims are one prepared statement
/// that takes free tasks from a narrow queue table and skips rows other claimers hold (`FOR
/// UPDATE SKIP LOCKED`); claims made at the same time through one store share a statement. Every
/// fenced change locks the task's row first; path locks are checked and taken under one advisory
/// lock; leases use the database's clock. New work is announced with `NOTIFY ferry_tasks`, which
/// every store listens to.
public final class PostgresTaskStore: TaskStore {
    static let channel = "ferry_tasks"
    static let runningStatuses = TaskStatus.running.map(\.rawValue)
    static let clock = PostgresSchema.clock

    let client: PostgresClient
    let logger: Logger
    let wakeup: Wakeup
    /// Concurrent claims through this store share statements.
    let claims = ClaimCombiner()
    let queueVacuum = QueueVacuum()
    let staleSweep = OneAtATime()
    let runTask: Task<Void, Never>
    let listenTask: Task<Void, Never>

    /// Connects, brings the schema up to date and starts listening for new work.
    public init(host: String, port: Int, user: String, password: String?, database: String, tls: PostgresTLS = PostgresTLS()) async throws {
        let logger = { var logger = Logger(label: "ferry.jobs.postgres"); logger.logLevel = .critical; return logger }()
        // One plain connection first, for the migrations and for a clear error at once: the pool
        // retries a failing server for about a minute and then reports only that it gave up.
        let first: PostgresConnection
        do {
            var single = PostgresConnection.Configuration(host: host, port: port, username: user, password: password, database: database,
                                                          tls: try Self.encryption(tls).connection())
            single.options.additionalStartupParameters = Self.sessionParameters
            first = try await PostgresConnection.connect(configuration: single, id: 0, logger: logger)
        } catch let error as PSQLError {
            throw TaskStoreError.database("cannot connect to postgres://\(user)@\(host):\(port)/\(database): \(PostgresSchema.describe(error))")
        }
        do {
            try await Self.inTransaction(first, logger) { connection in try await PostgresSchema.migrate(connection, logger: logger) }
        } catch {
            try? await first.close()
            throw error
        }
        try? await first.close()

        var configuration = PostgresClient.Configuration(host: host, port: port, username: user, password: password,
                                                         database: database, tls: try Self.encryption(tls).client())
        configuration.options.additionalStartupParameters = Self.sessionParameters
        let client = PostgresClient(configuration: configuration)
        let wakeup = Wakeup()
        self.client = client
        self.logger = logger
        self.wakeup = wakeup
        runTask = Task { await client.run() }
        let (ready, readyContinuation) = AsyncStream<(any Error)?>.makeStream()
        listenTask = Task {
            await PostgresListener.run(client: client, wakeup: wakeup, logger: logger, ready: readyContinuation)
        }
        do {
            // Not ready before LISTEN is in place: a notification sent before it would be lost.
            for await outcome in ready {
                if let outcome = outcome as? PSQLError { throw TaskStoreError.database(PostgresSchema.describe(outcome)) }
                if let outcome { throw outcome }
                break
            }
        } catch {
            await shutdown()
            throw error
        }
    }

    /// Stops listening and closes the pool's connections. The store is unusable afterwards.
    public func shutdown() async {
        listenTask.cancel()
        await PostgresListener.wait(for: listenTask, atMost: .seconds(5))
        runTask.cancel()
        await PostgresListener.wait(for: runTask, atMost: .seconds(10))
        wakeup.signal()
    }

    public func close() async {
        await shutdown()
    }

    deinit {
        listenTask.cancel()
        runTask.cancel()
    }

    // MARK: reading

    public func task(_ id: String) async throws -> TaskRecord? {
        try await rows("SELECT \(unescaped: PostgresSchema.columns()) FROM tasks WHERE id = \(id)").first.map(PostgresSchema.record)
    }

    public func list(_ filter: TaskFilter) async throws -> [TaskRecord] {
        var binds = PostgresBindings()
        var clauses: [String] = []
        if let statuses = filter.statuses, !statuses.isEmpty {
            binds.append(statuses.map(\.rawValue))
            clauses.append("status = ANY($\(binds.count))")
        }
        if let owner = filter.owner {
            binds.append(owner)
            clauses.append("owner = $\(binds.count)")
        }
        let whereClause = clauses.isEmpty ? "" : "WHERE " + clauses.joined(separator: " AND ")
        binds.append(filter.limit < 0 ? nil : filter.limit)  // a negative limit means none, as in SQLite
        binds.append(max(filter.offset, 0))
        let sql = "SELECT \(PostgresSchema.columns()) FROM tasks \(whereClause) ORDER BY created_at DESC, id LIMIT $\(binds.count - 1) OFFSET $\(binds.count)"
        return try await rows(PostgresQuery(unsafeSQL: sql, binds: binds)).map(PostgresSchema.record)
    }

    public func events(_ id: String) async throws -> [TaskEvent] {
        try await rows("SELECT task_id, at, status, message FROM task_events WHERE task_id = \(id) ORDER BY seq").map { row in
            let (taskID, at, status, message) = try row.decode((String, Double, String, String).self)
            return TaskEvent(taskID: taskID, at: Date(timeIntervalSince1970: at), status: TaskStatus(rawValue: status) ?? .failed, message: message)
        }
    }

    public func locks() async throws -> [PathLock] {
        try await rows("SELECT task_id, filesystem, path FROM path_locks ORDER BY task_id, filesystem, path").map(Self.pathLock)
    }

    // MARK: writing

    public func create(_ new: NewTask) async throws -> TaskRecord {
        let id = Identifier.make()
        let sources = try PostgresSchema.json(new.sources), destination = try PostgresSchema.json(new.destination)
        let options = try PostgresSchema.json(new.options), progress = try PostgresSchema.json(TaskProgress())
        let message = "created by \(new.owner): \(new.kind.rawValue) \(new.sources.map(\.description).joined(separator: ", ")) → \(new.destination)"
        let record = try await transaction { connection -> TaskRecord in
            let inserted = try await self.run(connection, """
                INSERT INTO tasks (id, kind, sources, destination, options, owner, status, progress, created_at, updated_at)
                SELECT \(id), \(new.kind.rawValue), \(sources)::jsonb, \(destination)::jsonb, \(options)::jsonb, \(new.owner),
                       'pending', \(progress)::jsonb, n.now, n.now
                FROM (SELECT \(unescaped: Self.clock) AS now) n
                RETURNING \(unescaped: PostgresSchema.columns())
                """)
            guard let row = inserted.first else { throw TaskStoreError.database("insert of task \(id) returned nothing") }
            try await self.event(connection, id, .pending, message)
            try await self.notify(connection, id)
            return try PostgresSchema.record(row)
        }
        wakeup.signal()
        return record
    }

    public func claim(worker: String, limit: Int, lease: Duration) async throws -> [TaskRecord] {
        guard limit > 0 else { return [] }
        return try await claims.claim(ClaimRequest(worker: worker, limit: limit, lease: lease)) { requests in
            try await self.claim(requests)
        }
    }

    /// One statement that serves several claims (see `ClaimSQL`): request i gets the slots after
    /// those of the requests before it, one slot per task it may take.
    func claim(_ requests: [ClaimRequest]) async throws -> [[TaskRecord]] {
        let workers = requests.flatMap { Array(repeating: $0.worker, count: $0.limit) }
        let leases = requests.flatMap { Array(repeating: $0.lease.seconds, count: $0.limit) }
        let rows = try await claimRows(workers: workers, leases: leases)
        tookFromQueue(rows.count)
        if rows.count < workers.count { sweepStaleQueueRows() }
        var claimed = [[TaskRecord]](repeating: [], count: requests.count)
        var ends: [Int] = []  // the last slot of each request
        for request in requests { ends.append((ends.last ?? 0) + request.limit) }
        for row in rows {
            let columns = row.makeRandomAccess()
            let slot = try columns["slot"].decode(Int.self)
            guard slot <= workers.count, let index = ends.firstIndex(where: { slot <= $0 }) else { continue }
            var record = try PostgresSchema.record(row)
            record.takenOverFrom = try columns["previous"].decode(String?.self)
            claimed[index].append(record)
        }
        return claimed
    }

    public func claim(id: String, worker: String, lease: Duration) async throws -> TaskRecord? {
        try await rows("""
            WITH n AS MATERIALIZED (SELECT \(unescaped: Self.clock) AS now, \(worker)::text AS worker, \(lease.seconds)::float8 AS lease, set_config('synchronous_commit', 'on', true)),
            c AS MATERIALIZED (
                SELECT tasks.id, nullif(tasks.lease_owner, n.worker) AS previous FROM tasks, n
                WHERE tasks.id = \(id)
                  AND tasks.status = ANY(\(Self.runningStatuses))
                  AND (tasks.lease_expires_at IS NULL OR tasks.lease_expires_at < n.now OR tasks.lease_owner = n.worker)
                FOR UPDATE OF tasks),
            u AS (
                UPDATE tasks t SET lease_owner = n.worker, lease_expires_at = n.now + n.lease,
                  attempts = t.attempts + \(unescaped: ClaimSQL.counted("c.previous")),
                  waiting_for = \(unescaped: ClaimSQL.keptWait("c.previous")), updated_at = n.now
                FROM c, n WHERE t.id = c.id
                RETURNING t.*, c.previous),
            e AS (
                INSERT INTO task_events (task_id, at, status, message)
                SELECT u.id, n.now, u.status,
                       'claimed by ' || n.worker || ' (attempt ' || u.attempts || ')' || coalesce(' after the lease of ' || u.previous || ' expired', '')
                FROM u, n WHERE u.waiting_for IS NULL)
            SELECT \(unescaped: PostgresSchema.columns("u")), u.previous FROM u
            """).first.map { row in
                var record = try PostgresSchema.record(row)
                record.takenOverFrom = try row.makeRandomAccess()["previous"].decode(String?.self)
                return record
            }
    }

    public func heartbeat(id: String, worker: String, lease: Duration) async throws -> Bool {
        try await !rows("""
            UPDATE tasks SET lease_expires_at = n.now + \(lease.seconds)::float8
            FROM (SELECT \(unescaped: Self.clock) AS now) n
            WHERE tasks.id = \(id) AND tasks.lease_owner = \(worker)
            RETURNING 1
            """).isEmpty
    }

    public func advance(id: String, worker: String, to status: TaskStatus, plan: TaskPlan?, message: String) async throws {
        let planText = try plan.map(PostgresSchema.json)
        try await transaction { connection in
            _ = try await self.fence(connection, id, worker)
            try await self.endWait(connection, id)
            try await self.run(connection, """
                UPDATE tasks SET status = \(status.rawValue), plan = coalesce(\(planText)::jsonb, plan), updated_at = \(unescaped: Self.clock)
                WHERE id = \(id)
                """)
            try await self.event(connection, id, status, message)
        }
    }

    public func updateProgress(id: String, worker: String, _ progress: TaskProgress) async throws {
        // One fenced statement: progress is written often.
        let updated = try await rows("""
            UPDATE tasks SET progress = \(try PostgresSchema.json(progress))::jsonb, updated_at = n.now
            FROM (SELECT \(unescaped: Self.clock) AS now) n
            WHERE tasks.id = \(id) AND tasks.lease_owner = \(worker)
            RETURNING 1
            """)
        if updated.isEmpty {
            guard try await !rows("SELECT 1 FROM tasks WHERE id = \(id)").isEmpty else { throw TaskStoreError.notFound(id) }
            throw TaskStoreError.leaseLost(id)
        }
    }

    public func finish(id: String, worker: String, status: TaskStatus, failure: TaskFailure?, message: String) async throws {
        guard status.isTerminal else { throw TaskStoreError.invalidTransition("finish needs a terminal status, not \(status.rawValue)") }
        try await transaction { connection in
            let (_, now) = try await self.fence(connection, id, worker)
            try await self.endWait(connection, id)
            try await self.run(connection, """
                UPDATE tasks SET status = \(status.rawValue), failure_code = \(failure?.code), failure_message = \(failure?.message),
                  lease_owner = NULL, lease_expires_at = NULL, finished_at = \(now), updated_at = \(now)
                WHERE id = \(id)
                """)
            try await self.run(connection, "DELETE FROM path_locks WHERE task_id = \(id)")
            // The tasks waiting for this one's locks look again now, not when their delay ends.
            // This row's lock, taken by the fence, orders it against `wait` (see there).
            try await self.run(connection, """
                UPDATE tasks SET not_before = NULL WHERE waiting_for = \(id) AND lease_owner IS NULL AND not_before IS NOT NULL
                """)
            try await self.event(connection, id, status, message)
            try await self.notify(connection, id)  // freed locks may unblock a waiting task
        }
        wakeup.signal()
    }

    public func release(id: String, worker: String, retryAfter: Duration?, failure: TaskFailure?, message: String) async throws {
        try await transaction { connection in
            let (status, now) = try await self.fence(connection, id, worker)
            try await self.endWait(connection, id)
            try await self.run(connection, """
                UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, not_before = \(now) + \(retryAfter?.seconds)::float8,
                  failure_code = \(failure?.code), failure_message = \(failure?.message), updated_at = \(now)
                WHERE id = \(id)
                """)
            try await self.event(connection, id, status, message)
            try await self.notify(connection, id)
        }
        wakeup.signal()
    }

    public func wait(id: String, worker: String, for holder: String, retryAfter: Duration, message: String) async throws {
        try await transaction { connection in
            let (status, now) = try await self.fence(connection, id, worker)
            // The holder's row, locked against its `finish` (which locks it first): either that
            // has committed, and its locks are seen gone here, or it comes after this commits and
            // finds this task waiting. (`finish` takes no lock on a leased task, as this one is
            // until it commits, so the two cannot deadlock.)
            try await self.run(connection, "SELECT 1 FROM tasks WHERE id = \(holder) FOR KEY SHARE")
            let rows = try await self.run(connection, """
                SELECT t.waiting_for, t.cancel_requested AND t.status <> 'committing',
                       EXISTS (SELECT 1 FROM path_locks WHERE task_id = \(holder)) AS held
                FROM tasks t WHERE t.id = \(id)
                """)
            let (before, cancelled, held) = try rows.first?.decode((String?, Bool, Bool).self) ?? (nil, false, false)
            // A holder that has ended meanwhile leaves nothing to wait for: claimable at once, an
            // ordinary claim, and nothing recorded. A cancel asked for meanwhile is not kept
            // waiting either (a commit ignores it: it waits on).
            try await self.run(connection, """
                UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL,
                  not_before = CASE WHEN \(held && !cancelled) THEN \(now) + \(retryAfter.seconds)::float8 END,
                  waiting_for = \(held ? holder : nil), failure_code = NULL, failure_message = NULL, updated_at = \(now)
                WHERE id = \(id)
                """)
            if held && before != holder { try await self.event(connection, id, status, message) }
            try await self.notify(connection, id)
        }
        wakeup.signal()
    }

    public func acquireLocks(id: String, worker: String, _ locks: [PathLock]) async throws {
        try await transaction { connection in
            _ = try await self.fence(connection, id, worker)
            try await self.endWait(connection, id)  // rolled back with the rest should a lock conflict
            guard !locks.isEmpty else { return }
            // Takers queue here, so that two of them cannot both see the other's paths free.
            try await self.run(connection, "SELECT pg_advisory_xact_lock(\(PostgresSchema.pathLock))")
            let filesystems = Array(Set(locks.map(\.filesystem)))
            let held = try await self.run(connection, """
                SELECT task_id, filesystem, path FROM path_locks WHERE task_id <> \(id) AND filesystem = ANY(\(filesystems))
                ORDER BY task_id, filesystem, path
                """).map(Self.pathLock)
            for lock in locks {
                if let other = held.first(where: { $0.conflicts(with: lock) }) {
                    throw TaskStoreError.locked(by: other.taskID, path: other.path.description)
                }
            }
            for lock in locks {
                try await self.run(connection, """
                    INSERT INTO path_locks (task_id, filesystem, path) VALUES (\(id), \(lock.filesystem), \(Data(lock.path.bytes)))
                    ON CONFLICT DO NOTHING
                    """)
            }
        }
    }

    public func requestCancel(_ id: String) async throws -> TaskRecord {
        let record = try await transaction { connection -> TaskRecord in
            let (task, now) = try await self.lockedTask(connection, id)
            guard !task.status.isTerminal && task.status != .committing else { return task }  // past cancelling
            if task.status == .pending && (task.leaseExpiresAt.map { $0.timeIntervalSince1970 < now } ?? true) {
                try await self.run(connection, """
                    UPDATE tasks SET status = 'cancelled', cancel_requested = true, finished_at = \(now), updated_at = \(now),
                      lease_owner = NULL, lease_expires_at = NULL
                    WHERE id = \(id)
                    """)
                try await self.event(connection, id, .cancelled, "cancelled before it started")
            } else {
                // One that waits unheld (a lock, a retry's delay) is claimable at once, to be
                // rolled back; a commit is not cut short, and keeps its delay.
                try await self.run(connection, """
                    UPDATE tasks SET cancel_requested = true, updated_at = \(now),
                      not_before = CASE WHEN lease_owner IS NULL AND status <> 'committing' THEN NULL ELSE not_before END
                    WHERE id = \(id)
                    """)
                try await self.event(connection, id, task.status, "cancel requested; the worker stops at its next checkpoint")
            }
            try await self.notify(connection, id)
            return try await self.lockedTask(connection, id).task
        }
        wakeup.signal()
        return record
    }

    public func retry(_ id: String) async throws -> TaskRecord {
        let progress = try PostgresSchema.json(TaskProgress())
        let record = try await transaction { connection -> TaskRecord in
            let (task, now) = try await self.lockedTask(connection, id)
            guard [.failed, .cancelled, .rolledBack].contains(task.status) else {
                throw TaskStoreError.invalidTransition("task \(id) is \(task.status.rawValue); only failed, cancelled or rolled-back tasks can be retried")
            }
            let status = task.statusOnRetry
            try await self.run(connection, """
                UPDATE tasks SET status = \(status.rawValue), plan = CASE WHEN \(status == .committing) THEN plan END,
                  failure_code = NULL, failure_message = NULL, cancel_requested = false, not_before = NULL, waiting_for = NULL, finished_at = NULL,
                  progress = \(progress)::jsonb, updated_at = \(now)
                WHERE id = \(id)
                """)
            try await self.event(connection, id, status, TaskEvent.retried)
            try await self.notify(connection, id)
            return try await self.lockedTask(connection, id).task
        }
        wakeup.signal()
        return record
    }

    public func record(_ id: String, message: String) async throws {
        let inserted = try await rows("""
            INSERT INTO task_events (task_id, at, status, message)
            SELECT id, \(unescaped: Self.clock), status, \(message) FROM tasks WHERE id = \(id)
            RETURNING 1
            """)
        if inserted.isEmpty { throw TaskStoreError.notFound(id) }
    }

    @discardableResult
    public func waitForWork(timeout: Duration) async -> Bool {
        await wakeup.wait(timeout: timeout)
    }
}
