import FerryJobs
import Foundation
import PostgresNIO

/// The PostgreSQL schema: the SQLite engine's tables with PostgreSQL's types. Times are unix
/// seconds as `double precision`, read off the database server's clock, so that workers on
/// different machines agree on leases whatever their own clocks say. JSON values are `jsonb`;
/// path-lock paths are `bytea` (paths are bytes, not always UTF-8).
enum PostgresSchema {
    /// The server's clock, as unix seconds.
    static let clock = "extract(epoch FROM clock_timestamp())::float8"

    /// Key of the transaction-scoped advisory lock that serialises migrations.
    static let migrationLock: Int64 = 0x4665_7272_795F_4D49  // "Ferry_MI"
    /// Key of the transaction-scoped advisory lock that serialises path-lock acquisition.
    static let pathLock: Int64 = 0x4665_7272_795F_504C  // "Ferry_PL"

    /// One entry per schema version, each a list of statements (the extended query protocol runs
    /// one statement at a time). Append new versions; never edit a released one.
    static let migrations: [[String]] = [
        [
            """
            CREATE TABLE tasks (
                id text PRIMARY KEY,
                kind text NOT NULL,
                sources jsonb NOT NULL,
                destination jsonb NOT NULL,
                options jsonb NOT NULL,
                owner text NOT NULL,
                status text NOT NULL,
                plan jsonb,
                progress jsonb NOT NULL,
                failure_code text,
                failure_message text,
                attempts integer NOT NULL DEFAULT 0,
                cancel_requested boolean NOT NULL DEFAULT false,
                lease_owner text,
                lease_expires_at double precision,
                not_before double precision,
                created_at double precision NOT NULL,
                updated_at double precision NOT NULL,
                finished_at double precision
            )
            """,
            "CREATE INDEX tasks_by_status ON tasks (status, created_at)",
            "CREATE INDEX tasks_by_owner ON tasks (owner, created_at)",
            """
            CREATE TABLE task_events (
                seq bigserial PRIMARY KEY,
                task_id text NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
                at double precision NOT NULL,
                status text NOT NULL,
                message text NOT NULL
            )
            """,
            "CREATE INDEX task_events_by_task ON task_events (task_id, seq)",
            """
            CREATE TABLE path_locks (
                task_id text NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
                filesystem text NOT NULL,
                path bytea NOT NULL,
                PRIMARY KEY (task_id, filesystem, path)
            )
            """,
            "CREATE INDEX path_locks_by_filesystem ON path_locks (filesystem)",
        ],
        // Claims must not scan the tasks already leased: runnable tasks nobody holds, oldest first;
        // leases by expiry.
        [
            """
            CREATE INDEX tasks_unleased ON tasks (created_at, id)
              WHERE lease_owner IS NULL AND status IN ('pending','validating','locked','copying','verifying','committing')
            """,
            "CREATE INDEX tasks_leased ON tasks (lease_expires_at) WHERE lease_owner IS NOT NULL",
        ],
        // The claim queue: one narrow row per task that is running and unleased, oldest first.
        // Claims lock the queue row and the task row with SKIP LOCKED and never wait; every other
        // writer changes the task row first and the queue row after it (through the trigger), so
        // no two can deadlock. A claim that reaches a queue row whose task another transaction
        // took or cancelled meanwhile skips it, because that transaction deleted the row. The queue
        // replaces the partial index `tasks_unleased`, whose row estimates come from the wide
        // table's statistics: on a table not analysed since a burst of new tasks the planner took
        // them for a handful and sorted the whole backlog on every claim. The queue table is
        // estimated from its own size, so its ordered index scan stays the plan whatever the
        // statistics say. A trigger on `tasks` keeps it exact for every writer, including a
        // ferry of the previous version still running while the database is upgraded: a task
        // is queued when it becomes running and unleased, and dequeued when it stops being so.
        [
            """
            CREATE TABLE task_queue (
                task_id text PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
                created_at double precision NOT NULL,
                not_before double precision
            ) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
                    autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000)
            """,
            "CREATE INDEX task_queue_order ON task_queue (created_at, task_id)",
            """
            CREATE FUNCTION ferry_task_queue() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.lease_owner IS NULL AND NEW.status IN ('pending','validating','locked','copying','verifying','committing') THEN
                    INSERT INTO task_queue (task_id, created_at, not_before) VALUES (NEW.id, NEW.created_at, NEW.not_before)
                    ON CONFLICT (task_id) DO UPDATE SET created_at = excluded.created_at, not_before = excluded.not_before;
                ELSE
                    DELETE FROM task_queue WHERE task_id = NEW.id;
                END IF;
                RETURN NULL;
            END
            $$
            """,
            """
            CREATE TRIGGER tasks_enqueue AFTER INSERT ON tasks FOR EACH ROW
            WHEN (NEW.lease_owner IS NULL AND NEW.status IN ('pending','validating','locked','copying','verifying','committing'))
            EXECUTE FUNCTION ferry_task_queue()
            """,
            """
            CREATE TRIGGER tasks_requeue AFTER UPDATE OF status, lease_owner, not_before ON tasks FOR EACH ROW
            WHEN ((OLD.lease_owner IS NULL AND OLD.status IN ('pending','validating','locked','copying','verifying','committing'))
                  IS DISTINCT FROM (NEW.lease_owner IS NULL AND NEW.status IN ('pending','validating','locked','copying','verifying','committing'))
                  OR (NEW.lease_owner IS NULL AND OLD.not_before IS DISTINCT FROM NEW.not_before))
            EXECUTE FUNCTION ferry_task_queue()
            """,
            """
            INSERT INTO task_queue (task_id, created_at, not_before)
            SELECT id, created_at, not_before FROM tasks WHERE lease_owner IS NULL AND status IN ('pending','validating','locked','copying','verifying','committing')
            """,
            "DROP INDEX tasks_unleased",
            // Expired leases: the index holds only leases of running tasks, so that the claim's
            // conditions match it whole and the scan is bounded by the time alone. With the
            // status left to a filter, the planner combined it with `tasks_by_status` on
            // tables not analysed since a burst, reading every running task on each claim.
            """
            CREATE INDEX tasks_lease_expiry ON tasks (lease_expires_at)
              WHERE lease_owner IS NOT NULL AND status IN ('pending','validating','locked','copying','verifying','committing')
            """,
            "DROP INDEX tasks_leased",
        ],
        // A task handed back to wait for another's locks names it (`wait`), so that the holder's
        // end wakes it and its claims meanwhile go unrecorded.
        [
            "ALTER TABLE tasks ADD COLUMN waiting_for text",
            "CREATE INDEX tasks_waiting ON tasks (waiting_for) WHERE waiting_for IS NOT NULL",
        ],
    ]

