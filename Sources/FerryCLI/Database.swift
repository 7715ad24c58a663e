import ArgumentParser
import FerryConfig
import FerryJobs
import FerryJobsPostgres
import FerryMove
import FerrySystem
import Foundation
import Synchronization

/// Where tasks live: `--database URL`, else `FERRY_DATABASE_URL`, else an SQLite file under
/// `$XDG_STATE_HOME/ferry/`.
struct DatabaseOptions: ParsableArguments {
    @Option(help: "sqlite:///path/ferry.sqlite or postgres://user@host/db (default: FERRY_DATABASE_URL, else ~/.local/state/ferry/ferry.sqlite).")
    var database: String?
    @Option(help: "Lease length in seconds: how long a dead worker's task waits before another takes it over (default: FERRY_LEASE_SECONDS, else 30).")
    var lease: Double?

    /// `--lease`, else `FERRY_LEASE_SECONDS`, else the configuration file's `lease_seconds` (as
    /// `ferry serve` reads them), else 30 seconds. A variable that is not such a number is an
    /// error, not quietly another length.
    func leaseDuration(_ configuration: FerryConfiguration) throws -> Duration {
        var seconds = configuration.serve.leaseSeconds
        if let lease {
            seconds = lease
        } else if let text = ProcessInfo.processInfo.environment["FERRY_LEASE_SECONDS"], !text.isEmpty {
            guard let number = Double(text), (0.2...604_800).contains(number) else {
                throw ValidationError("FERRY_LEASE_SECONDS must be a number of seconds from 0.2 to 604800 (a week), not \(text)")
            }
            seconds = number
        }
        return .milliseconds(Int64(seconds * 1000))
    }

    func validate() throws {
        if let lease, !(0.2...604_800).contains(lease) { throw ValidationError("--lease must be from 0.2 to 604800 seconds (a week)") }
    }

    /// `configuration`: the loaded configuration file, whose `database` comes after `--database` and
    /// `FERRY_DATABASE_URL`; without one, the default file (FERRY_CONFIG, ~/.config, /etc) is read.
    func open(configuration: FerryConfiguration? = nil) async throws -> any TaskStore {
        switch try url(configuration: configuration) {
        case .sqlite(let path):
            do {
                return OpenStores.add(try SQLiteTaskStore(path: try Self.usable(path, explicit: chosenExplicitly(configuration))))
            } catch let error as DatabaseUnusable {
                throw error
            } catch {
                throw DatabaseUnusable(message: "cannot open the task database \(path): \(error.localizedDescription); "
                                       + "choose one with --database or FERRY_DATABASE_URL")
            }
        case .postgres(let host, let port, let user, let password, let name, let tls):
            return OpenStores.add(try await PostgresTaskStore(host: host, port: port, user: user, password: password, database: name, tls: tls))
        }
    }
}

extension DatabaseOptions {
    /// A configuration given is the only one read: without a `database` of its own, the default.
    func url(configuration: FerryConfiguration?) throws -> DatabaseURL {
        do {
            let named = try configured(configuration)
            return try DatabaseURL.choose(explicit: database, configured: named)
        } catch { throw ValidationError("\(error)") }  // a URL that is not one: a usage error
    }

    /// Without a configuration given, the default file's: one that cannot be read or is wrong is
    /// an error, never quietly the default database.
    private func configured(_ configuration: FerryConfiguration?) throws -> String? {
        try (configuration ?? ConfigurationFile.load(nil)).database
    }

    /// Whether the database was named (option, variable or configuration), not the default: a
    /// named SQLite file whose directory cannot be made is an error, never quietly another file
    /// (where tasks queued with `--detach` would wait for a worker that never reads it).
    func chosenExplicitly(_ configuration: FerryConfiguration?) -> Bool {
        database != nil || !(ProcessInfo.processInfo.environment["FERRY_DATABASE_URL"] ?? "").isEmpty || (try? configured(configuration)) != nil
    }

