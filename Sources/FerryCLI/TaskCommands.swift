import ArgumentParser
import FerryConfig
import FerryCopy
import FerryJobs
import FerryMove
import FerryServer
import FerrySystem
import Foundation
import Logging
import Synchronization

struct TasksCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tasks", abstract: "List tasks: running and queued ones, or all with --all.")
    @Flag(help: "Include finished tasks.") var all = false
    @Flag(help: "Print JSON.") var json = false
    @Option(help: "Only this user's tasks.") var owner: String?
    @Option(help: "At most this many.") var limit = 50
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var configuration: ConfigurationFile

    func validate() throws {
        guard limit > 0 else { throw ValidationError("--limit must be at least 1") }
    }

    func run() async throws {
        let store = try await database.open(configuration: try configuration.load())
        let tasks = try await store.list(TaskFilter(statuses: all ? nil : TaskStatus.running, owner: owner, limit: limit))
        if json {
            printJSON(["tasks": tasks.map { $0.json as Any? }])
            return
        }
        if tasks.isEmpty { print(all ? "no tasks" : "no running or queued tasks (ferry tasks --all shows finished ones)"); return }
        for task in tasks {
            // Always five columns wide, so that the rows line up; 100% only when it is all there.
            let percent = task.progress.bytesTotal > 0
                ? String(min(100, Int((Double(task.progress.bytesDone) * 100 / Double(task.progress.bytesTotal)).rounded(.down)))) + "%" : "-"
            let done = String(repeating: " ", count: max(1, 5 - percent.count)) + percent
            let sources = task.sources.map(\.description).joined(separator: " ")
            print("\(task.id)  \(task.status.rawValue.padding(toLength: 11, withPad: " ", startingAt: 0))\(done)  \(task.kind.rawValue) \(sources) → \(task.destination)  [\(task.owner)]")
            if let stall = task.stallDescription() { print("    stalled: \(stall)") }
            if let waiting = task.waitingDescription() { print("    waiting: \(waiting)") }
        }
    }
}

struct TaskCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "task", abstract: "Show, cancel or retry one task.", subcommands: [Show.self, Cancel.self, Retry.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "A task's state, progress, error and history.")
        @Argument var id: String
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var configuration: ConfigurationFile
        func run() async throws {
            let store = try await database.open(configuration: try configuration.load())
            guard let task = try await store.task(id) else {
                if json { printJSON(["id": id, "error": ["code": "task.not_found", "message": "no task \(id)"] as [String: Any?]]) }
                printError("ferry task show: no task \(id)")
                throw ExitCode(1)
            }
            let events = try await store.events(id)
            if json {
                var object = task.json
                object["events"] = events.map { ["at": $0.at.timeIntervalSince1970, "status": $0.status.rawValue, "message": $0.message] as [String: Any?] as Any? }
                printJSON(object)
                return
            }
            print("task \(task.id): \(task.kind.rawValue) \(task.sources.map(\.description).joined(separator: " ")) → \(task.destination)")
            print("  status \(task.status.rawValue), owner \(task.owner), attempts \(task.attempts)\(task.plan.map { ", strategy \($0.strategy)" } ?? "")")
            if task.progress.bytesTotal > 0 || task.progress.entriesTotal > 0 {
                print("  progress \(Format.bytes(task.progress.bytesDone))/\(Format.bytes(task.progress.bytesTotal)), \(Format.count(task.progress.entriesDone))/\(Format.count(task.progress.entriesTotal)) entries")
            } else if task.isBeingMeasured {
                print("  measured so far \(Format.bytes(task.progress.bytesDone)), \(Format.count(task.progress.entriesDone)) entries")
            }
            if let failure = task.failure { print("  error [\(failure.code)] \(failure.message)") }
            if let stall = task.stallDescription() { print("  stalled: \(stall)") }
            if let waiting = task.waitingDescription() { print("  waiting: \(waiting)") }
            let formatter = ISO8601DateFormatter()
            for event in events { print("  \(formatter.string(from: event.at))  \(event.status.rawValue.padding(toLength: 11, withPad: " ", startingAt: 0)) \(event.message)") }
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Cancel: a queued task at once, a running one at its next checkpoint (rolled back).")
        @Argument var id: String
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var configuration: ConfigurationFile
        func run() async throws {
            let store = try await database.open(configuration: try configuration.load())
            do {
                let task = try await store.requestCancel(id)
                if task.status.isTerminal {
                    print(task.status == .cancelled ? "cancelled \(id)" : "\(id) has already ended: \(task.status.rawValue)")
                } else if task.status == .committing {
                    // Past the point of no return: the copy may be published already, and the
                    // engine finishes a commit whatever is asked (`MoveEngine`).
                    print("\(id) is committing (publishing the verified copy, then removing the source): too late to cancel; "
                          + "it is finished, not rolled back")
                } else if let stall = task.stallDescription() {
                    print("\(id): cancel requested; \(stall)")
                } else if task.leaseOwner == nil {
                    print("\(id): cancel requested; no worker is running it now: the next `ferry worker` (or `ferry janitor`) rolls it back")
                } else {
                    print("\(id): cancel requested; it rolls back at its next checkpoint")
                }
            } catch TaskStoreError.notFound { printError("ferry task cancel: no task \(id)"); throw ExitCode(1) }
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "retry", abstract: "Queue a failed, cancelled or rolled-back task again.")
        @Argument var id: String
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var configuration: ConfigurationFile
        func run() async throws {
            let store = try await database.open(configuration: try configuration.load())
            do {
                let queued = try await store.retry(id)
                print(queued.status == .committing
                      ? "\(id) queued again to finish its commit (nothing is copied again); a worker (ferry worker) will run it"
                      : "\(id) queued again; a worker (ferry worker) will run it")
            } catch let error as TaskStoreError {
                printError("ferry task retry: \(error)")
                throw ExitCode(1)
            }
        }
    }
}

struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Claim and run tasks until stopped (SIGTERM: finish the current checkpoint, release the lease).")
    @Flag(help: "Run every task claimable now, then exit.") var once = false
    @Option(help: "Tasks run at once.") var concurrency = 2
    @Option(help: "Parallel copiers per task (default: two per usable CPU; walks that move no data: one per usable CPU).") var jobs: Int?
    @Option(help: "Minutes between the worker's own clean-ups (orphaned staging directories, the task database's lock markers); fractions allowed.")
    var janitorMinutes: Double = 10
    @Flag(help: "Run each task in a process with its owner's uid, gid and groups, as ferry serve does (always so as root).")
    var asOwner = false
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var storageOptions: StorageOptions

    func validate() throws {
        // From 0.6 s (a pass lists the tasks: more often would do little else) up to about two years.
        guard janitorMinutes.isFinite, (0.01...1_000_000).contains(janitorMinutes) else {
            throw ValidationError("--janitor-minutes must be from 0.01 (0.6 seconds) to 1000000")
        }
        guard (1...256).contains(concurrency) else { throw ValidationError("--concurrency must be from 1 to 256") }
        if let jobs, !(1...1024).contains(jobs) { throw ValidationError("--jobs must be from 1 to 1024") }
    }

    /// A second SIGINT or SIGTERM: one who asks again will not wait for the tasks' checkpoints (a
    /// task stuck on a hung mount never reaches one). The worker exits at once, its task processes
    /// with it (their parent-death signal); what they were doing is resumed, or rolled back, by the
    /// next worker or janitor once their leases run out, as after a crash.
    static func leaveNow() -> Never {
        printError("ferry worker: interrupted again: leaving now; the tasks it ran are resumed by the next `ferry worker` or `ferry janitor` once their leases run out")
        Foundation.exit(FerryCommand.Status.interrupted.rawValue)
    }

    var janitorInterval: Duration { .milliseconds(Int64((janitorMinutes * 60_000).rounded())) }

    func run() async throws {
        let configuration = try storageOptions.loadConfiguration()
        let store = try await database.open(configuration: configuration)
        // As root, tasks always run as their owners: a root worker must never carry out a user's
        // request with root's rights.
        if asOwner || geteuid() == 0 {
            let runner = ownerRunner(store: store, configuration: configuration, concurrency: concurrency, role: "worker",
                                     lease: try database.leaseDuration(configuration), jobs: jobs)
            let interrupt = InterruptWatcher(onRepeat: { Self.leaveNow() }) { runner.stop() }
            defer { interrupt.stop() }
            if once {
                var claimFailed = false
                let records = await runner.runOnce { error in
                    claimFailed = true
                    printError("ferry worker: claiming tasks failed: \(error)")
                }
                for record in records { printError("\(record.id): \(record.status.rawValue)\(record.failure.map { " — \($0.message)" } ?? "")") }
                if claimFailed { throw ExitCode(1) }
            } else {
                // The janitor's passes run with this process's rights, as `ferry serve`'s do: they
                // remove only staging directories no live task owns, and search the configured roots.
                let engine = try makeEngine(store: store, role: "janitor", lease: try database.leaseDuration(configuration), jobs: jobs, storageOptions: storageOptions)
                let janitor = JanitorService(engine: engine, roots: configuration.roots.map(\.path), interval: janitorInterval,
                                             logger: Logger(label: "ferry.worker"))
                let passes = Task { try? await janitor.run() }  // outside a service group: until cancelled
                await runner.runUntilStopped()
                passes.cancel()
            }
            return
        }
        let engine = try makeEngine(store: store, role: "worker", lease: try database.leaseDuration(configuration), jobs: jobs, storageOptions: storageOptions)
        let stop = CancellationFlag()
        let interrupt = InterruptWatcher(onRepeat: { Self.leaveNow() }) {
            stop.cancel()
            engine.stop()  // running tasks stop at their next checkpoint and release their leases
        }
        defer { interrupt.stop() }
        let logger = Logger(label: "ferry.worker")
        let claimFailed = Mutex(false)
        let records = await Worker(engine: engine, concurrency: concurrency, janitorInterval: janitorInterval, onClaimFailure: { error in
            claimFailed.withLock { $0 = true }
            logger.error("claiming tasks failed", metadata: ["error": "\(error)"])
        }) { outcome in
            JanitorService.log(outcome, to: logger)
        }.run(once: once, stop: stop)
        for record in records { printError("\(record.id): \(record.status.rawValue)\(record.failure.map { " — \($0.message)" } ?? "")") }
        // `--once` from cron must not report success for a round that could not look for work.
        if once && claimFailed.withLock({ $0 }) {
            printError("ferry worker: claiming tasks failed (see above); tasks may still be waiting")
            throw ExitCode(1)
        }
    }
}

