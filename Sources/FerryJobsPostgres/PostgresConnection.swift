import FerryJobs
import Foundation
import PostgresNIO

/// The PostgreSQL store's plumbing: the settings its sessions start with, fencing and row locks
/// inside transactions, history events, NOTIFY, queries, transactions, and the LISTEN connection
/// that wakes waiting workers.
extension PostgresTaskStore {
    /// What every session of a store is started with: its name, and nothing a pooler such as
    /// PgBouncer refuses at connection (it accepts a few startup parameters and turns away every
    /// other); what the store needs of a transaction it sets in the transaction (`inTransaction`).
    static let sessionParameters: [(String, String)] = [("application_name", "ferry")]

    /// Every transaction of the store, whatever the server, database or role sets by default:
    /// - READ COMMITTED: each statement sees what committed before it. The path-lock check after
    ///   the advisory lock, `wait`'s check after it locks the holder and the fences rely on it;
    ///   under REPEATABLE READ the lock check would read a snapshot from before the advisory lock
    ///   was granted, and two overlapping locks could both be taken.
    /// - `synchronous_commit = on`: a change the store has returned from is on disk, as SQLite's
    ///   `synchronous = FULL` makes it (a phase committed, then lost, would be redone on data
    ///   that has moved on).
    /// - An idle transaction ends after a minute: a client stopped inside one (Ctrl-Z, a debugger,
    ///   a host gone from the network) would otherwise hold the path-lock advisory lock, and every
    ///   other worker's locking would wait for it, for as long as TCP takes to notice (hours).
    ///   Every transaction of the store runs its statements back to back.
    static let transactionSettings =
        "SELECT set_config('synchronous_commit', 'on', true), set_config('idle_in_transaction_session_timeout', '60s', true)"

    /// Locks the task's row for the rest of the transaction and fails unless `worker` holds its
    /// lease (a claim by another worker takes it, expiry alone does not: see `TaskStore`).
    /// Returns its status and the database's time.
    func fence(_ connection: PostgresConnection, _ id: String, _ worker: String) async throws -> (TaskStatus, Double) {
        let rows = try await run(connection, """
            SELECT status, coalesce(lease_owner = \(worker), false) AS holds, n.now
            FROM tasks, (SELECT \(unescaped: Self.clock) AS now) n
            WHERE id = \(id)
            FOR UPDATE OF tasks
            """)
        guard let row = rows.first else { throw TaskStoreError.notFound(id) }
        let (status, holds, now) = try row.decode((String, Bool, Double).self)
        guard holds else { throw TaskStoreError.leaseLost(id) }
        return (TaskStatus(rawValue: status) ?? .failed, now)
    }

    /// The task, its row locked for the rest of the transaction, and the database's time.
    func lockedTask(_ connection: PostgresConnection, _ id: String) async throws -> (task: TaskRecord, now: Double) {
        let rows = try await run(connection, """
            SELECT \(unescaped: PostgresSchema.columns("tasks")), n.now
            FROM tasks, (SELECT \(unescaped: Self.clock) AS now) n
            WHERE id = \(id)
            FOR UPDATE OF tasks
            """)
        guard let row = rows.first else { throw TaskStoreError.notFound(id) }
        return (try PostgresSchema.record(row), try row.makeRandomAccess()["now"].decode(Double.self))
    }

    /// Ends the task's wait, if it is one, for anything its worker does but look and wait again
    /// (take its locks, change phase, hand it back, end it): the claim of this run, a look until
    /// now, is recorded and counted as the task's next attempt, before what the run does. The
    /// words are `TaskEvent.claimed(by:attempt:takenOverFrom:)`'s.
    func endWait(_ connection: PostgresConnection, _ id: String) async throws {
        try await run(connection, """
            WITH u AS (
                UPDATE tasks SET waiting_for = NULL, attempts = attempts + 1 WHERE id = \(id) AND waiting_for IS NOT NULL
                RETURNING id, status, attempts, lease_owner)
            INSERT INTO task_events (task_id, at, status, message)
            SELECT u.id, \(unescaped: Self.clock), u.status, 'claimed by ' || u.lease_owner || ' (attempt ' || u.attempts || ')' FROM u
            """)
    }

