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
        /// When it was made: however busy, a session ends `lifetime` after its login, so that an
        /// account locked or expired since is asked to log in again (and is refused then).
        var created: ContinuousClock.Instant = .now
        /// When its account was last found usable (`accountCheckDue`).
        var accountChecked: ContinuousClock.Instant = .now
        /// Whether the shadow file said the password was locked when it logged in: a directory
        /// user's local entry may be "!" all along, and only a lock since ends the session.
        public var lockedAtLogin = false
        /// Requests that came back with it: a browser's session returns, one made for a request
        /// that never sends the cookie back (curl behind a login proxy) does not.
        var returns = 0
    }

    /// The order in which sessions are pushed out: those never come back with first, then the
    /// least recently used. A user's script making a session per request pushes out its own,
    /// not the browser session the same user is working in.
    private static func pushedOutFirst(_ a: Session, _ b: Session) -> Bool {
        if (a.returns > 0) != (b.returns > 0) { return a.returns == 0 }
        return a.lastSeen < b.lastSeen
    }

    private let sessions = Mutex<[String: Session]>([:])
    private let idleLimit: Duration
    private let lifetime: Duration
    /// At most this many live sessions (clients that never send the cookie back, such as curl
    /// behind a login proxy, make one per request): the least recently used go first.
    private let capacity: Int
    /// At most this many live sessions of one user (see `pushedOutFirst`): one user's logins or
    /// cookie-less requests, however many, push out only their own sessions, never everyone
    /// else's (as they did while only the total was bounded).
    private let perUser: Int

    public init(idleLimit: Duration = .seconds(12 * 3600), lifetime: Duration = .seconds(12 * 3600), capacity: Int = 10_000, perUser: Int = 64) {
        self.idleLimit = idleLimit
        self.lifetime = lifetime
        self.capacity = max(1, capacity)
        self.perUser = max(1, perUser)
    }

    public func create(user: String, lockedAtLogin: Bool = false) -> Session {
        let session = Session(id: Secret.make(), user: user, csrfToken: Secret.make(), lastSeen: .now, lockedAtLogin: lockedAtLogin)
        sessions.withLock { all in
            let now = ContinuousClock.now
            all = all.filter { live($0.value, now) }
            let theirs = all.values.filter { $0.user == user }
            if theirs.count >= perUser {
                for stale in theirs.sorted(by: Self.pushedOutFirst).prefix(theirs.count - perUser + 1) { all[stale.id] = nil }
            }
            if all.count >= capacity {
                let oldest = all.values.sorted(by: Self.pushedOutFirst).prefix(all.count - capacity + 1)
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
            if !live(session, now) {
                all[id] = nil
                return nil
            }
            session.lastSeen = now
            session.returns += 1
            all[id] = session
            return session
        }
    }

    /// Whether the session is still live (not logged out, expired or pushed out), without
    /// counting the question as a use: an open event stream asks every second.
    public func isLive(_ id: String) -> Bool {
        sessions.withLock { all in all[id].map { live($0, .now) } ?? false }
    }

    /// Whether the session's account is due to be checked again (every `interval`): true for one
    /// caller, which makes the check, until the next interval.
    public func accountCheckDue(_ id: String, every interval: Duration) -> Bool {
        sessions.withLock { all in
            guard var session = all[id], ContinuousClock.now - session.accountChecked >= interval else { return false }
            session.accountChecked = .now
            all[id] = session
            return true
        }
    }

    private func live(_ session: Session, _ now: ContinuousClock.Instant) -> Bool {
        now - session.lastSeen < idleLimit && now - session.created < lifetime
    }

    public func remove(_ id: String) { sessions.withLock { _ = $0.removeValue(forKey: id) } }
}

/// Failed logins per client address: `limit` within `window` and further attempts are refused
/// until the oldest failure leaves the window. An attempt counts as a failure from the moment it
/// is admitted (the check and the count are one step, so parallel attempts cannot all slip past
/// while a slow password check runs) until it succeeds; a success takes back only its own count.
/// Earlier failures from the address keep counting: logging in to an account of one's own must
/// not wipe out the guesses just made at someone else's.
public final class LoginRateLimiter: Sendable {
    public struct Ticket: Sendable {
        let keys: [String]
        let serial: UInt64
    }

    public enum Admission: Sendable {
        case admitted(Ticket)
        /// Seconds until the next attempt may be made.
        case limited(seconds: Int)
    }

    private struct State {
        var failures: [String: [(at: ContinuousClock.Instant, serial: UInt64)]] = [:]
        var serial: UInt64 = 0
    }

    private let state = Mutex(State())
    let limit: Int
    let window: Duration
    /// How many more failures a whole IPv6 /64 may make than one address: a site's network is
    /// often one /64 for everyone, whom one user's typos must not lock out; a guesser rotating
    /// through its addresses is held at this many.
    static let networkFactor = 10

    public init(limit: Int = 5, window: Duration = .seconds(60)) {
        self.limit = limit
        self.window = window
    }

    /// The keys failures are counted under, with their limits: the address (an IPv4 address
    /// written as IPv6 is that IPv4 address), and for IPv6 also its /64.
    static func keys(_ address: String, limit: Int) -> [(key: String, limit: Int)] {
        var bytes = [UInt8](repeating: 0, count: 16)
        guard address.contains(":"), inet_pton(AF_INET6, address, &bytes) == 1 else { return [(address, limit)] }
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
            return [(bytes[12...].map(String.init).joined(separator: "."), limit)]
        }
        let groups = stride(from: 0, to: 16, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }
        return [(groups.joined(separator: ":"), limit), (groups[0..<4].joined(separator: ":") + "::/64", limit * networkFactor)]
    }

    /// Admits one login attempt from `address`, counted as a failure until `succeeded`; or says
    /// how long to wait.
    public func admit(_ address: String) -> Admission {
        let keys = Self.keys(address, limit: limit)
        return state.withLock { state in
            let now = ContinuousClock.now
            // Addresses whose failures have all left the window are forgotten, so that many
            // addresses (an IPv6 prefix holds plenty) cannot grow the table without end.
            if state.failures.count >= Self.pruneAbove {
                state.failures = state.failures.filter { _, failures in failures.contains { now - $0.at < window } }
            }
            var wait = 0
            for (key, limit) in keys {
                let recent = (state.failures[key] ?? []).filter { now - $0.at < window }
                state.failures[key] = recent
                if recent.count >= limit, let oldest = recent.first {
                    wait = max(wait, max(1, Int((window - (now - oldest.at)).components.seconds) + 1))
                }
            }
            if wait > 0 { return .limited(seconds: wait) }
            state.serial += 1
            for (key, _) in keys { state.failures[key, default: []].append((now, state.serial)) }
            return .admitted(Ticket(keys: keys.map(\.key), serial: state.serial))
        }
    }

    static let pruneAbove = 1024

    /// Addresses (and networks) with failures on record (some possibly past the window).
    public var trackedAddresses: Int { state.withLock { $0.failures.count } }

    /// The admitted attempt succeeded: it is not a failure.
    public func succeeded(_ ticket: Ticket) {
        state.withLock { state in
            for key in ticket.keys {
                state.failures[key]?.removeAll { $0.serial == ticket.serial }
                if state.failures[key]?.isEmpty == true { state.failures[key] = nil }
            }
        }
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
