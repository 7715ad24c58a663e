import Foundation

/// How `ferry serve` authenticates people.
public enum AuthMode: String, Sendable, CaseIterable {
    /// A random token printed at start (or a fixed one), exchanged for a session cookie.
    case token
    /// A header set by the site's single-sign-on reverse proxy, trusted only from its addresses.
    case proxy
    /// Username and password checked by PAM.
    case pam
}

/// The `ferry serve` part of the configuration file: where to listen, who may log in and how, and
/// the engine's knobs. Every key can be overridden by a `FERRY_…` environment variable (the
/// database by `FERRY_DATABASE_URL`, the roots by `FERRY_ROOTS`).
///
///     listen = "127.0.0.1:8080"      # FERRY_LISTEN
///     margin = 0.05                  # FERRY_MARGIN
///     lease_seconds = 30             # FERRY_LEASE_SECONDS
///     workers = 2                    # FERRY_WORKERS (0: serve only; workers run elsewhere)
///     streams_per_user = 16          # FERRY_STREAMS_PER_USER: event streams one user may hold open
///     agent_timeout_seconds = 30     # FERRY_AGENT_TIMEOUT_SECONDS: a listing, stat or quota request
///     preflight_timeout_seconds = 600 # FERRY_PREFLIGHT_TIMEOUT_SECONDS: a pre-flight (it measures the tree)
///     [auth]
///     mode = "token"                 # FERRY_AUTH_MODE: token | proxy | pam
///     token = "…"                    # FERRY_AUTH_TOKEN (default: a new random token each start)
///     admins = ["root"]              # FERRY_AUTH_ADMINS, comma-separated
///     proxy_header = "X-Remote-User" # FERRY_AUTH_PROXY_HEADER
///     proxy_addresses = ["127.0.0.1"] # FERRY_AUTH_PROXY_ADDRESSES, comma-separated
///     proxy_secret = "…"             # FERRY_AUTH_PROXY_SECRET (required with proxy_addresses): sent as X-Ferry-Proxy-Secret
///     pam_service = "ferry"          # FERRY_AUTH_PAM_SERVICE
///     secure_cookie = true           # FERRY_AUTH_SECURE_COOKIE (default: when X-Forwarded-Proto is https)
public struct ServeSettings: Equatable, Sendable {
    public var listen: String = "127.0.0.1:8080"
    public var margin: Double = 0.05
    public var leaseSeconds: Double = 30
    public var workers: Int = 2
    public var streamsPerUser: Int = 16
    /// How long a file system request's agent may run before the request is answered 504
    /// (`agent.timeout`) and the agent killed: a hung mount must not hang the page asking.
    public var agentTimeoutSeconds: Double = 30
    /// The same for a pre-flight, which measures the whole source tree.
    public var preflightTimeoutSeconds: Double = 600
    public var authMode: AuthMode = .token
    public var token: String?
    public var admins: [String] = ["root"]
    public var proxyHeader: String = "X-Remote-User"
    public var proxyAddresses: [String] = []
    /// What the proxy sends as `X-Ferry-Proxy-Secret` with every request: its headers (the user's
    /// name, `X-Forwarded-For`) are believed only with it. Required with `proxyAddresses`: anyone
    /// who can connect from such an address (every local user, for an address of this host)
    /// could otherwise send them.
    public var proxySecret: String?
    public static let proxySecretHeader = "X-Ferry-Proxy-Secret"
    public var pamService: String = "ferry"
    /// The session cookie's `Secure` flag: nil sets it when the request came through a proxy that
    /// says `X-Forwarded-Proto: https`; true or false always (a TLS proxy that sends no such
    /// header, or one that should never be trusted to).
    public var secureCookie: Bool?
    public init() {}

    /// What a timeout may be, in seconds: long enough to be met, short enough to be a `Duration`.
    static let timeouts: ClosedRange<Double> = 0.01...604_800
    /// A lease's, as `--lease` takes it.
    static let leases: ClosedRange<Double> = 0.2...604_800

    static let keys: Set<String> = ["listen", "margin", "lease_seconds", "workers", "streams_per_user",
                                      "agent_timeout_seconds", "preflight_timeout_seconds", "auth"]