    /// Brings the schema up to date. Safe to run from many processes at once: an advisory lock
    /// makes them take turns, and each applies only the versions `ferry_schema_version` lacks.
    /// A schema already current is only read: a role without CREATE on the schema (PostgreSQL
    /// 15 gives ordinary roles none on `public`) can use a database its owner set up.
    static func migrate(_ connection: PostgresConnection, logger: Logger) async throws {
        try await run(connection, "SELECT pg_advisory_xact_lock(\(migrationLock))", logger)
        let found = try await run(connection, "SELECT to_regclass('ferry_schema_version') IS NOT NULL AS present", logger)
        var current = 0
        if try found.first?.makeRandomAccess()["present"].decode(Bool.self) == true {
            let rows = try await run(connection, "SELECT coalesce(max(version), 0) AS version FROM ferry_schema_version", logger)
            current = try rows.first.map { try $0.makeRandomAccess()["version"].decode(Int.self) } ?? 0
        }
        guard current <= migrations.count else {
            throw TaskStoreError.database("the database's schema is version \(current), newer than this ferry knows (\(migrations.count)): upgrade ferry")
        }
        if current == migrations.count { return }
        do {
            try await run(connection, """
                CREATE TABLE IF NOT EXISTS ferry_schema_version (
                    version integer PRIMARY KEY,
                    applied_at double precision NOT NULL
                )
                """, logger)
            for (index, statements) in migrations.enumerated() where index + 1 > current {
                for statement in statements {
                    try await run(connection, PostgresQuery(unsafeSQL: statement), logger)
                }
                try await run(connection, "INSERT INTO ferry_schema_version (version, applied_at) VALUES (\(index + 1), \(unescaped: clock))", logger)
            }
        } catch TaskStoreError.database(let message) where message.hasSuffix("(SQLSTATE 42501)") {
            throw TaskStoreError.database("the database's schema is version \(current) and this ferry needs version \(migrations.count), "
                + "which this role may not create (\(message)): run any ferry command once as the database's owner "
                + "(--database postgres://OWNER@…), or grant this role CREATE on the schema")
        }
    }

