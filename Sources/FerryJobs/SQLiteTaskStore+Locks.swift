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
            let row = try Row.fetchOne(db, sql: "SELECT waiting_for, cancel_requested FROM tasks WHERE id = ?", arguments: [id])
            let before: String? = row?["waiting_for"]
            let cancelled: Bool = row?["cancel_requested"] ?? false
            // A holder that has ended since the task's locks were refused woke nobody, and there
            // is nothing to wait for: claimable at once, an ordinary claim. A cancel asked for
            // meanwhile is not kept waiting either.
            let held = try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM path_locks WHERE task_id = ?)", arguments: [holder]) ?? false
            try db.execute(sql: """
                UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, not_before = ?, waiting_for = ?,
                  failure_code = NULL, failure_message = NULL, updated_at = ? WHERE id = ?
                """, arguments: [held && !cancelled ? now + retryAfter.seconds : nil, held ? holder : nil, now, id])
            if before != holder {
                let status = try String.fetchOne(db, sql: "SELECT status FROM tasks WHERE id = ?", arguments: [id]).flatMap(TaskStatus.init) ?? .pending
                try Self.event(db, id, status, message)
            }
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
            // The wait is over: the claim of this run, a look until now, is the task's next attempt.
            try db.execute(sql: "UPDATE tasks SET waiting_for = NULL, attempts = attempts + 1 WHERE id = ? AND waiting_for IS NOT NULL",
                           arguments: [id])
            if db.changesCount > 0 {
                let row = try Row.fetchOne(db, sql: "SELECT status, attempts FROM tasks WHERE id = ?", arguments: [id])
                try Self.event(db, id, TaskStatus(rawValue: row?["status"] ?? "") ?? .validating,
                               TaskEvent.claimed(by: worker, attempt: row?["attempts"] ?? 0, takenOverFrom: nil))
            }
        }
    }
}
