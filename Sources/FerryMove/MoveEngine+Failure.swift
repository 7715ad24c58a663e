import FerryCopy
import FerryJobs
import FerrySystem
import Foundation
import Synchronization

/// How a run ends when it does not complete: refusals fail at once, a cancel rolls back, a stopping
/// worker hands the task on, a passing fault (or anything past the point of no return) is retried.
extension MoveEngine {
    // MARK: failure, cancellation, progress

    func handle(_ error: any Error, _ context: RunContext) async {
        let read = try? await store.task(context.task.id)
        let task = read ?? context.task
        if shutdown.isCancelled {
            // A measurement cut short: its counts are not what the next worker will find.
            if task.status == .validating { try? await store.updateProgress(id: task.id, worker: context.worker, TaskProgress()) }
            // What was staged could not be flushed (`stage`), or an I/O error may have cost it
            // data: the next worker copies it again — or, if that cannot be recorded, the
            // staging goes now (rolled back).
            if let current = read, Self.mayHaveLostStagedData(error, current),
               !(await untrustStaging(current, Self.failure(for: error), context)) { return }
            try? await store.release(id: task.id, worker: context.worker, retryAfter: nil, failure: nil,
                                     message: "worker stopping: released at the \(task.status.rawValue) checkpoint")
            return
        }
        if let copy = error as? CopyError, case .cancelled = copy {
            if context.leaseLost.load(ordering: .acquiring) { return }
            await rollBack(context, status: .rolledBack, failure: TaskFailure(code: "cancelled", message: "cancelled by request"))
            return
        }
        let failure = Self.failure(for: error)
        guard read != nil else {
            // Where the task stands cannot be read (the record as claimed may be phases behind:
            // its commit begun since). Past the point of no return nothing may be rolled back,
            // and before it nothing need be: handed back, to be run again from where it is.
            await handBack(context, failure)
            return
        }
        // A staging found untrusted at the commit's flush (nothing of it published yet) goes
        // back to copying: the task is before the point of no return again.
        let untrusted = read.map { Self.mayHaveLostStagedData(error, $0) } ?? false
        if Self.isTransient(error) {
            // A passing fault, up to `maxAttempts` runs since the task was last retried: keep
            // everything, try again after 2 s, 4 s, 8 s… at most 5 minutes. Counted from the
            // history, not from the claims: a task that waited for a lock, or that a user retried,
            // was claimed many times without failing.
            let earlier = TaskEvent.count((try? await store.events(task.id)) ?? [], beginningWith: Self.retryEvent)
            if earlier + 1 < settings.maxAttempts {
                // Only from the task as it is now: the record as claimed may be phases behind (a
                // deletion begun since), and its plan must not be written back over the current one.
                if let current = read, untrusted, !(await untrustStaging(current, failure, context)) { return }
                let delay = Duration.seconds(min(300, 2 << min(earlier, 7)))
                try? await store.release(id: task.id, worker: context.worker, retryAfter: delay, failure: failure,
                                         message: "\(Self.retryEvent) \(delay.components.seconds) s: \(failure.message)")
                return
            }
        }
        if task.status == .committing && !untrusted {
            // Past the point of no return nothing is rolled back, and a fault that lasts (or
            // passing ones at every try) is not retried for ever either: the commit stops where
            // it is, and a user's retry resumes it once the cause is put right.
            await stopCommit(context, failure)
            return
        }
        await fail(context, failure, rollback: true)
    }

    /// Hands the task back to be tried again in 30 s, rolling nothing back (if even that cannot be
    /// recorded, its lease runs out, with the same effect).
    func handBack(_ context: RunContext, _ failure: TaskFailure) async {
        try? await store.release(id: context.task.id, worker: context.worker, retryAfter: .seconds(30), failure: failure,
                                 message: "\(Self.retryEvent) 30 s: \(failure.message)")
    }

    /// Not resumed: the next attempt copies everything again. If that cannot be recorded, the
    /// staging is removed instead (the task fails, rolled back) and the answer is false.
    func untrustStaging(_ current: TaskRecord, _ failure: TaskFailure, _ context: RunContext) async -> Bool {
        var plan = current.plan
        plan?.stagedOn = TaskPlan.untrusted
        do {
            try await store.advance(id: current.id, worker: context.worker, to: .copying, plan: plan,
                                    message: "the staged copy is not trusted any more: \(failure.message)")
            return true
        } catch {
            await fail(context, failure, rollback: true)
            return false
        }
    }

