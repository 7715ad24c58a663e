import Foundation
import PostgresNIO
import Synchronization

// The queue table's upkeep beside the claims: a vacuum after many tasks were taken, and the
// removal of stale rows after a claim that came back short.

/// Vacuums the queue table after this store has taken many tasks from it. Every claim deletes
/// queue rows, and their index entries stay until a vacuum removes them; each claim's ordered
/// scan starts at the oldest entry and steps over all the dead ones first, so at thousands of
/// claims a second the queue's head grows by as many entries a second, while autovacuum visits a
/// database once a minute at most. Measured: 40,000 dead entries made the scan 30 times slower
/// (1 ms instead of 0.03 ms); the vacuum that cleared them took 27 ms. At most one vacuum per
/// store runs at a time, in the background, and a vacuum already running (from any store or
/// autovacuum) is skipped, not waited for. Without the table's ownership the server declines
/// with a warning, and autovacuum does the work as before.
final class QueueVacuum: Sendable {
    private struct State {
        var taken = 0
        var running = false
    }

    private let state = Mutex(State())
    /// Tasks taken through this store between vacuums.
    let every: Int

    init(every: Int = 2000) {
        self.every = every
    }

    /// Counts tasks taken; true when the caller should start a vacuum now.
    func took(_ count: Int) -> Bool {
        state.withLock { state in
            state.taken += count
            guard state.taken >= every, !state.running else { return false }
            state.taken = 0
            state.running = true
            return true
        }
    }

    func finished() {
        state.withLock { $0.running = false }
    }
}

extension PostgresTaskStore {
    /// After a claim took `count` tasks: a background vacuum of the queue when enough were taken.
    func tookFromQueue(_ count: Int) {
        guard count > 0, queueVacuum.took(count) else { return }
        Task {
            _ = try? await rows("VACUUM (SKIP_LOCKED) task_queue")
            queueVacuum.finished()
        }
    }
}

extension PostgresTaskStore {
    /// After a claim that came back with fewer tasks than it asked for (the queue empty, or a
    /// stale row at its head): its stale rows removed in the background, one sweep at a time.
    /// `atMostEvery`: for claims that come back short as a rule (one owner's, where others' tasks
    /// wait), not a sweep of the whole queue at every poll.
    func sweepStaleQueueRows(atMostEvery interval: Duration = .zero) {
        guard staleSweep.start(atMostEvery: interval) else { return }
        Task {
            _ = try? await rows(PostgresQuery(unsafeSQL: ClaimSQL.staleQueueRows))
            staleSweep.finish()
        }
    }
}

/// One background job at a time: `start` says whether the caller should run it now.
final class OneAtATime: Sendable {
    private let state = Mutex<(running: Bool, last: ContinuousClock.Instant?)>((false, nil))

    /// `atMostEvery`: not again until that long after the last start.
    func start(atMostEvery interval: Duration = .zero) -> Bool {
        state.withLock { state in
            guard !state.running else { return false }
            if let last = state.last, ContinuousClock.now - last < interval { return false }
            state = (true, .now)
            return true
        }
    }

    func finish() {
        state.withLock { $0.running = false }
    }
}
