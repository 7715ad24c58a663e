import FerryConfig
import FerryJobs
@testable import FerryServer
import FerrySystem
import FerryTestSupport
import Foundation
import Logging
import Testing

@Suite struct ServerPathTests {
    let roots = ["/srv/projects", "/srv/projects/alpha/deep", "/scratch"]

    @Test func pathsBeneathTheDeepestRoot() throws {
        let p = try ServerPath.check("/srv/projects/alpha/deep/x//y/", roots: roots)
        #expect(p.path == "/srv/projects/alpha/deep/x/y" && p.root == "/srv/projects/alpha/deep" && p.relative == "x/y")
        #expect(p.parent == "/srv/projects/alpha/deep/x")
        let root = try ServerPath.check("/scratch", roots: roots)
        #expect(root.relative == "" && root.parent == nil)
    }

    @Test func hostileInputIsRefusedWithItsCode() {
        func code(_ raw: String?) -> String? {
            do { _ = try ServerPath.check(raw, roots: roots); return nil } catch { return error.code }
        }
        #expect(code("/srv/projects/../etc/passwd") == "path.invalid")
        #expect(code("/srv/projects/./a") == "path.invalid")
        #expect(code("relative/path") == "path.invalid")
        #expect(code("/srv/projects/a\0b") == "path.invalid")
        #expect(code("/srv/projects/" + String(repeating: "n", count: 256)) == "path.invalid")
        #expect(code("/srv/" + String(repeating: "d/", count: 2100)) == "path.invalid")
        #expect(code("/etc/passwd") == "path.outside_roots")
        #expect(code("/srv/projectsX/a") == "path.outside_roots")
        #expect(code(nil) == "path.invalid")
        #expect(code("/srv/projects/" + String(repeating: "n", count: 255)) == nil)
    }

    /// Checked as the kernel reads it, byte by byte. A Swift string splits and compares by
    /// characters: a prepended mark (U+0600) joins the "/" after it into one character, so
    /// "l\u{600}/.." had no ".." component to a character split, and the kernel's ".." went
    /// through; and "é" precomposed equals "e" with a combining accent as a character, so a root
    /// matched a path whose bytes it is not a prefix of.
    @Test func componentsAndRootsAreBytesNotCharacters() {
        func code(_ raw: String, roots: [String]? = nil) -> String? {
            do { _ = try ServerPath.check(raw, roots: roots ?? self.roots); return nil } catch { return error.code }
        }
        #expect(code("/srv/projects/l\u{600}/../etc") == "path.invalid")
        #expect(code("/srv/projects/l\u{600}/./x") == "path.invalid")
        #expect(code("/srv/projects/\u{600}..") == nil)  // a name, not ".."
        #expect(code("/srv/caf\u{E9}/x", roots: ["/srv/cafe\u{301}"]) == "path.outside_roots")
        let decomposed = try? ServerPath.check("/srv/cafe\u{301}/x/y", roots: ["/srv/cafe\u{301}"])
        #expect(decomposed?.relative == "x/y" && decomposed?.parent == "/srv/cafe\u{301}/x")
        let mark = try? ServerPath.check("/srv/projects/l\u{600}/f", roots: roots)
        #expect(mark?.path == "/srv/projects/l\u{600}/f" && mark?.parent == "/srv/projects/l\u{600}")
    }

    /// Names that are not UTF-8 come as `PathText`: each such byte a private-use character, which
    /// the check turns back into the byte (a NUL so written is still refused); a name's own
    /// U+FFFD is a character like any other.
    @Test func bytesThatAreNotUTF8ComeAsEscapes() throws {
        let latin1 = try ServerPath.check("/scratch/caf\u{F7E9}//x/", roots: roots)
        #expect(latin1.bytes == Array("/scratch/caf".utf8) + [0xE9] + Array("/x".utf8))
        #expect(latin1.path == "/scratch/caf\u{F7E9}/x" && latin1.relative == "caf\u{F7E9}/x" && latin1.parent == "/scratch/caf\u{F7E9}")
        #expect(latin1.nameBytes == Array("x".utf8) && latin1.display == "/scratch/caf\\xE9/x")
        #expect(try ServerPath.check("/scratch/\u{F7FF}", roots: roots).nameBytes == [0xFF])
        #expect(try ServerPath.check("/scratch/caf\u{FFFD}", roots: roots).nameBytes == Array("caf\u{FFFD}".utf8))
        #expect(throws: APIError.self) { try ServerPath.check("/scratch/a\u{F700}b", roots: roots) }
        #expect(throws: APIError.self) { try ServerPath.check("/scratch/\u{F72E}\u{F72E}/x", roots: roots) }  // ".."
    }

