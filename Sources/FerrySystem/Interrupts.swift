import CFerrySystem
import Glibc
import Synchronization

/// SIGINT and SIGTERM as something a long operation can notice: a handler counts them and a
/// watcher thread turns the first into `onInterrupt` (a handler itself may do almost nothing).
public final class InterruptWatcher: Sendable {
    private let startCount: CInt
    private let running = RunningFlag()
    private let thread = Mutex<pthread_t?>(nil)

    public init(pollMilliseconds: UInt32 = 50, _ onInterrupt: @escaping @Sendable () -> Void) {
        cferry_install_interrupt_counter()
        let start = cferry_interrupt_count()
        startCount = start
        let box = Unmanaged.passRetained(WatchBox { [running] in
            while running.value.load(ordering: .acquiring) {
                if cferry_interrupt_count() != start {
                    onInterrupt()
                    return
                }
                usleep(pollMilliseconds * 1000)
            }
        }).toOpaque()
        var handle = pthread_t()
        if pthread_create(&handle, nil, { raw in
            Unmanaged<WatchBox>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, box) == 0 {
            thread.withLock { $0 = handle }
        } else {
            Unmanaged<WatchBox>.fromOpaque(box).release()
        }
    }

    /// Whether a signal arrived since the watcher started.
    public var interrupted: Bool { cferry_interrupt_count() != startCount }

    /// Stops watching and restores the default dispositions.
    public func stop() {
        running.value.store(false, ordering: .releasing)
        if let handle = thread.withLock({ value -> pthread_t? in defer { value = nil }; return value }) {
            pthread_join(handle, nil)
        }
        cferry_restore_interrupt_defaults()
    }
}

private final class WatchBox: @unchecked Sendable {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}

private final class RunningFlag: Sendable {
    let value = Atomic<Bool>(true)
}
