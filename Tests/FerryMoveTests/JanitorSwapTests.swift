import Foundation
import FerryCopy
import FerryJobs
import FerryMove
import FerrySystem
import FerryTestSupport
import Testing

/// A real store whose `task(_:)` runs a hook first: something done between the janitor's look at a
/// staging directory and its removal, at the point where it asks the database about it.
final class HookedStore: TaskStore {
    let base: SQLiteTaskStore
    let beforeRead: @Sendable (String) -> Void
    init(_ base: SQLiteTaskStore, beforeRead: @escaping @Sendable (String) -> Void) {
        self.base = base
        self.beforeRead = beforeRead
    }
    func task(_ id: String) async throws -> TaskRecord? {
        beforeRead(id)
        return try await base.task(id)
    }
    func create(_ task: NewTask) async throws -> TaskRecord { try await base.create(task) }
    func list(_ filter: TaskFilter) async throws -> [TaskRecord] { try await base.list(filter) }
    func events(_ id: String) async throws -> [TaskEvent] { try await base.events(id) }
    func claim(worker: String, limit: Int, lease: Duration) async throws -> [TaskRecord] { try await base.claim(worker: worker, limit: limit, lease: lease) }
    func claim(id: String, worker: String, lease: Duration) async throws -> TaskRecord? { try await base.claim(id: id, worker: worker, lease: lease) }
    func heartbeat(id: String, worker: String, lease: Duration) async throws -> Bool { try await base.heartbeat(id: id, worker: worker, lease: lease) }
    func advance(id: String, worker: String, to status: TaskStatus, plan: TaskPlan?, message: String) async throws {
        try await base.advance(id: id, worker: worker, to: status, plan: plan, message: message)
    }
    func updateProgress(id: String, worker: String, _ progress: TaskProgress) async throws { try await base.updateProgress(id: id, worker: worker, progress) }
    func finish(id: String, worker: String, status: TaskStatus, failure: TaskFailure?, message: String) async throws {
        try await base.finish(id: id, worker: worker, status: status, failure: failure, message: message)
    }
    func release(id: String, worker: String, retryAfter: Duration?, failure: TaskFailure?, message: String) async throws {
        try await base.release(id: id, worker: worker, retryAfter: retryAfter, failure: failure, message: message)
    }
    func wait(id: String, worker: String, for holder: String, retryAfter: Duration, message: String) async throws {
        try await base.wait(id: id, worker: worker, for: holder, retryAfter: retryAfter, message: message)
    }
    func acquireLocks(id: String, worker: String, _ locks: [PathLock]) async throws { try await base.acquireLocks(id: id, worker: worker, locks) }
    func locks() async throws -> [PathLock] { try await base.locks() }
    func requestCancel(_ id: String) async throws -> TaskRecord { try await base.requestCancel(id) }
    func retry(_ id: String) async throws -> TaskRecord { try await base.retry(id) }
    func record(_ id: String, message: String) async throws { try await base.record(id, message: message) }
    func waitForWork(timeout: Duration) async -> Bool { await base.waitForWork(timeout: timeout) }
    func repair() async throws -> [String] { try await base.repair() }
    func close() async { await base.close() }
}

@Suite("The janitor and a directory swapped into a staging name")
struct JanitorSwapTests {
    /// Anyone who may write in a destination directory can make a directory of theirs look like
    /// an abandoned staging directory (the mark is a `user.` attribute) and, once the janitor has
    /// looked at it, rename another directory they may rename but not empty — a colleague's tree —
    /// into its name. The janitor removes only what it checked: the mark is checked again on the
    /// descriptor the removal goes through. Before, it reopened the name and emptied whatever was
    /// there.
    @Test func theJanitorRemovesOnlyTheDirectoryWhoseMarkItChecked() async throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-janitor-swap")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let place = directory + "/project"
        let id = "0123456789abcdef"
        let staging = place + "/.ferry-staging-" + id
        try TreeBuilder.stagingDirectory(staging, id: id)
        try makeTree(place + "/colleague", files: 5)
        for path in [staging, place + "/colleague"] { try Shell.run(["touch", "-d", "2 days ago", path]) }
        let before = try TreeSnapshot.take(place + "/colleague")
        let store = HookedStore(try SQLiteTaskStore(path: directory + "/ferry.sqlite")) { asked in
            guard asked == id else { return }
            _ = rename(staging, place + "/decoy")
            _ = rename(place + "/colleague", staging)
        }
        let report = try await Janitor(engine: MoveEngine(store: store, settings: .init(worker: "janitor")))
            .run(directories: [Array(place.utf8)], recover: false)
        #expect(report.removed.isEmpty, "\(report.removed)")
        #expect(report.unmarked.count == 1, "\(report.unmarked)")
        let differences = try before.differences(to: TreeSnapshot.take(staging))
        #expect(differences.isEmpty, "\(differences)")
    }
}
