import Synchronization

/// Tells event streams that a task changed in this process (a relay saw its runner report), so
/// progress reaches the browser at once; changes made by workers elsewhere are picked up by the
/// streams' own periodic re-read.
public final class ChangeFeed: Sendable {
    private let version = Atomic<UInt64>(0)
    public init() {}
    public func notify(_ taskID: String) { version.add(1, ordering: .releasing) }
    public var current: UInt64 { version.load(ordering: .acquiring) }

    /// Returns when something changed after `seen`, or after `timeout`.
    public func wait(after seen: UInt64, timeout: Duration) async {
        let deadline = ContinuousClock.now + timeout
        while current == seen && ContinuousClock.now < deadline && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
}
