import ArgumentParser
import FerryConfig
import FerryJobs
import FerryJobsPostgres
import Foundation
import Synchronization

/// Where tasks live: `--database URL`, else `FERRY_DATABASE_URL`, else an SQLite file under
/// `$XDG_STATE_HOME/ferry/`.
struct DatabaseOptions: ParsableArguments {
    @Option(help: "sqlite:///path/ferry.sqlite or postgres://user@host/db (default: FERRY_DATABASE_URL, else ~/.local/state/ferry/ferry.sqlite).")
    var database: String?
    @Option(help: "Lease length in seconds: how long a dead worker's task waits before another takes it over (default: FERRY_LEASE_SECONDS, else 30).")
    var lease: Double?

    var leaseDuration: Duration {
        var seconds = lease ?? ProcessInfo.processInfo.environment["FERRY_LEASE_SECONDS"].flatMap(Double.init) ?? 30
        if !seconds.isFinite { seconds = 30 }
        return .milliseconds(Int64(min(max(0.2, seconds), 604_800) * 1000))
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
                return OpenStores.add(try SQLiteTaskStore(path: try Self.usable(path, explicit: database != nil)))
            } catch let error as ValidationError {
                throw error
            } catch {
                throw ValidationError("cannot open the task database \(path): \(error.localizedDescription); choose one with --database or FERRY_DATABASE_URL")
            }
        case .postgres(let host, let port, let user, let password, let name):
            return OpenStores.add(try await PostgresTaskStore(host: host, port: port, user: user, password: password, database: name))
        }
    }
}

extension DatabaseOptions {
    func url(configuration: FerryConfiguration?) throws -> DatabaseURL {
        do {
            return try DatabaseURL.choose(explicit: database, configured: configuration?.database
                ?? FerryConfiguration.locate(explicit: nil).flatMap { try? FerryConfiguration.load(file: $0) }?.database)
        } catch { throw ValidationError("\(error)") }
    }

    /// The path locks tasks hold now, read as cheaply as the database allows: an SQLite file through
    /// one plain connection, without a store (see `SQLiteTaskStore.heldLocks`), PostgreSQL through `store`, which
    /// is opened on first use and kept for the caller.
    func heldLocks(configuration: FerryConfiguration?, store: inout (any TaskStore)?) async throws -> [PathLock] {
        if case .sqlite(let path) = try url(configuration: configuration), store == nil {
            return try SQLiteTaskStore.heldLocks(atPath: try Self.usable(path, explicit: database != nil))
        }
        let opened: any TaskStore
        if let store { opened = store } else { opened = try await open(configuration: configuration) }
        store = opened
        return try await opened.locks()
    }

    static func usable(_ path: String, explicit: Bool) throws -> String {
        do { return try DatabaseURL.usableSQLitePath(path, explicit: explicit) } catch let TaskStoreError.database(message) {
            throw ValidationError(message)
        }
    }
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

/// The user a task is recorded for.
func currentUser() -> String {
    if let entry = getpwuid(geteuid()), let name = entry.pointee.pw_name { return String(cString: name) }
    return "uid\(geteuid())"
}

extension TaskRecord {
    var json: [String: Any?] {
        [
            "id": id, "kind": kind.rawValue, "status": status.rawValue, "owner": owner,
            "sources": sources.map(\.description), "destination": destination.description,
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
            let refusals = ["quota.insufficient", "destination.exists", "source.missing", "hsm.released", "strategy.unknown",
                            "strategy.invalid", "strategy.unavailable", "permission.denied"]
            return refusals.contains(code) ? FerryCommand.Status.refused.rawValue : FerryCommand.Status.failure.rawValue
        }
    }
}