    @Test func transferPathsAreStoredInTheirNormalForm() throws {
        let raw = try WireJSON.decoder.decode(TransferRequest.self, from: Data(#"{"kind":"copy","sources":["/scratch//a/"],"destination":"/srv/projects//b/"}"#.utf8))
        let normal = try raw.normalized(roots: roots)
        #expect(normal.sources == ["/scratch/a"] && normal.destination == "/srv/projects/b")
        #expect(throws: APIError.self) { try raw.normalized(roots: ["/elsewhere"]) }
    }

    @Test func queryDecodingRejectsBrokenEncodings() {
        let fields = FormData.parse("path=%2Fsrv%2Fa+b&bad=%FF&nul=a%00b&short=%4&empty=&x")
        #expect(fields["path"] == .some("/srv/a b"))
        #expect(fields["bad"] == .some(nil))
        #expect(fields["short"] == .some(nil))
        #expect(fields["nul"] == .some("a\0b"))
        #expect(fields["empty"] == .some("") && fields["x"] == .some(""))
        #expect(fields["missing"] == nil)
        // Signs are no hex digits: "%+F" and "%-0" are broken encodings, not 0x0F and NUL.
        let signed = FormData.parse("plus=%+F&minus=%-0&upper=%2f%2F")
        #expect(signed["plus"] == .some(nil))
        #expect(signed["minus"] == .some(nil))
        #expect(signed["upper"] == .some("//"))
    }
}

@Suite struct DirectoryPageTests {
    /// The bounded heap must give exactly the page a full sort would, for every key and order.
    @Test func pagesMatchAFullSort() throws {
        let dir = try TemporaryDirectory.make(prefix: "ferry-page")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var generator = SystemRandomNumberGenerator()
        var expected: [(name: String, isDirectory: Bool, size: UInt64)] = []
        for i in 0..<300 {
            let name = "e\(UInt32.random(in: 0...999_999, using: &generator))-\(i)"
            if i % 7 == 0 {
                try FileManager.default.createDirectory(atPath: dir + "/" + name, withIntermediateDirectories: false)
                expected.append((name, true, 0))
            } else {
                let size = UInt64(i % 13) * 100
                FileManager.default.createFile(atPath: dir + "/" + name, contents: Data(count: Int(size)))
                expected.append((name, false, size))
            }
        }
        let fd = try FileDescriptor.openDirectory(Array(dir.utf8))
        defer { fd.closeQuietly() }
        for descending in [false, true] {
            let byName = expected.sorted { a, b in
                if a.isDirectory != b.isDirectory { return a.isDirectory }
                return descending ? a.name.utf8.lexicographicallyPrecedes(b.name.utf8) == false : a.name.utf8.lexicographicallyPrecedes(b.name.utf8)
            }
            for (offset, limit) in [(0, 10), (37, 25), (290, 50), (400, 5)] {
                let rewound = try FileDescriptor.openDirectory(Array(dir.utf8))
                defer { rewound.closeQuietly() }
                let page = try DirectoryPage.read(rewound, offset: offset, limit: limit, sort: .name, descending: descending)
                #expect(page.total == 300)
                let want = byName.dropFirst(offset).prefix(limit).map(\.name)
                #expect(page.entries.map { String(decoding: $0.name, as: UTF8.self) } == Array(want))
            }
            let bySize = expected.sorted { a, b in
                if a.isDirectory != b.isDirectory { return a.isDirectory }
                if a.size != b.size { return descending ? a.size > b.size : a.size < b.size }
                return descending ? !a.name.utf8.lexicographicallyPrecedes(b.name.utf8) : a.name.utf8.lexicographicallyPrecedes(b.name.utf8)
            }
            let rewound = try FileDescriptor.openDirectory(Array(dir.utf8))
            defer { rewound.closeQuietly() }
            let page = try DirectoryPage.read(rewound, offset: 50, limit: 100, sort: .size, descending: descending)
            #expect(page.entries.map { String(decoding: $0.name, as: UTF8.self) } == Array(bySize.dropFirst(50).prefix(100).map(\.name)))
        }
        _ = fd
    }
}

@Suite struct SessionTests {
    @Test func sessionsCarryTheirCSRFTokenAndExpire() async throws {
        let store = SessionStore(idleLimit: .milliseconds(300))
        let session = store.create(user: "alice")
        #expect(session.id.count == 64 && session.csrfToken.count == 64 && session.id != session.csrfToken)
        #expect(store.session(session.id)?.user == "alice")
        #expect(store.session("nope") == nil)
        try await Task.sleep(for: .milliseconds(400))
        #expect(store.session(session.id) == nil)
    }

    @Test func theLeastRecentlyUsedSessionsGoFirstBeyondTheCapacity() {
        let store = SessionStore(capacity: 3)
        let first = store.create(user: "a"), second = store.create(user: "b"), third = store.create(user: "c")
        _ = store.session(first.id)  // used again: now the most recent
        let fourth = store.create(user: "d")
        #expect(store.session(second.id) == nil)
        #expect(store.session(first.id) != nil && store.session(third.id) != nil && store.session(fourth.id) != nil)
    }

    /// One user's sessions, however many they make (a script sending no cookie through a login
    /// proxy makes one per request), push out only their own: before, ten thousand of them
    /// logged everyone else out. Asking whether a session is live does not keep it alive.
    @Test func oneUsersSessionsPushOutOnlyTheirOwn() async throws {
        let store = SessionStore(idleLimit: .milliseconds(500), capacity: 100, perUser: 4)
        let other = store.create(user: "alice")
        let browser = store.create(user: "mallory")
        _ = store.session(browser.id)  // it comes back: a browser's
        let mine = (0..<500).map { _ in store.create(user: "mallory") }
        #expect(store.session(other.id)?.user == "alice")
        // The user's own browser session outlasts their script's one-shot sessions.
        #expect(store.isLive(browser.id))
        #expect(mine.filter { store.isLive($0.id) }.count == 3)
        #expect(store.isLive(mine[499].id) && !store.isLive(mine[0].id))
        let watched = store.create(user: "bob")
        for _ in 0..<7 {  // an event stream's checks, over longer than the idle limit
            try await Task.sleep(for: .milliseconds(100))
            _ = store.isLive(watched.id)
        }
        #expect(!store.isLive(watched.id))
        store.remove(other.id)
        #expect(!store.isLive(other.id))
    }

    /// Password checks at once are bounded: each holds a thread through PAM's failure delay.
    @Test func passwordChecksAtOnceAreBounded() {
        let gate = CheckGate(limit: 3)
        #expect((0..<5).map { _ in gate.enter() } == [true, true, true, false, false])
        gate.leave()
        #expect(gate.enter() && !gate.enter())
    }

    /// Failures from one address are limited; a success in between (a login to an account of
    /// the guesser's own) takes back only its own attempt, so it cannot reset the count.
    @Test func loginFailuresAreRateLimitedPerAddress() {
        let limiter = LoginRateLimiter(limit: 3, window: .seconds(60))
        func admitted(_ address: String) -> LoginRateLimiter.Ticket? {
            if case .admitted(let ticket) = limiter.admit(address) { return ticket }
            return nil
        }
        for _ in 0..<2 {
            #expect(admitted("10.0.0.1") != nil)  // a wrong guess: left counted
            #expect(admitted("10.0.0.1").map(limiter.succeeded) != nil)  // the guesser's own login
        }
        #expect(admitted("10.0.0.1") != nil)
        guard case .limited(let wait) = limiter.admit("10.0.0.1") else {
            Issue.record("three failures and two successes from one address were not limited")
            return
        }
        #expect(wait > 0 && wait <= 61)
        #expect(admitted("10.0.0.2") != nil)
        // Attempts in flight count: three admitted at once leave no room for a fourth.
        let parallel = LoginRateLimiter(limit: 3, window: .seconds(60))
        #expect((0..<3).allSatisfy { _ in if case .admitted = parallel.admit("10.0.0.3") { true } else { false } })
        if case .admitted = parallel.admit("10.0.0.3") { Issue.record("a fourth attempt was admitted while three were in flight") }
    }

    /// Failures count per address (an IPv4 address written as IPv6 is itself), and a whole IPv6
    /// /64 may make ten times as many: rotating through its addresses gains a guesser little, and
    /// one user's typos on a site network that is one /64 lock out nobody else.
    @Test func failuresCountPerAddressAndPerIPv6Network() {
        #expect(LoginRateLimiter.keys("2001:db8:1:2:aaaa::1", limit: 5).map(\.key) == ["2001:db8:1:2:aaaa:0:0:1", "2001:db8:1:2::/64"])
        #expect(LoginRateLimiter.keys("2001:db8:1:2::1", limit: 5).map(\.limit) == [5, 50])
        #expect(LoginRateLimiter.keys("::ffff:192.0.2.7", limit: 5).map(\.key) == ["192.0.2.7"])
        #expect(LoginRateLimiter.keys("192.0.2.7", limit: 5).map(\.key) == ["192.0.2.7"])
        let limiter = LoginRateLimiter(limit: 3, window: .seconds(60))
        func admitted(_ address: String) -> Bool { if case .admitted = limiter.admit(address) { true } else { false } }
        #expect((1...3).allSatisfy { _ in admitted("2001:db8:1:2::1") })
        #expect(!admitted("2001:db8:1:2::1"), "a fourth failure from one address")
        #expect(admitted("2001:db8:1:2::2"), "a neighbour in the /64 was locked out by one address's failures")
        // Rotating through the /64: 30 failures in all, then none more from anywhere in it.
        for i in 3...40 { _ = admitted("2001:db8:1:2::\(String(i, radix: 16))") }
        #expect(!admitted("2001:db8:1:2::ffff"), "the /64 as a whole was never limited")
        #expect(admitted("2001:db8:1:3::1"), "the next /64 was limited")
    }

    /// However busy, a session ends its lifetime after its login.
    @Test func sessionsEndTheirLifetimeAfterTheLogin() async throws {
        let store = SessionStore(idleLimit: .seconds(60), lifetime: .seconds(1))
        let created = ContinuousClock.now
        let session = store.create(user: "alice")
        #expect(store.session(session.id) != nil)
        // Used every 50 ms (never idle), it ends all the same, at its lifetime.
        // (A sleep may last far longer on a loaded machine: only the end is bounded, generously.)
        while store.session(session.id) != nil && ContinuousClock.now - created < .seconds(300) { try await Task.sleep(for: .milliseconds(50)) }
        let lasted = ContinuousClock.now - created
        #expect(lasted >= .seconds(1), "\(lasted)")
        #expect(store.session(session.id) == nil && !store.isLive(session.id), "still live after \(lasted)")
    }

    @Test func secretsCompareWholly() {
        #expect(Secret.equal("abc", "abc") && !Secret.equal("abc", "abd") && !Secret.equal("abc", "abcd"))
    }
}

@Suite struct LoginRateLimiterTests {
    /// Addresses whose failures have left the window are forgotten once many are on record.
    @Test func addressesPastTheWindowAreForgotten() async throws {
        let limiter = LoginRateLimiter(limit: 5, window: .milliseconds(200))
        for i in 0..<LoginRateLimiter.pruneAbove { _ = limiter.admit("10.\(i / 256).\(i % 256).1") }
        #expect(limiter.trackedAddresses == LoginRateLimiter.pruneAbove)
        try await Task.sleep(for: .milliseconds(300))
        _ = limiter.admit("192.0.2.1")
        #expect(limiter.trackedAddresses == 1)
    }
}

@Suite struct AgentSlotTests {
    /// Each agent is a process and a thread: one user may run only so many at once, and all
    /// together only so many more; a slot given back is free again.
    @Test func agentsAreBoundedPerUserAndInAll() throws {
        let slots = AgentSlots(perUser: 2, total: 3)
        try slots.take(for: "ann")
        try slots.take(for: "ann")
        #expect(throws: APIError(.tooManyRequests, "agent.busy", "ann has 2 file system requests running already, the most one user may; wait for them to finish")) {
            try slots.take(for: "ann")
        }
        try slots.take(for: "bob")
        do { try slots.take(for: "cy"); Issue.record("a fourth agent started") } catch { #expect(error.code == "server.busy" && error.status == .tooManyRequests) }
        slots.release("ann")
        try slots.take(for: "cy")
        #expect(slots.count(for: "ann") == (1, 3) && slots.count(for: "cy") == (1, 3))
        for user in ["ann", "bob", "cy"] { slots.release(user) }
        #expect(slots.count(for: "ann") == (0, 0))
        // One killed at its deadline and stuck: out of the count of all at once, its user's later.
        try slots.take(for: "dee")
        slots.overran()
        #expect(slots.count(for: "dee") == (1, 0) && slots.stuck == 1)
        slots.ended("dee")
        #expect(slots.count(for: "dee") == (0, 0) && slots.stuck == 0)
        // As many stuck as may run (3 here), of any users: then every request is refused.
        for user in ["ann", "bob", "cy"] {
            try slots.take(for: user)
            slots.overran()
        }
        do { try slots.take(for: "eve"); Issue.record("an agent started with 3 stuck") } catch {
            #expect(error.code == "server.busy" && error.status == .unavailable && error.message.contains("3 file system requests are stuck"), "\(error)")
        }
        slots.ended("bob")
        try slots.take(for: "eve")
        #expect(slots.count(for: "eve") == (1, 1) && slots.stuck == 2)
    }
}

@Suite struct ServeSettingsTests {
    @Test func fileThenEnvironment() throws {
        let configuration = try FerryConfiguration.parse("""
            listen = "0.0.0.0:9000"
            workers = 4
            lease_seconds = 2.5
            streams_per_user = 3
            [auth]
            mode = "proxy"
            admins = ["ops", "root"]
            proxy_addresses = ["10.1.2.3"]
            proxy_secret = "a-secret-of-the-proxy"
            [[roots]]
            path = "/srv/p"
            """)
        #expect(configuration.serve.listen == "0.0.0.0:9000" && configuration.serve.workers == 4 && configuration.serve.leaseSeconds == 2.5)
        #expect(configuration.serve.authMode == .proxy && configuration.serve.admins == ["ops", "root"])
        #expect(configuration.serve.streamsPerUser == 3 && ServeSettings().streamsPerUser == 16)
        #expect(configuration.serve.secureCookie == nil)
        #expect(try FerryConfiguration.parse("[auth]\nsecure_cookie = false").serve.secureCookie == false)
        #expect(try configuration.serve.applying(environment: ["FERRY_AUTH_SECURE_COOKIE": "TRUE"]).secureCookie == true)
        #expect(throws: FerryConfiguration.Error.self) { try configuration.serve.applying(environment: ["FERRY_AUTH_SECURE_COOKIE": "yes"]) }
        #expect(throws: FerryConfiguration.Error.self) { try FerryConfiguration.parse("[auth]\nsecure_cookie = \"on\"") }
        #expect(try configuration.serve.applying(environment: ["FERRY_STREAMS_PER_USER": "40"]).streamsPerUser == 40)
        #expect(throws: FerryConfiguration.Error.self) { try configuration.serve.applying(environment: ["FERRY_STREAMS_PER_USER": "0"]) }
        #expect(throws: FerryConfiguration.Error.self) { try FerryConfiguration.parse("streams_per_user = 0") }
        let timeouts = try FerryConfiguration.parse("agent_timeout_seconds = 5\npreflight_timeout_seconds = 90").serve
        #expect(timeouts.agentTimeoutSeconds == 5 && timeouts.preflightTimeoutSeconds == 90)
        #expect(ServeSettings().agentTimeoutSeconds == 30 && ServeSettings().preflightTimeoutSeconds == 600)
        #expect(try timeouts.applying(environment: ["FERRY_AGENT_TIMEOUT_SECONDS": "2.5"]).agentTimeoutSeconds == 2.5)
        #expect(try timeouts.applying(environment: ["FERRY_PREFLIGHT_TIMEOUT_SECONDS": "1200"]).preflightTimeoutSeconds == 1200)
        #expect(throws: FerryConfiguration.Error.self) { try FerryConfiguration.parse("agent_timeout_seconds = 0") }
        #expect(throws: FerryConfiguration.Error.self) { try timeouts.applying(environment: ["FERRY_PREFLIGHT_TIMEOUT_SECONDS": "-1"]) }
        // A secret written in the configuration: refused when others may read it (root's group
        // aside), judged only when it is the one in effect.
        let file = NSTemporaryDirectory() + "ferry-inline-\(getpid()).toml"
        try "[auth]\ntoken = \"an-inline-token-12345\"\n".write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let inline = try FerryConfiguration.load(file: file).serve
        for (mode, group, refused) in [(0o644, 0, true), (0o600, 0, false), (0o640, 0, false), (0o640, 100, true), (0o604, 0, true)] as [(Int, Int, Bool)] {
            chmod(file, mode_t(mode))
            chown(file, 0, gid_t(group))
            if refused {
                #expect(throws: FerryConfiguration.Error.self, "mode \(String(mode, radix: 8)) group \(group)") { try inline.checkInlineSecrets(file: file) }
            } else {
                #expect(throws: Never.self, "mode \(String(mode, radix: 8)) group \(group)") { try inline.checkInlineSecrets(file: file) }
            }
        }
        chmod(file, 0o644)
        #expect(throws: Never.self) { try inline.checkInlineSecrets(file: file, environment: ["FERRY_AUTH_TOKEN_FILE": "/run/x"]) }
        // A graceful stop's limit: under the packaged unit's TimeoutStopSec=10min by default.
        #expect(ServeSettings().shutdownSeconds == 540)
        #expect(try FerryConfiguration.parse("shutdown_seconds = 1200").serve.shutdownSeconds == 1200)
        #expect(try timeouts.applying(environment: ["FERRY_SHUTDOWN_SECONDS": "30"]).shutdownSeconds == 30)
        #expect(throws: FerryConfiguration.Error.self) { try FerryConfiguration.parse("shutdown_seconds = 0") }
        #expect(throws: FerryConfiguration.Error.self) { try timeouts.applying(environment: ["FERRY_SHUTDOWN_SECONDS": "1e9"]) }
        let client = AgentClient(executable: "/bin/false", configuration: try FerryConfiguration.parse("agent_timeout_seconds = 5\npreflight_timeout_seconds = 90"))
        #expect(client.timeout == .seconds(5) && client.preflightTimeout == .seconds(90))
        let overridden = try configuration.serve.applying(environment: [
            "FERRY_LISTEN": "[::1]:0", "FERRY_AUTH_MODE": "pam", "FERRY_AUTH_ADMINS": "a, b", "FERRY_WORKERS": "0"])
        #expect(overridden.authMode == .pam && overridden.admins == ["a", "b"] && overridden.workers == 0)
        #expect(overridden.hostAndPort?.host == "::1" && overridden.hostAndPort?.port == 0)
        #expect(throws: FerryConfiguration.Error.self) { try FerryConfiguration.parse("[auth]\nmode = \"kerberos\"") }
        #expect(throws: FerryConfiguration.Error.self) { try FerryConfiguration.parse("[auth]\ntoken = \"short\"") }
        #expect(throws: FerryConfiguration.Error.self) { try configuration.serve.applying(environment: ["FERRY_MARGIN": "2"]) }
        let rooted = try configuration.applyingEnvironment(["FERRY_ROOTS": "Alpha=/srv/a/, /srv/b", "FERRY_LFS": "/opt/lfs"])
        #expect(rooted.roots == [.init(path: "/srv/a", name: "Alpha"), .init(path: "/srv/b")] && rooted.lfsPath == "/opt/lfs")
        #expect(try configuration.applyingEnvironment([:]).roots == configuration.roots)
        #expect(throws: FerryConfiguration.Error.self) { try configuration.applyingEnvironment(["FERRY_ROOTS": "relative/path"]) }
    }

    /// Proxy addresses need the proxy's secret: anyone who can connect from one (every local
    /// user, for an address of the proxy's own host) could send the user header, or
    /// X-Forwarded-For, with anything in it.
    @Test func proxyAddressesNeedTheProxysSecret() throws {
        func settings(_ mode: String, _ auth: String, _ environment: [String: String] = [:]) throws -> ServeSettings {
            try FerryConfiguration.parse("[auth]\nmode = \"\(mode)\"\n" + auth).serve.applying(environment: environment)
        }
        for (mode, address) in [("proxy", "127.0.0.1"), ("proxy", "::1"), ("proxy", "10.0.0.5"), ("pam", "127.0.0.1")] {
            do {
                _ = try settings(mode, "proxy_addresses = [\"\(address)\"]")
                Issue.record("\(mode) mode trusted \(address) without a secret")
            } catch {
                let message = "\(error)"
                #expect(message.contains("(\(address)) are believed about who is asking") && message.contains("proxy_secret")
                        && message.contains("X-Ferry-Proxy-Secret"), "\(message)")
            }
        }
        #expect(try settings("proxy", "proxy_addresses = [\"127.0.0.1\"]\nproxy_secret = \"sixteen-chars-ok\"").proxySecret == "sixteen-chars-ok")
        #expect(try settings("pam", "proxy_addresses = [\"127.0.0.1\"]", ["FERRY_AUTH_PROXY_SECRET": "from-the-environment"]).proxySecret == "from-the-environment")
        #expect(try settings("pam", "").proxySecret == nil)
        #expect(throws: FerryConfiguration.Error.self) { try settings("proxy", "proxy_addresses = [\"127.0.0.1\"]\nproxy_secret = \"short\"") }
        #expect(throws: FerryConfiguration.Error.self) { try settings("proxy", "") }  // no proxy address at all
    }
}

/// Keeps every log entry, for tests that read what was logged.
struct CapturingLogHandler: LogHandler {
    final class Entries: @unchecked Sendable {
        private let lock = NSLock()
        private var entries: [(message: String, metadata: [String: String])] = []
        func append(_ entry: (message: String, metadata: [String: String])) { lock.withLock { entries.append(entry) } }
        var all: [(message: String, metadata: [String: String])] { lock.withLock { entries } }
    }

