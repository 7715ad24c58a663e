import ArgumentParser
import FerryConfig
import FerryCopy
import FerryJobs
import FerryMove
import FerryStorage
import FerrySystem
import Foundation
import Synchronization

extension VerifyMode: ExpressibleByArgument {}

/// What `ferry move` and `ferry copy` share.
struct TransferOptions: ParsableArguments {
    @Argument(help: "Sources, then the destination (an existing directory, or a new name for one source).")
    var paths: [String]
    @Flag(help: "Print the plan and the pre-flight verdict; change nothing.") var dryRun = false
    @Flag(help: "Print one JSON object instead of progress.") var json = false
    @Option(help: "How to verify before publishing: metadata or checksum.") var verify: VerifyMode = .metadata
    @Option(help: "rename, relink or copy (default: the cheapest the filesystem allows).") var strategy: String?
    @Flag(help: "Restore HSM-released files from tape before moving them (Lustre).") var recall = false
    @Flag(help: "Queue the task for a worker and print its id instead of running it here.") var detach = false
    @Flag(help: "If a path is locked by another task, wait for it instead of failing.") var waitForLocks = false
    @Flag(help: "Skip the free-space and free-inode check (the copy still stops cleanly at ENOSPC/EDQUOT).") var noSpaceCheck = false
    @Option(help: "Safety margin on free space and inodes, in percent (default: FERRY_MARGIN, else the configuration's margin, else 5).")
    var margin: Double?
    @Flag(help: "Move even if the destination cannot keep some extended attributes or ACLs (they are lost with the source; the task's history lists them). Without it such a move fails before anything is deleted.")
    var allowXattrLoss = false
    @Option(help: "Parallel copiers (default: two per usable CPU; walks that move no data: one per usable CPU).") var jobs: Int?
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var storageOptions: StorageOptions

    func validate() throws {
        if paths.count < 2 { throw ValidationError("give at least one source and a destination") }
        if let jobs, jobs < 1 || jobs > 1024 { throw ValidationError("--jobs must be between 1 and 1024") }
        if let strategy, Strategy(rawValue: strategy) == nil { throw ValidationError("--strategy must be rename, relink or copy") }
        if let margin, !margin.isFinite || !(0..<100).contains(margin) {
            throw ValidationError("--margin is a percentage from 0 up to (not including) 100")
        }
    }

    /// The margin when `--margin` is not given: `FERRY_MARGIN`, then the configuration file's
    /// `margin` (both fractions, as `ferry serve` reads them), then 5%.
    static func configuredMargin(_ configuration: FerryConfiguration) throws -> Double {
        guard let text = ProcessInfo.processInfo.environment["FERRY_MARGIN"], !text.isEmpty else { return configuration.serve.margin }
        guard let value = Double(text), (0..<1).contains(value) else {
            throw ValidationError("FERRY_MARGIN must be a fraction from 0 up to 1, such as 0.05 (got \(text))")
        }
        return value
    }

    /// With `--json`, whatever stops the command is one JSON object too, as its outcome would be.
    func run(kind: TaskKind) async throws {
        do {
            try await perform(kind: kind)
        } catch let exit as ExitCode {
            throw exit
        } catch where json {
            let usage = error is ValidationError
            let message = "\(error)"
            let code = usage ? "usage" : error is DatabaseUnusable ? "database" : MoveEngine.failure(for: error).code
            printJSON(["kind": kind.rawValue, "status": "failed", "id": nil,
                       "error": ["code": code, "message": message] as [String: Any?]])
            printError("ferry \(kind.rawValue): \(message)")
            throw ExitCode((usage ? FerryCommand.Status.usage : FerryCommand.Status.failure).rawValue)
        }
    }