    mutating func read(key: String, value: TOMLValue) throws {
        func fail(_ message: String) -> FerryConfiguration.Error { FerryConfiguration.Error(file: "", message: message) }
        switch key {
        case "listen":
            guard let text = value.string else { throw fail("listen must be a string such as \"127.0.0.1:8080\"") }
            listen = text
        case "margin":
            guard let number = value.number, (0..<1).contains(number) else { throw fail("margin must be a fraction from 0 to 1, such as 0.05") }
            margin = number
        case "lease_seconds":
            guard let number = value.number, Self.leases.contains(number) else { throw fail("lease_seconds must be from 0.2 to 604800 (a week)") }
            leaseSeconds = number
        case "workers":
            guard let count = value.integer, count >= 0 else { throw fail("workers must be a whole number, 0 or more") }
            workers = Int(count)
        case "streams_per_user":
            guard let count = value.integer, count >= 1 else { throw fail("streams_per_user must be a whole number, 1 or more") }
            streamsPerUser = Int(count)
        case "agent_timeout_seconds":
            guard let number = value.number, Self.timeouts.contains(number) else { throw fail("agent_timeout_seconds must be from 0.01 to 604800 (a week)") }
            agentTimeoutSeconds = number
        case "preflight_timeout_seconds":
            guard let number = value.number, Self.timeouts.contains(number) else { throw fail("preflight_timeout_seconds must be from 0.01 to 604800 (a week)") }
            preflightTimeoutSeconds = number
        case "auth":
            guard let table = value.table else { throw fail("auth must be an [auth] table") }
            for (name, item) in table {
                switch name {
                case "mode":
                    guard let word = item.string, let mode = AuthMode(rawValue: word) else { throw fail("auth.mode must be token, proxy or pam") }
                    authMode = mode
                case "token":
                    guard let text = item.string, text.count >= 16 else { throw fail("auth.token must be a string of at least 16 characters") }
                    token = text
                case "admins":
                    guard let names = item.array?.compactMap(\.string), names.count == item.array?.count else { throw fail("auth.admins must be an array of user names") }
                    admins = names
                case "proxy_header":
                    guard let text = item.string, !text.isEmpty else { throw fail("auth.proxy_header must be a header name") }
                    proxyHeader = text
                case "proxy_addresses":
                    guard let list = item.array?.compactMap(\.string), list.count == item.array?.count else { throw fail("auth.proxy_addresses must be an array of IP addresses") }
                    proxyAddresses = list
                case "proxy_secret":
                    guard let text = item.string, text.count >= 16 else { throw fail("auth.proxy_secret must be a string of at least 16 characters") }
                    proxySecret = text
                case "pam_service":
                    guard let text = item.string, !text.isEmpty, !text.contains("/") else { throw fail("auth.pam_service must be a PAM service name") }
                    pamService = text
                case "secure_cookie":
                    guard let flag = item.boolean else { throw fail("auth.secure_cookie must be true or false") }
                    secureCookie = flag
                default:
                    throw fail("unknown setting auth.\(name)")
                }
            }
        default:
            throw fail("unknown setting \(key)")
        }
    }

