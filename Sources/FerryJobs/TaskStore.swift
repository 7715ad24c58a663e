import FerrySystem
import Foundation

/// The durable task store: one contract, two engines (SQLite for one machine, PostgreSQL for
/// many). Every state change a worker makes is fenced by its lease: a worker whose task was
/// claimed by another (which an expired lease allows) gets `.leaseLost` and must stop touching the
/// task. Expiry alone takes nothing away: until another worker claims the task, a late holder (a
/// heartbeat held up behind a slow disk) renews its lease and carries on.
public protocol TaskStore: Sendable {
    func create(_ task: NewTask) async throws -> TaskRecord
    func task(_ id: String) async throws -> TaskRecord?
    func list(_ filter: TaskFilter) async throws -> [TaskRecord]
    func events(_ id: String) async throws -> [TaskEvent]

    /// Leases up to `limit` claimable tasks (running and not leased, or leased with an expired
    /// lease, and past their retry time), oldest first. Each claim counts an attempt.
    func claim(worker: String, limit: Int, lease: Duration) async throws -> [TaskRecord]
    /// As `claim(worker:limit:lease:)`, only tasks whose owner is `owner`: a worker without root's
    /// rights runs tasks with its own, so it must take only its own user's (another user's task
    /// would run with rights its owner never had, and a task it cannot run would be delayed for
    /// the worker that can).
    func claim(worker: String, limit: Int, lease: Duration, ownedBy owner: String) async throws -> [TaskRecord]
    /// Leases one given task if it is claimable (for `ferry move` running its own task).
    func claim(id: String, worker: String, lease: Duration) async throws -> TaskRecord?
    /// Extends the lease, also one that expired if nobody has claimed the task since; false if
    /// another worker holds it now, or the task was handed back or ended.
    func heartbeat(id: String, worker: String, lease: Duration) async throws -> Bool
    /// Commits a phase transition (and the plan, when the validate phase made one).
    func advance(id: String, worker: String, to status: TaskStatus, plan: TaskPlan?, message: String) async throws
    func updateProgress(id: String, worker: String, _ progress: TaskProgress) async throws
    /// Ends the task in a terminal state, releasing its lease and locks; the tasks waiting for it
    /// (`wait`) become claimable at once.
    func finish(id: String, worker: String, status: TaskStatus, failure: TaskFailure?, message: String) async throws
    /// Gives the lease back without finishing (shutdown, or a transient error retried after `retryAfter`).
    func release(id: String, worker: String, retryAfter: Duration?, failure: TaskFailure?, message: String) async throws

    /// Hands the task back to wait for `holder`, which holds a path lock the task needs (`message`
    /// says which): as `release`, claimable again after `retryAfter`, or at once when `holder`
    /// ends and its locks go. The history records the wait once for each holder; the claims that
    /// look again meanwhile are not recorded and count no attempt, so a task may wait for hours
    /// without a history entry or an attempt for every look.
    func wait(id: String, worker: String, for holder: String, retryAfter: Duration, message: String) async throws

    /// Takes all `locks` for the task at once, or none: `.locked` names the conflicting task.
    /// Taking them ends a wait (`wait`): the task's next claims are recorded again.
    func acquireLocks(id: String, worker: String, _ locks: [PathLock]) async throws
    func locks() async throws -> [PathLock]

    /// Pending tasks are cancelled at once; running ones are marked and cancel at their next
    /// checkpoint. One that no worker holds and that waits to be run again (a lock, a retry's
    /// delay) may be claimed at once, to be rolled back. One in its commit is past cancelling:
    /// returned as it is, nothing recorded (as an ended one).
    func requestCancel(_ id: String) async throws -> TaskRecord
    /// A failed, cancelled or rolled-back task goes back to pending.
    func retry(_ id: String) async throws -> TaskRecord
    /// Appends to the task's history.
    func record(_ id: String, message: String) async throws

    /// Returns when there may be new work (true: woken), or after `timeout` (false).
    @discardableResult
    func waitForWork(timeout: Duration) async -> Bool

    /// Puts right what the store keeps beside its tables, if anything, and says what it changed
    /// (one sentence each): the SQLite store's lock markers, which a cleaner of old files may
    /// have removed while their task still holds its locks. The janitor calls it.
    func repair() async throws -> [String]

    /// How many tasks are in each state (for metrics, scraped by anyone who can reach the server):
    /// the database stores count them in one query; the default pages through `list`.
    func countByStatus() async throws -> [TaskStatus: Int]

    /// Lets go of the database before the process ends; the store is unusable afterwards. An SQLite
    /// store that is the file's last user folds its write-ahead log back into the database and
    /// removes it, so that the next process to open the file need not read the log through first.
    func close() async
}

/// `sqlite:///path/ferry.sqlite` or `postgres://user@host:port/db`.
public enum DatabaseURL: Sendable, Equatable {
    case sqlite(path: String)
    case postgres(host: String, port: Int, user: String, password: String?, database: String, tls: PostgresTLS)