    private func perform(kind: TaskKind) async throws {
        let command = "ferry \(kind.rawValue)"
        let configuration = try storageOptions.loadConfiguration()
        let bytes = paths.map { ProcessArguments.pathBytes($0) }
        // Usage problems are found before a task exists.
        let transfer: Transfer
        do {
            transfer = try Transfer(sources: Array(bytes.dropLast()), destination: bytes[bytes.count - 1])
        } catch let usage as Transfer.UsageError {
            if json {
                printJSON(["kind": kind.rawValue, "status": "failed", "id": nil,
                           "error": ["code": "usage", "message": usage.message] as [String: Any?]])
            }
            printError("\(command): \(usage.message)")
            throw ExitCode(FerryCommand.Status.usage.rawValue)
        } catch {
            // A source, or a source's directory, that cannot be read: no task was made. A source
            // that is not there is a refusal, as the pre-flight check of a task would make it.
            let failure = MoveEngine.failure(for: error)
            let message = (error as? SystemError).map { "cannot \(kind.rawValue) \($0.path ?? "a source"): \($0.reason)" } ?? failure.message
            if json {
                printJSON(["kind": kind.rawValue, "status": "failed", "id": nil,
                           "error": ["code": failure.code, "message": message] as [String: Any?]])
            } else {
                printError("\(command): \(message)")
                printError("nothing was \(kind == .move ? "moved" : "copied")")
            }
            let missing = (error as? SystemError)?.code == .notFound
            throw ExitCode((missing ? FerryCommand.Status.refused : FerryCommand.Status.failure).rawValue)
        }
        var options = TaskOptions()
        options.verify = verify.rawValue
        options.strategy = strategy
        options.recall = recall
        options.jobs = jobs
        options.margin = try margin.map { $0 / 100 } ?? Self.configuredMargin(configuration)
        options.waitForLocks = waitForLocks
        options.spaceCheck = !noSpaceCheck
        options.allowXattrLoss = allowXattrLoss
        let request = NewTask(kind: kind, sources: bytes.dropLast().map { StoredPath(Transfer.absolute($0)) },
                              destination: StoredPath(Transfer.absolute(bytes[bytes.count - 1])), options: options, owner: currentUser())
        let storageOptions = self.storageOptions
        var planner = Planner(jobs: jobs) { fd, path in try storageOptions.backend(for: fd, path: path, configuration: configuration) }
        planner.configuredStrategy = { path in configuration.root(containing: String(decoding: path, as: UTF8.self), resolvingSymlinks: true)?.strategy }
        var opened: (any TaskStore)?
        if kind == .move, !detach, !dryRun,
           try await renameWithoutTask(transfer, options: options, planner: planner, command: command, heldLocks: {
               try await database.heldLocks(configuration: configuration, store: &opened)
           }) {
            return
        }
        let bar = ProgressBar(enabled: !json && isatty(STDERR_FILENO) == 1)
        if dryRun {
            // Nothing written, the task database included (it is not even opened).
            let preflight: Preflight
            do {
                defer { bar.finish() }
                preflight = try planner.preflight(kind: kind, transfer: transfer, options: options) { progress in bar.update(progress) }
            }
            if json {
                printJSON(preflightJSON(preflight))
            } else {
                print(preflight.summary)
                if preflight.refusal == nil && preflight.strategy != .rename { print(Self.threadsLine(preflight, Processors.budget)) }
                for warning in preflight.warnings { print("warning: \(warning)") }
            }
            throw ExitCode(preflight.refusal == nil ? FerryCommand.Status.success.rawValue : FerryCommand.Status.refused.rawValue)
        }
        let lease = try database.leaseDuration(configuration)
        let store: any TaskStore
        if let opened { store = opened } else { store = try await database.open(configuration: configuration) }
        let engine = MoveEngine(store: store, settings: .init(worker: workerName("cli"), lease: lease, jobs: jobs),
                                planner: planner) { _, progress in bar.update(progress) }
        if detach {
            let created = try await store.create(request)
            if json { printJSON(created.json) } else { print(created.id) }
            return
        }
        let cancellation = Interruptible()
        // Ctrl-C and SIGTERM cancel (rolled back); from before the task exists, so that none is
        // left queued by one pressed at that moment. A hangup is no request to undo anything: the
        // task stops at its next checkpoint and is handed back with what it staged, for the next
        // `ferry worker` or `ferry janitor` to finish. Ctrl-C again leaves at once: the task,
        // whatever it was doing, is then finished or rolled back by the next `ferry worker` or
        // `ferry janitor` once its lease runs out, as after a crash.
        // The task's id once it exists, and whether a second Ctrl-C came before it did.
        let leaving = Mutex<(id: String?, asked: Bool)>((nil, false))
        let leave: @Sendable (String) -> Never = { id in
            // Its cancel recorded first (two seconds at most), so that whoever takes it next rolls it back.
            let recorded = DispatchSemaphore(value: 0)
            let cancelled = Mutex(false)
            Task {
                if (try? await store.requestCancel(id)) != nil { cancelled.withLock { $0 = true } }
                recorded.signal()
            }
            _ = recorded.wait(timeout: .now() + 2)
            let seconds = Double(lease.components.seconds) + Double(lease.components.attoseconds) / 1e18
            if cancelled.withLock({ $0 }) {
                printError("\(command): interrupted again: leaving now; task \(id) is rolled back (or, if it was committing, finished) "
                           + "by the next `ferry worker` or `ferry janitor` once its lease (\(Format.duration(seconds))) has run out")
            } else {
                printError("\(command): interrupted again: leaving now, but task \(id)'s cancel could not be recorded: the next "
                           + "`ferry worker` or `ferry janitor` carries it on once its lease has run out; `ferry task cancel \(id)` stops it")
            }
            Foundation.exit(FerryCommand.Status.interrupted.rawValue)
        }
        let interrupt = InterruptWatcher(onHangup: { engine.stop() }, onRepeat: {
            bar.finish()
            // Before the task exists, it is left as soon as it does (below).
            guard let id = leaving.withLock({ state -> String? in state.asked = true; return state.id }) else { return }
            leave(id)
        }) {
            cancellation.cancel()
            bar.finish()
            printError("\(command): interrupted: cancelling, and rolling back unless it is already committing (Ctrl-C again to leave it to `ferry janitor`)")
        }
        defer { interrupt.stop() }
        let created = try await store.create(request)
        if leaving.withLock({ state -> Bool in state.id = created.id; return state.asked }) { leave(created.id) }
        let record: TaskRecord
        do {
            record = try await runToItsEnd(created, command: command, engine: engine, store: store, bar: bar,
                                           cancellation: cancellation, interrupt: interrupt)
        } catch {
            bar.finish()
            try await abandon(created.id, kind: kind, after: error, store: store, worker: engine.settings.worker)
        }
        bar.finish()
        if !record.status.isTerminal && interrupt.hungUp {
            // Handed back after a hangup, or left to the worker it was followed on: whoever may
            // still read this learns where it went.
            if json { printJSON(record.json) } else if let holder = record.leaseOwner, holder != engine.settings.worker {
                printError("\(command): the terminal hung up; task \(record.id) runs on \(holder), which carries it on: `ferry task show \(record.id)`")
            } else {
                printError("\(command): the terminal hung up; task \(record.id) was handed back at \(record.status.rawValue) with what it staged: "
                           + "`ferry worker --once` or `ferry janitor` finishes it")
            }
            throw ExitCode(FerryCommand.Status.hungUp.rawValue)
        }
        if !record.status.isTerminal {
            // Neither ended nor handed on: how the run ended could not be read back.
            try await abandon(created.id, kind: kind, after: UnreadableEnd(), store: store, worker: engine.settings.worker)
        }
        if json {
            var summary = record.json
            summary["verify"] = record.options.verify
            summary["published"] = record.status == .completed ? record.plan?.finalNames.map { PathText.encode($0.bytes) } : []
            summary["ownershipPreserved"] = processIsPrivileged
            printJSON(summary)
        } else if record.status == .completed {
            let bytesText = Format.bytes(record.plan?.bytes ?? 0)
            let entries = Format.count(record.plan?.entries ?? 0)
            if record.plan?.strategy == "rename" {
                printError("renamed (same filesystem and project: nothing to copy) — task \(record.id)")
            } else {
                printError("\(kind == .move ? "moved" : "copied") \(entries) entries, \(bytesText), verified and durable — task \(record.id)")
            }
        } else if let failure = record.failure {
            printError("\(command): \(failure.message)")
            if record.plan?.stoppedCommitting == true {
                printError("task \(record.id) \(record.status.rawValue) while committing: nothing was rolled back (see above)")
            } else if record.plan?.deletingSource == true {
                printError("task \(record.id) \(record.status.rawValue) while removing the source (see above)")
            } else {
                printError("task \(record.id) \(record.status.rawValue); the source is untouched")
            }
        }
        throw ExitCode(record.exitStatus)
    }