    /// Ends a task that cannot finish its commit now (a permission, a full disk, a name taken in
    /// the destination, or passing faults at every try): `failed`, with nothing rolled back and
    /// its staging kept, saying what is published, what is still staged and what of the source
    /// is left. `TaskPlan.stoppedCommitting` makes a user's retry resume the commit.
    func stopCommit(_ context: RunContext, _ failure: TaskFailure) async {
        let id = context.task.id
        let read: TaskRecord??
        do { read = .some(try await store.task(id)) } catch { read = nil }
        guard let found = read else {
            // Unreadable: nothing can be recorded of where it stopped. Handed back, as before.
            try? await store.release(id: id, worker: context.worker, retryAfter: .seconds(30), failure: failure,
                                     message: "\(Self.retryEvent) 30 s: \(failure.message)")
            return
        }
        guard let current = found, var plan = current.plan else {
            // No plan: nothing was staged or published under one, and nothing to resume.
            await fail(context, failure, rollback: false)
            return
        }
        // Where it stands, if that can be read now: one that cannot be (a source's directory
        // unreadable, a stale handle) is not "nothing renamed", and keeps its place for a retry.
        let known = try? await Blocking.run { [self, current, plan] in try self.commitState(current, plan) }
        let state = known ?? CommitState(text: "Where the commit stands could not be read now. ")
        if plan.strategy == Strategy.rename.rawValue, let known, known.renamed == 0 {
            // A rename that renamed nothing has nothing to finish: it fails as before the
            // commit (a retry plans it anew, e.g. as a copy after EXDEV).
            await fail(context, failure, rollback: false)
            return
        }
        plan.stoppedCommitting = true
        do {
            try await store.advance(id: id, worker: context.worker, to: .committing, plan: plan,
                                    message: "the commit stopped: \(failure.message)")
        } catch {
            // Without the mark a retry would plan the task anew over a half-made commit.
            try? await store.release(id: id, worker: context.worker, retryAfter: .seconds(30), failure: failure,
                                     message: "\(Self.retryEvent) 30 s: \(failure.message)")
            return
        }
        let stopped = TaskFailure(code: failure.code, message: failure.message + ". " + state.text
            + "Once the cause is put right, ferry task retry \(id) finishes the commit (nothing is copied again).")
        try? await store.finish(id: id, worker: context.worker, status: .failed, failure: stopped,
                                message: "failed while committing, nothing rolled back: \(stopped.message)")
    }

    /// Where a commit stands: a sentence or two ending with a space, and for a rename how many
    /// of its sources were renamed.
    struct CommitState: Sendable {
        var text = ""
        var renamed = 0
    }

    /// What of the final names is published (renamed), what is still staged, and what of the
    /// source is left.
    func commitState(_ task: TaskRecord, _ plan: TaskPlan) throws -> CommitState {
        let destination = try DirectoryOpener(roots: settings.roots).openDirectoryClosingRoots(plan.destinationDirectory.bytes)
        defer { destination.closeQuietly() }
        let staging = try? destination.openAt(plan.stagingName.bytes, [.directory, .noFollow])
        defer { staging?.closeQuietly() }
        let staged = plan.finalNames.filter { name in staging.map { (try? $0.status(name.bytes)) != nil } ?? false }
        let published = plan.finalNames.filter { name in !staged.contains(name) && (try? destination.status(name.bytes)) != nil }
        let sources = try self.sources(task, plan)
        defer { sources.forEach { $0.directory.closeQuietly() } }
        let left = sources.filter { (try? $0.directory.status($0.name)) != nil }.count
        var state = CommitState()
        var words: [String] = []
        if plan.strategy == Strategy.rename.rawValue {
            // Renamed: gone from its source and at its final name.
            state.renamed = zip(sources, plan.finalNames).filter { source, final in
                (try? source.directory.status(source.name)) == nil && (try? destination.status(final.bytes)) != nil
            }.count
            words.append("\(state.renamed) of \(plan.finalNames.count) renamed into \(plan.destinationDirectory)")
        } else {
            words.append("\(published.count) of \(plan.finalNames.count) published in \(plan.destinationDirectory)"
                + (published.isEmpty ? "" : " (\(published.prefix(3).map(\.description).joined(separator: ", "))\(published.count > 3 ? ", …" : ""))"))
            if !staged.isEmpty {
                words.append("\(staged.count) still staged in \(plan.destinationDirectory)/\(plan.stagingName)"
                    + (plan.strategy == Strategy.relink.rawValue ? " (a relink moves files, it does not copy them: that is their only place)" : ""))
            }
            if task.kind == .move {
                if plan.deletingSource {
                    words.append("the source was being removed, \(left) of \(task.sources.count) left (an entry goes only where the published copy holds the same)")
                } else if plan.strategy == Strategy.relink.rawValue {
                    words.append("the source keeps its directories, emptied of what was staged")
                } else {
                    words.append("nothing was removed from the source")
                }
            }
        }
        state.text = "The commit stopped with " + words.joined(separator: "; ") + ". "
        return state
    }

