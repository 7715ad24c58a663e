import FerryJobs
import Foundation
import Logging
import PostgresNIO
import Synchronization

/// Keeps one pooled connection listening on `ferry_tasks` and wakes the waiters on each
/// notification, for as long as the store lives.
///
/// Each attempt (a connection, its LISTEN, then its notifications and a ping every 30 s) runs in
/// a task of its own, watched from outside: an attempt whose LISTEN is not in place within 15 s,
/// or whose connection has given no sign of life (LISTEN, a notification, a ping's answer) for
/// 75 s, is given up — cancelled and left behind, not waited for — and a new one starts. Waiting
/// on it was how a store lost its wake-ups for good: after the server terminated the listening
/// connection (a restart, a failover, `pg_terminate_backend`), a LISTEN sent on the pooled
/// connection that replaced it never completed, and the loop, inside it, neither listened again
/// nor let `shutdown()` return (a `ferry worker` then ignored SIGTERM).
enum PostgresListener {
    /// What the watcher knows of the current attempt.
    private struct Signs {
        var listening = false
        var last = ContinuousClock.now
        var ended = false
    }

    /// `ready` gets nil once LISTEN is first in place, or the first attempt's error.
    static func run(client: PostgresClient, wakeup: Wakeup, logger: Logger, ready: AsyncStream<(any Error)?>.Continuation,
                    listenWithin: Duration = .seconds(15), silentFor: Duration = .seconds(75)) async {
        var failures = 0
        var stalled = 0
        while !Task.isCancelled {
            let signs = Mutex(Signs())
            let attempt = Task {
                defer { signs.withLock { $0.ended = true } }
                try await listenOnce(client: client, wakeup: wakeup, logger: logger) {
                    let first = signs.withLock { signs in
                        defer { (signs.listening, signs.last) = (true, .now) }
                        return !signs.listening
                    }
                    if first {
                        ready.yield(nil)
                        ready.finish()
                    }
                }
            }
            var given = false
            while !Task.isCancelled && !signs.withLock({ $0.ended }) {
                try? await Task.sleep(for: .milliseconds(250))  // an attempt that ended is followed at once
                let (listening, quiet) = signs.withLock { ($0.listening, ContinuousClock.now - $0.last) }
                if (!listening && quiet > listenWithin) || (listening && quiet > silentFor) {
                    given = true
                    break
                }
            }
            if Task.isCancelled || given {
                attempt.cancel()  // left behind: an attempt stuck inside the driver never returns
                if Task.isCancelled { break }
                // A store not yet open fails to open after four such attempts (a minute), rather
                // than wait for ever (ignored once the first outcome is in).
                if !signs.withLock({ $0.listening }) { stalled += 1 }
                if stalled >= 4 {
                    ready.yield(TaskStoreError.database("LISTEN on \(PostgresTaskStore.channel) was not in place within \(listenWithin)"))
                }
                logger.warning("the listening connection gave no sign of life; listening on a new one")
            } else if case .failure(let error) = await attempt.result {
                ready.yield(error)  // ignored once the first outcome is in
                failures += 1
            }
            if signs.withLock({ $0.listening }) { failures = 0 }
            if Task.isCancelled { break }
            try? await Task.sleep(for: .milliseconds(100 * (1 << min(max(failures, 1), 6))))
        }
        ready.finish()
    }

    /// One connection: LISTEN, then each notification wakes the waiters, and a ping every 30 s
    /// proves the connection alive; `listening` is called when LISTEN is in place and at each
    /// sign of life after.
    private static func listenOnce(client: PostgresClient, wakeup: Wakeup, logger: Logger,
                                   alive: @escaping @Sendable () -> Void) async throws {
        try await client.withConnection { connection in
            try await connection.listen(on: PostgresTaskStore.channel) { notifications in
                wakeup.signal()  // anything announced while we were not listening (kept until a wait)
                alive()
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for try await _ in notifications {
                            alive()
                            wakeup.signal()
                        }
                    }
                    group.addTask {
                        while true {
                            try await Task.sleep(for: .seconds(30))
                            try await PostgresSchema.run(connection, "SELECT 1", logger)
                            alive()
                        }
                    }
                    _ = try await group.next()
                    group.cancelAll()
                }
            }
        }
    }

    /// Waits for `task` to end, or for `limit`, whichever comes first (a task stuck inside the
    /// driver must not hold a shutdown).
    static func wait(for task: Task<Void, Never>, atMost limit: Duration) async {
        let waiter = OnceResumed()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            waiter.set(continuation)
            Task {
                await task.value
                waiter.resume()
            }
            Task {
                try? await Task.sleep(for: limit)
                waiter.resume()
            }
        }
    }
}

/// A continuation resumed by whichever comes first.
private final class OnceResumed: Sendable {
    private let waiting = Mutex<CheckedContinuation<Void, Never>?>(nil)

    func set(_ continuation: CheckedContinuation<Void, Never>) { waiting.withLock { $0 = continuation } }

    func resume() {
        waiting.withLock { waiting in defer { waiting = nil }; return waiting }?.resume()
    }
}
