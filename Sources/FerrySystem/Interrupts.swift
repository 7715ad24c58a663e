import CFerrySystem
import Glibc

/// SIGINT and SIGTERM as something a long operation can notice: a handler counts them and a
/// watcher thread turns the first into `onInterrupt` (a handler itself may do almost nothing).
public final class InterruptWatcher: @unchecked Sendable {
    private var thread: pthread_t?
    private var running = true
    private var lock = pthread_mutex_t()

    public init(pollMilliseconds: UInt32 = 50, _ onInterrupt: @escaping @Sendable () -> Void) {
        pthread_mutex_init(&lock, nil)
        cferry_install_interrupt_counter()
        let start = cferry_interrupt_count()
        var handle = pthread_t()
        let box = Unmanaged.passRetained(WatchBox { [self] in
            while self.isRunning {
                if cferry_interrupt_count() != start {
                    onInterrupt()
                    return
                }
                usleep(pollMilliseconds * 1000)
            }
        }).toOpaque()
        if pthread_create(&handle, nil, { raw in
            Unmanaged<WatchBox>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, box) == 0 {
            thread = handle
        } else {
            Unmanaged<WatchBox>.fromOpaque(box).release()
        }
    }

    private var isRunning: Bool {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        return running
    }

    /// Whether a signal arrived since the watcher started.
    public var interrupted: Bool { cferry_interrupt_count() != 0 }

    /// Stops watching and restores the default dispositions.
    public func stop() {
        pthread_mutex_lock(&lock)
        running = false
        pthread_mutex_unlock(&lock)
        if let thread { pthread_join(thread, nil) }
        thread = nil
        cferry_restore_interrupt_defaults()
    }
}

private final class WatchBox {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}