    /// The `FERRY_…` variables win over the file.
    public func applying(environment: [String: String]) throws(FerryConfiguration.Error) -> ServeSettings {
        func fail(_ message: String) -> FerryConfiguration.Error { FerryConfiguration.Error(file: "environment", message: message) }
        func list(_ text: String) -> [String] { text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
        var settings = self
        let env = environment.filter { !$0.value.isEmpty }
        if let value = env["FERRY_LISTEN"] { settings.listen = value }
        if let value = env["FERRY_MARGIN"] {
            guard let number = Double(value), (0..<1).contains(number) else { throw fail("FERRY_MARGIN must be a fraction such as 0.05") }
            settings.margin = number
        }
        if let value = env["FERRY_LEASE_SECONDS"] {
            guard let number = Double(value), Self.leases.contains(number) else { throw fail("FERRY_LEASE_SECONDS must be from 0.2 to 604800 (a week)") }
            settings.leaseSeconds = number
        }
        if let value = env["FERRY_WORKERS"] {
            guard let count = Int(value), count >= 0 else { throw fail("FERRY_WORKERS must be 0 or more") }
            settings.workers = count
        }
        if let value = env["FERRY_STREAMS_PER_USER"] {
            guard let count = Int(value), count >= 1 else { throw fail("FERRY_STREAMS_PER_USER must be 1 or more") }
            settings.streamsPerUser = count
        }
        if let value = env["FERRY_AGENT_TIMEOUT_SECONDS"] {
            guard let number = Double(value), Self.timeouts.contains(number) else { throw fail("FERRY_AGENT_TIMEOUT_SECONDS must be from 0.01 to 604800 (a week)") }
            settings.agentTimeoutSeconds = number
        }
        if let value = env["FERRY_PREFLIGHT_TIMEOUT_SECONDS"] {
            guard let number = Double(value), Self.timeouts.contains(number) else { throw fail("FERRY_PREFLIGHT_TIMEOUT_SECONDS must be from 0.01 to 604800 (a week)") }
            settings.preflightTimeoutSeconds = number
        }
        if let value = env["FERRY_AUTH_MODE"] {
            guard let mode = AuthMode(rawValue: value) else { throw fail("FERRY_AUTH_MODE must be token, proxy or pam") }
            settings.authMode = mode
        }
        if let value = env["FERRY_AUTH_TOKEN"] {
            guard value.count >= 16 else { throw fail("FERRY_AUTH_TOKEN must be at least 16 characters") }
            settings.token = value
        }
        if let value = env["FERRY_AUTH_ADMINS"] { settings.admins = list(value) }
        if let value = env["FERRY_AUTH_PROXY_HEADER"] { settings.proxyHeader = value }
        if let value = env["FERRY_AUTH_PROXY_ADDRESSES"] { settings.proxyAddresses = list(value) }
        if let value = env["FERRY_AUTH_PROXY_SECRET"] {
            guard value.count >= 16 else { throw fail("FERRY_AUTH_PROXY_SECRET must be at least 16 characters") }
            settings.proxySecret = value
        }
        if let value = env["FERRY_AUTH_PAM_SERVICE"] { settings.pamService = value }
        if let value = env["FERRY_AUTH_SECURE_COOKIE"] {
            guard let flag = ["true": true, "false": false][value.lowercased()] else { throw fail("FERRY_AUTH_SECURE_COOKIE must be true or false") }
            settings.secureCookie = flag
        }
        if settings.authMode == .proxy && settings.proxyAddresses.isEmpty {
            throw FerryConfiguration.Error(file: "ferry serve", message: "auth mode proxy needs auth.proxy_addresses (FERRY_AUTH_PROXY_ADDRESSES): "
                + "the addresses of the proxy whose header is believed")
        }
        if !settings.proxyAddresses.isEmpty && settings.proxySecret == nil {
            throw FerryConfiguration.Error(file: "ferry serve", message: "auth.proxy_addresses (\(settings.proxyAddresses.joined(separator: ", "))) are "
                + "believed about who is asking (\(settings.proxyHeader) in proxy mode, X-Forwarded-For for the login limit), and anyone who can "
                + "connect from one of them (every local user, for an address of this host such as 127.0.0.1) could claim any name: set "
                + "auth.proxy_secret (FERRY_AUTH_PROXY_SECRET, 16 characters or more) and have the proxy send it as \(Self.proxySecretHeader)")
        }
        return settings
    }

    /// `listen` split into host and port ("[::1]:8080", "0.0.0.0:80", ":8080").
    public var hostAndPort: (host: String, port: Int)? {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        var host = String(listen[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host.isEmpty ? "0.0.0.0" : host, port)
    }
}

extension TOMLValue {
    var number: Double? {
        switch self {
        case .float(let value): value
        case .integer(let value): Double(value)
        default: nil
        }
    }
}

extension FerryConfiguration {
    /// The configuration with the `FERRY_…` environment variables applied over the file: the
    /// server's settings, and `FERRY_ROOTS` (comma-separated absolute paths, each optionally
    /// `Name=/path`), which replaces the file's roots.
    public func applyingEnvironment(_ environment: [String: String]) throws(FerryConfiguration.Error) -> FerryConfiguration {
        var configuration = self
        configuration.serve = try serve.applying(environment: environment)
        if let text = environment["FERRY_ROOTS"], !text.isEmpty {
            var roots: [Root] = []
            for item in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !item.isEmpty {
                let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
                let path = parts.count == 2 ? parts[1] : parts[0]
                guard path.hasPrefix("/") else {
                    throw Error(file: "environment", message: "FERRY_ROOTS: \(item) is not an absolute path (use /path or Name=/path, comma-separated)")
                }
                do {
                    roots.append(Root(path: try FerryConfiguration.normalRoot(path, origin: "environment"), name: parts.count == 2 ? parts[0] : nil))
                } catch {
                    throw Error(file: "environment", message: "FERRY_ROOTS: \(error.message)")
                }
            }
            do { try FerryConfiguration.checkDistinct(roots, origin: "environment") } catch {
                throw Error(file: "environment", message: "FERRY_ROOTS: \(error.message)")
            }
            configuration.roots = roots
        }
        if let lfs = environment["FERRY_LFS"], !lfs.isEmpty { configuration.lfsPath = lfs }
        return configuration
    }
}
