import FerryCopy
import FerryJobs
import FerrySystem
import Foundation

/// What runs beside a task's run: the heartbeat that extends its lease (and holds the run while
/// the lease is not confirmed), the checkpoints between phases, and the progress written to the task.
extension MoveEngine {
    /// How long a lease extended at some moment is taken as confirmed: two thirds of it.
    var confirmedFor: UInt64 {
        let (seconds, attoseconds) = (settings.lease * 2 / 3).components
        return UInt64(max(0, seconds)) * 1_000_000_000 + UInt64(max(0, attoseconds) / 1_000_000_000)
    }

    func checkpoint(_ context: RunContext) async throws {
        // Nothing more is done while the lease is not confirmed (see `beat`).
        while context.cancellation.isHeld && !context.cancellation.isCancelled { try? await Task.sleep(for: .milliseconds(20)) }
        if shutdown.isCancelled || context.cancellation.isCancelled { throw CopyError.cancelled }
        if let task = try await store.task(context.task.id), task.cancelRequested { throw CopyError.cancelled }
    }

    /// Extends the lease every third of its length; notices cancel requests and a lost lease, and
    /// stops the copy for either. While the lease is not confirmed — no heartbeat answered (the
    /// database unreachable, or busy) for two thirds of it — the run is held: its copiers wait at
    /// their next file or chunk, and the engine at its next checkpoint; nothing more is written.
    /// Once the lease runs out another worker may take the task over, and this run must not go on
    /// writing into what that one stages and publishes (the fence guards the database, not the
    /// files). The answer decides: the lease still this run's (renewed late; nobody took it), the
    /// run goes on, in the same attempt; taken, it stops and leaves everything to the run that has it.
    func beat(_ context: RunContext) async {
        let interval = settings.lease / 3
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            if Task.isCancelled { return }
            let asked = CancellationFlag.now()
            let kept: Bool
            do { kept = try await store.heartbeat(id: context.task.id, worker: context.worker, lease: settings.lease) } catch { continue }
            if !kept {
                context.leaseLost.store(true, ordering: .releasing)
                context.cancellation.cancel()
                return
            }
            context.cancellation.holdAfter(asked + confirmedFor)
            if shutdown.isCancelled { context.cancellation.cancel() }
            guard let task = try? await store.task(context.task.id) else { continue }
            if task.cancelRequested, task.status != .committing { context.cancellation.cancel() }
            if task.status == .copying || task.status == .verifying, let plan = task.plan { await touchStaging(plan) }
        }
    }

    /// Stamps the staging directory's modification time with now: a janitor working from another
    /// task database, which does not know this task, removes a marked staging directory only once
    /// it has not changed for its grace period (an hour), and a long copy that adds nothing at the
    /// staging directory's top level would otherwise look abandoned. Its times are never published.
    func touchStaging(_ plan: TaskPlan) async {
        let roots = settings.roots
        try? await Blocking.run {
            let destination = try DirectoryOpener(roots: roots).openDirectoryClosingRoots(plan.destinationDirectory.bytes)
            defer { destination.closeQuietly() }
            try destination.setTimes(plan.stagingName.bytes, access: .now, modification: .now)
        }
    }

    func report(_ task: TaskRecord, _ progress: CopyProgress, _ context: RunContext) {
        progressHandler?(task, progress)
        let now = ContinuousClock.now
        // A phase's last snapshot is always written: it is what the task shows once the phase
        // has ended (how far a failed copy got), however soon after the one before it comes.
        let due = context.lastProgress.withLock { last -> Bool in
            if !progress.isFinal, let previous = last, now - previous < settings.progressInterval { return false }
            last = now
            return true
        }
        guard due, [.measuring, .copying, .verifying].contains(progress.phase) else { return }
        // Measuring has no totals (they are what it finds) and moves no bytes: no rate.
        let value = TaskProgress(bytesDone: progress.bytesDone, bytesTotal: progress.bytesTotal, entriesDone: progress.entriesDone,
                                 entriesTotal: progress.entriesTotal, bytesPerSecond: progress.phase == .measuring ? 0 : progress.bytesPerSecond)
        let store = self.store, worker = context.worker
        guard progress.phase == .measuring || progress.isFinal else {
            Task { try? await store.updateProgress(id: task.id, worker: worker, value) }
            return
        }
        // Written before the phase returns (this is its walk's thread, or its ticker, which the
        // walk joins): what comes next (the measurement's reset once the plan is made, the next
        // phase's figures, the totals of a completed task) must not be overtaken by it. A
        // database that does not answer holds the walk up for 10 s at most (a count then landing
        // late only shows stale figures).
        let written = DispatchSemaphore(value: 0)
        Task {
            try? await store.updateProgress(id: task.id, worker: worker, value)
            written.signal()
        }
        _ = written.wait(timeout: .now() + .seconds(10))
    }
}
