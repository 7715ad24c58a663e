@testable import FerryJobs
import FerryTestSupport
import Foundation
import GRDB
import Testing

/// `SQLiteTaskStore.heldLocks(atPath:)` reads the locks through SQLite's own interface, apart
/// from the store; it must see exactly what the store holds.
struct HeldLocksTests {
    @Test func readsWhatTheStoreHoldsAndNothingWhereThereIsNoTable() async throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-held")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/ferry.sqlite"
        #expect(try SQLiteTaskStore.heldLocks(atPath: path).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: path), "looking must not create the database")

        let store = try SQLiteTaskStore(path: path)
        let task = try await store.create(NewTask(kind: .move, sources: [StoredPath("/p/a")], destination: StoredPath("/p/b"), owner: "alice"))
        _ = try await store.claim(worker: "w1", limit: 1, lease: .seconds(30))
        let held = [PathLock(taskID: task.id, filesystem: "7:0", path: StoredPath([0x2F, 0x70, 0xFF, 0x00, 0x61])),
                    PathLock(taskID: task.id, filesystem: "7:1", path: StoredPath("/p/b"))]
        try await store.acquireLocks(id: task.id, worker: "w1", held)
        // Read while the store is open (its log holds the locks) and after it closed.
        #expect(Set(try SQLiteTaskStore.heldLocks(atPath: path)) == Set(held))
        #expect(Set(try SQLiteTaskStore.heldLocks(atPath: path)) == Set(try await store.locks()))
        await store.close()
        #expect(Set(try SQLiteTaskStore.heldLocks(atPath: path)) == Set(held))
        #expect(!FileManager.default.fileExists(atPath: path + "-wal"), "the last user folds the log in")

        // Another connection holding the file open (an idle worker's store) makes the read wait
        // its turn the shared way, not fail; a writer can still write meanwhile and is seen.
        let reopened = try SQLiteTaskStore(path: path)
        #expect(Set(try SQLiteTaskStore.heldLocks(atPath: path)) == Set(held))
        try await reopened.finish(id: task.id, worker: "w1", status: .completed, failure: nil, message: "done")
        #expect(try SQLiteTaskStore.heldLocks(atPath: path).isEmpty)
        await reopened.close()