    let entries: Entries
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }.mapValues { "\($0)" }
        entries.append((event.message.description, merged))
    }
}

@Suite struct TaskProcessStandardErrorTests {
    /// A task process runs as its owner: what it writes to standard error reaches the server's
    /// log only as values of the server's own entries, a bounded amount of it.
    @Test func linesBecomeBoundedEntriesOfTheServersLog() async throws {
        let entries = CapturingLogHandler.Entries()
        let log = Logger(label: "test") { _ in CapturingLogHandler(entries: entries) }
        let forged = #"{"level":"info","message":"login succeeded","user":"root"}"#
        let script = """
            exec >&2
            printf '%s\\n' 'first complaint' '\(forged)'
            head -c 5000 /dev/zero | tr '\\0' x; echo
            printf 'no newline at the end'
            """
        let child = try ChildProcess.spawn(executable: "/bin/sh", arguments: ["-c", script], environment: [:], identity: nil)
        child.standardInput.closeQuietly()
        await TaskRunner.logStandardError(of: child, log: log)
        _ = child.wait()
        child.standardOutput.closeQuietly()
        let lines = entries.all.filter { $0.message == "task process wrote to standard error" }.compactMap { $0.metadata["line"] }
        #expect(lines.count == 4)
        #expect(lines.first == "first complaint")
        #expect(lines.dropFirst().first == forged, "a forged entry is only the value of one of ours")
        #expect(lines.dropFirst(2).first == String(repeating: "x", count: TaskRunner.standardErrorLine) + " [cut]")
        #expect(lines.last == "no newline at the end")
        #expect(entries.all.last?.metadata["dropped bytes"] == "\(5000 - TaskRunner.standardErrorLine)")

        // A flood: everything is read (the process never blocks on a full pipe), little is logged.
        let flood = CapturingLogHandler.Entries()
        let floodLog = Logger(label: "test") { _ in CapturingLogHandler(entries: flood) }
        let noisy = try ChildProcess.spawn(executable: "/bin/sh", arguments: ["-c", "yes 'a line of complaint' | head -c 1000000 >&2"],
                                           environment: [:], identity: nil)
        noisy.standardInput.closeQuietly()
        await TaskRunner.logStandardError(of: noisy, log: floodLog)
        #expect(noisy.wait() == .exited(0))
        noisy.standardOutput.closeQuietly()
        let logged = flood.all.compactMap { $0.metadata["line"] }.reduce(0) { $0 + $1.utf8.count }
        #expect(logged <= TaskRunner.standardErrorBudget + TaskRunner.standardErrorLine)
        // 50,000 lines of 19 bytes and a newline: each byte is either logged or counted as dropped.
        #expect(logged + (Int(flood.all.last?.metadata["dropped bytes"] ?? "") ?? 0) == 950_000)
    }
}

