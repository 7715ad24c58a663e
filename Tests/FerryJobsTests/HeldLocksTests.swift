import FerryJobs
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
}
