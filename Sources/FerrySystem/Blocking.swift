import Glibc
import Synchronization

/// Runs blocking filesystem work on a thread of its own, so that it never occupies one of the
/// cooperative pool's few threads (two, on a two-core machine) for seconds at a time.
public enum Blocking {
    public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let box = Unmanaged.passRetained(Job {
                do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
            }).toOpaque()
            var thread = pthread_t()
            var attributes = pthread_attr_t()
            pthread_attr_init(&attributes)
            pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
            defer { pthread_attr_destroy(&attributes) }
            if pthread_create(&thread, &attributes, { raw in
                Unmanaged<Job>.fromOpaque(raw!).takeRetainedValue().body()
                return nil
            }, box) != 0 {
                Unmanaged<Job>.fromOpaque(box).takeRetainedValue().body()  // no thread: run here
            }
        }
    }

    /// Whether every one of `tasks` ended within `limit` (those that did not are left running).
    public static func allEnd(_ tasks: [Task<Void, Never>], within limit: Duration) async -> Bool {
        await withCheckedContinuation { (answer: CheckedContinuation<Bool, Never>) in
            let answered = Mutex(false)
            let once: @Sendable (Bool) -> Void = { if answered.withLock({ state in defer { state = true }; return !state }) { answer.resume(returning: $0) } }
            Task { for task in tasks { await task.value }; once(true) }
            Task { try? await Task.sleep(for: limit); once(false) }
        }
    }

    private final class Job: @unchecked Sendable {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }
}
