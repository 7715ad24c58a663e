import FerryCopy
import FerryJobs
import FerryStorage
import FerrySystem
import Foundation
import Synchronization

/// Carries a task through validate (its paths resolved and locked, then measured) → stage → verify
/// → commit. Each phase is committed to
/// the store before its work starts, and no phase needs anything held in memory, so any worker can
/// take a task over from its last phase after a crash. Every byte exists whole somewhere at all
/// times: the source is deleted only after the copy is published, flushed and verified again.
public final class MoveEngine: Sendable {
    public struct Settings: Sendable {
        public var worker: String
        public var lease: Duration
        /// Directories users may touch; nil for the CLI acting as the calling user.
        public var roots: [ByteString]?
        public var jobs: Int?
        public var maxAttempts: Int
        public var progressInterval: Duration
        public init(worker: String, lease: Duration = .seconds(30), roots: [ByteString]? = nil, jobs: Int? = nil,
                    maxAttempts: Int = 5, progressInterval: Duration = .seconds(1)) {
            self.worker = worker
            self.lease = lease
            self.roots = roots
            self.jobs = jobs
            self.maxAttempts = maxAttempts
            self.progressInterval = progressInterval
        }
    }

    public let store: any TaskStore
    public let settings: Settings
    public let planner: Planner
    let progressHandler: (@Sendable (TaskRecord, CopyProgress) -> Void)?
    /// Set by a worker shutting down: stop at the next checkpoint, keep what is staged, give the lease back.
    public let shutdown = CancellationFlag()
    /// The runs in progress, so that `stop()` reaches them at once, not at their next heartbeat.
    private let active = Mutex<[String: RunContext]>([:])

    /// Shuts down: every running task stops at its next checkpoint (within a copy: its next file or
    /// chunk), keeps what it staged and hands its lease back, so another worker resumes it at once.
    public func stop() {
        shutdown.cancel()
        active.withLock { runs in runs.values.forEach { $0.cancellation.cancel() } }
    }

    public init(store: any TaskStore, settings: Settings, planner: Planner = Planner(),
                progress: (@Sendable (TaskRecord, CopyProgress) -> Void)? = nil) {
        self.store = store
        self.settings = settings
        var planner = planner
        planner.jobs = settings.jobs
        planner.progressInterval = settings.progressInterval
        self.planner = planner
        self.progressHandler = progress
    }

    /// The name a claimed task's run holds its lease under.
    func runName(_ claimed: TaskRecord) -> String { claimed.leaseOwner ?? settings.worker }

    /// What running the task would do, without doing anything. `progress` is told what the
    /// measurement of the source has found so far.
    public func preflight(_ task: NewTask, progress: ProgressHandler? = nil) throws -> Preflight {
        let transfer = try Transfer(sources: task.sources.map(\.bytes), destination: task.destination.bytes, roots: settings.roots)
        return try planner.preflight(kind: task.kind, transfer: transfer, options: task.options, progress: progress)
    }