    /// Runs the command's task here until it ends, or until a hangup hands it back. A task handed
    /// back to run again later (a path locked, with --wait-for-locks; a passing fault, retried after
    /// its delay) is run again when its time comes, saying once why it waits; Ctrl-C while it waits
    /// cancels it, and it is rolled back as during a run. A task a worker runs instead (one that
    /// claimed it first, or took it over while this command was stopped) is followed to its end.
    func runToItsEnd(_ created: TaskRecord, command: String, engine: MoveEngine, store: any TaskStore, bar: ProgressBar,
                     cancellation: Interruptible, interrupt: InterruptWatcher) async throws -> TaskRecord {
        var record: TaskRecord
        if let claimed = try await store.claim(id: created.id, worker: engine.settings.worker, lease: engine.settings.lease) {
            record = await engine.run(claimed, cancellation: cancellation.nextRun())
        } else {
            // A worker claimed it first (one woken by its creation on a shared database).
            record = try await follow(created.id, command: command, taken: "a worker claimed it first", store: store, bar: bar, interrupt: interrupt)
        }
        var said = ""
        while !record.status.isTerminal && record.leaseOwner == nil && !interrupt.hungUp {
            if !interrupt.interrupted, !json, let why = try? await store.events(record.id).last?.message, why != said {
                said = why
                bar.finish()
                printError("\(command): \(why)")
            }
            // Read again twice a second: the end of a task it waits for makes it claimable at
            // once (`TaskStore.wait`), long before the time it was given.
            var looks = 0
            while !interrupt.interrupted && !interrupt.hungUp, let until = record.notBefore, until > Date() {
                try? await Task.sleep(for: .milliseconds(100))
                looks += 1
                if looks % 5 == 0, let fresh = try? await store.task(record.id) { record = fresh }
            }
            if interrupt.hungUp { break }
            if interrupt.interrupted {
                record = (try? await store.requestCancel(record.id)) ?? record
                if record.status.isTerminal { break }  // cancelled before it started
            }
            guard let again = try await store.claim(id: record.id, worker: engine.settings.worker, lease: engine.settings.lease) else {
                record = try await follow(record.id, command: command, taken: "a worker claimed it while it waited", store: store, bar: bar,
                                          interrupt: interrupt)
                break
            }
            record = await engine.run(again, cancellation: cancellation.nextRun())
        }
        if !record.status.isTerminal, let holder = record.leaseOwner, holder != engine.settings.worker {
            // This command was stopped (Ctrl-Z) for longer than its lease, and a worker took the task over.
            record = try await follow(record.id, command: command, taken: "\(holder) took it over while this command was stopped", store: store, bar: bar,
                                      interrupt: interrupt)
        }
        return record
    }

