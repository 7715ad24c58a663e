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
