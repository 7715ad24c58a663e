import FerrySystem
import Foundation
import GRDB
import SystemPackage

/// An empty file for each task that holds path locks, in a directory beside the database
/// (`ferry.sqlite-locks/<task id>`). With them a reader learns that *no* task holds a lock by
/// listing one directory (three system calls) instead of opening the database: that read was the
/// largest part of what a same-project `ferry move` costs over `mv` once a task database exists.
///
/// One rule: **while a task has rows in `path_locks`, its marker exists.**
/// - A marker is made inside the write transaction that inserts the task's rows, before they
///   commit, and made durable with an fsync of the directory before the rows can be.
/// - The table enforces it: a trigger calls `ferry_lock_marker(task)` before each insert, a
///   function only this store registers, which fails when the directory exists without the
///   task's marker. A writer that knows nothing of markers (an older Ferry) cannot insert at all
///   ("no such function"), rather than hide its locks.
/// - A marker is removed only inside a write transaction that finds no rows for its task, after
///   the rows' deletion has committed durably (`synchronous = FULL` for that commit: otherwise a
///   power cut could undo the deletion and keep the unlink).
/// - Write transactions are `IMMEDIATE` (GRDB's default for a writer), so SQLite serialises them
///   across processes: no acquisition can come between that check and the removal.
/// Every failure on the way (a crash, a full disk, an error) leaves a marker too many, never one too
/// few, and a marker without rows only sends readers to the database. A store makes the directory
/// agree with the table when it opens.
///
/// The directory is named after the database's real path (symlinks resolved), so that every
/// name a database is reached by finds the same markers.
///
/// So a reader may conclude "no locks" only from a directory that exists and is empty. A missing
/// directory (a database from before markers, or one whose directory this user could not create)
/// or an unreadable one means: read the table.
struct LockMarkers {
    let directory: ByteString

    init(database path: String) {
        let given = BytePath.split(Array(path.utf8))
        // A database not there yet (a store about to create it): its real directory, and its name.
        let real = BytePath.resolved(Array(path.utf8))
            ?? BytePath.resolved(given.parent).map { BytePath.join($0, given.name) }
            ?? Array(path.utf8)
        directory = real + Array("-locks".utf8)
    }

    /// The SQL function the `path_locks` trigger calls before each insert (see above): fails
    /// unless the task's marker exists, or there is no directory (then readers read the table).
    var function: DatabaseFunction {
        let markers = self
        return DatabaseFunction("ferry_lock_marker", argumentCount: 1, pure: false) { arguments in
            guard let id = String.fromDatabaseValue(arguments[0]) else {
                throw DatabaseError(resultCode: .SQLITE_MISMATCH, message: "ferry_lock_marker takes a task id")
            }
            guard let fd = try? markers.open() else { return nil }
            defer { fd.closeQuietly() }
            guard fd.isAccessible(Array(id.utf8), mode: F_OK) else {
                throw DatabaseError(resultCode: .SQLITE_CONSTRAINT_TRIGGER,
                                    message: "a path lock of task \(id) without its marker in \(markers.directory.displayString): only a Ferry store may take path locks")
            }
            return nil
        }
    }

    /// True only when the directory exists and holds no marker: then no task holds a lock.
    func certainlyNone() -> Bool {
        guard let fd = try? open() else { return false }
        defer { fd.closeQuietly() }
        do { return try DirectoryStream(fd, bufferSize: 1024).next() == nil } catch { return false }
    }

    /// The tasks with a marker, or nil when there is no directory to read.
    func marked() -> Set<String>? {
        guard let fd = try? open() else { return nil }
        defer { fd.closeQuietly() }
        var ids = Set<String>()
        let stream = DirectoryStream(fd)
        do {
            while let entry = try stream.next() { ids.insert(String(decoding: entry.name, as: UTF8.self)) }
        } catch { return nil }
        return ids
    }

    /// Makes (or confirms) the markers of `ids` and makes them durable; inside the write
    /// transaction that inserts their rows, before it commits. Without a directory there is
    /// nothing to keep true: readers read the table.
    func mark<S: Sequence<String>>(_ ids: S) throws {
        let fd: FileDescriptor
        do { fd = try open() } catch where error.code == .notFound { return } catch { throw failure(error) }
        defer { fd.closeQuietly() }
        do {
            try create(ids, in: fd)
            try fd.sync()
        } catch { throw failure(error) }
    }

    /// Removes the marker of a task that holds no lock; called only inside a write transaction
    /// that found no rows for it. A marker left behind costs readers a database read, no more.
    func unmark(_ id: String) {
        guard let fd = try? open() else { return }
        defer { fd.closeQuietly() }
        try? fd.removeEntry(Array(id.utf8), isDirectory: false)
    }