    /// A move that is one rename is done here, without a task (see `MoveEngine.renameWithoutTask`).
    /// Returns false when the request needs a task after all.
    func renameWithoutTask(_ transfer: Transfer, options: TaskOptions, planner: Planner, command: String,
                           heldLocks: () async throws -> [PathLock]) async throws -> Bool {
        let published: [ByteString]
        do {
            guard let renamed = try await MoveEngine.renameWithoutTask(transfer, options: options, planner: planner,
                                                                       heldLocks: heldLocks) else { return false }
            published = renamed
        } catch {
            let problem = MoveEngine.renameProblem(error)
            report(command, code: problem.code, problem.message, moved: problem.moved, outcome: problem.outcome)
            throw ExitCode((problem.refused ? FerryCommand.Status.refused : FerryCommand.Status.failure).rawValue)
        }
        if json {
            printJSON(["kind": "move", "status": "completed", "strategy": "rename", "id": nil,
                       "published": published.map(PathText.encode), "verify": options.verify])
        } else {
            printError(MoveEngine.renamedMessage)
        }
        return true
    }

    private func report(_ command: String, code: String, _ message: String, moved: [ByteString], outcome: String) {
        if json {
            printJSON(["kind": "move", "status": "failed", "strategy": "rename", "id": nil, "published": moved.map(PathText.encode),
                       "error": ["code": code, "message": message] as [String: Any?]])
        } else {
            printError("\(command): \(message)")
            printError(outcome)
        }
    }

