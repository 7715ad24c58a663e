import Synchronization

/// In-process wake-ups: waiters sleep until `signal()` or their timeout, without polling. A signal
/// that finds nobody waiting is kept for the next `wait`, which returns at once: a worker that was
/// busy claiming when new work was announced (between finding none and starting to wait) claims
/// again at once instead of sleeping through its timeout. A kept signal at most costs one claim
/// that finds nothing.
package final class Wakeup: Sendable {
    private struct State {
        var waiters: [UInt64: CheckedContinuation<Bool, Never>] = [:]
        var next: UInt64 = 0
        var kept = false
    }

    private let state = Mutex(State())

    package init() {}

    /// Wakes every waiter; with none, the next `wait` returns at once.
    package func signal() {
        let woken = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            guard !state.waiters.isEmpty else {
                state.kept = true
                return []
            }
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        woken.forEach { $0.resume(returning: true) }
    }

    /// Returns at a signal (one kept from before, at once: true) or after `timeout` (false).
    @discardableResult
    package func wait(timeout: Duration) async -> Bool {
        await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let key = state.withLock { state -> UInt64? in
                if state.kept {
                    state.kept = false
                    return nil
                }
                state.next += 1
                state.waiters[state.next] = continuation
                return state.next
            }
            guard let key else {
                continuation.resume(returning: true)
                return
            }
            Task {
                try? await Task.sleep(for: timeout)
                let waiting = self.state.withLock { $0.waiters.removeValue(forKey: key) }
                waiting?.resume(returning: false)
            }
        }
    }
}