    /// Runs a task this worker has claimed until it ends or must be handed back. Returns its record.
    /// `cancellation`: cancels this run (as a cancel request does), e.g. from Ctrl-C.
    @discardableResult
    public func run(_ claimed: TaskRecord, cancellation: CancellationFlag? = nil) async -> TaskRecord {
        // Under the name it was claimed with: a worker running several tasks claims each under
        // a name of its own (`Worker`), so that the fence tells its runs apart.
        let context = RunContext(task: claimed, worker: runName(claimed), cancellation: cancellation ?? CancellationFlag())
        // Claimed (its lease extended) just before: confirmed from about now (`beat`).
        context.cancellation.holdAfter(CancellationFlag.now() + confirmedFor)
        active.withLock { $0[claimed.id] = context }
        if shutdown.isCancelled { context.cancellation.cancel() }
        let heartbeat = Task { await self.beat(context) }
        defer {
            heartbeat.cancel()
            active.withLock { _ = $0.removeValue(forKey: claimed.id) }
        }
        do {
            try await drive(context)
        } catch let error as TaskStoreError {
            if case .leaseLost = error { return (try? await store.task(claimed.id)) ?? claimed }
            // A database that failed a call (a connection reset, a failover, a deadlock it broke)
            // is a passing fault: retried with backoff, as a filesystem's passing fault is, with
            // nothing rolled back for it at the first one (`handle`).
            if case .database = error {
                await handle(error, context)
                return (try? await store.task(claimed.id)) ?? claimed
            }
            let failure = TaskFailure(code: "database", message: error.description)
            let status = (try? await store.task(claimed.id))?.status
            if status == nil || status == .committing {
                // Past the point of no return (or not known to be before it) nothing is rolled
                // back for a database that failed a call: handed back, to be tried again.
                try? await store.release(id: claimed.id, worker: context.worker, retryAfter: .seconds(30), failure: failure,
                                         message: "\(Self.retryEvent) 30 s: \(failure.message)")
            } else {
                await fail(context, failure, rollback: true)
            }
        } catch let refusal as Refusal {
            // A source that changed after its copy was published: the copy stays published and the
            // source keeps what changed. Trying again would find the same, and there is nothing
            // to roll back, so the task ends here and its message says what is where.
            // Likewise a commit that finds part of what it was to publish gone.
            // Any other refusal past the point of no return (a name taken in the destination as
            // the copy was published) stops the commit, to be resumed once it is put right.
            let status = (try? await store.task(claimed.id))?.status
            let failure = TaskFailure(code: refusal.code, message: refusal.message)
            if status == nil {
                // Where it stands cannot be read: a commit is not rolled back on a guess.
                await handBack(context, failure)
            } else if status == .committing && !["source.changed", "staging.missing"].contains(refusal.code) {
                await stopCommit(context, failure)
            } else {
                await fail(context, failure, rollback: status != .committing)
            }
        } catch {
            await handle(error, context)
        }
        return (try? await store.task(claimed.id)) ?? claimed
    }

    // MARK: phases