        // A database without the locks table (from another program, or before the schema) has none.
        let other = directory + "/other.sqlite"
        let queue = try DatabaseQueue(path: other)
        try await queue.write { db in try db.execute(sql: "CREATE TABLE t (x)") }
        try queue.close()
        #expect(try SQLiteTaskStore.heldLocks(atPath: other).isEmpty)
    }

    @Test func aFileThatIsNotADatabaseIsAnErrorNamingIt() throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-held")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/ferry.sqlite"
        try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: path))
        let error = #expect(throws: SQLiteReadError.self) { try SQLiteTaskStore.heldLocks(atPath: path) }
        #expect(error?.description.contains(path) == true)
        #expect(error?.description.contains("not a database") == true, "\(String(describing: error))")
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(repeating: 0x41, count: 8192))
    }

    /// The lock markers (`LockMarkers`): a task holding locks always has one, so an empty marker
    /// directory may answer "no locks" without the database; whatever disagrees sends the read to
    /// the table, and the next store to open puts the directory right.
    @Test func lockMarkersFollowTheLocksAndAnyDoubtReadsTheTable() async throws {
        let database = try MarkedDatabase()
        defer { database.remove() }
        let (path, markers, marked) = (database.path, database.markers, database.marked)

        let store = try SQLiteTaskStore(path: path)
        #expect(try marked().isEmpty, "a store makes the directory when it opens")
        let task = try await store.create(NewTask(kind: .move, sources: [StoredPath("/p/a")], destination: StoredPath("/p/b"), owner: "alice"))
        let other = try await store.create(NewTask(kind: .move, sources: [StoredPath("/q/a")], destination: StoredPath("/q/b"), owner: "alice"))
        _ = try await store.claim(worker: "w1", limit: 2, lease: .seconds(30))
        let held = [PathLock(taskID: task.id, filesystem: "7:0", path: StoredPath("/p/a"))]
        try await store.acquireLocks(id: task.id, worker: "w1", held)
        #expect(try marked() == [task.id])
        #expect(try SQLiteTaskStore.heldLocks(atPath: path) == held)
        // A refused acquisition leaves no marker: the conflict is found before one is made.
        await #expect(throws: TaskStoreError.self) {
            try await store.acquireLocks(id: other.id, worker: "w1", [PathLock(taskID: other.id, filesystem: "7:0", path: StoredPath("/p"))])
        }
        #expect(try marked() == [task.id])
        try await store.finish(id: task.id, worker: "w1", status: .completed, failure: nil, message: "done")
        #expect(try marked().isEmpty, "released, so the marker went")
        #expect(try SQLiteTaskStore.heldLocks(atPath: path).isEmpty)

        // A writer that knows nothing of markers (an older Ferry) cannot take a lock at all.
        let old = await #expect(throws: DatabaseError.self) { try await rawLock(path, other.id, "/q/a", check: nil) }
        #expect(old?.message?.contains("no such function: ferry_lock_marker") == true, "\(String(describing: old))")
        // The store's own check refuses a lock whose marker was not made first.
        let unmarked = await #expect(throws: DatabaseError.self) {
            try await rawLock(path, other.id, "/q/a", check: LockMarkers(database: path).function)
        }
        #expect(unmarked?.message?.contains("without its marker in \(markers)") == true, "\(String(describing: unmarked))")
        #expect(try SQLiteTaskStore.heldLocks(atPath: path).isEmpty)

        // Rows without a marker all the same (a writer that skipped the check), and no directory:
        // the read goes to the table and sees the lock.
        try FileManager.default.removeItem(atPath: markers)
        try await rawLock(path, other.id, "/q/a", check: DatabaseFunction("ferry_lock_marker", argumentCount: 1) { _ in nil })
        #expect(try SQLiteTaskStore.heldLocks(atPath: path).map(\.taskID) == [other.id])
        // An empty directory beside such rows would lie; the next store to open adds the marker.
        try FileManager.default.createDirectory(atPath: markers, withIntermediateDirectories: false)
        let reopened = try SQLiteTaskStore(path: path)
        #expect(try marked() == [other.id])
        #expect(try SQLiteTaskStore.heldLocks(atPath: path).map(\.taskID) == [other.id])
        // Without a directory, the next store to open builds it, filled, in one rename.
        try FileManager.default.removeItem(atPath: markers)
        await reopened.close()
        let third = try SQLiteTaskStore(path: path)
        #expect(try marked() == [other.id])
        #expect(!FileManager.default.fileExists(atPath: markers + ".new"))
        await third.close()

        // A marker without rows (a process that died between releasing and removing it) only
        // costs a read of the table, which finds nothing; the next store removes it.
        _ = FileManager.default.createFile(atPath: markers + "/" + task.id, contents: nil)
        #expect(try SQLiteTaskStore.heldLocks(atPath: path).map(\.taskID) == [other.id])
        let fourth = try SQLiteTaskStore(path: path)
        #expect(try marked() == [other.id])

        // A marker that cannot be made refuses the lock rather than hide it.
        try FileManager.default.removeItem(atPath: markers)
        _ = FileManager.default.createFile(atPath: markers, contents: nil)
        let next = try await fourth.create(NewTask(kind: .move, sources: [StoredPath("/r/a")], destination: StoredPath("/r/b"), owner: "alice"))
        _ = try await fourth.claim(id: next.id, worker: "w2", lease: .seconds(30))
        let refused = await #expect(throws: TaskStoreError.self) {
            try await fourth.acquireLocks(id: next.id, worker: "w2", [PathLock(taskID: next.id, filesystem: "7:0", path: StoredPath("/r/a"))])
        }
        #expect(refused?.description.contains(markers) == true, "\(String(describing: refused))")
        #expect(try await fourth.locks().map(\.taskID) == [other.id])
        #expect(try SQLiteTaskStore.heldLocks(atPath: path).map(\.taskID) == [other.id])
        await fourth.close()
    }

    /// A store opened long ago (a worker's, a server's) puts its markers right when the janitor
    /// asks (`repair`): a marker deleted while its task holds locks (a cleaner of old files) left
    /// an empty directory that told readers "no locks"; it comes back. A marker without locks
    /// goes, and a directory deleted whole is rebuilt. Each change is said; none, nothing.
    @Test func repairPutsTheMarkersRightAndSaysWhatItChanged() async throws {
        let database = try MarkedDatabase()
        defer { database.remove() }
        let (path, markers, marked) = (database.path, database.markers, database.marked)
        let store = try SQLiteTaskStore(path: path)
        let task = try await store.create(NewTask(kind: .move, sources: [StoredPath("/p/a")], destination: StoredPath("/p/b"), owner: "alice"))
        _ = try await store.claim(worker: "w1", limit: 1, lease: .seconds(30))
        let held = [PathLock(taskID: task.id, filesystem: "7:0", path: StoredPath("/p/a"))]
        try await store.acquireLocks(id: task.id, worker: "w1", held)
        // The marker of a lock held for a month is stamped anew on each pass, so that a cleaner
        // of old files never finds it old.
        let monthAgo = Date().addingTimeInterval(-30 * 86400)
        try FileManager.default.setAttributes([.modificationDate: monthAgo], ofItemAtPath: "\(markers)/\(task.id)")
        #expect(try await store.repair().isEmpty)
        let stamped = try #require(try FileManager.default.attributesOfItem(atPath: "\(markers)/\(task.id)")[.modificationDate] as? Date)
        #expect(stamped.timeIntervalSinceNow > -60, "\(stamped)")

        try FileManager.default.removeItem(atPath: "\(markers)/\(task.id)")
        #expect(try SQLiteTaskStore.heldLocks(atPath: path).isEmpty, "what an empty directory tells a reader")
        let restored = try await store.repair()
        #expect(restored.count == 1 && restored[0].hasPrefix("put back the lock marker of task \(task.id) in \(markers)"), "\(restored)")
        #expect(try marked() == [task.id])
        #expect(try SQLiteTaskStore.heldLocks(atPath: path) == held)

        _ = FileManager.default.createFile(atPath: "\(markers)/0123456789abcdef", contents: nil)
        let removed = try await store.repair()
        #expect(removed.count == 1 && removed[0].hasPrefix("removed the lock marker of task 0123456789abcdef"), "\(removed)")
        #expect(try marked() == [task.id])

        try FileManager.default.removeItem(atPath: markers)
        let rebuilt = try await store.repair()
        #expect(rebuilt.count == 1 && rebuilt[0].hasPrefix("made the lock marker directory \(markers)"), "\(rebuilt)")
        #expect(try marked() == [task.id])
        #expect(try await store.repair().isEmpty)
        await store.close()

        // What a store put right when it opened is reported by its first repair.
        try FileManager.default.removeItem(atPath: "\(markers)/\(task.id)")
        let reopened = try SQLiteTaskStore(path: path)
        #expect(try marked() == [task.id])
        let atOpen = try await reopened.repair()
        #expect(atOpen.count == 1 && atOpen[0].hasPrefix("put back the lock marker of task \(task.id)"), "\(atOpen)")
        #expect(try await reopened.repair().isEmpty)
        await reopened.close()
    }

    /// A task database in a temporary directory of its own, and its lock markers.
    private struct MarkedDatabase {
        let directory: String
        var path: String { directory + "/ferry.sqlite" }
        var markers: String { path + "-locks" }

        init() throws { directory = try TemporaryDirectory.make(prefix: "ferry-held") }

        /// The tasks with a marker.
        func marked() throws -> Set<String> { Set(try FileManager.default.contentsOfDirectory(atPath: markers)) }

        func remove() { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// Inserts a lock row without making a marker, with `check` as the trigger's function.
    private func rawLock(_ path: String, _ id: String, _ locked: String, check: DatabaseFunction?) async throws {
        var configuration = Configuration()
        configuration.prepareDatabase { db in if let check { db.add(function: check) } }
        let queue = try DatabaseQueue(path: path, configuration: configuration)
        defer { try? queue.close() }
        try await queue.write { db in
            try db.execute(sql: "INSERT INTO path_locks (task_id, filesystem, path) VALUES (?, '7:0', ?)", arguments: [id, Data(locked.utf8)])
        }
    }

    /// A database reached through a symlink keeps its markers beside its real path, where a
    /// reader that names it another way finds them.
    @Test func markersLiveBesideTheRealDatabase() async throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-held")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let real = directory + "/ferry.sqlite", alias = directory + "/alias.sqlite"
        await (try SQLiteTaskStore(path: real)).close()
        try FileManager.default.createSymbolicLink(atPath: alias, withDestinationPath: "ferry.sqlite")
        let store = try SQLiteTaskStore(path: alias)
        let task = try await store.create(NewTask(kind: .move, sources: [StoredPath("/p/a")], destination: StoredPath("/p/b"), owner: "alice"))
        _ = try await store.claim(id: task.id, worker: "w1", lease: .seconds(30))
        try await store.acquireLocks(id: task.id, worker: "w1", [PathLock(taskID: task.id, filesystem: "7:0", path: StoredPath("/p/a"))])
        #expect(try FileManager.default.contentsOfDirectory(atPath: real + "-locks") == [task.id])
        #expect(!FileManager.default.fileExists(atPath: alias + "-locks"))
        #expect(try SQLiteTaskStore.heldLocks(atPath: real).map(\.taskID) == [task.id])
        #expect(try SQLiteTaskStore.heldLocks(atPath: alias).map(\.taskID) == [task.id])
        await store.close()
    }
}