    public init(_ text: String) throws {
        if text.hasPrefix("sqlite://") {
            let path = String(text.dropFirst("sqlite://".count))
            guard path.hasPrefix("/") else { throw TaskStoreError.database("sqlite URLs name an absolute path: sqlite:///var/lib/ferry/ferry.sqlite") }
            self = .sqlite(path: path)
            return
        }
        guard let url = URLComponents(string: text), url.scheme == "postgres" || url.scheme == "postgresql",
              let host = url.host, !host.isEmpty else {
            throw TaskStoreError.database("unsupported database URL \(text): use sqlite:///path or postgres://user@host/db")
        }
        let database = url.path.hasPrefix("/") ? String(url.path.dropFirst()) : url.path
        var tls = PostgresTLS()
        for item in url.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let mode = item.value.flatMap(PostgresTLS.Mode.init(rawValue:)) else {
                    throw TaskStoreError.database("sslmode=\(item.value ?? "") in \(text): use disable, allow, prefer, require, verify-ca or verify-full")
                }
                tls.mode = mode
            case "sslrootcert": tls.rootCertificate = item.value
            default: throw TaskStoreError.database("unknown parameter \(item.name) in \(text): Ferry reads sslmode and sslrootcert")
            }
        }
        if tls.mode == .verifyCA || tls.mode == .verifyFull, tls.rootCertificate?.isEmpty ?? true {
            throw TaskStoreError.database("sslmode=\(tls.mode.rawValue) in \(text) needs sslrootcert=/path/to/root.crt, the certificate to check the server's against")
        }
        self = .postgres(host: host, port: url.port ?? 5432, user: url.user ?? "postgres", password: url.password,
                         database: database.isEmpty ? "ferry" : database, tls: tls)
    }

    /// `--database`, else `FERRY_DATABASE_URL`, else `$XDG_STATE_HOME/ferry/ferry.sqlite`.
    public static func resolve(_ explicit: String?, environment: Environment = .process) throws -> DatabaseURL {
        if let explicit { return try DatabaseURL(explicit) }
        if let configured = environment["FERRY_DATABASE_URL"], !configured.isEmpty { return try DatabaseURL(configured) }
        let state = environment["XDG_STATE_HOME"] ?? ((environment["HOME"] ?? "/root") + "/.local/state")
        return .sqlite(path: state + "/ferry/ferry.sqlite")
    }
}

/// How a PostgreSQL connection is encrypted, as libpq's `sslmode` and `sslrootcert` say it:
/// `prefer` (the default) encrypts where the server offers it, `require` insists, checking
/// nothing of the server's certificate (unless a root certificate is given: then as `verify-ca`),
/// `verify-ca` checks it against `sslrootcert`, `verify-full` also checks it names the host.
/// `allow` is taken as `prefer`.
public struct PostgresTLS: Sendable, Equatable {
    public enum Mode: String, Sendable {
        case disable, allow, prefer, require
        case verifyCA = "verify-ca", verifyFull = "verify-full"
    }
    public var mode: Mode = .prefer
    public var rootCertificate: String?
    public init(mode: Mode = .prefer, rootCertificate: String? = nil) {
        self.mode = mode
        self.rootCertificate = rootCertificate
    }
}

extension DatabaseURL {
    /// `--database`, else `FERRY_DATABASE_URL`, else the configuration file's `database`, else the
    /// default file: what every command (and the `ferry` front end) uses.
    public static func choose(explicit: String?, configured: @autoclosure () -> String?,
                              environment: Environment = .process) throws -> DatabaseURL {
        let fromEnvironment = environment["FERRY_DATABASE_URL"].flatMap { $0.isEmpty ? nil : $0 }
        return try resolve(explicit ?? fromEnvironment ?? configured(), environment: environment)
    }

    /// The SQLite file to use for `path`. The default database lives in the user's state
    /// directory; a user without a writable home (a service account such as nobody) gets a private
    /// directory under /tmp instead, created 0700 and refused if it is not ours or is a symlink.
    /// `explicit`: the path was given (flag, environment or configuration) and is used as it is.
    public static func usableSQLitePath(_ path: String, explicit: Bool) throws -> String {
        let directory = String(decoding: BytePath.split(Array(path.utf8)).parent, as: UTF8.self)
        var existing = stat()
        if explicit || (stat(directory, &existing) == 0 && (existing.st_mode & S_IFMT) == S_IFDIR)
            || (try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)) != nil {
            return path
        }
        let fallback = "/tmp/ferry-\(geteuid())"
        if mkdir(fallback, 0o700) != 0 && errno != EEXIST {
            throw TaskStoreError.database("cannot create \(directory) or \(fallback); choose a database with --database or FERRY_DATABASE_URL")
        }
        var status = stat()
        guard lstat(fallback, &status) == 0, (status.st_mode & S_IFMT) == S_IFDIR, status.st_uid == geteuid(), status.st_mode & 0o077 == 0 else {
            throw TaskStoreError.database("\(fallback) is not a private directory of yours; choose a database with --database or FERRY_DATABASE_URL")
        }
        return fallback + "/ferry.sqlite"
    }
}

extension TaskStore {
    /// Nothing kept beside the tables: nothing to put right.
    public func repair() async throws -> [String] { [] }

    /// How many tasks are in each state, a page of `list` at a time (the stores with a database
    /// of their own answer with one query).
    public func countByStatus() async throws -> [TaskStatus: Int] {
        var counts: [TaskStatus: Int] = [:]
        var offset = 0
        while true {
            let page = try await list(TaskFilter(limit: 1000, offset: offset))
            for task in page { counts[task.status, default: 0] += 1 }
            if page.count < 1000 { return counts }
            offset += page.count
        }
    }
}

/// Whose tasks a process may claim.
public enum ClaimScope {
    /// The owner whose tasks this process may run: any as root (it runs each as its owner, or
    /// with the server's rights when an admin asked for that), else only its own user's.
    public static var forThisProcess: String? { geteuid() == 0 ? nil : UserIdentity.current.name }
}

extension TaskStore {
    /// `claim(worker:limit:lease:)`, or only `owner`'s tasks when there is one (`ClaimScope`).
    public func claim(worker: String, limit: Int, lease: Duration, scope owner: String?) async throws -> [TaskRecord] {
        if let owner { return try await claim(worker: worker, limit: limit, lease: lease, ownedBy: owner) }
        return try await claim(worker: worker, limit: limit, lease: lease)
    }
}