    /// The task columns, JSON read back as text, optionally qualified by a table alias.
    static func columns(_ alias: String = "") -> String {
        let p = alias.isEmpty ? "" : alias + "."
        return """
            \(p)id, \(p)kind, \(p)sources::text AS sources, \(p)destination::text AS destination, \(p)options::text AS options, \
            \(p)owner, \(p)status, \(p)plan::text AS plan, \(p)progress::text AS progress, \(p)failure_code, \(p)failure_message, \
            \(p)attempts, \(p)cancel_requested, \(p)lease_owner, \(p)lease_expires_at, \(p)not_before, \(p)created_at, \
            \(p)updated_at, \(p)finished_at
            """
    }

    static func record(_ row: PostgresRow) throws -> TaskRecord {
        let r = row.makeRandomAccess()
        func text(_ name: String) throws -> String { try r[name].decode(String.self) }
        func optionalText(_ name: String) throws -> String? { try r[name].decode(String?.self) }
        func time(_ name: String) throws -> Date? { try r[name].decode(Double?.self).map(Date.init(timeIntervalSince1970:)) }
        let code = try optionalText("failure_code")
        let message = try optionalText("failure_message")
        return TaskRecord(
            id: try text("id"), kind: TaskKind(rawValue: try text("kind")) ?? .move,
            sources: try decode(text("sources")), destination: try decode(text("destination")),
            options: try decode(text("options")), owner: try text("owner"),
            status: TaskStatus(rawValue: try text("status")) ?? .failed,
            plan: try optionalText("plan").map { try decode($0) }, progress: try decode(text("progress")),
            failure: code.map { TaskFailure(code: $0, message: message ?? "") },
            attempts: try r["attempts"].decode(Int.self), cancelRequested: try r["cancel_requested"].decode(Bool.self),
            leaseOwner: try optionalText("lease_owner"), leaseExpiresAt: try time("lease_expires_at"),
            notBefore: try time("not_before"),
            createdAt: Date(timeIntervalSince1970: try r["created_at"].decode(Double.self)),
            updatedAt: Date(timeIntervalSince1970: try r["updated_at"].decode(Double.self)),
            finishedAt: try time("finished_at"))
    }

    static func json<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try JSONEncoder().encode(value), as: UTF8.self)
    }

    static func decode<T: Decodable>(_ text: String) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(text.utf8))
    }

    /// Runs one statement on `connection` and collects its rows; server errors become `.database`.
    @discardableResult
    static func run(_ connection: PostgresConnection, _ query: PostgresQuery, _ logger: Logger) async throws -> [PostgresRow] {
        do {
            return try await connection.query(query, logger: logger).collect()
        } catch let error as PSQLError {
            throw TaskStoreError.database(describe(error))
        }
    }

    static func describe(_ error: PSQLError) -> String {
        if let message = error.serverInfo?[.message] {
            let state = error.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? ""
            return message + state
        }
        return "\(error.code)" + (error.underlying.map { ": \($0)" } ?? "")
    }
}
