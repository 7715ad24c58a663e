import Foundation
import Synchronization

/// Who is asking: a user name the server has authenticated, and whether they administer Ferry.
public struct Principal: Sendable, Equatable {
    public var user: String
    public var isAdmin: Bool
}

/// Server-side sessions behind the `ferry_session` cookie, each with its CSRF token. Held in
/// memory: a restarted server asks people to log in again (tasks are in the database, not here).
public final class SessionStore: Sendable {
    public struct Session: Sendable {
        public var id: String
        public var user: String
        public var csrfToken: String
        var lastSeen: ContinuousClock.Instant
    }

    private let sessions = Mutex<[String: Session]>([:])
    private let idleLimit: Duration
    /// At most this many live sessions (clients that never send the cookie back, such as curl
    /// behind a login proxy, make one per request): the least recently used go first.
    private let capacity: Int

    public init(idleLimit: Duration = .seconds(12 * 3600), capacity: Int = 10_000) {
        self.idleLimit = idleLimit
        self.capacity = max(1, capacity)
    }

    public func create(user: String) -> Session {
        let session = Session(id: Secret.make(), user: user, csrfToken: Secret.make(), lastSeen: .now)
        sessions.withLock { all in
            let now = ContinuousClock.now
            all = all.filter { now - $0.value.lastSeen < idleLimit }
            if all.count >= capacity {
                let oldest = all.values.sorted { $0.lastSeen < $1.lastSeen }.prefix(all.count - capacity + 1)
                for stale in oldest { all[stale.id] = nil }
            }
            all[session.id] = session
        }
        return session
    }

    public func session(_ id: String) -> Session? {
        sessions.withLock { all in
            guard var session = all[id] else { return nil }
            let now = ContinuousClock.now
            if now - session.lastSeen >= idleLimit {
                all[id] = nil
                return nil
            }
            session.lastSeen = now
            all[id] = session
            return session
        }
    }

    public func remove(_ id: String) { sessions.withLock { _ = $0.removeValue(forKey: id) } }
}

/// Failed logins per client address: more than `limit` within `window` and further attempts are
/// refused until the oldest failure leaves the window.
public final class LoginRateLimiter: Sendable {
    private let failures = Mutex<[String: [ContinuousClock.Instant]]>([:])
    let limit: Int
    let window: Duration

    public init(limit: Int = 5, window: Duration = .seconds(60)) {
        self.limit = limit
        self.window = window
    }

    /// nil: may try; otherwise the seconds to wait.
    public func retryAfter(_ address: String) -> Int? {
        failures.withLock { all in
            let now = ContinuousClock.now
            let recent = (all[address] ?? []).filter { now - $0 < window }
            all[address] = recent.isEmpty ? nil : recent
            guard recent.count >= limit, let oldest = recent.first else { return nil }
            let wait = window - (now - oldest)
            return max(1, Int(wait.components.seconds) + 1)
        }
    }

    public func recordFailure(_ address: String) {
        failures.withLock { $0[address, default: []].append(.now) }
    }

    public func recordSuccess(_ address: String) {
        failures.withLock { _ = $0.removeValue(forKey: address) }
    }
}

/// Random tokens for sessions, CSRF and the login token: 32 bytes from the system's CSPRNG, as hex.
enum Secret {
    static func make(bytes: Int = 32) -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }

    /// Compares without an early exit, so the time taken says nothing about where they differ.
    static func equal(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for i in x.indices { difference |= x[i] ^ y[i] }
        return difference == 0
    }
}
