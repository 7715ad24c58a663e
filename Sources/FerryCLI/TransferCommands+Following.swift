import ArgumentParser
import FerryJobs
import FerrySystem
import Foundation

extension TransferOptions {
    /// Waits for the command's task while another worker runs it, showing its progress, and
    /// returns its record once it has ended: the command still ends as its task does. Ctrl-C asks
    /// for its cancel (that worker rolls it back); a hangup leaves it to that worker. (Not the run's
    /// cancellation flag, which the engine also raises when its lease is lost.)
    func follow(_ id: String, command: String, taken why: String, store: any TaskStore, bar: ProgressBar,
                interrupt: InterruptWatcher) async throws -> TaskRecord {
        bar.finish()
        printError("\(command): task \(id) runs on a worker (\(why)); following it")
        var asked = false
        var failures = 0
        while true {
            // A read that fails now and then (a connection reset) is no reason to stop following.
            let read: TaskRecord?
            do {
                read = try await store.task(id)
                failures = 0
            } catch where failures < 20 {
                failures += 1
                try? await Task.sleep(for: .milliseconds(500))
                continue
            }
            guard let record = read else { throw TaskStoreError.notFound(id) }
            if record.status.isTerminal || interrupt.hungUp { return record }
            if interrupt.interrupted && !asked {
                asked = true
                _ = try? await store.requestCancel(id)
            }
            bar.update(record.copyProgress)
            try? await Task.sleep(for: .milliseconds(500))
        }
    }

    /// The task database failed under the command while its task ran here or was followed: the
    /// task exists, and a worker would carry it out later while this command says it failed. One
    /// this command held (or nobody holds) is asked to cancel, so that whoever takes it next rolls
    /// it back, or, in its commit, finishes it; one another worker runs is left to it. Says which,
    /// naming the task, and exits 1.
    func abandon(_ id: String, kind: TaskKind, after error: any Error, store: any TaskStore, worker: String) async throws -> Never {
        let command = "ferry \(kind.rawValue)"
        let current = try? await store.task(id)
        let holder = current?.leaseOwner
        let ours = current != nil && (holder == nil || holder == worker)
        let cancelled = ours ? try? await store.requestCancel(id) : nil
        let outcome: String
        if let cancelled, cancelled.status == .committing {
            outcome = "task \(id) is committing: the next `ferry worker` or `ferry janitor` finishes it"
        } else if let cancelled, !cancelled.status.isTerminal {
            outcome = "task \(id) is cancelled: the next `ferry worker` or `ferry janitor` rolls back what it did"
        } else if let cancelled {
            outcome = "task \(id) \(cancelled.status.rawValue)"
        } else if let holder, !ours {
            outcome = "task \(id) runs on \(holder), which carries it on: `ferry task show \(id)`"
        } else {
            outcome = "task \(id) may still be queued: `ferry task show \(id)`; `ferry task cancel \(id)` stops it"
        }
        if json { printJSON(["kind": kind.rawValue, "status": "failed", "id": id, "error": ["code": "database", "message": "\(error)"]]) }
        printError("\(command): the task database failed: \(error)\n\(outcome)")
        throw ExitCode(FerryCommand.Status.failure.rawValue)
    }
}

/// The run of a task ended, but the database did not answer when asked how.
struct UnreadableEnd: Error, CustomStringConvertible {
    var description: String { "how the task ended could not be read back" }
}
