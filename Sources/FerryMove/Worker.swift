import FerryCopy
import FerryJobs
import Foundation
import Synchronization

/// Claims tasks from the store and runs them, up to `concurrency` at once, until stopped. Stopping
/// (SIGTERM) lets each running task reach its next checkpoint and hand its lease back, with what it
/// staged kept for whoever resumes it.
public final class Worker: Sendable {
    public let engine: MoveEngine
    public let concurrency: Int
    /// How often a long-running worker runs the janitor's pass: staging directories no live task
    /// owns, and the store's lock markers (recovering dead workers' tasks is what claiming does).
    public let janitorInterval: Duration?
    /// Hears each of those clean-ups' reports or errors.
    public let onJanitorPass: @Sendable (Result<Janitor.Report, any Error>) -> Void
    /// The one owner whose tasks this worker takes, or nil for all (`ClaimScope`): a worker runs
    /// tasks with its own rights, which must be their owner's.
    public let owner: String?
    /// Hears each claim that failed (the database unreachable, say). A worker that runs until
    /// stopped tries again after a pause; one run `once` stops there.
    public let onClaimFailure: @Sendable (any Error) -> Void
    private let runs = Atomic<UInt64>(0)

    public init(engine: MoveEngine, concurrency: Int = 2, janitorInterval: Duration? = nil, owner: String? = ClaimScope.forThisProcess,
                onClaimFailure: @escaping @Sendable (any Error) -> Void = { _ in },
                onJanitorPass: @escaping @Sendable (Result<Janitor.Report, any Error>) -> Void = { _ in }) {
        self.engine = engine
        self.onClaimFailure = onClaimFailure
        self.owner = owner
        self.concurrency = max(1, concurrency)
        self.janitorInterval = janitorInterval
        self.onJanitorPass = onJanitorPass
    }

    /// `once`: run every task claimable now (and those they unblock), then return.
    /// Returns the records of the tasks this worker ran to an end or handed back.
    @discardableResult
    public func run(once: Bool = false, stop: CancellationFlag = CancellationFlag()) async -> [TaskRecord] {
        let janitor = janitorInterval.flatMap { interval -> Task<Void, Never>? in
            guard !once else { return nil }
            return Task { [engine, onJanitorPass] in await Janitor(engine: engine).repeating(every: interval, onPass: onJanitorPass) }
        }
        defer { janitor?.cancel() }
        /// What a child of the loop's group ends with: a task's run, or a wait for work.
        enum Outcome: Sendable {
            case ended(TaskRecord)
            case woke
        }
        return await withTaskGroup(of: Outcome.self) { group in
            var running = 0
            var waking = false
            var claimFailed = false
            var finished: [TaskRecord] = []
            while true {
                if stop.isCancelled && !engine.shutdown.isCancelled { engine.stop() }
                if !stop.isCancelled && !claimFailed && running < concurrency {
                    // Each run under a name of its own: runs of this process share no lease, so
                    // the fence tells a run that lost its task (its heartbeats failed for a whole
                    // lease) from the run that took it back, even in this same process.
                    let name = "\(engine.settings.worker)#\(runs.add(1, ordering: .relaxed).newValue)"
                    let claimed: [TaskRecord]
                    do {
                        claimed = try await engine.store.claim(worker: name, limit: 1, lease: engine.settings.lease, scope: owner)
                    } catch {
                        onClaimFailure(error)
                        claimed = []
                        claimFailed = true  // until the next wake: not again at once
                    }
                    for task in claimed {
                        // A task whose runs keep ending unexpectedly is handed back to be rolled
                        // back (by the next claim), not run again.
                        if await UnexpectedEnds.giveUpAfterTakeover(task, worker: name, store: engine.store) { continue }
                        running += 1
                        group.addTask { .ended(await self.engine.run(task)) }
                    }
                    if !claimed.isEmpty { continue }
                }
                if running == 0 && (once || stop.isCancelled) { return finished }
                // Wake on whichever comes first: a task ending, or (not `once`, which takes only
                // what is claimable now) new work or the wait's 2 s; a stop is seen at the next
                // of either, also with every slot busy.
                if !waking && !once && !stop.isCancelled {
                    waking = true
                    group.addTask { await self.engine.store.waitForWork(timeout: .seconds(2)); return .woke }
                }
                switch await group.next() {
                case .ended(let record):
                    finished.append(record)
                    running -= 1
                case .woke:
                    waking = false
                    claimFailed = false
                case nil:
                    break
                }
            }
        }
    }
}
