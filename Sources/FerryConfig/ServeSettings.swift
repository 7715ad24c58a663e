import FerrySystem
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
///     shutdown_seconds = 540         # FERRY_SHUTDOWN_SECONDS: a graceful stop's limit
///     account_check_seconds = 300    # FERRY_ACCOUNT_CHECK_SECONDS: a pam login's account asked about again
///     [auth]
///     mode = "token"                 # FERRY_AUTH_MODE: token | proxy | pam
///     token = "…"                    # FERRY_AUTH_TOKEN (default: a new random token each start)
///     token_file = "/run/credentials/ferry-serve.service/token" # FERRY_AUTH_TOKEN_FILE: the token, from a file only root reads
///     admins = ["root"]              # FERRY_AUTH_ADMINS, comma-separated
///     proxy_header = "X-Remote-User" # FERRY_AUTH_PROXY_HEADER
///     proxy_addresses = ["127.0.0.1"] # FERRY_AUTH_PROXY_ADDRESSES, comma-separated
///     proxy_secret = "…"             # FERRY_AUTH_PROXY_SECRET (required with proxy_addresses): sent as X-Ferry-Proxy-Secret
///     proxy_secret_file = "…"        # FERRY_AUTH_PROXY_SECRET_FILE: the same, from a file only root reads
///
/// A secret written in the file itself is refused when the file is readable by others than its
/// owner (`checkInlineSecrets`): every user's `ferry` command reads `/etc/ferry/ferry.toml`, so it
/// is usually world-readable, and whoever holds the token, or the proxy secret with an address of
/// the proxy (every local user, for 127.0.0.1), logs in as anyone. `*_file` keeps it apart.
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
    /// How long a graceful stop may take (running tasks reaching a checkpoint) before it is cut
    /// short and the task processes left are killed: under systemd's `TimeoutStopSec` (10 min in
    /// the packaged unit), so that Ferry, not systemd, does it and says so.
    public var shutdownSeconds: Double = 540
    /// How often, while a password (pam) login's session is used, its account is asked about
    /// again (locked or expired since: the session ends).
    public var accountCheckSeconds: Double = 300
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
    /// Files holding the token and the proxy secret (mode 0600 or 0400), read when the server starts.
    public var tokenFile: String?
    public var proxySecretFile: String?
    public static let proxySecretHeader = "X-Ferry-Proxy-Secret"
    public var pamService: String = "ferry"
    /// The session cookie's `Secure` flag: nil sets it when the request came through a proxy that
    /// says `X-Forwarded-Proto: https`; true or false always (a TLS proxy that sends no such
    /// header, or one that should never be trusted to).
    public var secureCookie: Bool?
    public init() {}

    /// What a timeout may be, in seconds: long enough to be met, short enough to be a `Duration`.
    static let timeouts: ClosedRange<Double> = 0.01...604_800
    /// A graceful stop's limit.
    static let shutdowns: ClosedRange<Double> = 1...86_400
    /// A lease's, as `--lease` takes it.
    static let leases: ClosedRange<Double> = 0.2...604_800

    static let keys: Set<String> = ["listen", "margin", "lease_seconds", "workers", "streams_per_user",
                                      "agent_timeout_seconds", "preflight_timeout_seconds", "shutdown_seconds",
                                      "account_check_seconds", "auth"]

    mutating func read(key: String, value: TOMLValue) throws {
        func fail(_ message: String) -> FerryConfiguration.Error { FerryConfiguration.Error(file: "", message: message) }
        /// The value as a number of seconds within `range` (said as `words`).
        func seconds(_ range: ClosedRange<Double>, _ words: String) throws(FerryConfiguration.Error) -> Double {
            guard let number = value.number, range.contains(number) else { throw fail("\(key) must be from \(words)") }
            return number
        }
        switch key {
        case "listen":
            guard let text = value.string, Self.hostAndPort(text) != nil else { throw fail("listen must be HOST:PORT, such as \"127.0.0.1:8080\" or \"[::1]:8080\"") }
            listen = text
        case "margin":
            guard let number = value.number, (0..<1).contains(number) else { throw fail("margin must be a fraction from 0 to 1, such as 0.05") }
            margin = number
        case "lease_seconds":
            guard let number = value.number, Self.leases.contains(number) else { throw fail("lease_seconds must be from 0.2 to 604800 (a week)") }
            leaseSeconds = number
        case "workers":
            guard let count = value.integer, Self.workerCounts.contains(Int(count)) else { throw fail("workers must be a whole number from 0 to 256") }
            workers = Int(count)
        case "streams_per_user":
            guard let count = value.integer, count >= 1 else { throw fail("streams_per_user must be a whole number, 1 or more") }
            streamsPerUser = Int(count)
        case "agent_timeout_seconds": agentTimeoutSeconds = try seconds(Self.timeouts, "0.01 to 604800 (a week)")
        case "preflight_timeout_seconds": preflightTimeoutSeconds = try seconds(Self.timeouts, "0.01 to 604800 (a week)")
        case "account_check_seconds": accountCheckSeconds = try seconds(Self.timeouts, "0.01 to 604800 (a week)")
        case "shutdown_seconds": shutdownSeconds = try seconds(Self.shutdowns, "1 to 86400 (a day)")
        case "auth":
            guard let table = value.table else { throw fail("auth must be an [auth] table") }
            for (name, item) in table.sorted(by: { $0.key < $1.key }) {
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
                    guard let text = item.string, Self.isHeaderName(text) else { throw fail("auth.proxy_header must be a header name (letters, digits and -, such as X-Remote-User)") }
                    proxyHeader = text
                case "proxy_addresses":
                    let list = item.array?.compactMap(\.string).compactMap(Self.canonicalAddress) ?? []
                    guard list.count == item.array?.count else { throw fail("auth.proxy_addresses must be an array of IP addresses, such as [\"127.0.0.1\", \"::1\"] (no names, no networks)") }
                    proxyAddresses = list
                case "proxy_secret":
                    guard let text = item.string, text.count >= 16 else { throw fail("auth.proxy_secret must be a string of at least 16 characters") }
                    proxySecret = text
                case "token_file", "proxy_secret_file":
                    guard let path = item.string, path.hasPrefix("/") else { throw fail("auth.\(name) must be the absolute path of a file") }
                    if name == "token_file" { tokenFile = path } else { proxySecretFile = path }
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
            guard let count = Int(value), Self.workerCounts.contains(count) else { throw fail("FERRY_WORKERS must be from 0 to 256") }
            settings.workers = count
        }
        if let value = env["FERRY_STREAMS_PER_USER"] {
            guard let count = Int(value), count >= 1 else { throw fail("FERRY_STREAMS_PER_USER must be 1 or more") }
            settings.streamsPerUser = count
        }
        /// A number of seconds from `name`, within `range` (said as `words`), or nil if unset.
        func seconds(_ name: String, _ range: ClosedRange<Double>, _ words: String) throws(FerryConfiguration.Error) -> Double? {
            guard let value = env[name] else { return nil }
            guard let number = Double(value), range.contains(number) else { throw fail("\(name) must be from \(words)") }
            return number
        }
        let week = "0.01 to 604800 (a week)"
        if let number = try seconds("FERRY_AGENT_TIMEOUT_SECONDS", Self.timeouts, week) { settings.agentTimeoutSeconds = number }
        if let number = try seconds("FERRY_PREFLIGHT_TIMEOUT_SECONDS", Self.timeouts, week) { settings.preflightTimeoutSeconds = number }
        if let number = try seconds("FERRY_ACCOUNT_CHECK_SECONDS", Self.timeouts, week) { settings.accountCheckSeconds = number }
        if let number = try seconds("FERRY_SHUTDOWN_SECONDS", Self.shutdowns, "1 to 86400 (a day)") { settings.shutdownSeconds = number }
        if let value = env["FERRY_AUTH_MODE"] {
            guard let mode = AuthMode(rawValue: value) else { throw fail("FERRY_AUTH_MODE must be token, proxy or pam") }
            settings.authMode = mode
        }
        if let value = env["FERRY_AUTH_TOKEN"] {
            guard value.count >= 16 else { throw fail("FERRY_AUTH_TOKEN must be at least 16 characters") }
            settings.token = value
            settings.tokenFile = nil
        }
        if let value = env["FERRY_AUTH_TOKEN_FILE"] {
            guard value.hasPrefix("/") else { throw fail("FERRY_AUTH_TOKEN_FILE must be an absolute path") }
            settings.tokenFile = value
            settings.token = nil
        }
        if let value = env["FERRY_AUTH_ADMINS"] { settings.admins = list(value) }
        if let value = env["FERRY_AUTH_PROXY_HEADER"] {
            guard Self.isHeaderName(value) else { throw fail("FERRY_AUTH_PROXY_HEADER must be a header name (letters, digits and -, such as X-Remote-User)") }
            settings.proxyHeader = value
        }
        if let value = env["FERRY_AUTH_PROXY_ADDRESSES"] {
            let addresses = list(value).compactMap(Self.canonicalAddress)
            guard addresses.count == list(value).count else { throw fail("FERRY_AUTH_PROXY_ADDRESSES must be IP addresses separated by commas") }
            settings.proxyAddresses = addresses
        }
        if let value = env["FERRY_LISTEN"], Self.hostAndPort(value) == nil { throw fail("FERRY_LISTEN must be HOST:PORT, such as 127.0.0.1:8080") }
        if let value = env["FERRY_AUTH_PROXY_SECRET"] {
            guard value.count >= 16 else { throw fail("FERRY_AUTH_PROXY_SECRET must be at least 16 characters") }
            settings.proxySecret = value
            settings.proxySecretFile = nil
        }
        if let value = env["FERRY_AUTH_PROXY_SECRET_FILE"] {
            guard value.hasPrefix("/") else { throw fail("FERRY_AUTH_PROXY_SECRET_FILE must be an absolute path") }
            settings.proxySecretFile = value
            settings.proxySecret = nil
        }
        // Both spellings in the file: which one is meant is not for the server to guess.
        if settings.token != nil && settings.tokenFile != nil { throw fail("auth.token and auth.token_file are both set; keep one") }
        if settings.proxySecret != nil && settings.proxySecretFile != nil { throw fail("auth.proxy_secret and auth.proxy_secret_file are both set; keep one") }
        if let file = settings.tokenFile { settings.token = try Self.secret(from: file, key: "auth.token_file") }
        if let file = settings.proxySecretFile { settings.proxySecret = try Self.secret(from: file, key: "auth.proxy_secret_file") }
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

    /// A secret from a file: a regular file (not through a symlink) that only its owner may read
    /// or write (an ssh key's rule), its first line without surrounding blanks, 16 characters or more.
    static func secret(from path: String, key: String) throws(FerryConfiguration.Error) -> String {
        func fail(_ message: String) -> FerryConfiguration.Error { FerryConfiguration.Error(file: path, message: message) }
        let file: FileDescriptor, status: FileStatus
        do { (file, status) = try currentWorkingDirectory.openRegularForReading(Array(path.utf8), [.noFollow]) } catch {
            throw fail("\(key): cannot be opened (\(error))")
        }
        defer { file.closeQuietly() }
        guard status.kind == .regular else { throw fail("\(key): not a regular file") }
        guard status.permissions & 0o077 == 0 else {
            throw fail("\(key): others than its owner may read or change it (mode \(String(status.permissions & 0o777, radix: 8))): chmod 600 it")
        }
        guard status.uid == 0 || status.uid == geteuid() else { throw fail("\(key): owned by uid \(status.uid), neither root nor this server's user") }
        var bytes = [UInt8](repeating: 0, count: 4097)
        let count: Int
        do { count = try bytes.withUnsafeMutableBytes { (buffer) throws(SystemError) in try file.read(into: buffer) } } catch {
            throw fail("\(key): cannot be read (\(error))")
        }
        guard count <= 4096 else { throw fail("\(key): longer than 4096 bytes; a secret is one line") }
        let line = String(decoding: bytes[..<count], as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).first ?? ""
        let text = line.trimmingCharacters(in: .whitespacesAndNewlines)
        guard text.count >= 16 else { throw fail("\(key): the secret must be at least 16 characters") }
        return text
    }

    /// Refuses a token or proxy secret written in a configuration file that others than its owner
    /// may read (see the type's comment): `file` is the one the settings were read from.
    /// A secret the environment overrides (`FERRY_AUTH_TOKEN[_FILE]`, `…PROXY_SECRET[_FILE]`) is
    /// not the one in effect, and not judged. Readable by its group is allowed only for root's
    /// group: another group's members (and whoever has it as their primary group) are others.
    public func checkInlineSecrets(file: String, environment: [String: String] = [:]) throws(FerryConfiguration.Error) {
        func overridden(_ name: String) -> Bool { [name, name + "_FILE"].contains { !(environment[$0] ?? "").isEmpty } }
        let inline = [token != nil && !overridden("FERRY_AUTH_TOKEN") ? "auth.token" : nil,
                      proxySecret != nil && !overridden("FERRY_AUTH_PROXY_SECRET") ? "auth.proxy_secret" : nil].compactMap { $0 }
        guard let key = inline.first else { return }
        var status = stat()
        guard stat(file, &status) == 0 else {
            throw FerryConfiguration.Error(file: file, message: "\(key) is written in it, and who may read it cannot be told (\(String(cString: strerror(errno))))")
        }
        guard status.st_uid == 0 || status.st_uid == geteuid() else {
            throw FerryConfiguration.Error(file: file, message: "\(key) is written in a file owned by uid \(status.st_uid), neither root nor this server's user, "
                + "who may read it and change the proxy's addresses; chown it, or put the secret in auth.\(key == "auth.token" ? "token_file" : "proxy_secret_file")")
        }
        guard status.st_mode & 0o007 == 0 && (status.st_mode & 0o070 == 0 || status.st_gid == 0) else {
            let kind = key == "auth.token" ? "token_file" : "proxy_secret_file"
            throw FerryConfiguration.Error(file: file, message: "\(key) is written in a file others may read (mode \(String(status.st_mode & 0o777, radix: 8))): "
                + "anyone who can read it can log in as any user. Put the secret in a file only root reads and name it as auth.\(kind) "
                + "(or LoadCredential= with auth.\(kind) = \"/run/credentials/<unit>/…\"); chmod 600 of the configuration also does, "
                + "but then users' own ferry commands cannot read it")
        }
    }

    /// `listen` split into host and port ("[::1]:8080", "0.0.0.0:80", ":8080").
    public var hostAndPort: (host: String, port: Int)? { Self.hostAndPort(listen) }

    static func hostAndPort(_ listen: String) -> (host: String, port: Int)? {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        var host = String(listen[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host.isEmpty ? "0.0.0.0" : host, port)
    }

    static let workerCounts = 0...256

    /// An HTTP field name (RFC 9110 token): a proxy header that is none would be no header at all.
    public static func isHeaderName(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.allSatisfy { byte in
            (0x30...0x39).contains(byte) || (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte) || Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }

    /// An IP address as one form (`inet_ntop`), an IPv4 address mapped into IPv6 (`::ffff:10.0.0.1`,
    /// as a dual-stack listener reports an IPv4 peer) as IPv4; nil for anything else (a name, a
    /// network), which would never match a peer.
    public static func canonicalAddress(_ text: String) -> String? {
        var v4 = in_addr(), v6 = in6_addr()
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        if inet_pton(AF_INET, text, &v4) == 1 {
            return inet_ntop(AF_INET, &v4, &buffer, socklen_t(buffer.count)).map { _ in String(cString: buffer) }
        }
        guard inet_pton(AF_INET6, text, &v6) == 1 else { return nil }
        let bytes = withUnsafeBytes(of: &v6) { Array($0) }
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF {
            return bytes[12...].map(String.init).joined(separator: ".")
        }
        return inet_ntop(AF_INET6, &v6, &buffer, socklen_t(buffer.count)).map { _ in String(cString: buffer) }
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
