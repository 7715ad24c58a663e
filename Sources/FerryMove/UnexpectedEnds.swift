import FerryJobs
import Foundation

/// Runs of a task that ended without handing the task back: its process died under a runner (the
/// runner records it, `processEnded`), or the worker running it died, or stalled for a whole lease,
/// and a later claim took the task over (the claim records it, `TaskEvent.isTakeover`). A task that
/// ends so every time (a crash met on one of its files, memory it cannot have) would otherwise take
/// worker after worker down, forever. At its `limit`th such end since it was last retried it is
/// rolled back instead of resumed (staging removed, source untouched), with a failure that says
/// why. Past the point of no return (committing) nothing is rolled back: the engine resumes the
/// commit, and at its `limit`th such end while committing stops it where it is, failed, to be
/// finished by a user's retry (`MoveEngine.stopCommit`).
public enum UnexpectedEnds {
    public static let limit = 3
    /// The event a runner records when a task's process ends without handing the task back.
    public static let processEnded = "task process ended unexpectedly"

    /// The task's unexpected ends since it was last retried, as its history records them; with
    /// `status`, only those of runs that ended in it.
    public static func count(_ events: [TaskEvent], during status: TaskStatus? = nil) -> Int {
        TaskEvent.sinceRetried(events).filter { event in
            (event.isTakeover || event.message.hasPrefix(processEnded)) && (status == nil || event.status == status)
        }.count
    }

    /// For a claimer, with a task it has just claimed: when the claim took the task over from a
    /// worker whose lease had expired, and that makes the task's `limit`th unexpected end, the
    /// task is given up (see `giveUp`) and the answer is true: the claimer must not run it.
    public static func giveUpAfterTakeover(_ task: TaskRecord, worker: String, store: any TaskStore) async -> Bool {
        guard let previous = task.takenOverFrom, task.status != .committing, !task.cancelRequested,
              let events = try? await store.events(task.id) else { return false }
        let ends = count(events)
        guard ends >= limit else { return false }
        await giveUp(task.id, worker: worker, store: store, ends: ends, last: "worker \(previous) stopped without handing it back",
                     message: "taken over from \(previous): the task's run ended unexpectedly \(ends) times; rolling it back")
        return true
    }

    /// Cancels the task and hands it back with the failure `TaskFailure.crashedCode`, so that the
    /// next claim rolls it back and the failure stays. `last`: how the last run ended.
    public static func giveUp(_ id: String, worker: String, store: any TaskStore, ends: Int, last: String, message: String) async {
        let failure = TaskFailure(code: TaskFailure.crashedCode, message:
            "the task's run ended unexpectedly \(ends) times (the last: \(last)); it was rolled back (staged data removed, "
            + "source untouched) rather than run again; `ferry task retry \(id)` runs it once more")
        _ = try? await store.requestCancel(id)
        try? await store.release(id: id, worker: worker, retryAfter: nil, failure: failure, message: message)
    }
}

extension TaskRecord {
    /// For people, about a stalled task (`isStalled`): what happened, and what ends it. Nil for a
    /// task that is not stalled.
    public func stallDescription(at now: Date = Date()) -> String? {
        guard isStalled(at: now), let worker = leaseOwner, let expired = leaseExpiresAt else { return nil }
        return "its worker \(worker) stopped without handing it back (its lease ran out \(Format.span(now.timeIntervalSince(expired))) ago: "
            + "it died, or hangs); `ferry janitor` or any `ferry worker` "
            + (cancelRequested ? "rolls it back, as cancelled" : "resumes it, or rolls it back after `ferry task cancel \(id)`")
    }

    /// Why a path this task holds is locked, and what the user can do, for a refusal: `path`
    /// is locked by this task.
    public func lockExplanation(path: String, at now: Date = Date()) -> String {
        if let stall = stallDescription(at: now) { return "\(path) is locked by task \(id), stalled at \(status.rawValue): \(stall)" }
        let state = leaseOwner.map { "\(status.rawValue), run by \($0)" } ?? "\(status.rawValue), waiting for a worker to run it: `ferry worker --once`"
        return "\(path) is locked by task \(id) (\(state)); wait for it (--wait-for-locks) or cancel it (`ferry task cancel \(id)`)"
    }

    /// For people, about a task that no worker holds part way through (handed back at a checkpoint:
    /// a worker stopping, a hung-up terminal, a passing fault, a path to wait for). Nil otherwise.
    public func waitingDescription(at now: Date = Date()) -> String? {
        guard !status.isTerminal, status != .pending, leaseOwner == nil else { return nil }
        let later = notBefore.flatMap { $0 > now ? " in \(Format.span($0.timeIntervalSince(now)))" : nil } ?? ""
        return "no worker holds it; the next `ferry worker` (or `ferry janitor`) resumes it at \(status.rawValue)\(later)"
    }
}
