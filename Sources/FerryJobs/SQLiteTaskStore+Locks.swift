import Foundation
import FerrySystem
import GRDB

/// Path locks: taken all at once or not at all, and the wait of a task that could not take them
/// (see `TaskStore.wait`).
extension SQLiteTaskStore {
    public func wait(id: String, worker: String, for holder: String, retryAfter: Duration, message: String) async throws {
        try await pool.write { db in
            try Self.fence(db, id, worker)
            let now = Date().timeIntervalSince1970
            let row = try Row.fetchOne(db, sql: "SELECT waiting_for, cancel_requested, status FROM tasks WHERE id = ?", arguments: [id])
            let before: String? = row?["waiting_for"]
            let status = TaskStatus(rawValue: row?["status"] ?? "") ?? .pending
            // A cancel asked for meanwhile is not kept waiting (a commit ignores it: it waits on).
            let cancelled = (row?["cancel_requested"] ?? false) && status != .committing
            // A holder that has ended since the task's locks were refused woke nobody, and there
            // is nothing to wait for: claimable at once, an ordinary claim, and nothing recorded.
            let held = try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM path_locks WHERE task_id = ?)", arguments: [holder]) ?? false
            try db.execute(sql: """
                UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, not_before = ?, waiting_for = ?,
                  failure_code = NULL, failure_message = NULL, updated_at = ? WHERE id = ?
                """, arguments: [held && !cancelled ? now + retryAfter.seconds : nil, held ? holder : nil, now, id])
            if held && before != holder { try Self.event(db, id, status, message) }
        }
        wakeup.signal()
    }

    public func acquireLocks(id: String, worker: String, _ locks: [PathLock]) async throws {
        try await pool.write { db in
            try Self.fence(db, id, worker)
            let held = try Row.fetchAll(db, sql: "SELECT * FROM path_locks WHERE task_id != ?", arguments: [id]).map { row in
                PathLock(taskID: row["task_id"], filesystem: row["filesystem"], path: StoredPath(Array((row["path"] as Data))))
            }
            for lock in locks {
                if let other = held.first(where: { $0.conflicts(with: lock) }) {
                    throw TaskStoreError.locked(by: other.taskID, path: other.path.description)
                }
            }
            try markers.mark([id])  // durable before the rows can be
            for lock in locks {
                try db.execute(sql: "INSERT OR IGNORE INTO path_locks (task_id, filesystem, path) VALUES (?, ?, ?)",
                               arguments: [id, lock.filesystem, Data(lock.path.bytes)])
            }
            try Self.endWait(db, id, worker)
        }
    }

    /// Ends the task's wait, if it is one, for anything its worker does but look and wait again
    /// (take its locks, change phase, hand it back, end it): the claim of this run, a look until
    /// now, is recorded and counted as the task's next attempt, before what the run does.
    static func endWait(_ db: Database, _ id: String, _ worker: String) throws {
        try db.execute(sql: "UPDATE tasks SET waiting_for = NULL, attempts = attempts + 1 WHERE id = ? AND waiting_for IS NOT NULL",
                       arguments: [id])
        guard db.changesCount > 0 else { return }
        let row = try Row.fetchOne(db, sql: "SELECT status, attempts FROM tasks WHERE id = ?", arguments: [id])
        try event(db, id, TaskStatus(rawValue: row?["status"] ?? "") ?? .validating,
                  TaskEvent.claimed(by: worker, attempt: row?["attempts"] ?? 0, takenOverFrom: nil))
    }
}

extension SQLiteTaskStore {
    /// One grouped count, whatever the size of the history.
    public func countByStatus() async throws -> [TaskStatus: Int] {
        try await pool.read { db in
            var counts: [TaskStatus: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT status, count(*) AS n FROM tasks GROUP BY status") {
                if let status = TaskStatus(rawValue: row["status"]) { counts[status] = row["n"] }
            }
            return counts
        }
    }
}