    /// Makes the directory agree with the table: markers for the tasks that hold locks (a database
    /// written by a Ferry from before markers, or restored, or a marker a cleaner of old files
    /// deleted), none for those that hold none (a process that died between releasing and
    /// removing). A missing directory is built aside, filled and renamed into place, so a reader
    /// never sees it half filled. The check is a read; only a disagreement takes the write lock. A
    /// directory that cannot be made leaves the readers reading the table. Returns what it
    /// changed, a sentence each.
    ///
    /// `stamp` (the janitor's passes, not every store that opens): also stamp the markers of the
    /// tasks that hold locks with the time, so that a cleaner of old files (systemd-tmpfiles ages
    /// a file by its newest time) never finds a marker older than the interval between passes,
    /// however long its task has held its locks.
    func reconcile(_ pool: DatabasePool, databaseMode: mode_t, stamp: Bool) throws -> [String] {
        let (locking, present) = try pool.read { db in (Set(try Self.lockingTasks(db)), marked()) }
        let changes = locking == present ? [] : try correct(pool, databaseMode: databaseMode)
        if stamp { freshen(locking) }
        return changes
    }

    private func freshen(_ ids: Set<String>) {
        guard !ids.isEmpty, let fd = try? open() else { return }
        defer { fd.closeQuietly() }
        let now = Timespec.now
        for id in ids { try? fd.setTimes(Array(id.utf8), access: now, modification: now) }  // a marker gone since: nothing made
    }

    private func correct(_ pool: DatabasePool, databaseMode: mode_t) throws -> [String] {
        try pool.write { db -> [String] in
            let locking = Set(try Self.lockingTasks(db))
            let shown = directory.displayString
            guard let present = marked() else {
                do {
                    try build(locking, mode: Self.directoryMode(databaseMode))
                    // A new database's directory is no news; one made for locks held is.
                    return locking.isEmpty ? [] : ["made the lock marker directory \(shown) (\(locking.count) task\(locking.count == 1 ? "" : "s") holding locks)"]
                } catch {
                    return ["cannot make the lock marker directory \(shown): \(error); same-project moves read the lock table instead"]
                }
            }
            var changes: [String] = []
            let missing = locking.subtracting(present)
            if !missing.isEmpty {
                try mark(missing)
                changes += missing.sorted().map { "put back the lock marker of task \($0) in \(shown): the task holds path locks, and the marker was gone" }
            }
            for stale in present.subtracting(locking).sorted() {
                unmark(stale)
                changes.append("removed the lock marker of task \(stale) from \(shown): the task holds no path locks")
            }
            return changes
        }
    }

    static func lockingTasks(_ db: Database) throws -> [String] {
        try String.fetchAll(db, sql: "SELECT DISTINCT task_id FROM path_locks")
    }

    static func holdsLocks(_ db: Database, _ id: String) throws -> Bool {
        try Bool.fetchOne(db, sql: "SELECT 1 FROM path_locks WHERE task_id = ? LIMIT 1", arguments: [id]) ?? false
    }

    /// Readable (and writable, searchable) by whoever may read (write) the database.
    static func directoryMode(_ databaseMode: mode_t) -> mode_t {
        let permissions = databaseMode & 0o666
        return permissions | ((permissions & 0o444) >> 2)
    }

    private func open() throws(SystemError) -> FileDescriptor {
        try FileDescriptor.openDirectory(directory)
    }

    private func create<S: Sequence<String>>(_ ids: S, in fd: FileDescriptor) throws(SystemError) {
        for id in ids {
            do {
                try fd.openAt(Array(id.utf8), [.writeOnly, .create, .exclusive], permissions: 0o644).closeQuietly()
            } catch where error.code == .exists {}
        }
    }

    private func build(_ ids: Set<String>, mode: mode_t) throws(SystemError) {
        let (parent, name) = BytePath.split(directory)
        let parentFD = try FileDescriptor.openDirectory(parent)
        defer { parentFD.closeQuietly() }
        let scratch = name + Array(".new".utf8)
        removeScratch(scratch, in: parentFD)  // left by a process that died building it
        try parentFD.makeDirectory(scratch, permissions: mode)
        do {
            let fd = try parentFD.openAt(scratch, [.directory])
            defer { fd.closeQuietly() }
            try? fd.changeMode(permissions: UInt32(mode))  // as asked, whatever the umask took
            try create(ids, in: fd)
            try fd.sync()
            try rename(from: parentFD, scratch, to: parentFD, name, flags: .noReplace)
            try parentFD.sync()
        } catch {
            removeScratch(scratch, in: parentFD)
            throw error
        }
    }

    private func removeScratch(_ scratch: ByteString, in parentFD: FileDescriptor) {
        guard let fd = try? parentFD.openAt(scratch, [.directory, .noFollow]) else { return }
        let stream = DirectoryStream(fd)
        while let entry = try? stream.next() { try? fd.removeEntry(entry.name, isDirectory: false) }
        fd.closeQuietly()
        try? parentFD.removeEntry(scratch, isDirectory: true)
    }

    private func failure(_ error: SystemError) -> TaskStoreError {
        .database("cannot record a path lock in \(directory.displayString): \(error); readers of the lock table rely on it, so the lock was not taken")
    }
}