    /// The path locks tasks hold now, read as cheaply as the database allows: an SQLite file through
    /// one plain connection, without a store (see `SQLiteTaskStore.heldLocks`), PostgreSQL through `store`, which
    /// is opened on first use and kept for the caller.
    func heldLocks(configuration: FerryConfiguration?, store: inout (any TaskStore)?) async throws -> [PathLock] {
        if case .sqlite(let path) = try url(configuration: configuration), store == nil {
            return try SQLiteTaskStore.heldLocks(atPath: try Self.usable(path, explicit: chosenExplicitly(configuration)))
        }
        let opened: any TaskStore
        if let store { opened = store } else { opened = try await open(configuration: configuration) }
        store = opened
        return try await opened.locks()
    }

    static func usable(_ path: String, explicit: Bool) throws -> String {
        do { return try DatabaseURL.usableSQLitePath(path, explicit: explicit) } catch let TaskStoreError.database(message) {
            throw DatabaseUnusable(message: message)
        }
    }
}

/// The task database cannot be used: a failure of the command (exit 1), not of its usage.
struct DatabaseUnusable: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// The task stores this process opened, which `FerryCommand.execute` closes before it exits: an
/// SQLite file whose last user exits without closing keeps its write-ahead log, and every later
/// command then reads the whole log before its first query.
enum OpenStores {
    private static let stores = Mutex<[any TaskStore]>([])

    static func add(_ store: any TaskStore) -> any TaskStore {
        stores.withLock { $0.append(store) }
        return store
    }

    static func closeAll() async {
        for store in stores.withLock({ stores in defer { stores = [] }; return stores }) {
            await store.close()
        }
    }
}

/// This process's name as a worker (see `WorkerName`), so leases say who holds them.
func workerName(_ role: String) -> String { WorkerName.make(role) }

/// This `ferry` executable, which agents and task runners are started from.
func ferryExecutable() -> String {
    (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
}

/// The owner of the tasks this process creates: the name workers and the server match it against
/// (`ClaimScope`, `AgentClient.identity`).
func currentUser() -> String { UserIdentity.current.name }

extension TaskRecord {
    var json: [String: Any?] {
        [
            "id": id, "kind": kind.rawValue, "status": status.rawValue, "owner": owner,
            // As the REST API writes paths (`PathText`): every name exact, not as shown to people.
            "sources": sources.map { PathText.encode($0.bytes) }, "destination": PathText.encode(destination.bytes),
            "strategy": plan?.strategy, "attempts": attempts, "cancelRequested": cancelRequested,
            "progress": ["bytesDone": progress.bytesDone, "bytesTotal": progress.bytesTotal,
                         "entriesDone": progress.entriesDone, "entriesTotal": progress.entriesTotal,
                         "bytesPerSecond": progress.bytesPerSecond] as [String: Any?],
            "error": failure.map { ["code": $0.code, "message": $0.message] as [String: Any?] },
            "createdAt": createdAt.timeIntervalSince1970, "finishedAt": finishedAt?.timeIntervalSince1970,
            "leaseOwner": leaseOwner, "stalled": isStalled(),
        ]
    }

    /// The exit status a CLI run of this task ends with.
    var exitStatus: Int32 {
        switch status {
        case .completed: return FerryCommand.Status.success.rawValue
        case .cancelled, .rolledBack: return failure?.code == "cancelled" ? FerryCommand.Status.interrupted.rawValue : FerryCommand.Status.failure.rawValue
        default:
            guard let code = failure?.code else { return FerryCommand.Status.failure.rawValue }
            if code == "locked" { return FerryCommand.Status.locked.rawValue }
            // A refusal met while committing (a name taken meanwhile, a source gone) is no
            // pre-flight refusal: something was done, and `ferry task retry` finishes it.
            if plan?.stoppedCommitting == true { return FerryCommand.Status.failure.rawValue }
            return Refusal.preflightCodes.contains(code) ? FerryCommand.Status.refused.rawValue : FerryCommand.Status.failure.rawValue
        }
    }
}