    func preflightJSON(_ preflight: Preflight, budget: ProcessorBudget = Processors.budget) -> [String: Any?] {
        [
            "strategy": preflight.strategy.rawValue, "summary": preflight.summary,
            "bytes": preflight.measurement.bytes, "allocatedBytes": preflight.measurement.allocatedBytes,
            "entries": preflight.measurement.entries, "inodes": preflight.measurement.inodes,
            "bytesFree": preflight.quota?.bytesFree, "inodesFree": preflight.quota?.inodesFree,
            "destinationProject": preflight.destinationProject.map { Int($0.projectID) },
            "warnings": preflight.warnings,
            "refusal": preflight.refusal.map { ["code": $0.code, "message": $0.message] as [String: Any?] },
            "copiers": preflight.copiers, "walkers": preflight.walkers,
            "cpus": ["online": budget.online, "usable": budget.usable, "limit": budget.limit] as [String: Any?],
        ]
    }

    /// How many threads the run would use, and what the CPU count they follow from is.
    static func threadsLine(_ preflight: Preflight, _ budget: ProcessorBudget) -> String {
        let limit = budget.limit.map { ": \($0)" } ?? ""
        let cpus = budget.usable == 1 ? "1 CPU" : "\(budget.usable) CPUs"
        return "Threads: \(preflight.copiers) copying, \(preflight.walkers) for the walks that move no data "
            + "(\(cpus) usable of \(budget.online) online\(limit))."
    }
}

struct MoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "move",
        abstract: "Move files and trees, across project quotas too: staged, verified, published, then the source removed.",
        discussion: """
            Like `mv`: DEST is an existing directory or, with one SOURCE, a new name. Within one \
            filesystem and project this is a rename, made durable and done at once without a task \
            unless a task holds one of the paths. Otherwise the data is copied into \
            .ferry-staging-<task> beside the destination, verified, flushed, renamed into place without \
            replacing anything, verified again, and only then is the source deleted. The task is \
            recorded, so a crash is finished or rolled back by `ferry worker` or `ferry janitor`; \
            a commit that cannot finish (a source file that cannot be removed) stops, nothing \
            rolled back, and `ferry task retry` finishes it once the cause is put right.
            Exit status: 0 done, 1 failed (nothing lost), 2 usage, 3 refused by the pre-flight check, \
            4 path locked by another task, 129 the terminal hung up (the task handed back, whole, \
            for `ferry worker` or `ferry janitor` to finish), 130 interrupted (rolled back).
            """)
    @OptionGroup var options: TransferOptions
    func run() async throws { try await options.run(kind: .move) }
}

struct CopyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy",
        abstract: "Copy files and trees: staged beside the destination, verified, then published atomically.",
        discussion: """
            Like `cp -a`. Everything is copied into .ferry-staging-<task> in the destination \
            directory, compared with the source, flushed with one syncfs, and renamed into place \
            without ever replacing an existing name. A failure before that leaves nothing behind; \
            one while publishing keeps what is staged, and `ferry task retry` finishes the commit.
            Exit status: 0 done, 1 failed (nothing lost), 2 usage, 3 refused by the \
            pre-flight check, 4 path locked, 129 hung up (handed back), 130 interrupted.
            """)
    @OptionGroup var options: TransferOptions
    func run() async throws { try await options.run(kind: .copy) }
}