    func event(_ connection: PostgresConnection, _ id: String, _ status: TaskStatus, _ message: String) async throws {
        try await run(connection, """
            INSERT INTO task_events (task_id, at, status, message) VALUES (\(id), \(unescaped: Self.clock), \(status.rawValue), \(message))
            """)
    }

    /// Delivered to every listening store when the transaction commits (not at all if it rolls back).
    func notify(_ connection: PostgresConnection, _ id: String) async throws {
        try await run(connection, "SELECT pg_notify(\(Self.channel), \(id))")
    }

    static func pathLock(_ row: PostgresRow) throws -> PathLock {
        let (taskID, filesystem, path) = try row.decode((String, String, Data).self)
        return PathLock(taskID: taskID, filesystem: filesystem, path: StoredPath(Array(path)))
    }

    @discardableResult
    func run(_ connection: PostgresConnection, _ query: PostgresQuery) async throws -> [PostgresRow] {
        try await PostgresSchema.run(connection, query, logger)
    }

    /// One statement on any pooled connection (its own transaction), run again if the server
    /// undid it for a conflict (`isConflict`).
    func rows(_ query: PostgresQuery) async throws -> [PostgresRow] {
        try await Self.retryingConflicts {
            do {
                return try await client.withConnection { connection in try await PostgresSchema.run(connection, query, logger) }
            } catch let error as PSQLError {
                throw TaskStoreError.database(PostgresSchema.describe(error))
            }
        }
    }

    /// Runs `statement` (one statement, its own transaction) again while the server undoes it for
    /// a conflict (`isConflict`), up to `conflictRetries` times.
    static func retryingConflicts<T>(_ statement: () async throws -> T) async throws -> T {
        var conflicts = 0
        while true {
            do { return try await statement() } catch let error as TaskStoreError where isConflict(error) && conflicts < conflictRetries {
                conflicts += 1
            }
        }
    }

    /// A statement the server undid, whole, for a conflict with another transaction: a
    /// serialization failure (a site whose default isolation is REPEATABLE READ or SERIALIZABLE:
    /// a row the statement locks was changed since its snapshot) or a deadlock. Run on its own,
    /// it committed nothing, and runs again.
    static func isConflict(_ error: TaskStoreError) -> Bool {
        guard case .database(let message) = error else { return false }
        return message.hasSuffix("(SQLSTATE 40001)") || message.hasSuffix("(SQLSTATE 40P01)")
    }

    static let conflictRetries = 20

    /// Runs `body` in a transaction on one pooled connection: committed if it returns, rolled back
    /// if it throws (its error is rethrown as it is).
    func transaction<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        do {
            return try await client.withConnection { connection in try await Self.inTransaction(connection, logger, body) }
        } catch let error as PSQLError {
            throw TaskStoreError.database(PostgresSchema.describe(error))
        }
    }

    nonisolated(nonsending) static func inTransaction<T: Sendable>(_ connection: PostgresConnection, _ logger: Logger,
                                                   _ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await PostgresSchema.run(connection, "BEGIN ISOLATION LEVEL READ COMMITTED", logger)
        let value: T
        do {
            try await PostgresSchema.run(connection, PostgresQuery(unsafeSQL: transactionSettings), logger)
            value = try await body(connection)
        } catch {
            do {
                try await PostgresSchema.run(connection, "ROLLBACK", logger)
            } catch {
                try? await connection.close()  // in an unknown state: do not hand it back to the pool
            }
            throw error
        }
        try await PostgresSchema.run(connection, "COMMIT", logger)
        return value
    }
}

extension PostgresTaskStore {
    /// One grouped count, whatever the size of the history.
    public func countByStatus() async throws -> [TaskStatus: Int] {
        var counts: [TaskStatus: Int] = [:]
        for row in try await rows("SELECT status, count(*) FROM tasks GROUP BY status") {
            let (status, count) = try row.decode((String, Int64).self)
            if let status = TaskStatus(rawValue: status) { counts[status] = Int(count) }
        }
        return counts
    }
}
