#if canImport(Glibc)
import Glibc
#endif
import GRDBSQLite

extension SQLiteTaskStore {
    /// The locks held in the database at `path`, read without opening it as a store, through
    /// SQLite's own interface: one read-write connection, one query, closed. A command that only
    /// needs to know whether a path is locked (every same-project `ferry move`) thereby pays for
    /// SQLite alone — through GRDB the connection's set-up (its serial queue, configuration
    /// statements and schema look-ups) cost ~2.6 ms of a 5 ms move, more than `mv` takes in all.
    ///
    /// No file means no tasks and so no locks; a database from before the locks table existed has
    /// none either; nor has one whose lock-marker directory is empty, and the read stops there
    /// (see `LockMarkers`). The connection writes nothing, but is opened read-write on purpose: as
    /// the file's last user, closing it folds a write-ahead log left behind into the database and
    /// removes it (see `close`), which a read-only connection could not.
    ///
    /// When no other connection has the file open (no worker running: the usual case for a
    /// command), the read takes the file for itself for its ~0.1 ms (SQLite's exclusive locking
    /// mode), which lets SQLite keep the log's index in memory instead of creating, sizing,
    /// mapping and deleting the shared-memory file: that halves the read. A connection that finds
    /// the file in use is refused at once, and the read is made again the shared way, waiting for
    /// a writer as a store would.
    public static func heldLocks(atPath path: String) throws -> [PathLock] {
        // No file, no locks. Any other failure (a directory this user may not search) is not
        // "no locks": the read below reports it.
        if access(path, F_OK) != 0 && errno == ENOENT { return [] }
        // An empty marker directory says no task holds a lock, for three system calls instead of
        // ~0.4 ms of SQLite; anything else is answered by the table (see `LockMarkers`).
        if LockMarkers(database: path).certainlyNone() { return [] }
        // Any failure of the first attempt is met by the shared read, which reports its own: the
        // file in use (SQLITE_BUSY), but also a file this user may read and not write, which SQLite
        // opens read-only and where the exclusive lock fails as an I/O error.
        if let locks = try? heldLocks(atPath: path, alone: true) { return locks }
        return try heldLocks(atPath: path, alone: false)
    }

    private static func heldLocks(atPath path: String, alone: Bool) throws -> [PathLock] {
        var handle: OpaquePointer?
        let opened = sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nil)
        defer { sqlite3_close_v2(handle) }
        guard opened == SQLITE_OK, let connection = handle else {
            throw SQLiteReadError(path: path, code: opened, message: handle.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open")
        }
        if alone {
            // Set before the first read: the lock is taken then, and with it no shared memory.
            _ = try rows("PRAGMA locking_mode = EXCLUSIVE", in: connection, path: path) { _ in () }
        } else {
            // A writer holds the file only for the length of a transaction; wait as a store would.
            sqlite3_busy_timeout(connection, 30_000)
        }
        let hasLocks = try rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'path_locks'",
                                in: connection, path: path) { _ in true }
        guard !hasLocks.isEmpty else { return [] }
        return try rows("SELECT task_id, filesystem, path FROM path_locks ORDER BY task_id", in: connection, path: path) { statement in
            // The columns are NOT NULL; a NULL (a file edited by hand, memory exhausted) is an error.
            guard let taskID = sqlite3_column_text(statement, 0).map({ String(cString: $0) }),
                  let filesystem = sqlite3_column_text(statement, 1).map({ String(cString: $0) }) else {
                throw SQLiteReadError(path: path, code: SQLITE_MISMATCH, message: "a path lock without its task or filesystem")
            }
            let blob = sqlite3_column_blob(statement, 2)
            let count = Int(sqlite3_column_bytes(statement, 2))
            let bytes = blob.map { Array(UnsafeRawBufferPointer(start: $0, count: count)) } ?? []
            return PathLock(taskID: taskID, filesystem: filesystem, path: StoredPath(bytes))
        }
    }

    /// Runs `sql` and maps each row; any SQLite error (busy past the timeout, a damaged file)
    /// is thrown with the file's path and SQLite's message, as is what `row` throws.
    private static func rows<Row>(_ sql: String, in connection: OpaquePointer, path: String,
                                  _ row: (OpaquePointer) throws -> Row) throws -> [Row] {
        var prepared: OpaquePointer?
        let code = sqlite3_prepare_v2(connection, sql, -1, &prepared, nil)
        defer { sqlite3_finalize(prepared) }
        guard code == SQLITE_OK, let statement = prepared else {
            throw SQLiteReadError(path: path, code: code, message: String(cString: sqlite3_errmsg(connection)))
        }
        var result: [Row] = []
        while true {
            switch sqlite3_step(statement) {
            case SQLITE_ROW: result.append(try row(statement))
            case SQLITE_DONE: return result
            case let failed: throw SQLiteReadError(path: path, code: failed, message: String(cString: sqlite3_errmsg(connection)))
            }
        }
    }
}

/// SQLite refused to read the task database at `path` (its result code and message).
public struct SQLiteReadError: Error, CustomStringConvertible {
    public var path: String
    public var code: Int32
    public var message: String
    public var description: String { "cannot read the task database \(path): \(message) (SQLite error \(code))" }
}
