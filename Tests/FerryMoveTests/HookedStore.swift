import Foundation
import FerryJobs

/// A real store with hooks: `beforeRead` runs before `task(_:)` (and may fail it: a database that
/// does not answer), `beforeAdvance` before each `advance` (and may fail it likewise),
/// `afterAdvance` after each, `beforeClaim` before each claim of the queue's next tasks (and may
/// fail it). Something done at the moment the engine or the janitor asks the
/// database, between its steps.
final class HookedStore: TaskStore {
    let base: SQLiteTaskStore
    let beforeRead: @Sendable (String) throws -> Void
    let beforeAdvance: @Sendable (String, TaskStatus) throws -> Void
    let afterAdvance: @Sendable (String, TaskStatus) -> Void
    let beforeClaim: @Sendable () throws -> Void
    init(_ base: SQLiteTaskStore, beforeRead: @escaping @Sendable (String) throws -> Void = { _ in },
         beforeAdvance: @escaping @Sendable (String, TaskStatus) throws -> Void = { _, _ in },
         afterAdvance: @escaping @Sendable (String, TaskStatus) -> Void = { _, _ in },
         beforeClaim: @escaping @Sendable () throws -> Void = {}) {
        self.base = base
        self.beforeClaim = beforeClaim
        self.beforeRead = beforeRead
        self.beforeAdvance = beforeAdvance
        self.afterAdvance = afterAdvance
    }
    func task(_ id: String) async throws -> TaskRecord? {
        try beforeRead(id)
        return try await base.task(id)
    }
    func create(_ task: NewTask) async throws -> TaskRecord { try await base.create(task) }
    func list(_ filter: TaskFilter) async throws -> [TaskRecord] { try await base.list(filter) }
    func events(_ id: String) async throws -> [TaskEvent] { try await base.events(id) }
    func claim(worker: String, limit: Int, lease: Duration) async throws -> [TaskRecord] {
        try beforeClaim()
        return try await base.claim(worker: worker, limit: limit, lease: lease)
    }
    func claim(id: String, worker: String, lease: Duration) async throws -> TaskRecord? { try await base.claim(id: id, worker: worker, lease: lease) }
    func claim(worker: String, limit: Int, lease: Duration, ownedBy owner: String) async throws -> [TaskRecord] {
        try beforeClaim()
        return try await base.claim(worker: worker, limit: limit, lease: lease, ownedBy: owner)
    }
    func heartbeat(id: String, worker: String, lease: Duration) async throws -> Bool { try await base.heartbeat(id: id, worker: worker, lease: lease) }
    func advance(id: String, worker: String, to status: TaskStatus, plan: TaskPlan?, message: String) async throws {
        try beforeAdvance(id, status)
        try await base.advance(id: id, worker: worker, to: status, plan: plan, message: message)
        afterAdvance(id, status)
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