@Suite struct TaskViewTests {
    /// A move task claimed by worker `w` in a store of its own, removed afterwards.
    func withClaimedMove(_ body: (SQLiteTaskStore, TaskRecord) async throws -> Void) async throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-view")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteTaskStore(path: directory + "/ferry.sqlite")
        let created = try await store.create(NewTask(kind: .move, sources: [StoredPath("/a/data")], destination: StoredPath("/b"), owner: "u"))
        _ = try await store.claim(id: created.id, worker: "w", lease: .seconds(30))
        try await body(store, created)
    }

    /// A copy under way shows its rate and time left; handed back (no worker holds it), it says
    /// so and shows neither, rather than the last run's figures, frozen.
    @Test func aTaskNoWorkerHoldsSaysSoAndShowsNoRate() async throws {
        try await withClaimedMove { store, created in
            try await store.advance(id: created.id, worker: "w", to: .copying, plan: TaskPlan(
                strategy: "copy", bytes: 1000, allocatedBytes: 1000, entries: 10, inodes: 10, stagingName: StoredPath(".ferry-staging-x"),
                finalNames: [StoredPath("data")], destinationDirectory: StoredPath("/b")), message: "copying")
            try await store.updateProgress(id: created.id, worker: "w", TaskProgress(bytesDone: 400, bytesTotal: 1000, entriesDone: 4,
                                                                                    entriesTotal: 10, bytesPerSecond: 100))
            let running = TaskView(try #require(try await store.task(created.id)))
            #expect(running.note == nil && running.progress.bytesPerSecond == 100 && running.progress.etaSeconds != nil)
            try await store.release(id: created.id, worker: "w", retryAfter: .seconds(60), failure: nil, message: "handed back")
            let waiting = TaskView(try #require(try await store.task(created.id)))
            #expect(waiting.note?.hasPrefix("no worker holds it") == true, "\(String(describing: waiting.note))")
            #expect(waiting.progress.bytesPerSecond == 0 && waiting.progress.etaSeconds == nil && waiting.progress.percent == 40)
        }
    }

    /// While the source is measured the task has counts but no totals: the summary and the page's
    /// texts say what is found so far, not "… of 0 B".
    @Test func aTaskBeingMeasuredShowsWhatIsFoundSoFar() async throws {
        try await withClaimedMove { store, created in
            try await store.advance(id: created.id, worker: "w", to: .validating, plan: nil, message: "validating")
            var task = try #require(try await store.task(created.id))
            #expect(TaskView(task).summary == "Checking paths, space and quota")
            try await store.updateProgress(id: created.id, worker: "w", TaskProgress(bytesDone: 3 << 30, bytesTotal: 0, entriesDone: 250_000,
                                                                                    entriesTotal: 0, bytesPerSecond: 0))
            task = try #require(try await store.task(created.id))
            #expect(TaskView(task).summary == "Measuring the source: 3.00 GiB in 250,000 entries so far")
            let values = Pages.taskView(task)
            #expect(values["bytesText"] as? String == "3.00 GiB")
            #expect(values["filesText"] as? String == "250,000 entries")
            #expect(values["rateText"] as? String == "")
        }
    }
}

@Suite struct UnrunnableTaskTests {
    /// A task whose owner has no account here cannot be run with its owner's rights: it is tried
    /// again, ever less often, and one that never started fails at its third try, with the cause.
    /// One part way is never given up by the runner (only its owner's rights could roll it back).
    @Test func aTaskNobodyCanRunFailsIfItNeverStartedAndWaitsOtherwise() async throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-unrunnable")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteTaskStore(path: directory + "/ferry.sqlite")
        let runner = TaskRunner(store: store, executable: "/nonexistent/ferry", configuration: FerryConfiguration(), concurrency: 1,
                                worker: "srv", lease: .seconds(60), feed: ChangeFeed(), metrics: ServerMetrics(),
                                logger: Logger(label: "test"), owner: nil)
        let gone = TaskFailure(code: "owner.unavailable", message: "no such user")
        func new() async throws -> TaskRecord {
            try await store.create(NewTask(kind: .move, sources: [StoredPath("/a/data")], destination: StoredPath("/b"),
                                           owner: "ferry-no-such-user"))
        }
        let queued = try await new()
        for attempt in 1...2 {
            let task = try #require(try await store.claim(id: queued.id, worker: "srv#\(attempt)", lease: .seconds(60)))
            await runner.cannotRun(task, worker: "srv#\(attempt)", failure: gone, firstDelay: .zero)
            let now = try #require(try await store.task(queued.id))
            #expect(now.status == .pending && now.leaseOwner == nil && now.failure?.code == "owner.unavailable")
        }
        // The third, through the runner's own path (the owner looked up, and not found).
        let third = try #require(try await store.claim(id: queued.id, worker: "srv#3", lease: .seconds(60)))
        await runner.execute(third)
        let failed = try #require(try await store.task(queued.id))
        #expect(failed.status == .failed && failed.failure?.code == "owner.unavailable", "\(failed)")
        #expect(try await store.events(queued.id).last?.message.contains("3 times: given up") == true)

        let started = try await new()
        for attempt in 1...4 {
            let task = try #require(try await store.claim(id: started.id, worker: "srv#s\(attempt)", lease: .seconds(60)))
            if attempt == 1 { try await store.advance(id: started.id, worker: "srv#s1", to: .copying, plan: nil, message: "copying") }
            await runner.cannotRun(try #require(try await store.task(task.id)), worker: "srv#s\(attempt)", failure: gone, firstDelay: .zero)
        }
        let waiting = try #require(try await store.task(started.id))
        #expect(waiting.status == .copying && waiting.leaseOwner == nil, "\(waiting)")
        // The delays double from the first (here 1 minute: the runner's own default).
        let task = try #require(try await store.claim(id: started.id, worker: "srv#s5", lease: .seconds(60)))
        await runner.cannotRun(task, worker: "srv#s5", failure: gone)
        let later = try #require(try await store.task(started.id)?.notBefore)
        #expect(later.timeIntervalSinceNow > 15 * 60 - 30, "the fifth try waits 16 minutes")
    }

    /// `ferry worker --once` as root runs tasks through the runner: a claim that fails (the
    /// database down) is reported, for the command to exit 1, not taken for "no work".
    @Test func aRunnerRoundReportsAFailedClaim() async throws {
        var requests: [Int32] = [-1, -1], responses: [Int32] = [-1, -1]
        #expect(pipe(&requests) == 0 && pipe(&responses) == 0)
        close(responses[1])  // nobody answers: every call fails at once
        defer { for fd in [requests[0], requests[1], responses[0]] { close(fd) } }
        let store = RemoteTaskStore(requests: requests[1], responses: responses[0])
        let runner = TaskRunner(store: store, executable: "/nonexistent/ferry", configuration: FerryConfiguration(), concurrency: 2,
                                worker: "srv", lease: .seconds(60), feed: ChangeFeed(), metrics: ServerMetrics(),
                                logger: Logger(label: "test"), owner: nil)
        var failures = 0
        #expect(await runner.runOnce { _ in failures += 1 }.isEmpty)
        #expect(failures == 1)
    }

    /// A task's process heartbeats every third of the lease it was given, and each heartbeat
    /// must extend the lease by all of it: with `lease_seconds = 3600` the relay's cap (10
    /// minutes) let the lease run out between two heartbeats, and another run took the task over.
    @Test func aTaskProcessIsGrantedTheWholeLeaseItWasGiven() {
        #expect(TaskRunner.relayedLease(.seconds(3600)) == .seconds(3600))
        #expect(TaskRunner.relayedLease(.seconds(30)) == .seconds(600))
    }
}

@Suite("Agents and a hung mount (root)", .enabled(if: QuotaFS.available), .serialized)
struct AgentDeadlineTests {
    /// An `lfs` that does not answer is stopped by the agent before the agent's own deadline: the
    /// quota comes from statvfs, saying why, instead of a 504 with the `lfs` left running.
    @Test func aHungLfsIsStoppedByTheAgentWhichStillAnswers() async throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-lfs-hang")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let program = directory + "/lfs"
        try "#!/bin/sh\ncase \"$1\" in quota) exec sleep 600;; esac\necho 'lfs 2.15.4'\n".write(toFile: program, atomically: true, encoding: .utf8)
        try Shell.run(["chmod", "755", program])
        try FileManager.default.createDirectory(atPath: directory + "/root", withIntermediateDirectories: true)
        var configuration = FerryConfiguration(lfsPath: program)
        configuration.roots = [.init(path: directory + "/root", backend: .lustre)]
        configuration.serve.agentTimeoutSeconds = 16  // lfs: 12 s, the agent's start and answer the rest
        let client = AgentClient(executable: ferryBinary(), configuration: configuration)
        var ask = AgentRequest(operation: .quota, configuration: configuration)
        ask.path = directory + "/root"
        let answer = String(decoding: try await client.ask(ask, as: UserIdentity.current.name), as: UTF8.self)
        #expect(answer.contains("did not answer within 12 s"), "\(answer)")
    }

    /// A listing in a directory whose filesystem does not answer (the tests' FUSE filesystem
    /// holding the open, as a hung NFS or Lustre mount does) is answered 504 at the deadline,
    /// not never. The killed agent still waits in the kernel, so it keeps its place among the
    /// user's agents until the filesystem lets it end, and then gives it back; it leaves the
    /// server-wide count at once (a dead mount must not refuse everyone's requests elsewhere).
    @Test func aHungMountIsAnsweredAtTheDeadlineAndItsAgentCountedUntilItEnds() async throws {
        let fs = try QuotaFS(budget: 1 << 30, hang: "stuck")
        defer { fs.tearDown() }
        try FileManager.default.createDirectory(atPath: fs.backing + "/stuck", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: fs.backing + "/fine/inside", withIntermediateDirectories: true)
        var configuration = FerryConfiguration()
        configuration.roots = [.init(path: fs.mountPoint)]
        configuration.serve.agentTimeoutSeconds = 120  // for the listing that answers (a loaded machine starts agents slowly)
        var client = AgentClient(executable: ferryBinary(), configuration: configuration, perUser: 2, total: 4)
        let user = UserIdentity.current.name
        var ask = AgentRequest(operation: .list, configuration: configuration)
        ask.path = fs.mountPoint + "/fine"
        let listing = String(decoding: try await client.ask(ask, as: user), as: UTF8.self)
        #expect(listing.contains("inside"), "\(listing)")

        // The directory does not answer until the test removes it, below: any answer before that
        // is the deadline's. On a loaded machine the agent may not have reached the directory by
        // its deadline (it then dies at once, holding nothing): asked again with a longer one.
        ask.path = fs.mountPoint + "/stuck"
        func hung() async throws -> Bool {
            // quotafs marks the hang as it takes the request, which may be just after the kill.
            for _ in 0..<40 {
                if FileManager.default.fileExists(atPath: fs.backing + "/stuck.hung") { return true }
                try await Task.sleep(for: .milliseconds(50))
            }
            return false
        }
        for seconds in [1, 2, 4, 8, 16] {
            client.timeout = .seconds(seconds)
            do {
                _ = try await client.ask(ask, as: user)
                Issue.record("a hung directory was listed")
            } catch {
                #expect(error.status == .gatewayTimeout && error.code == "agent.timeout", "\(error)")
                #expect(error.message.contains("did not answer within \(seconds) s"), "\(error.message)")
            }
            if try await hung() { break }
            // Not reached: it died at once, and gives its place back as soon as it is reaped.
            for _ in 0..<200 where client.slots.count(for: user) != (0, 0) { try await Task.sleep(for: .milliseconds(25)) }
        }
        #expect(FileManager.default.fileExists(atPath: fs.backing + "/stuck.hung"))
        // Its user's place it keeps; the server-wide count it has left, for the stuck ones'.
        #expect(client.slots.count(for: user) == (1, 0) && client.slots.stuck == 1)

        try FileManager.default.removeItem(atPath: fs.backing + "/stuck")
        for _ in 0..<400 where client.slots.count(for: user) != (0, 0) { try await Task.sleep(for: .milliseconds(25)) }
        #expect(client.slots.count(for: user) == (0, 0) && client.slots.stuck == 0)
    }
}