    /// `start`: the task as it stands, when not as claimed (a relink the servers refused, planned
    /// again as a copy).
    private func drive(_ context: RunContext, from start: TaskRecord? = nil) async throws {
        var task = start ?? context.task
        if task.cancelRequested && task.status != .committing {
            let crashed = task.failure.flatMap { $0.code == TaskFailure.crashedCode ? $0 : nil }
            await rollBack(context, status: .rolledBack, failure: crashed ?? TaskFailure(code: "cancelled", message: "cancelled by request"))
            return
        }
        if task.status == .pending || task.status == .validating {
            // Once (a task waiting for a lock, or taken over, is validating already).
            if task.status == .pending {
                try await store.advance(id: task.id, worker: context.worker, to: .validating, plan: nil, message: "validating")
            }
            // The paths are resolved and locked before the source is measured: a task waiting for
            // another's lock looks again without walking its tree each time, and what it measures
            // (the source, the destination's free space) no task holding its paths changes meanwhile.
            let (transfer, locks) = try await Blocking.run { [self, task] in try self.resolve(task) }
            do {
                try await store.acquireLocks(id: task.id, worker: context.worker, locks)
            } catch TaskStoreError.locked(let other, let path) {
                if task.options.waitForLocks {
                    try await store.wait(id: task.id, worker: context.worker, for: other, retryAfter: Self.lockWaitDelay,
                                         message: "waiting: \(path) is locked by task \(other)")
                    return
                }
                let holder = try? await store.task(other)
                throw Refusal(code: "locked", message: holder?.lockExplanation(path: path) ?? TaskStoreError.locked(by: other, path: path).description)
            }
            task.plan = try await lockedPlan(context, task, transfer)
            task.status = .locked
        }
        guard var plan = task.plan else { throw Refusal(code: "plan.missing", message: "task \(task.id) reached \(task.status.rawValue) without a plan") }
        let strategy = Strategy(rawValue: plan.strategy) ?? .copy
        if task.status == .committing, plan.stoppedCommitting != true {
            // A commit whose runs keep dying (a worker that crashes on one of its files, or
            // stalls for a whole lease each time) would take worker after worker down for ever:
            // stopped where it is instead, for a user's retry to finish once the cause is found.
            let ends = UnexpectedEnds.count(try await store.events(task.id), during: .committing)
            if ends >= UnexpectedEnds.limit {
                await stopCommit(context, TaskFailure(code: TaskFailure.crashedCode, message:
                    "the commit's run ended unexpectedly \(ends) times (its process died, or stopped for a whole lease); it was stopped rather than run again"))
                return
            }
        }
        if task.status == .committing, plan.stoppedCommitting == true {
            // A commit that stopped, retried by a user: its locks went when it failed. Taken
            // again before anything is touched; a task holding one of its paths meanwhile is
            // waited for.
            let locks = try await Blocking.run { [self, task, plan] in try self.locks(task, plan) }
            do {
                try await store.acquireLocks(id: task.id, worker: context.worker, locks)
            } catch TaskStoreError.locked(let other, let path) {
                try await store.wait(id: task.id, worker: context.worker, for: other, retryAfter: Self.lockWaitDelay,
                                     message: "waiting: \(path) is locked by task \(other)")
                return
            }
            plan.stoppedCommitting = nil
            try await store.advance(id: task.id, worker: context.worker, to: .committing, plan: plan,
                                    message: "resuming the commit where it stopped (its paths locked again)")
        }
        if strategy == .rename {
            // A rename resumed in its commit (after a crash, or a user's retry) is past a cancel.
            if task.status != .committing { try await checkpoint(context) }
            try await store.advance(id: task.id, worker: context.worker, to: .committing, plan: nil, message: "renaming")
            try await Blocking.run { [self, task] in try self.commitRename(task) }
            try await store.finish(id: task.id, worker: context.worker, status: .completed, failure: nil, message: "renamed")
            return
        }
        if task.status == .locked {
            try await checkpoint(context)
            // A copy staged by an earlier attempt of this task, which its rollback could not
            // remove, is of unknown age: gone before this attempt copies.
            if strategy == .copy { try await Blocking.run { [self, task, plan] in try self.discardStaged(task, plan, context) } }
            plan.stagedOn = bootIdentity
            try await store.advance(id: task.id, worker: context.worker, to: .copying, plan: plan, message: "copying into \(plan.stagingName)")
            task.status = .copying
        } else if task.status == .copying || task.status == .verifying, strategy == .copy, plan.stagedOn != bootIdentity {
            // Staged, and not yet flushed, by a machine that has restarted since or by another one:
            // a file that looks complete may hold no data on disk, and the checks before publishing
            // compare metadata. The copy is made again (a relink stages no data, only renames).
            let why = plan.stagedOn == TaskPlan.untrusted
                ? "what the last attempt staged is not to be trusted (see above)"
                : "it was being written on another machine or before a restart, and what was not yet flushed then may not be on disk"
            // All of it removed before this boot is recorded as the staging's: a run ended while
            // removing it must leave it untrusted, or the next would resume into what is left.
            try await Blocking.run { [self, task, plan] in try self.discardStaged(task, plan, context) }
            plan.stagedOn = bootIdentity
            try await store.advance(id: task.id, worker: context.worker, to: .copying, plan: plan,
                                    message: "copying again into \(plan.stagingName): \(why)")
            task.status = .copying
        }
        if task.status == .copying {
            let notes: CopyNotes?
            do {
                notes = try await Blocking.run { [self, task, plan] in try self.stage(task, plan, context) }
            } catch where strategy == .relink && relinkRefusedByServers(error, task, plan) {
                try await drive(context, from: try await copyInsteadOfRelink(context, task, after: error))
                return
            }
            if let notes, notes.count > 0 {
                // What the destination would not keep (a copy; or a move that allows the loss).
                try? await store.record(task.id, message: "not preserved (\(notes.count)): " + notes.first.prefix(5).joined(separator: "; ")
                                        + (notes.count > 5 ? "; …" : ""))
            }
            try await checkpoint(context)
            try await store.advance(id: task.id, worker: context.worker, to: .verifying, plan: nil, message: "verifying the copy")
            task.status = .verifying
        }
        if task.status == .verifying {
            try await Blocking.run { [self, task, plan] in try self.verifyAndFlush(task, plan, context) }
            try await checkpoint(context)
            try await store.advance(id: task.id, worker: context.worker, to: .committing, plan: nil,
                                    message: task.kind == .move ? "publishing, then removing the source" : "publishing")
            task.status = .committing
        }
        // From here on there is no going back: a cancel is too late, and a failure is retried.
        let needsDeletion = try await Blocking.run { [self, task, plan] in try self.publishAndCheck(task, plan) }
        if needsDeletion {
            var deleting = plan
            if !plan.deletingSource {
                deleting.deletingSource = true
                try await store.advance(id: task.id, worker: context.worker, to: .committing, plan: deleting,
                                        message: "the published copy matches the source; removing the source")
            }
            try await Blocking.run { [self, task, deleting] in try self.deleteSources(task, deleting) }
        }
        // Done shows as all of it (the last figures written were the verification's, which
        // counts entries only, or of a run before this one).
        try? await store.updateProgress(id: task.id, worker: context.worker, TaskProgress(
            bytesDone: plan.bytes, bytesTotal: plan.bytes, entriesDone: plan.entries, entriesTotal: plan.entries, bytesPerSecond: 0))
        try await store.finish(id: task.id, worker: context.worker, status: .completed, failure: nil,
                               message: task.kind == .move ? "moved: published, source removed" : "copied: published")
    }

