import FerryCopy
import Synchronization

/// Ctrl-C for the runs of one command's task: each run gets a flag of its own, since the engine
/// also raises a run's flag itself (its lease lost, a hangup), and a later run of the same task
/// (after a wait, or a worker handed it back) must not start out cancelled for that. Ctrl-C
/// cancels the run going on, and every later one.
final class Interruptible: Sendable {
    private let state = Mutex<(run: CancellationFlag, interrupted: Bool)>((CancellationFlag(), false))

    func cancel() {
        state.withLock { state in
            state.interrupted = true
            state.run.cancel()
        }
    }

    /// The flag for the next run: cancelled already if Ctrl-C came.
    func nextRun() -> CancellationFlag {
        state.withLock { state in
            state.run = CancellationFlag()
            if state.interrupted { state.run.cancel() }
            return state.run
        }
    }
}