    /// Whether a copy's staging may hold a file that looks complete but lost data: after a failed
    /// flush (before anything was published), or an I/O error while staging or verifying, which
    /// may be a write-back error (the kernel drops the pages it could not write, and `close`,
    /// `fsync` or `syncfs` report it once). A relink stages no data (its staging holds the
    /// source's own files, never to be thrown away).
    static func mayHaveLostStagedData(_ error: any Error, _ task: TaskRecord) -> Bool {
        guard let plan = task.plan, plan.strategy == Strategy.copy.rawValue, !plan.deletingSource else { return false }
        if error is StagingUntrusted { return true }
        guard task.status == .copying || task.status == .verifying else { return false }
        guard systemCode(of: error) == .io else { return false }
        // While copying, only the source is read: an EIO reading it (a bad sector) says nothing
        // of what was staged, and copying everything again would meet it again, every attempt.
        if task.status == .copying, case .system(_, let system)? = error as? CopyError, sourceReads.contains(system.syscall) {
            return false
        }
        return true
    }

    /// The calls a copy makes on source files alone (`FileDataCopier`); `copy_file_range`, which
    /// may fail for either side, is not one of them.
    static let sourceReads: Set<String> = ["pread", "read", "lseek(SEEK_DATA)", "lseek(SEEK_HOLE)"]

    /// The errno-level cause of an error from a run, whichever kind of error carries it.
    static func systemCode(of error: any Error) -> SystemError.Code? {
        switch error {
        case let untrusted as StagingUntrusted: untrusted.systemCode
        case let copy as CopyError: copy.systemCode
        case let system as SystemError: system.code
        default: nil
        }
    }

    /// How the history records a run given back to be tried again after a passing fault.
    static let retryEvent = "retrying in"

    /// Whether this worker still holds the task's lease, extended now: nothing is rolled back
    /// without it. A worker cut off from the database (or whose heartbeats failed) may have lost
    /// the task to another, whose staging it would otherwise delete — or, for a relink, whose
    /// files it would move back under it.
    func stillHolds(_ context: RunContext) async -> Bool {
        if context.leaseLost.load(ordering: .acquiring) { return false }
        return (try? await store.heartbeat(id: context.task.id, worker: context.worker, lease: settings.lease)) == true
    }

    func fail(_ context: RunContext, _ failure: TaskFailure, rollback: Bool) async {
        if rollback, !(await stillHolds(context)) { return }
        if rollback, let unfinished = await discardStaging(context) {
            // Cancelled, so that the next run rolls back (it would otherwise carry the task on
            // from its phase: relink again what was put back, and commit what was given up).
            _ = try? await store.requestCancel(context.task.id)
            await rollbackUnfinished(context, unfinished, after: "failed: \(failure.message) — ")
            return
        }
        try? await store.finish(id: context.task.id, worker: context.worker, status: .failed, failure: failure,
                                message: "failed: \(failure.message)\(rollback ? " — staged data removed, source untouched" : "")")
    }

    func rollBack(_ context: RunContext, status: TaskStatus, failure: TaskFailure) async {
        guard await stillHolds(context) else { return }
        if let unfinished = await discardStaging(context) {
            await rollbackUnfinished(context, unfinished, after: "")
            return
        }
        try? await store.finish(id: context.task.id, worker: context.worker, status: status, failure: failure,
                                message: "rolled back: staged data removed, source untouched")
    }

    static let rollbackUnfinishedEvent = "the rollback did not finish"

    /// Hands back a task whose rollback did not finish, with why (`rollback.incomplete` when
    /// relinked entries stay in staging), to be rolled back again after 30 s, 1 min, 2 min… (at
    /// most an hour: a name taken in the source stays taken until someone frees it).
    func rollbackUnfinished(_ context: RunContext, _ unfinished: TaskFailure, after prefix: String) async {
        let tries = TaskEvent.count((try? await store.events(context.task.id)) ?? [], beginningWith: prefix + Self.rollbackUnfinishedEvent) + 1
        let delay = min(Duration.seconds(3600), .seconds(30) * (1 << min(tries - 1, 7)))
        try? await store.release(id: context.task.id, worker: context.worker, retryAfter: delay, failure: unfinished,
                                 message: "\(prefix)\(Self.rollbackUnfinishedEvent): \(unfinished.message); tried again in \(Format.duration(Double(delay.components.seconds)))")
    }