    /// `skippingGoneDirectories`: a source whose directory no longer exists is left out (any
    /// other failure to open one is thrown, the descriptors opened so far closed).
    func sources(_ task: TaskRecord, _ plan: TaskPlan, skippingGoneDirectories: Bool = false) throws -> [CopySource] {
        let opener = DirectoryOpener(roots: settings.roots)
        defer { opener.close() }
        var opened: [CopySource] = []
        do {
            for (source, final) in zip(task.sources, plan.finalNames) {
                let (parent, name) = BytePath.split(Transfer.absolute(source.bytes))
                do {
                    opened.append(CopySource(directory: try opener.openDirectory(parent), name: name, destinationName: final.bytes))
                } catch let error as SystemError where skippingGoneDirectories && error.code == .notFound {
                    continue
                }
            }
        } catch {
            opened.forEach { $0.directory.closeQuietly() }
            throw error
        }
        return opened
    }

    /// `layouts`: the destination's, for the stage to give each staged file its source's layout
    /// (Lustre striping) before its data.
    func copyEngine(_ task: TaskRecord, _ context: RunContext, layouts: (any LayoutCloner)? = nil) -> CopyEngine {
        let options = CopyOptions(jobs: task.options.jobs ?? settings.jobs, verify: VerifyMode(rawValue: task.options.verify) ?? .metadata,
                                  layoutCloner: layouts,
                                  dropSourceCache: task.kind == .move, requireXattrs: task.kind == .move && !task.options.allowXattrLoss,
                                  progressInterval: settings.progressInterval,
                                  cancellation: context.cancellation)
        return CopyEngine(options: options) { [self] progress in self.report(task, progress, context) }
    }
}

/// What one run of a task shares between its phases, its heartbeat and its progress reports.
final class RunContext: Sendable {
    let task: TaskRecord
    /// The name this run holds the task's lease under: the one it was claimed with.
    let worker: String
    let cancellation: CancellationFlag
    let leaseLost = Atomic<Bool>(false)
    let lastProgress = Mutex<ContinuousClock.Instant?>(nil)
    init(task: TaskRecord, worker: String, cancellation: CancellationFlag = CancellationFlag()) {
        self.task = task
        self.worker = worker
        self.cancellation = cancellation
    }
}
