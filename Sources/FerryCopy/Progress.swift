import FerrySystem
import Glibc
import Synchronization

/// A snapshot of a long operation, delivered at a bounded rate.
public struct CopyProgress: Sendable {
    public enum Phase: String, Sendable { case measuring, copying, verifying, publishing, cleaningUp = "cleaning up" }
    public var phase: Phase
    public var bytesDone: UInt64
    public var bytesTotal: UInt64
    public var entriesDone: UInt64
    public var entriesTotal: UInt64
    /// The file a copier started most recently.
    public var currentPath: String?
    /// Bytes per second since the phase started (bytes found done already, as a resumed copy's
    /// kept files, not counted).
    public var bytesPerSecond: Double
    /// Seconds left at the current rate, when it can be told.
    public var secondsRemaining: Double?
    public var elapsedSeconds: Double
    /// The phase's last snapshot, taken as it ends (done or not): what a reader keeps of it, so
    /// one that drops snapshots to bound its rate must not drop this one.
    public var isFinal = false

    public init(phase: Phase, bytesDone: UInt64, bytesTotal: UInt64, entriesDone: UInt64, entriesTotal: UInt64,
                currentPath: String?, bytesPerSecond: Double, secondsRemaining: Double?, elapsedSeconds: Double) {
        self.phase = phase
        self.bytesDone = bytesDone
        self.bytesTotal = bytesTotal
        self.entriesDone = entriesDone
        self.entriesTotal = entriesTotal
        self.currentPath = currentPath
        self.bytesPerSecond = bytesPerSecond
        self.secondsRemaining = secondsRemaining
        self.elapsedSeconds = elapsedSeconds
    }
}

public typealias ProgressHandler = @Sendable (CopyProgress) -> Void

/// Counters the copiers bump, and a thread that samples them for the handler every interval.
final class ProgressMeter: @unchecked Sendable {
    let bytes = Atomic<UInt64>(0)
    let entries = Atomic<UInt64>(0)
    /// Of `bytes`, those found done already (a resumed stage's kept files): counted as done, and
    /// not in the rate, which they would make look as fast as checking a file is.
    let keptBytes = Atomic<UInt64>(0)
    private let current = Locked<String?>(nil)
    private let phase: CopyProgress.Phase
    private let totals: (bytes: UInt64, entries: UInt64)
    private let handler: ProgressHandler?
    private let interval: Duration
    private let started = MonotonicClock.now()
    private let stopped = Atomic<Bool>(false)
    private var ticker: pthread_t?

    init(phase: CopyProgress.Phase, bytesTotal: UInt64, entriesTotal: UInt64, interval: Duration, handler: ProgressHandler?) {
        self.phase = phase
        self.totals = (bytesTotal, entriesTotal)
        self.handler = handler
        self.interval = interval
        if handler != nil {
            ticker = Thread.spawn { [self] in
                let requested = interval.components.seconds * 1_000_000 + interval.components.attoseconds / 1_000_000_000_000
                let micros = min(max(1_000, requested), 60_000_000)
                // Sleep in short slices so that finish() never waits out a whole interval.
                let slice: Int64 = 5_000
                var slept: Int64 = 0
                while !stopped.load(ordering: .acquiring) {
                    usleep(UInt32(min(slice, micros)))
                    slept += min(slice, micros)
                    if slept < micros { continue }
                    slept = 0
                    if stopped.load(ordering: .acquiring) { break }
                    handler?(snapshot())
                }
            }
        }
    }

    func started(_ path: @autoclosure () -> String) {
        guard handler != nil else { return }
        let value = path()
        current.withLock { $0 = value }
    }

    func snapshot() -> CopyProgress {
        let done = bytes.load(ordering: .relaxed)
        let elapsed = MonotonicClock.now() - started
        let moved = done - min(done, keptBytes.load(ordering: .relaxed))
        let rate = elapsed > 0 ? Double(moved) / elapsed : 0
        let remaining: Double? = rate > 0 && totals.bytes >= done ? Double(totals.bytes - done) / rate : nil
        return CopyProgress(
            phase: phase, bytesDone: done, bytesTotal: totals.bytes,
            entriesDone: entries.load(ordering: .relaxed), entriesTotal: totals.entries,
            currentPath: current.withLock { $0 }, bytesPerSecond: rate, secondsRemaining: remaining,
            elapsedSeconds: elapsed)
    }

    /// Stops the ticker and delivers a last snapshot.
    func finish() {
        stopped.store(true, ordering: .releasing)
        if let ticker { pthread_join(ticker, nil) }
        ticker = nil
        guard let handler else { return }
        var last = snapshot()
        last.isFinal = true
        handler(last)
    }
}

enum MonotonicClock {
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