struct JanitorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "janitor",
        abstract: "Finish or roll back tasks whose worker died, and remove staging directories no live task owns.")
    @Flag(help: "Only say what would be removed.") var dryRun = false
    @Option(name: .customLong("scan"), help: "Also search this directory (and its subdirectories) for .ferry-staging-*; repeatable.")
    var scan: [String] = []
    @Option(help: "Staging directories unknown to the database are removed when older than this many seconds.") var grace: Double = 3600
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var storageOptions: StorageOptions

    func validate() throws {
        guard grace.isFinite, (0...31_536_000).contains(grace) else { throw ValidationError("--grace must be from 0 to 31536000 seconds (a year)") }
    }

    func run() async throws {
        let configuration = try storageOptions.loadConfiguration()
        let lease = try database.leaseDuration(configuration)
        let store = try await database.open(configuration: configuration)
        let engine = try makeEngine(store: store, role: "janitor", lease: lease, jobs: nil, storageOptions: storageOptions)
        // Tasks whose worker died are carried on as their owners (never with the janitor's rights).
        let recovered = dryRun ? [] : await ownerRunner(store: store, configuration: configuration, concurrency: 2, role: "janitor",
                                                        lease: lease).runOnce()
        let report = try await Janitor(engine: engine, grace: .milliseconds(Int64(grace * 1000)))
            .run(directories: scan.map { Transfer.absolute(ProcessArguments.pathBytes($0)) }, dryRun: dryRun, recover: false)
        for record in recovered { print("recovered task \(record.id)") }
        for path in report.removed { print("\(dryRun ? "would remove" : "removed") \(path)") }
        for path in report.kept { print("kept \(path) (its task is still running, or it is younger than the grace period)") }
        for path in report.unmarked {
            print("left \(path) in place: it is not a staging directory as Ferry makes them (not marked for its task, "
                  + "or others may write to it); remove it by hand if it is one")
        }
        for change in report.repaired { print(change) }
    }
}

/// Runs tasks in processes with their owners' identities (ferry serve's runner).
/// A privileged task runs only while its owner is among the administrators: the file's
/// `[auth] admins`, or `FERRY_AUTH_ADMINS` as `ferry serve` reads it.
func ownerRunner(store: any TaskStore, configuration: FerryConfiguration, concurrency: Int, role: String, lease: Duration,
                 jobs: Int? = nil) -> TaskRunner {
    var configuration = configuration
    if let admins = ProcessInfo.processInfo.environment["FERRY_AUTH_ADMINS"], !admins.isEmpty {
        configuration.serve.admins = admins.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }
    return TaskRunner(store: store, executable: ferryExecutable(),
               configuration: configuration, concurrency: concurrency, worker: workerName(role), lease: lease,
               feed: ChangeFeed(), metrics: ServerMetrics(), logger: Logger(label: "ferry.\(role)"), jobs: jobs)
}

func makeEngine(store: any TaskStore, role: String, lease: Duration, jobs: Int?, storageOptions: StorageOptions) throws -> MoveEngine {
    let configuration = try storageOptions.loadConfiguration()
    var planner = Planner(jobs: jobs) { fd, path in try storageOptions.backend(for: fd, path: path, configuration: configuration) }
    planner.configuredStrategy = { path in configuration.root(containing: String(decoding: path, as: UTF8.self), resolvingSymlinks: true)?.strategy }
    return MoveEngine(store: store, settings: .init(worker: workerName(role), lease: lease, jobs: jobs), planner: planner)
}