    /// Undoes the stage: a copy's staging is deleted; a relink's entries are renamed back into the
    /// source (they are the only copy). Returns why a relink could not be fully put back, nil
    /// once it is (or for a copy, whose staging the janitor removes if this could not).
    @discardableResult
    func discardStaging(_ context: RunContext) async -> TaskFailure? {
        // A task that cannot be read now is not known to have nothing staged: a relink's files
        // may be in there, so the rollback is not done (it is retried).
        let read: TaskRecord?
        do { read = try await store.task(context.task.id) } catch { return Self.failure(for: error) }
        guard let task = read, let plan = task.plan else { return nil }
        // What the staging holds is known by its mark, whatever this plan says: a retried task's
        // new plan may be a copy over what an earlier relink left there, or the reverse.
        let relinked = Mutex(plan.strategy == Strategy.relink.rawValue)
        do {
            try await Blocking.run { [self] in
                let destination = try DirectoryOpener(roots: self.settings.roots).openDirectoryClosingRoots(plan.destinationDirectory.bytes)
                defer { destination.closeQuietly() }
                let engine = CopyEngine(options: CopyOptions(jobs: self.settings.jobs))
                let id = String(plan.stagingName.description.dropFirst(StagingArea.prefix.count))
                let planned = relinked.withLock { $0 }
                let opened: StagingArea?
                do { opened = try engine.openStaging(in: destination, id: id, relink: planned) } catch CopyError.foreignStaging {
                    opened = try engine.openStaging(in: destination, id: id, relink: !planned)
                    relinked.withLock { $0 = !planned }
                }
                guard let staging = opened else { return }
                if relinked.withLock({ $0 }) {
                    defer { staging.directory.closeQuietly() }
                    let sources = try self.sources(task, plan)
                    defer { sources.forEach { $0.directory.closeQuietly() } }
                    // A directory made again gets its default layout back (one filesystem).
                    let layouts = try self.layoutCloner(destination, plan.destinationDirectory, sources: sources)
                    try CopyEngine(options: CopyOptions(jobs: self.settings.jobs, layoutCloner: layouts)).unrelink(sources, from: staging)
                } else {
                    engine.discard(staging)
                }
            }
            return nil
        } catch {
            try? await store.record(task.id, message: "rollback: \(error)")
            return relinked.withLock { $0 } ? Self.failure(for: error) : nil
        }
    }

    static func isTransient(_ error: any Error) -> Bool {
        // A staging directory that went is copied again; a failed flush unless its cause lasts.
        if let untrusted = error as? StagingUntrusted, untrusted.systemCode == nil { return true }
        if case .database? = error as? TaskStoreError { return true }  // the database failed a call (`run`)
        switch systemCode(of: error) {
        case .io?, .busy?, .tooManyOpenFiles?, .staleFileHandle?: return true
        default: return false
        }
    }

    public static func failure(for error: any Error) -> TaskFailure {
        switch error {
        case let copy as CopyError:
            switch copy {
            case .system(_, let system):
                return TaskFailure(code: code(for: system.code), message: copy.description)
            case .sourceChanged: return TaskFailure(code: "source.changed", message: copy.description)
            case .verificationFailed: return TaskFailure(code: "verify.mismatch", message: copy.description)
            case .destinationExists: return TaskFailure(code: "destination.exists", message: copy.description)
            case .unsupportedEntry: return TaskFailure(code: "unsupported", message: copy.description)
            case .foreignStaging: return TaskFailure(code: "staging.foreign", message: copy.description)
            case .notPutBack: return TaskFailure(code: "rollback.incomplete", message: copy.description)
            case .mountPoint: return TaskFailure(code: "source.mount", message: copy.description)
            case .cancelled: return TaskFailure(code: "cancelled", message: copy.description)
            }
        case let system as SystemError:
            if system.code == .escapesRoot { return TaskFailure(code: "path.outside", message: system.description) }
            return TaskFailure(code: code(for: system.code), message: system.description)
        case let untrusted as StagingUntrusted:
            switch untrusted.reason {
            case .flushFailed(let path, let error): return TaskFailure(code: failure(for: CopyError.system(path: path, error)).code, message: untrusted.description)
            case .gone: return TaskFailure(code: "staging.missing", message: untrusted.description)
            }
        case let usage as Transfer.UsageError:
            return TaskFailure(code: "usage", message: usage.message)
        case let store as TaskStoreError:
            return TaskFailure(code: "database", message: store.description)
        default:
            return TaskFailure(code: "internal", message: "\(error)")
        }
    }

    /// A task failure's code for a system error's.
    static func code(for system: SystemError.Code) -> String {
        switch system {
        case .noSpace: "nospace"
        case .quotaExceeded: "quota.exceeded"
        case .permissionDenied, .notPermitted: "permission"
        case .notFound: "path.not_found"
        case .symlinkRefused: "path.symlink"  // as root, through a symlink beneath the roots
        case .io: "io"
        case .xattrRefused: "xattr.refused"
        default: "system"
        }
    }
}
