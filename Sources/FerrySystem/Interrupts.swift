import CFerrySystem
import Glibc
import Synchronization

/// SIGINT and SIGTERM as something a long operation can notice: a handler counts them and a
/// watcher thread turns the first into `onInterrupt` (a handler itself may do almost nothing),
/// and the next, if there is `onRepeat`, into that (one who presses Ctrl-C again will not wait).
/// SIGHUP, the terminal gone (a closed window, a dropped ssh session), goes to `onHangup` when
/// there is one, and to `onInterrupt` otherwise; a process started with SIGHUP ignored (`nohup`)
/// never hears it.
public final class InterruptWatcher: Sendable {
    private let startCount: CInt
    private let startHangups: CInt
    private let running = RunningFlag()
    private let thread = Mutex<pthread_t?>(nil)

    public init(pollMilliseconds: UInt32 = 50, onHangup: (@Sendable () -> Void)? = nil, onRepeat: (@Sendable () -> Void)? = nil,
                _ onInterrupt: @escaping @Sendable () -> Void) {
        cferry_install_interrupt_counter()
        let start = cferry_interrupt_count()
        let hangups = cferry_hangup_count()
        startCount = start
        startHangups = hangups
        let box = Unmanaged.passRetained(WatchBox { [running] in
            var heardHangup = false
            var heard = start
            while running.value.load(ordering: .acquiring) {
                let count = cferry_interrupt_count()
                if count != heard {
                    let previous = heard
                    heard = count
                    if previous == start {
                        onInterrupt()
                        if count &- start >= 2 { onRepeat?() }  // both came within one look
                    } else {
                        onRepeat?()
                    }
                    if onRepeat == nil { return }
                }
                if !heardHangup && cferry_hangup_count() != hangups {
                    heardHangup = true
                    guard let onHangup else {
                        onInterrupt()
                        return
                    }
                    onHangup()  // and an interrupt may still follow
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

    /// Whether SIGINT or SIGTERM arrived since the watcher started.
    public var interrupted: Bool { cferry_interrupt_count() != startCount }

    /// Whether SIGHUP arrived since the watcher started.
    public var hungUp: Bool { cferry_hangup_count() != startHangups }

    /// Whether this process was started with SIGHUP ignored (`nohup`): it is to outlive its terminal.
    public static var hangupIgnored: Bool { cferry_hangup_ignored() != 0 }

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
