import Foundation
import FerrySystem
import GRDB

/// The embedded task store: one SQLite file in WAL mode. Claims and lock checks run inside write
/// transactions, which SQLite serialises, so two workers of one machine never take the same task
/// or overlapping paths.
public final class SQLiteTaskStore: TaskStore {
    let pool: DatabasePool
    private let path: String
    let wakeup = Wakeup()
    let markers: LockMarkers

    public init(path: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let markers = LockMarkers(database: path)
        var configuration = Configuration()
        configuration.busyMode = .timeout(30)
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL")
            db.add(function: markers.function)
        }
        pool = try DatabasePool(path: path, configuration: configuration)
        self.path = path
        self.markers = markers
        try Self.migrator.migrate(pool)
        unreported = Mutex(try markers.reconcile(pool, databaseMode: Self.mode(of: path), stamp: false))
    }

    /// What opening the store put right, until `repair` reports it.
    private let unreported: Mutex<[String]>

    private static func mode(of path: String) -> mode_t {
        (try? currentWorkingDirectory.status(Array(path.utf8), followSymlinks: true).mode).map { mode_t($0) } ?? 0o644
    }

    /// The lock markers made to agree with the table again (see `LockMarkers.reconcile`): a
    /// long-running worker or server opens its store once, and a cleaner of old files may delete
    /// markers meanwhile. Says what opening the store put right too, the first time.
    public func repair() async throws -> [String] {
        let (markers, pool, path) = (markers, pool, path)
        let changes = try await Blocking.run { try markers.reconcile(pool, databaseMode: Self.mode(of: path), stamp: true) }
        return unreported.withLock { opening in
            defer { opening = [] }
            return opening + changes
        }
    }

    // MARK: reading

    public func task(_ id: String) async throws -> TaskRecord? {
        try await pool.read { db in try Row.fetchOne(db, sql: "SELECT * FROM tasks WHERE id = ?", arguments: [id]).map(Self.record) }
    }

    public func list(_ filter: TaskFilter) async throws -> [TaskRecord] {
        try await pool.read { db in
            var clauses: [String] = []
            var arguments: [any DatabaseValueConvertible] = []
            if let statuses = filter.statuses, !statuses.isEmpty {
                clauses.append("status IN (\(statuses.map { _ in "?" }.joined(separator: ",")))")
                arguments += statuses.map(\.rawValue)
            }
            if let owner = filter.owner {
                clauses.append("owner = ?")
                arguments.append(owner)
            }
            let whereClause = clauses.isEmpty ? "" : "WHERE " + clauses.joined(separator: " AND ")
            arguments += [filter.limit, filter.offset]
            return try Row.fetchAll(db, sql: "SELECT * FROM tasks \(whereClause) ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                                    arguments: StatementArguments(arguments)).map(Self.record)
        }
    }

    public func events(_ id: String) async throws -> [TaskEvent] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM task_events WHERE task_id = ? ORDER BY seq", arguments: [id]).map { row in
                TaskEvent(taskID: row["task_id"], at: Date(timeIntervalSince1970: row["at"]),
                          status: TaskStatus(rawValue: row["status"]) ?? .failed, message: row["message"])
            }
        }
    }

    public func locks() async throws -> [PathLock] {
        try await pool.read(Self.locks)
    }

    static func locks(_ db: Database) throws -> [PathLock] {
        try Row.fetchAll(db, sql: "SELECT * FROM path_locks ORDER BY task_id").map { row in
            PathLock(taskID: row["task_id"], filesystem: row["filesystem"], path: StoredPath(Array((row["path"] as Data))))
        }
    }

    /// Closes the store. The process that closes an SQLite file last folds the write-ahead log
    /// into the database and removes it; otherwise the log stays (up to ~4 MB between automatic
    /// checkpoints), and each process that opens the file alone reads all of it before its first
    /// query: 17 ms of every same-project `ferry move` with a 1.4 MB log here. The pool closes its
    /// writer before its read-only readers, and a read-only connection cannot fold the log, so one
    /// plain connection, opened and read once, closes last. With other processes using the file
    /// it leaves the log to them and waits for nothing.
    public func close() async {
        try? pool.close()
        guard let last = try? DatabaseQueue(path: path, configuration: Self.plainConfiguration) else { return }
        _ = try? await last.read { db in try db.tableExists("tasks") }
        try? last.close()
    }

    private static var plainConfiguration: Configuration {
        var configuration = Configuration()
        configuration.busyMode = .timeout(30)
        return configuration
    }

    // MARK: writing

    public func create(_ new: NewTask) async throws -> TaskRecord {
        let id = Identifier.make()
        let now = Date().timeIntervalSince1970
        let record = try await pool.write { db -> TaskRecord in
            try db.execute(sql: """
                INSERT INTO tasks (id, kind, sources, destination, options, owner, status, progress, created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)
                """, arguments: [id, new.kind.rawValue, try Self.json(new.sources), try Self.json(new.destination),
                                 try Self.json(new.options), new.owner, try Self.json(TaskProgress()), now, now])
            try Self.event(db, id, .pending, "created by \(new.owner): \(new.kind.rawValue) \(new.sources.map(\.description).joined(separator: ", ")) → \(new.destination)")
            return try Self.fetch(db, id)
        }
        wakeup.signal()
        return record
    }

    public func claim(worker: String, limit: Int, lease: Duration) async throws -> [TaskRecord] { try await claim(worker, limit, lease, nil) }
    public func claim(worker: String, limit: Int, lease: Duration, ownedBy owner: String) async throws -> [TaskRecord] {
        try await claim(worker, limit, lease, owner)
    }

    private func claim(_ worker: String, _ limit: Int, _ lease: Duration, _ owner: String?) async throws -> [TaskRecord] {
        try await pool.write { db in
            let now = Date().timeIntervalSince1970
            let mine = owner == nil ? "" : "AND owner = ?"
            let theirs: [any DatabaseValueConvertible] = owner.map { [$0] } ?? []
            // Tasks nobody holds first (the unleased index), then those whose lease expired (the
            // lease index): neither query reads the tasks that are leased and alive.
            let free = try String.fetchAll(db, sql: """
                SELECT id FROM tasks INDEXED BY tasks_unleased
                WHERE lease_owner IS NULL AND status IN ('pending','validating','locked','copying','verifying','committing')
                  AND (not_before IS NULL OR not_before <= ?) \(mine)
                ORDER BY created_at, id LIMIT ?
                """, arguments: StatementArguments([now as any DatabaseValueConvertible] + theirs + [limit]))
            var taken = try free.map { id in try Self.take(db, id, worker: worker, lease: lease, now: now, from: nil) }
            if taken.count < limit {
                // Each with the worker whose lease it was: the claim takes the task over from it.
                let expired = try Row.fetchAll(db, sql: """
                    SELECT id, lease_owner FROM tasks INDEXED BY tasks_leased
                    WHERE lease_owner IS NOT NULL AND lease_expires_at < ?
                      AND status IN ('pending','validating','locked','copying','verifying','committing')
                      AND (not_before IS NULL OR not_before <= ?) \(mine)
                    ORDER BY lease_expires_at LIMIT ?
                    """, arguments: StatementArguments([now, now] as [any DatabaseValueConvertible] + theirs + [limit - taken.count]))
                taken += try expired.map { row in try Self.take(db, row["id"], worker: worker, lease: lease, now: now, from: row["lease_owner"]) }
            }
            return taken
        }
    }

    public func claim(id: String, worker: String, lease: Duration) async throws -> TaskRecord? {
        try await pool.write { db in
            let now = Date().timeIntervalSince1970
            guard let claimable = try Row.fetchOne(db, sql: """
                SELECT lease_owner FROM tasks WHERE id = ?
                  AND status IN ('pending','validating','locked','copying','verifying','committing')
                  AND (lease_expires_at IS NULL OR lease_expires_at < ? OR lease_owner = ?)
                """, arguments: [id, now, worker]) else { return nil }
            return try Self.take(db, id, worker: worker, lease: lease, now: now, from: claimable["lease_owner"])
        }
    }

    public func heartbeat(id: String, worker: String, lease: Duration) async throws -> Bool {
        try await pool.write { db in
            let now = Date().timeIntervalSince1970
            try db.execute(sql: "UPDATE tasks SET lease_expires_at = ? WHERE id = ? AND lease_owner = ?",
                           arguments: [now + lease.seconds, id, worker])
            return db.changesCount == 1
        }
    }

    public func advance(id: String, worker: String, to status: TaskStatus, plan: TaskPlan?, message: String) async throws {
        // Durable before it returns, as every phase's work on the filesystem comes after it: a
        // power cut must not take a task back to a phase whose premise is gone (`verifying` after
        // its staging was published, a deletion not begun after it had).
        try await durableWrite { db in try Self.advance(db, id: id, worker: worker, to: status, plan: plan, message: message) }
    }

    /// A write transaction committed with `synchronous = FULL`: on disk before it returns (one
    /// fsync of the log), where the store's other commits (NORMAL) may be undone by a power cut.
    private func durableWrite(_ body: @escaping @Sendable (Database) throws -> Void) async throws {
        try await pool.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
            defer { try? db.execute(sql: "PRAGMA synchronous = NORMAL") }
            try db.inTransaction(.immediate) {
                try body(db)
                return .commit
            }
        }
    }

    private static func advance(_ db: Database, id: String, worker: String, to status: TaskStatus, plan: TaskPlan?, message: String) throws {
        try fence(db, id, worker)
        try endWait(db, id, worker)
        if let plan {
            try db.execute(sql: "UPDATE tasks SET status = ?, plan = ?, updated_at = ? WHERE id = ?",
                           arguments: [status.rawValue, try json(plan), Date().timeIntervalSince1970, id])
        } else {
            try db.execute(sql: "UPDATE tasks SET status = ?, updated_at = ? WHERE id = ?",
                           arguments: [status.rawValue, Date().timeIntervalSince1970, id])
        }
        try event(db, id, status, message)
    }

    public func updateProgress(id: String, worker: String, _ progress: TaskProgress) async throws {
        try await pool.write { db in
            try Self.fence(db, id, worker)
            try db.execute(sql: "UPDATE tasks SET progress = ?, updated_at = ? WHERE id = ?",
                           arguments: [try Self.json(progress), Date().timeIntervalSince1970, id])
        }
    }

    public func finish(id: String, worker: String, status: TaskStatus, failure: TaskFailure?, message: String) async throws {
        guard status.isTerminal else { throw TaskStoreError.invalidTransition("finish needs a terminal status, not \(status.rawValue)") }
        // Durable before it returns: the marker is removed next, and must not outlive a deletion
        // that a power cut could undo.
        try await durableWrite { db in
            try Self.fence(db, id, worker)
            try Self.endWait(db, id, worker)
            let now = Date().timeIntervalSince1970
            try db.execute(sql: """
                UPDATE tasks SET status = ?, failure_code = ?, failure_message = ?, lease_owner = NULL,
                  lease_expires_at = NULL, finished_at = ?, updated_at = ? WHERE id = ?
                """, arguments: [status.rawValue, failure?.code, failure?.message, now, now, id])
            try db.execute(sql: "DELETE FROM path_locks WHERE task_id = ?", arguments: [id])
            // The tasks waiting for this one's locks look again now, not when their delay ends.
            try db.execute(sql: "UPDATE tasks SET not_before = NULL WHERE waiting_for = ? AND lease_owner IS NULL AND not_before IS NOT NULL",
                           arguments: [id])
            try Self.event(db, id, status, message)
        }
        // Only once the rows' deletion has committed, and under the write lock, so that no
        // acquisition can come in between (see `LockMarkers`); on failure the marker stays.
        let markers = markers
        try? await pool.write { db in
            if try !LockMarkers.holdsLocks(db, id) { markers.unmark(id) }
        }
        wakeup.signal()  // freed locks may unblock a waiting task
    }

    public func release(id: String, worker: String, retryAfter: Duration?, failure: TaskFailure?, message: String) async throws {
        try await pool.write { db in
            try Self.fence(db, id, worker)
            try Self.endWait(db, id, worker)
            let now = Date().timeIntervalSince1970
            try db.execute(sql: """
                UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, not_before = ?,
                  failure_code = ?, failure_message = ?, updated_at = ? WHERE id = ?
                """, arguments: [retryAfter.map { now + $0.seconds }, failure?.code, failure?.message, now, id])
            let status = try String.fetchOne(db, sql: "SELECT status FROM tasks WHERE id = ?", arguments: [id]).flatMap(TaskStatus.init) ?? .pending
            try Self.event(db, id, status, message)
        }
        wakeup.signal()
    }

    public func requestCancel(_ id: String) async throws -> TaskRecord {
        let record = try await pool.write { db -> TaskRecord in
            let task = try Self.fetch(db, id)
            guard !task.status.isTerminal && task.status != .committing else { return task }  // past cancelling
            let now = Date().timeIntervalSince1970
            if task.status == .pending && (task.leaseExpiresAt.map { $0.timeIntervalSince1970 < now } ?? true) {
                try db.execute(sql: "UPDATE tasks SET status = 'cancelled', cancel_requested = 1, finished_at = ?, updated_at = ?, lease_owner = NULL, lease_expires_at = NULL WHERE id = ?",
                               arguments: [now, now, id])
                try Self.event(db, id, .cancelled, "cancelled before it started")
            } else {
                // One that waits unheld (a lock, a retry's delay) is claimable at once, to be
                // rolled back; a commit is not cut short, and keeps its delay.
                try db.execute(sql: """
                    UPDATE tasks SET cancel_requested = 1, updated_at = ?,
                      not_before = CASE WHEN lease_owner IS NULL AND status != 'committing' THEN NULL ELSE not_before END
                    WHERE id = ?
                    """, arguments: [now, id])
                try Self.event(db, id, task.status, "cancel requested; the worker stops at its next checkpoint")
            }
            return try Self.fetch(db, id)
        }
        wakeup.signal()
        return record
    }

    public func retry(_ id: String) async throws -> TaskRecord {
        let record = try await pool.write { db -> TaskRecord in
            let task = try Self.fetch(db, id)
            guard [.failed, .cancelled, .rolledBack].contains(task.status) else {
                throw TaskStoreError.invalidTransition("task \(id) is \(task.status.rawValue); only failed, cancelled or rolled-back tasks can be retried")
            }
            let status = task.statusOnRetry
            try db.execute(sql: """
                UPDATE tasks SET status = ?, plan = CASE WHEN ? THEN plan END, failure_code = NULL, failure_message = NULL,
                  cancel_requested = 0, not_before = NULL, waiting_for = NULL, finished_at = NULL, progress = ?, updated_at = ? WHERE id = ?
                """, arguments: [status.rawValue, status == .committing, try Self.json(TaskProgress()), Date().timeIntervalSince1970, id])
            try Self.event(db, id, status, TaskEvent.retried)
            return try Self.fetch(db, id)
        }
        wakeup.signal()
        return record
    }

    public func record(_ id: String, message: String) async throws {
        try await pool.write { db in
            let task = try Self.fetch(db, id)
            try Self.event(db, id, task.status, message)
        }
    }

    @discardableResult
    public func waitForWork(timeout: Duration) async -> Bool {
        await wakeup.wait(timeout: timeout)
    }

    // MARK: helpers

    /// `from`: the worker whose expired lease the claim takes over (its own is no takeover).
    /// The claim of a task waiting for another's locks (`wait`), handed back and not taken over,
    /// is a look: no history entry, no attempt (until it takes its locks: `acquireLocks`). Any
    /// other claim ends the wait.
    private static func take(_ db: Database, _ id: String, worker: String, lease: Duration, now: Double, from previous: String?) throws -> TaskRecord {
        let takenOverFrom = previous == worker ? nil : previous
        // One statement decides and does it (a look keeps its `waiting_for`, any other claim
        // clears it): claims are the store's hottest path.
        let look = "(waiting_for IS NOT NULL AND ? AND status IN ('validating','committing'))"
        try db.execute(sql: """
            UPDATE tasks SET lease_owner = ?, lease_expires_at = ?, attempts = attempts + CASE WHEN \(look) THEN 0 ELSE 1 END,
              waiting_for = CASE WHEN \(look) THEN waiting_for END, updated_at = ? WHERE id = ?
            """, arguments: [worker, now + lease.seconds, takenOverFrom == nil, takenOverFrom == nil, now, id])
        guard let row = try Row.fetchOne(db, sql: "SELECT * FROM tasks WHERE id = ?", arguments: [id]) else { throw TaskStoreError.notFound(id) }
        var task = try record(row)
        task.takenOverFrom = takenOverFrom
        if (row["waiting_for"] as String?) == nil {
            try event(db, id, task.status, TaskEvent.claimed(by: worker, attempt: task.attempts, takenOverFrom: task.takenOverFrom))
        }
        return task
    }

    /// Fails unless `worker` holds the task's lease: a claim by another worker takes it, expiry
    /// alone does not (see `TaskStore`).
    static func fence(_ db: Database, _ id: String, _ worker: String) throws {
        let holds = try Bool.fetchOne(db, sql: "SELECT 1 FROM tasks WHERE id = ? AND lease_owner = ?", arguments: [id, worker]) ?? false
        if !holds {
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM tasks WHERE id = ?", arguments: [id]) ?? false else { throw TaskStoreError.notFound(id) }
            throw TaskStoreError.leaseLost(id)
        }
    }

    static func event(_ db: Database, _ id: String, _ status: TaskStatus, _ message: String) throws {
        try db.execute(sql: "INSERT INTO task_events (task_id, at, status, message) VALUES (?, ?, ?, ?)",
                       arguments: [id, Date().timeIntervalSince1970, status.rawValue, message])
    }

    private static func fetch(_ db: Database, _ id: String) throws -> TaskRecord {
        guard let row = try Row.fetchOne(db, sql: "SELECT * FROM tasks WHERE id = ?", arguments: [id]) else { throw TaskStoreError.notFound(id) }
        return try record(row)
    }

    static func record(_ row: Row) throws -> TaskRecord {
        let code: String? = row["failure_code"]
        let message: String? = row["failure_message"]
        let planText: String? = row["plan"]
        return TaskRecord(
            id: row["id"], kind: TaskKind(rawValue: row["kind"]) ?? .move,
            sources: try decode(row["sources"]), destination: try decode(row["destination"]),
            options: try decode(row["options"]), owner: row["owner"],
            status: TaskStatus(rawValue: row["status"]) ?? .failed,
            plan: try planText.map { try decode($0) }, progress: try decode(row["progress"]),
            failure: code.map { TaskFailure(code: $0, message: message ?? "") },
            attempts: row["attempts"], cancelRequested: row["cancel_requested"],
            leaseOwner: row["lease_owner"], leaseExpiresAt: (row["lease_expires_at"] as Double?).map(Date.init(timeIntervalSince1970:)),
            notBefore: (row["not_before"] as Double?).map(Date.init(timeIntervalSince1970:)),
            createdAt: Date(timeIntervalSince1970: row["created_at"]), updatedAt: Date(timeIntervalSince1970: row["updated_at"]),
            finishedAt: (row["finished_at"] as Double?).map(Date.init(timeIntervalSince1970:)))
    }

    static func json<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try JSONEncoder().encode(value), as: UTF8.self)
    }

    static func decode<T: Decodable>(_ text: String) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(text.utf8))
    }
}

extension Duration {
    package var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

import Synchronization
