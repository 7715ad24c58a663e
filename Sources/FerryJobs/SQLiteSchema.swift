import GRDB

/// The embedded store's schema, one migration per version; applied when a store opens.
extension SQLiteTaskStore {
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE tasks (
                    id TEXT PRIMARY KEY,
                    kind TEXT NOT NULL,
                    sources TEXT NOT NULL,
                    destination TEXT NOT NULL,
                    options TEXT NOT NULL,
                    owner TEXT NOT NULL,
                    status TEXT NOT NULL,
                    plan TEXT,
                    progress TEXT NOT NULL,
                    failure_code TEXT,
                    failure_message TEXT,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    cancel_requested INTEGER NOT NULL DEFAULT 0,
                    lease_owner TEXT,
                    lease_expires_at REAL,
                    not_before REAL,
                    created_at REAL NOT NULL,
                    updated_at REAL NOT NULL,
                    finished_at REAL
                );
                CREATE INDEX tasks_by_status ON tasks(status, created_at);
                CREATE INDEX tasks_by_owner ON tasks(owner, created_at);
                CREATE TABLE task_events (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
                    at REAL NOT NULL,
                    status TEXT NOT NULL,
                    message TEXT NOT NULL
                );
                CREATE INDEX task_events_by_task ON task_events(task_id, seq);
                CREATE TABLE path_locks (
                    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
                    filesystem TEXT NOT NULL,
                    path BLOB NOT NULL,
                    PRIMARY KEY (task_id, filesystem, path)
                );
                """)
        }
        // Claims must not scan the tasks already leased (the queue's head is behind them): one
        // index for runnable tasks nobody holds, oldest first; one for leases, by expiry.
        migrator.registerMigration("v2-claim-indexes") { db in
            try db.execute(sql: """
                CREATE INDEX tasks_unleased ON tasks(created_at, id)
                  WHERE lease_owner IS NULL AND status IN ('pending','validating','locked','copying','verifying','committing');
                CREATE INDEX tasks_leased ON tasks(lease_expires_at) WHERE lease_owner IS NOT NULL;
                """)
        }
        // Every path lock needs its marker first (see `LockMarkers`): the function is registered
        // by this store alone, so a writer without markers cannot take locks that readers of an
        // empty marker directory would miss.
        migrator.registerMigration("v3-lock-markers") { db in
            try db.execute(sql: """
                CREATE TRIGGER path_locks_need_a_marker BEFORE INSERT ON path_locks
                BEGIN SELECT ferry_lock_marker(NEW.task_id); END;
                """)
        }
        // A task handed back to wait for another's locks names it (`wait`), so that the holder's
        // end wakes it and its claims meanwhile go unrecorded.
        migrator.registerMigration("v4-lock-waits") { db in
            try db.execute(sql: """
                ALTER TABLE tasks ADD COLUMN waiting_for TEXT;
                CREATE INDEX tasks_waiting ON tasks(waiting_for) WHERE waiting_for IS NOT NULL;
                """)
        }
        return migrator
    }
}
