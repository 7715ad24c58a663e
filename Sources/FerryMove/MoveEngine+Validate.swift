import FerryCopy
import FerryJobs
import FerryStorage
import FerrySystem

/// The validate phase: the task's paths resolved and locked (`drive`), then the source measured
/// and the destination's room checked; HSM-released files recalled when asked.
extension MoveEngine {
    /// The task's paths, resolved beneath the allowed roots, and the locks they take.
    func resolve(_ task: TaskRecord) throws -> (Transfer, [PathLock]) {
        let transfer = try Transfer(sources: task.sources.map(\.bytes), destination: task.destination.bytes, roots: settings.roots)
        return (transfer, try Self.locks(for: transfer, taskID: task.id))
    }

    /// Validate, under the task's locks: measure, choose, check room. Nothing is written. The
    /// measurement is reported as it goes (phase `.measuring`): on a big tree it is minutes of work.
    func validate(_ task: TaskRecord, _ transfer: Transfer, _ context: RunContext) throws -> (Preflight, TaskPlan) {
        let preflight = try planner.preflight(kind: task.kind, transfer: transfer, options: task.options,
                                              cancellation: context.cancellation) { [self] progress in
            self.report(task, progress, context)
        }
        let plan = TaskPlan(
            strategy: preflight.strategy.rawValue, bytes: preflight.measurement.bytes,
            allocatedBytes: preflight.measurement.allocatedBytes, entries: preflight.measurement.entries,
            inodes: preflight.measurement.inodes, stagingName: StoredPath(StagingArea.prefix + task.id),
            finalNames: transfer.sources.map { StoredPath($0.destinationName) },
            destinationDirectory: StoredPath(transfer.destinationPath))
        return (preflight, plan)
    }

    /// Validates the task under its locks (`validate`), restores HSM-released files first when
    /// asked, and records the plan: the task is `locked`, nothing of the plan done yet.
    func lockedPlan(_ context: RunContext, _ task: TaskRecord, _ transfer: Transfer, note: String = "") async throws -> TaskPlan {
        let (preflight, plan) = try await Blocking.run { [self, task, transfer] in try self.validate(task, transfer, context) }
        if let refusal = preflight.refusal { throw refusal }
        if task.options.recall, preflight.sourceOnLustre, preflight.measurement.releasedFiles > 0 {
            try await store.record(task.id, message: "recalling \(preflight.measurement.releasedFiles) HSM-released files before copying")
            let restored = try await Blocking.run { [self, transfer] in try self.recall(transfer) }
            try await store.record(task.id, message: "\(restored) files restored from the HSM archive")
        }
        try await store.advance(id: task.id, worker: context.worker, to: .locked, plan: plan,
                                message: "\(note)\(preflight.summary)\(preflight.warnings.map { " Warning: \($0)." }.joined())")
        // The measurement's counts (no totals) give way to nothing done yet of the plan's totals.
        try? await store.updateProgress(id: task.id, worker: context.worker, TaskProgress(
            bytesDone: 0, bytesTotal: plan.bytes, entriesDone: 0, entriesTotal: plan.entries, bytesPerSecond: 0))
        return plan
    }

    /// Whether a relink failed because the servers refuse to rename a file across projects
    /// (EXDEV), where Ferry chose to relink: from the client's `lfs --version`, which says nothing
    /// of the servers' (before 2.15 they refuse). A relink the request or the configuration asked
    /// for fails instead, rolled back.
    func relinkRefusedByServers(_ error: any Error, _ task: TaskRecord, _ plan: TaskPlan) -> Bool {
        guard task.kind == .move, Self.systemCode(of: error) == .crossDevice, !shutdown.isCancelled else { return false }
        return task.options.strategy == nil && planner.configuredStrategy(plan.destinationDirectory.bytes) == nil
    }

    /// After `relinkRefusedByServers`: what was relinked is put back into the source (the
    /// rollback's own work), then the task is validated again as a copy under the locks it holds
    /// (a copy needs room a relink does not) and recorded `locked` with that plan. Returns the
    /// task as it stands then. A relink not wholly put back, or a copy that does not fit, fails
    /// the task as the relink's failure would have (rolled back).
    func copyInsteadOfRelink(_ context: RunContext, _ task: TaskRecord, after error: any Error) async throws -> TaskRecord {
        guard await stillHolds(context), await discardStaging(context) == nil else { throw error }
        let refused = "the servers refused to rename a file across projects (\(Self.failure(for: error).message)); "
            + "Lustre servers before 2.15 cannot, whatever the client's version. "
        try await store.record(task.id, message: refused + "Every relinked file is back in the source; copying instead.")
        var copying = task
        copying.options.strategy = Strategy.copy.rawValue
        let (transfer, _) = try await Blocking.run { [self, copying] in try self.resolve(copying) }
        var record = task
        do {
            record.plan = try await lockedPlan(context, copying, transfer, note: "Copying instead of relinking: ")
        } catch let refusal as Refusal {
            throw Refusal(code: refusal.code, message: refused + "A copy instead was refused: " + refusal.message)
        }
        record.status = .locked
        return record
    }

    /// Restores the transfer's released files through its source filesystem's Lustre backend.
    /// Each source on Lustre, by its own backend (sources may be on several filesystems).
    func recall(_ transfer: Transfer) throws -> Int {
        var restored = 0
        for (source, path) in zip(transfer.sources, transfer.sourcePaths) {
            guard let lustre = try planner.storage(source.directory, BytePath.split(path).0) as? LustreBackend else { continue }
            restored += try planner.recall.run(lustre, sources: [path])
        }
        return restored
    }
}
