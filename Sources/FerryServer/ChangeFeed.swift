import ServiceLifecycle
import Synchronization

/// Tells event streams that a task changed in this process (a relay saw its runner report), so
/// progress reaches the browser at once; changes made by workers elsewhere are picked up by the
/// streams' own periodic re-read. Closed when the server begins to stop, which ends every stream.
public final class ChangeFeed: Sendable {
    private let version = Atomic<UInt64>(0)
    private let closed = Atomic<Bool>(false)
    public init() {}
    public func notify(_ taskID: String) { version.add(1, ordering: .releasing) }
    public var current: UInt64 { version.load(ordering: .acquiring) }

    /// Whether the server is stopping: streams end (the browser reconnects, to the next server).
    public var isClosed: Bool { closed.load(ordering: .acquiring) }
    public func close() {
        closed.store(true, ordering: .releasing)
        version.add(1, ordering: .releasing)
    }

    /// Returns when something changed after `seen`, or after `timeout`.
    public func wait(after seen: UInt64, timeout: Duration) async {
        let deadline = ContinuousClock.now + timeout
        while current == seen && ContinuousClock.now < deadline && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
}

/// Ends the event streams when a graceful shutdown begins. Without it the HTTP server, which
/// waits for the responses under way before it stops, would wait for every open tasks page (a
/// stream ends only when its page closes, or its session after hours). Listed after every other
/// service, so that it is the first to hear of the shutdown.
struct StreamCloser: Service {
    let feed: ChangeFeed

    func run() async throws {
        try? await gracefulShutdown()
        feed.close()
    }
}
