import Foundation
import FerryCopy
import FerryJobs
import FerryMove
import FerrySystem
import FerryTestSupport
import Testing

/// A task store and an engine on a temporary SQLite file.
struct Harness {
    let directory: String
    let store: SQLiteTaskStore
    let engine: MoveEngine

    init(lease: Duration = .seconds(30), roots: [String]? = nil, maxAttempts: Int = 5, progressInterval: Duration = .milliseconds(5),
         planner: Planner = Planner(), progress: (@Sendable (TaskRecord, CopyProgress) -> Void)? = nil) throws {
        directory = try TemporaryDirectory.make(prefix: "ferry-move")
        store = try SQLiteTaskStore(path: directory + "/ferry.sqlite")
        engine = MoveEngine(store: store, settings: .init(worker: "test-worker", lease: lease, roots: roots.map { $0.map { Array($0.utf8) } },
                                                          jobs: 2, maxAttempts: maxAttempts, progressInterval: progressInterval),
                            planner: planner, progress: progress)
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: directory) }

    /// A move task as a worker finds it after a crash: created, claimed by this harness's worker,
    /// and advanced to `status` with a plan (`strategy`, one final name `data` in `destination`,
    /// as `edit` changes it). Returns the task as claimed.
    func task(at status: TaskStatus, source: String, destination: String, kind: TaskKind = .move, strategy: String = "copy",
              lease: Duration = .seconds(30), edit: (inout TaskPlan) -> Void = { _ in }) async throws -> TaskRecord {
        let task = try await store.create(NewTask(kind: kind, sources: [StoredPath(source)], destination: StoredPath(destination), owner: "test"))
        _ = try await store.claim(id: task.id, worker: "test-worker", lease: lease)
        var plan = TaskPlan(strategy: strategy, bytes: 0, allocatedBytes: 0, entries: 1, inodes: 1, stagingName: StoredPath(".ferry-staging-\(task.id)"),
                            finalNames: [StoredPath("data")], destinationDirectory: StoredPath(destination))
        edit(&plan)
        try await store.advance(id: task.id, worker: "test-worker", to: status, plan: plan, message: status.rawValue)
        return try #require(try await store.task(task.id))
    }

    /// Runs task `id` once, which must meet a passing EIO and be handed back to be tried again in
    /// 2 s; then `passes` (the fault goes) and runs it to its end, which must be `completed`.
    /// Returns the task's whole history.
    func retriedAfterEIOThenCompleted(_ id: String, once passes: () -> Void) async throws -> [String] {
        var record = try await runUntil(id) { _ in true }
        var history = try await store.events(id).map(\.message)
        #expect(!record.status.isTerminal, "\(record) \(history)")
        #expect(history.last?.hasPrefix("retrying in 2 s: ") == true && history.last?.contains("EIO") == true, "\(history)")
        passes()
        record = try await runUntil(id) { $0.status.isTerminal }
        history = try await store.events(id).map(\.message)
        #expect(record.status == .completed, "\(String(describing: record.failure)) \(history)")
        return history
    }

    /// As a worker does: claims whatever is claimable (not before its retry time) and runs it, until
    /// a run ends as `done` says, or 30 s have passed; returns the last record of task `id`.
    func runUntil(_ id: String, _ done: (TaskRecord) -> Bool) async throws -> TaskRecord {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if let claimed = try await store.claim(worker: "test-worker", limit: 1, lease: .seconds(30)).first {
                let record = await engine.run(claimed)
                if done(record) { return record }
            } else {
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        return try #require(try await store.task(id))
    }

    /// A move task of `source` into `destination`, queued for `runUntil`.
    func queueMove(_ source: String, to destination: String, options: TaskOptions = TaskOptions()) async throws -> TaskRecord {
        try await store.create(NewTask(kind: .move, sources: [StoredPath(source)], destination: StoredPath(destination), options: options, owner: "test"))
    }

    /// Creates, claims and runs a task here; returns its final record.
    func run(_ sources: [String], to destination: String, kind: TaskKind = .move, options: TaskOptions = TaskOptions()) async throws -> TaskRecord {
        let task = try await store.create(NewTask(kind: kind, sources: sources.map(StoredPath.init), destination: StoredPath(destination), options: options, owner: "test"))
        let claimed = try #require(try await store.claim(id: task.id, worker: "test-worker", lease: engine.settings.lease))
        return await engine.run(claimed)
    }
}

/// The filesystem of `path` as path locks name it ("major:minor").
func device(of path: String) throws -> String {
    let directory = try FileDescriptor.openDirectory(Array(path.utf8))
    defer { directory.closeQuietly() }
    let status = try directory.status()
    return "\(status.deviceMajor):\(status.deviceMinor)"
}

/// The relative paths of a tree's entries ("" for its root).
func paths(_ root: String) throws -> Set<String> {
    Set(try TreeSnapshot.take(root, hashContents: false).entries.keys.map { String(decoding: $0, as: UTF8.self) })
}

func listing(_ path: String) -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted() }

/// `count` files of 1 MiB each, `f0`…, in a new directory `root`.
func makeMebibyteFiles(_ root: String, count: Int) throws {
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    for i in 0..<count { try TreeBuilder.write("\(root)/f\(i)", bytes: 1 << 20, seed: UInt64(i + 7)) }
}

/// What a power cut can leave of a staged copy of `source`: its size, mode and times, and no data.
func stageWithoutData(copyOf source: String, at staged: String) throws {
    let size = try #require(FileManager.default.attributesOfItem(atPath: source)[.size] as? Int)
    try Shell.run(["truncate", "-s", String(size), staged])
    try Shell.run(["chmod", "--reference", source, staged])
    try Shell.run(["touch", "-r", source, staged])
}

func makeTree(_ root: String, files: Int = 40, size: Int = 64 << 10) throws {
    try FileManager.default.createDirectory(atPath: root + "/sub/deeper", withIntermediateDirectories: true)
    for i in 0..<files { try TreeBuilder.write("\(root)/sub/f\(i)", bytes: size, seed: UInt64(i + 1)) }
    try TreeBuilder.write(root + "/sub/deeper/last", bytes: 1234)
    try FileManager.default.createSymbolicLink(atPath: root + "/link", withDestinationPath: "sub/f1")
}

@Suite("Move engine on loop XFS (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct MoveEngineTests {
    @Test func moveAcrossProjectsCopiesVerifiesAndRemovesTheSource() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeTree(a + "/data")
            let before = try TreeSnapshot.take(a + "/data")
            let record = try await harness.run([a + "/data"], to: b)
            #expect(record.status == .completed, "\(String(describing: record.failure))")
            #expect(record.plan?.strategy == "copy")
            #expect(!FileManager.default.fileExists(atPath: a + "/data"))
            #expect(try before.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)
            #expect(listing(b) == ["data"])
            #expect(try Shell.run(["xfs_io", "-c", "lsproj", b + "/data/sub/f3"]).contains("projid = 200"))
            let phases = try await harness.store.events(record.id).map(\.status)
            #expect(phases.firstIndex(of: .copying)! < phases.firstIndex(of: .verifying)!)
            #expect(phases.firstIndex(of: .verifying)! < phases.firstIndex(of: .committing)!)
            #expect(phases.last == .completed)
            #expect(try await harness.store.locks().isEmpty)
        }
    }

    @Test func sameProjectIsAnInstantRename() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            try makeTree(a + "/data")
            let inode = try FileManager.default.attributesOfItem(atPath: a + "/data/sub/f1")[.systemFileNumber] as? NSNumber
            let preflight = try harness.engine.preflight(NewTask(kind: .move, sources: [StoredPath(a + "/data")], destination: StoredPath(a + "/moved"), owner: "t"))
            #expect(preflight.strategy == .rename)
            #expect(preflight.summary.hasPrefix("Instant"))
            let record = try await harness.run([a + "/data"], to: a + "/moved")
            #expect(record.status == .completed && record.plan?.strategy == "rename")
            #expect(try FileManager.default.attributesOfItem(atPath: a + "/moved/sub/f1")[.systemFileNumber] as? NSNumber == inode)
            #expect(listing(a) == ["moved"])
        }
    }

    @Test func refusalsComeWithFiguresAndTouchNothing() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync(sizeMiB: 300) { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try FileManager.default.createDirectory(atPath: a + "/big", withIntermediateDirectories: true)
            for i in 0..<3 { try Shell.run(["dd", "if=/dev/urandom", "of=\(a)/big/f\(i)", "bs=1M", "count=30", "status=none"]) }
            let free = try FileDescriptor.openDirectory(Array(fs.mountPoint.utf8)).filesystemStatistics().availableBytes
            try Shell.run(["fallocate", "-l", String(free - (60 << 20)), fs.mountPoint + "/filler"])
            let record = try await harness.run([a + "/big"], to: b)
            #expect(record.status == .failed)
            #expect(record.failure?.code == "quota.insufficient")
            #expect(record.failure?.message.contains("free; this move needs") == true, "\(String(describing: record.failure))")
            #expect(record.failure?.message.contains("inodes") == true)
            #expect(listing(b).isEmpty && listing(a + "/big").count == 3)
            // A name that exists is refused.
            try FileManager.default.createDirectory(atPath: b + "/big", withIntermediateDirectories: true)
            #expect(try await harness.run([a + "/big"], to: b).failure?.code == "destination.exists")
        }
    }

    @Test func noSpaceMidCopyRollsBackCleanly() async throws {
        // Progress written at most once a minute: the copy's last figures must still be kept.
        let harness = try Harness(progressInterval: .seconds(60))
        defer { harness.cleanup() }
        try await withLoopXFSAsync(sizeMiB: 300) { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try FileManager.default.createDirectory(atPath: a + "/big", withIntermediateDirectories: true)
            for i in 0..<3 { try Shell.run(["dd", "if=/dev/urandom", "of=\(a)/big/f\(i)", "bs=1M", "count=30", "status=none"]) }
            let free = try FileDescriptor.openDirectory(Array(fs.mountPoint.utf8)).filesystemStatistics().availableBytes
            try Shell.run(["fallocate", "-l", String(free - (50 << 20)), fs.mountPoint + "/filler"])
            let before = try TreeSnapshot.take(a + "/big")
            var options = TaskOptions()
            options.spaceCheck = false
            let record = try await harness.run([a + "/big"], to: b, options: options)
            #expect(record.status == .failed)
            #expect(record.failure?.code == "nospace", "\(String(describing: record.failure))")
            #expect(record.failure?.message.contains("ENOSPC") == true)
            // The task shows how far the copy got before the disk filled.
            #expect(record.progress.bytesTotal == 90 << 20)
            #expect(record.progress.bytesDone > 0 && record.progress.bytesDone < 90 << 20, "\(record.progress)")
            #expect(listing(b).isEmpty)
            #expect(try before.differences(to: TreeSnapshot.take(a + "/big")).isEmpty)
        }
    }

    @Test(.enabled(if: QuotaFS.available)) func quotaExceededMidCopyRollsBackCleanly() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            try FileManager.default.createDirectory(atPath: a + "/data", withIntermediateDirectories: true)
            for i in 0..<8 { try Shell.run(["dd", "if=/dev/urandom", "of=\(a)/data/f\(i)", "bs=1M", "count=4", "status=none"]) }
            let quota = try QuotaFS(budget: 10 << 20)
            defer { quota.tearDown() }
            let before = try TreeSnapshot.take(a + "/data")
            let record = try await harness.run([a + "/data"], to: quota.mountPoint)
            #expect(record.status == .failed)
            #expect(record.failure?.code == "quota.exceeded", "\(String(describing: record.failure))")
            #expect(record.failure?.message.contains("EDQUOT") == true)
            #expect(record.failure?.message.contains("quota") == true)
            #expect(listing(quota.backing).isEmpty)
            #expect(try before.differences(to: TreeSnapshot.take(a + "/data")).isEmpty)
        }
    }

    /// A passing fault (EIO) is retried after 2 s, then 4 s, and at the `maxAttempts`th run the
    /// task fails, rolled back. The count starts again when the task is retried — not from its
    /// claims, which a retry (or a wait for a lock) adds without any failure — and once the
    /// fault has passed the move completes.
    @Test(.enabled(if: QuotaFS.available)) func passingFaultsAreRetriedWithBackoffThenGivenUp() async throws {
        let harness = try Harness(maxAttempts: 3)
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            try makeMebibyteFiles(a + "/data", count: 6)
            let quota = try QuotaFS(budget: 2 << 20, errno: "EIO")
            defer { quota.tearDown() }
            let before = try TreeSnapshot.take(a + "/data")
            let task = try await harness.queueMove(a + "/data", to: quota.mountPoint)
            func runUntil(_ done: (TaskRecord) -> Bool) async throws -> TaskRecord { try await harness.runUntil(task.id, done) }
            var record = try await runUntil { $0.status.isTerminal }
            #expect(record.status == .failed, "\(record)")
            #expect(record.failure?.code == "io", "\(String(describing: record.failure))")
            var events = try await harness.store.events(task.id)
            let retries = events.filter { $0.message.hasPrefix("retrying in") }.map(\.message)
            #expect(retries.count == 2 && retries[0].hasPrefix("retrying in 2 s: ") && retries[1].hasPrefix("retrying in 4 s: "), "\(retries)")
            #expect(retries.allSatisfy { $0.contains("EIO") }, "\(retries)")
            // Each retry waited its delay before the next claim.
            for (index, event) in events.enumerated() where event.message.hasPrefix("retrying in") {
                let next = try #require(events[(index + 1)...].first { $0.message.hasPrefix("claimed by") })
                let delay: Double = event.message.hasPrefix("retrying in 2 s") ? 2 : 4
                #expect(next.at.timeIntervalSince(event.at) >= delay - 0.05, "\(event) → \(next)")
            }
            #expect(listing(quota.backing).isEmpty)
            #expect(try before.differences(to: TreeSnapshot.take(a + "/data")).isEmpty)

            // Retried: the fault is still there, and it is retried again rather than failed at once.
            _ = try await harness.store.retry(task.id)
            record = try await runUntil { _ in true }
            #expect(record.status == .pending || record.status == .copying, "\(record)")
            events = try await harness.store.events(task.id)
            #expect(events.last?.message.hasPrefix("retrying in 2 s: ") == true, "\(events.map(\.message))")
            // The fault passes: the next run completes the move.
            quota.liftBudget()
            record = try await runUntil { $0.status.isTerminal }
            let history = try await harness.store.events(task.id).map(\.message)
            #expect(record.status == .completed, "\(String(describing: record.failure)) \(history)")
            #expect(try before.differences(to: TreeSnapshot.take(quota.mountPoint + "/data")).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: a + "/data"))
        }
    }

    /// A write-back error means the kernel may have dropped data of a staged file that looks
    /// complete (its size, mode and times are right): the retry copies everything again instead of
    /// resuming. Here the destination keeps written data in the page cache and its budget's EIO
    /// comes from the write-back, reported by a later call (here the next file's `openat`); the
    /// backing directory holds what reached "disk".
    /// Before, the retry kept the file, verified its metadata, published it and deleted the
    /// source: the backing file held only the bytes written before the error.
    @Test(.enabled(if: QuotaFS.available)) func aWriteBackErrorMakesTheRetryCopyAgainNotResume() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            try makeMebibyteFiles(a + "/data", count: 6)
            let quota = try QuotaFS(budget: (1 << 20) + (1 << 19), errno: "EIO", writebackCache: true)
            defer { quota.tearDown() }
            let before = try TreeSnapshot.take(a + "/data")
            var options = TaskOptions()
            options.jobs = 1  // one file at a time: the second is the one cut short
            let task = try await harness.queueMove(a + "/data", to: quota.mountPoint, options: options)
            let history = try await harness.retriedAfterEIOThenCompleted(task.id) { quota.liftBudget() }
            #expect(history.contains { $0.hasPrefix("the staged copy is not trusted any more: ") && $0.contains("EIO") }, "\(history)")
            #expect(history.contains("copying again into .ferry-staging-\(task.id): what the last attempt staged is not to be trusted (see above)"), "\(history)")
            #expect(try before.differences(to: TreeSnapshot.take(quota.backing + "/data")).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: a + "/data"))
        }
    }

    /// An EIO reading a source file (a bad sector) is a passing fault, but it says nothing of what
    /// was staged: the retry resumes, keeping the files already staged, instead of copying
    /// everything again at each attempt only to meet the same sector.
    @Test(.enabled(if: QuotaFS.available)) func anUnreadableSourceFileIsRetriedWithoutCopyingEverythingAgain() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let b = try fs.makeProjectDirectory("b", project: 200)
            let quota = try QuotaFS(budget: 1 << 30, readErrorIn: "f5")
            defer { quota.tearDown() }
            try makeMebibyteFiles(quota.backing + "/data", count: 6)
            let before = try TreeSnapshot.take(quota.backing + "/data")
            var options = TaskOptions()
            options.jobs = 1
            let task = try await harness.queueMove(quota.mountPoint + "/data", to: b, options: options)
            let staging = "\(b)/.ferry-staging-\(task.id)/data"
            var staged: [String: UInt64] = [:]
            let history = try await harness.retriedAfterEIOThenCompleted(task.id) {
                // What the first attempt staged whole; then the sector reads again.
                for name in listing(staging) where name != "f5" {
                    let attributes = try? FileManager.default.attributesOfItem(atPath: staging + "/" + name)
                    if (attributes?[.size] as? Int) == 1 << 20 { staged[name] = attributes?[.systemFileNumber] as? UInt64 }
                }
                quota.liftBudget()
            }
            #expect(!staged.isEmpty)
            #expect(!history.contains { $0.hasPrefix("the staged copy is not trusted any more") }, "\(history)")
            for (name, inode) in staged {
                let published = try FileManager.default.attributesOfItem(atPath: "\(b)/data/\(name)")[.systemFileNumber] as? UInt64
                #expect(published == inode, "\(name) was copied again")
            }
            #expect(try before.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: quota.backing + "/data"))
        }
    }

    /// An attempt that meets a passing fault flushes what it staged before handing the task back,
    /// through the staging descriptor opened before its writes (the only one a write-back error
    /// in them is reported to): the retry resumes from those files and must not trust one the
    /// kernel failed to write. Seen in an `strace` of one worker pass: the source's EIO, then the
    /// staging's `syncfs`. Before, the attempt ended at the EIO with nothing flushed.
    @Test(.enabled(if: QuotaFS.available)) func anAttemptEndedByAPassingFaultFlushesWhatItStaged() throws {
        try withLoopXFS { fs in
            let b = try fs.makeProjectDirectory("b", project: 200)
            let quota = try QuotaFS(budget: 1 << 30, readErrorIn: "f5")
            defer { quota.tearDown() }
            try makeMebibyteFiles(quota.backing + "/data", count: 6)
            let environment = ["FERRY_DATABASE_URL": "sqlite://\(fs.directory)/db.sqlite"]
            let queued = try Shell.execute([ferryBinary(), "move", "--detach", "--jobs", "1", quota.mountPoint + "/data", b], environment: environment)
            #expect(queued.status == 0, "\(queued.standardError)")
            let log = fs.directory + "/strace.log"
            let pass = try Shell.execute(["strace", "-f", "-qq", "-y", "-o", log, "-e", "trace=pread64,syncfs", ferryBinary(), "worker", "--once"],
                                         environment: environment)
            #expect(pass.status == 0, "\(pass.standardError)")
            let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").map(String.init)
            let fault = try #require(lines.firstIndex { $0.contains("pread64(") && $0.contains("/data/f5>") && $0.contains("EIO") })
            #expect(lines[fault...].contains { $0.contains("syncfs(") && $0.contains(".ferry-staging-") && $0.hasSuffix("= 0") },
                    "\(lines.filter { $0.contains("syncfs") })")
            #expect(FileManager.default.fileExists(atPath: quota.backing + "/data/f5"))
        }
    }

    /// A destination that refuses an extended attribute of the source: a move fails before
    /// anything is deleted (the attribute would be lost with the source) unless the loss is
    /// allowed; a copy, whose source stays, goes on. Either way the history says what was not
    /// kept. Before, the move dropped the attribute without a word and deleted the source.
    @Test(.enabled(if: QuotaFS.available)) func aMoveThatWouldLoseAnExtendedAttributeFailsUnlessAllowed() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            try makeTree(a + "/data", files: 6)
            try Shell.run(["setfattr", "-n", "user.comment", "-v", "keep me", a + "/data/sub/f3"])
            let quota = try QuotaFS(budget: 1 << 30, refuseXattrs: true)
            defer { quota.tearDown() }
            let before = try TreeSnapshot.take(a + "/data")

            var record = try await harness.run([a + "/data"], to: quota.mountPoint)
            #expect(record.status == .failed)
            #expect(record.failure?.code == "xattr.refused", "\(String(describing: record.failure))")
            let message = record.failure?.message ?? ""
            #expect(message.contains("data/sub/f3") && message.contains("user.comment") && message.contains("EOPNOTSUPP")
                    && message.contains("nothing was deleted") && message.contains("--allow-xattr-loss"), "\(message)")
            #expect(listing(quota.backing).isEmpty)
            #expect(try before.differences(to: TreeSnapshot.take(a + "/data")).isEmpty)

            let note = "not preserved (1): data/sub/f3: extended attribute user.comment not preserved (EOPNOTSUPP)"
            record = try await harness.run([a + "/data"], to: quota.mountPoint, kind: .copy)
            var history = try await harness.store.events(record.id).map(\.message)
            #expect(record.status == .completed, "\(String(describing: record.failure))")
            #expect(history.contains(note), "\(history)")
            try FileManager.default.removeItem(atPath: quota.mountPoint + "/data")

            var options = TaskOptions()
            options.allowXattrLoss = true
            record = try await harness.run([a + "/data"], to: quota.mountPoint, options: options)
            history = try await harness.store.events(record.id).map(\.message)
            #expect(record.status == .completed, "\(String(describing: record.failure))")
            #expect(history.contains(note), "\(history)")
            #expect(!FileManager.default.fileExists(atPath: a + "/data"))
            let lost = before.differences(to: try TreeSnapshot.take(quota.backing + "/data"))
            #expect(lost.count == 1 && lost[0].hasPrefix("sub/f3: "), "\(lost)")
        }
    }

    /// A task whose worker keeps dying with it (here: workers that claimed it and were never heard
    /// from again, which is what a killed worker leaves in the store) is taken over twice, and at
    /// the third takeover given up: the worker that claims it hands it back, cancelled, and the
    /// next claim rolls it back with `runner.crashed`. A task taken over only twice runs on, and a
    /// retry of the given-up one starts the count again.
    @Test func aTaskWhoseWorkersKeepDyingIsRolledBackAtTheThirdTakeover() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeTree(a + "/doomed")
            try makeTree(a + "/lucky")
            let doomedBefore = try TreeSnapshot.take(a + "/doomed")
            let luckyBefore = try TreeSnapshot.take(a + "/lucky")
            let doomed = try await harness.store.create(NewTask(kind: .move, sources: [StoredPath(a + "/doomed")], destination: StoredPath(b), owner: "test"))
            let lucky = try await harness.store.create(NewTask(kind: .move, sources: [StoredPath(a + "/lucky")], destination: StoredPath(b), owner: "test"))
            // Three dead workers hold the doomed task in turn (two takeovers), two the lucky one (one).
            for round in 1...3 {
                #expect(try await harness.store.claim(id: doomed.id, worker: "dead-\(round)", lease: .milliseconds(300)) != nil)
                if round < 3 { #expect(try await harness.store.claim(id: lucky.id, worker: "dead-\(round)", lease: .milliseconds(300)) != nil) }
                try await Task.sleep(for: .milliseconds(500))
            }
            let records = await Worker(engine: harness.engine, concurrency: 2).run(once: true)
            let doomedRecord = try #require(try await harness.store.task(doomed.id))
            let history = try await harness.store.events(doomed.id).map(\.message)
            #expect(doomedRecord.status == .rolledBack, "\(history)")
            #expect(doomedRecord.failure?.code == TaskFailure.crashedCode, "\(String(describing: doomedRecord.failure))")
            #expect(doomedRecord.failure?.message.contains("ended unexpectedly 3 times (the last: worker dead-3 stopped without handing it back)") == true,
                    "\(String(describing: doomedRecord.failure))")
            #expect(history.filter { $0.contains(" after the lease of ") }.count == 3, "\(history)")
            #expect(history.contains("taken over from dead-3: the task's run ended unexpectedly 3 times; rolling it back"), "\(history)")
            #expect(try doomedBefore.differences(to: TreeSnapshot.take(a + "/doomed")).isEmpty)
            let luckyRecord = try #require(records.first { $0.id == lucky.id })
            #expect(luckyRecord.status == .completed, "\(String(describing: luckyRecord.failure))")
            #expect(try luckyBefore.differences(to: TreeSnapshot.take(b + "/lucky")).isEmpty)
            #expect(listing(b) == ["lucky"])

            // Retried, it counts afresh: one more dead worker is taken over from, and it completes.
            _ = try await harness.store.retry(doomed.id)
            #expect(try await harness.store.claim(id: doomed.id, worker: "dead-4", lease: .milliseconds(300)) != nil)
            try await Task.sleep(for: .milliseconds(500))
            await Worker(engine: harness.engine, concurrency: 2).run(once: true)
            let retried = try #require(try await harness.store.task(doomed.id))
            #expect(retried.status == .completed, "\(String(describing: retried.failure))")
            #expect(try doomedBefore.differences(to: TreeSnapshot.take(b + "/doomed")).isEmpty)
        }
    }

    /// A worker claims each task under a name of its own run: two runs of one process never share
    /// a lease, so one whose lease expired (its heartbeats failed) is fenced off from the run that
    /// takes the task back, and that claim is recorded as the takeover it is. Before, every run
    /// of a `ferry worker` had the process's name: the second claim was "its own", unrecorded,
    /// and both runs passed every fence.
    @Test func aWorkersRunsHoldTheirTasksUnderNamesOfTheirOwn() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try makeTree(harness.directory + "/src/one", files: 3)
        try makeTree(harness.directory + "/src/two", files: 3)
        try makeTree(harness.directory + "/src/three", files: 3)
        try FileManager.default.createDirectory(atPath: harness.directory + "/dst", withIntermediateDirectories: true)
        var ids: [String] = []
        for name in ["one", "two", "three"] {
            ids.append(try await harness.store.create(NewTask(kind: .copy, sources: [StoredPath(harness.directory + "/src/" + name)],
                                                              destination: StoredPath(harness.directory + "/dst"), owner: "test")).id)
        }
        // This worker held the third task under its process's name, as every run did before,
        // and the lease ran out.
        #expect(try await harness.store.claim(id: ids[2], worker: "test-worker", lease: .milliseconds(200)) != nil)
        try await Task.sleep(for: .milliseconds(400))
        let records = await Worker(engine: harness.engine, concurrency: 2).run(once: true)
        #expect(records.count == 3 && records.allSatisfy { $0.status == .completed }, "\(records.map(\.status))")
        var claimers: [String] = []
        for id in ids {
            let claims = try await harness.store.events(id).map(\.message).filter { $0.hasPrefix("claimed by test-worker#") }
            #expect(claims.count == 1, "\(claims)")
            claimers += claims.map { String($0.dropFirst("claimed by ".count).prefix { $0 != " " }) }
        }
        #expect(Set(claimers).count == claimers.count, "\(claimers)")
        let history = try await harness.store.events(ids[2]).map(\.message)
        #expect(history.filter { $0.contains(" after the lease of test-worker") }.count == 1, "\(history)")
    }

    /// A worker with room for more takes new work while a task runs: before, it waited for a
    /// running task to end before it looked again, and a task queued behind a 3-hour copy waited
    /// 3 hours with the worker's other slots idle.
    @Test func aWorkerWithRoomTakesNewWorkWhileATaskRuns() async throws {
        let holding = Mutex<(started: Bool, released: Bool)>((false, false))
        let harness = try Harness { task, progress in
            guard progress.phase == .copying, task.sources.first?.description.hasSuffix("/long") == true else { return }
            holding.withLock { $0.started = true }
            // The long task stays in its copy until the test lets it go (a minute at most).
            let deadline = ContinuousClock.now + .seconds(60)
            while !holding.withLock({ $0.released }) && ContinuousClock.now < deadline { usleep(10_000) }
        }
        defer { harness.cleanup() }
        try makeTree(harness.directory + "/src/long", files: 3)
        try makeTree(harness.directory + "/src/short", files: 3)
        try FileManager.default.createDirectory(atPath: harness.directory + "/dst", withIntermediateDirectories: true)
        func copy(_ name: String) async throws -> String {
            try await harness.store.create(NewTask(kind: .copy, sources: [StoredPath(harness.directory + "/src/" + name)],
                                                   destination: StoredPath(harness.directory + "/dst"), owner: "test")).id
        }
        let stop = CancellationFlag()
        let long = try await copy("long")
        let worker = Task { await Worker(engine: harness.engine, concurrency: 2, owner: nil).run(stop: stop) }
        defer { holding.withLock { $0.released = true } }
        let deadline = ContinuousClock.now + .seconds(60)
        while !holding.withLock({ $0.started }) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        let short = try await copy("short")
        var shortStatus: TaskStatus?
        while ContinuousClock.now < deadline {
            shortStatus = try await harness.store.task(short)?.status
            if shortStatus?.isTerminal == true { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        let longStatus = try await harness.store.task(long)?.status
        #expect(shortStatus == .completed, "the task queued second waited for the first")
        #expect(longStatus == .copying, "the first task was still copying when the second ended")
        holding.withLock { $0.released = true }
        while ContinuousClock.now < deadline + .seconds(60), try await harness.store.task(long)?.status.isTerminal != true {
            try await Task.sleep(for: .milliseconds(50))
        }
        stop.cancel()
        let records = await worker.value
        #expect(Set(records.map(\.id)) == [long, short] && records.allSatisfy { $0.status == .completed }, "\(records.map(\.status))")
    }

    @Test func sourceModifiedDuringTheCopyIsDetectedAndNothingDeleted() async throws {
        let touched = Mutex<Bool>(false)
        let source = Mutex<String>("")
        let harness = try Harness { _, progress in
            guard progress.phase == .copying, progress.entriesDone >= 5 else { return }
            let first = touched.withLock { value -> Bool in defer { value = true }; return !value }
            guard first else { return }
            let root = source.withLock { $0 }
            for name in (try? FileManager.default.contentsOfDirectory(atPath: root + "/sub")) ?? [] {
                if let handle = FileHandle(forWritingAtPath: root + "/sub/" + name) {
                    handle.seekToEndOfFile()
                    handle.write(Data("changed".utf8))
                    handle.closeFile()
                }
            }
        }
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeTree(a + "/data", files: 300, size: 256 << 10)
            source.withLock { $0 = a + "/data" }
            let record = try await harness.run([a + "/data"], to: b)
            #expect(touched.withLock { $0 })
            #expect(record.status == .failed)
            #expect(record.failure?.code == "source.changed", "\(String(describing: record.failure))")
            #expect(FileManager.default.fileExists(atPath: a + "/data/sub/f0"))
            #expect(listing(b).isEmpty)
        }
    }

    /// A move whose copy is published, as a worker finds it in `committing`: the copy is made
    /// with the copy engine, then `change` runs on the source, then the task is advanced to
    /// `committing` (with `deletingSource` as given) and run. Returns the final record.
    func runPublishedMove(_ harness: Harness, _ fs: LoopXFS, deletionBegun: Bool, change: (String) throws -> Void) async throws -> TaskRecord {
        let a = fs.mountPoint + "/a", b = fs.mountPoint + "/b"
        try publishCopy(of: a + "/data", in: b)
        try change(a + "/data")
        let task = try await harness.task(at: .committing, source: a + "/data", destination: b) { $0.deletingSource = deletionBegun }
        return await harness.engine.run(task)
    }

    /// Copies `source` into directory `destination` under its own name, with the copy engine: a
    /// move's copy as its commit publishes it.
    func publishCopy(of source: String, in destination: String) throws {
        let (parent, name) = BytePath.split(Array(source.utf8))
        let from = try FileDescriptor.openDirectory(parent), to = try FileDescriptor.openDirectory(Array(destination.utf8))
        defer { from.closeQuietly(); to.closeQuietly() }
        _ = try CopyEngine(options: CopyOptions(jobs: 2)).copy([CopySource(directory: from, name: name)], to: to)
    }

    /// The source's deletion removes only what the published copy holds: what was written into
    /// the source after its last check (a new file, an append) stays, the task ends `failed` at
    /// once (no retry could change it) and says where things are. Hard links (the second name's
    /// ctime changes as the first goes) and read-only directories do not stop a deletion that a
    /// crash interrupted from being finished.
    @Test func sourceDeletionKeepsWhatTheCopyDoesNotHold() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            func build() throws {
                try makeTree(a + "/data")
                try Shell.run(["ln", a + "/data/sub/f1", a + "/data/hardlink"])
                try FileManager.default.createDirectory(atPath: a + "/data/readonly", withIntermediateDirectories: true)
                try TreeBuilder.write(a + "/data/readonly/kept", bytes: 100)
                try Shell.run(["chmod", "0555", a + "/data/readonly"])
            }
            try build()
            // Written into during the deletion: a new file and an append survive, nothing else does.
            let changed = try await runPublishedMove(harness, fs, deletionBegun: true) { data in
                try FileManager.default.removeItem(atPath: data + "/sub/f0")  // deleted before a crash
                try TreeBuilder.write(data + "/sub/new", bytes: 10)
                let handle = try #require(FileHandle(forWritingAtPath: data + "/sub/f2"))
                handle.seekToEndOfFile()
                handle.write(Data("appended".utf8))
                handle.closeFile()
            }
            #expect(changed.status == .failed, "\(changed.status)")
            #expect(changed.failure?.code == "source.changed", "\(String(describing: changed.failure))")
            #expect(changed.failure?.message.contains("2 entries were written into the source") == true, "\(String(describing: changed.failure))")
            #expect(try paths(a + "/data") == ["", "sub", "sub/f2", "sub/new"], "\(listing(a + "/data"))")
            #expect(listing(b) == ["data"])
            #expect(FileManager.default.fileExists(atPath: b + "/data/readonly/kept") && FileManager.default.fileExists(atPath: b + "/data/hardlink"))
            #expect(try await harness.store.locks().isEmpty)

            // Nothing written: the interrupted deletion is finished and the move completes.
            try FileManager.default.removeItem(atPath: a + "/data")
            try FileManager.default.removeItem(atPath: b + "/data")
            try build()
            let before = try TreeSnapshot.take(a + "/data")
            let finished = try await runPublishedMove(harness, fs, deletionBegun: true) { data in
                try FileManager.default.removeItem(atPath: data + "/hardlink")  // one name of the pair gone before a crash
            }
            #expect(finished.status == .completed, "\(String(describing: finished.failure))")
            #expect(!FileManager.default.fileExists(atPath: a + "/data"))
            #expect(try before.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)
        }
    }

    /// A source changed after its copy was published, before any of it was deleted: nothing is
    /// deleted, the task ends `failed` at once instead of being retried for ever, and the copy
    /// stays published.
    @Test func sourceChangedAfterPublishingIsLeftWholeAndTheTaskEnds() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeTree(a + "/data")
            let copied = try TreeSnapshot.take(a + "/data")
            let record = try await runPublishedMove(harness, fs, deletionBegun: false) { data in
                try TreeBuilder.write(data + "/sub/f3", bytes: 99, seed: 9)
            }
            #expect(record.status == .failed, "\(record.status)")
            #expect(record.failure?.code == "source.changed", "\(String(describing: record.failure))")
            #expect(record.failure?.message.contains("nothing was deleted from the source") == true, "\(String(describing: record.failure))")
            // Nothing was rolled back, and the history does not say so.
            let last = try await harness.store.events(record.id).last?.message ?? ""
            #expect(last.hasPrefix("failed:") && !last.contains("staged data removed"), "\(last)")
            #expect(try copied.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)
            #expect(try paths(a + "/data") == Set(copied.entries.keys.map { String(decoding: $0, as: UTF8.self) }))
            #expect(try await harness.store.locks().isEmpty)
        }
    }

    /// A commit that cannot publish (the destination directory made immutable once the copy is
    /// verified: `rename` into it fails with EPERM, as for root) stops at once instead of being
    /// retried for ever: the task fails with the cause's code, nothing is rolled back, and the
    /// message says what is where. The janitor keeps its staging. A retry, once the cause is
    /// put right, takes the task's locks again (waiting for a task that holds one of its paths
    /// meanwhile), then publishes what was staged and removes the source, copying nothing again.
    @Test func aCommitThatCannotPublishStopsAndItsRetryFinishesIt() async throws {
        let destination = Mutex<String>("")
        let harness = try Harness { _, progress in
            guard progress.phase == .verifying else { return }
            let path = destination.withLock { path in defer { path = "" }; return path }
            if !path.isEmpty { _ = try? Shell.run(["chattr", "+i", path]) }
        }
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            defer { _ = try? Shell.run(["chattr", "-i", b]) }
            try makeTree(a + "/data")
            let before = try TreeSnapshot.take(a + "/data")
            destination.withLock { $0 = b }
            let stopped = try await harness.run([a + "/data"], to: b)
            #expect(stopped.status == .failed, "\(stopped.status)")
            #expect(stopped.failure?.code == "permission", "\(String(describing: stopped.failure))")
            let message = stopped.failure?.message ?? ""
            #expect(message.contains("The commit stopped with 0 of 1 published in \(b); 1 still staged in \(b)/.ferry-staging-\(stopped.id); nothing was removed from the source"), "\(message)")
            #expect(message.contains("ferry task retry \(stopped.id) finishes the commit"), "\(message)")
            #expect(stopped.plan?.stoppedCommitting == true)
            #expect(listing(b) == [".ferry-staging-\(stopped.id)"])
            #expect(try before.differences(to: TreeSnapshot.take(a + "/data")).isEmpty)
            #expect(try await harness.store.locks().isEmpty)
            let history = try await harness.store.events(stopped.id).map(\.message)
            #expect(!history.contains { $0.hasPrefix("retrying in") }, "\(history)")

            // Kept by the janitor, however old: it is what the retry will publish.
            try Shell.run(["chattr", "-i", b])
            let report = try await Janitor(engine: harness.engine, grace: .seconds(0)).run(recover: false)
            #expect(report.kept == ["\(b)/.ferry-staging-\(stopped.id)"] && report.removed.isEmpty, "\(report)")

            // Retried while another task holds the source, then while one holds the final name:
            // the resumed commit waits for each.
            let retried = try await harness.store.retry(stopped.id)
            #expect(retried.status == .committing && retried.plan?.stoppedCommitting == true)
            for held in [a + "/data", b + "/data"] {
                let other = try await harness.store.create(NewTask(kind: .copy, sources: [StoredPath(held)], destination: StoredPath(fs.mountPoint), owner: "other"))
                _ = try await harness.store.claim(id: other.id, worker: "other-worker", lease: .seconds(60))
                try await harness.store.acquireLocks(id: other.id, worker: "other-worker", [PathLock(taskID: other.id, filesystem: try device(of: fs.mountPoint), path: StoredPath(held))])
                let waiting = try await harness.runUntil(stopped.id) { _ in true }
                #expect(waiting.status == .committing && waiting.leaseOwner == nil, "\(waiting.status)")
                #expect(try await harness.store.events(stopped.id).last?.message.hasPrefix("waiting: \(held) is locked by task \(other.id)") == true)
                #expect(listing(b) == [".ferry-staging-\(stopped.id)"] && listing(a) == ["data"])
                try await harness.store.finish(id: other.id, worker: "other-worker", status: .cancelled, failure: nil, message: "cancelled")
            }
            let finished = try await harness.runUntil(stopped.id) { $0.status.isTerminal }
            #expect(finished.status == .completed, "\(String(describing: finished.failure))")
            #expect(listing(b) == ["data"] && listing(a).isEmpty)
            #expect(try before.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)
            let resumed = try await harness.store.events(stopped.id).map(\.message).drop { $0 != TaskEvent.retried }
            #expect(resumed.contains("resuming the commit where it stopped (its paths locked again)"), "\(resumed)")
            #expect(!resumed.contains { $0.hasPrefix("copying") }, "\(resumed)")
            #expect(try await harness.store.locks().isEmpty)
        }
    }

    /// A commit whose runs keep ending unexpectedly (a worker that dies on it, or stalls for a
    /// whole lease, each time) is stopped at its `UnexpectedEnds.limit`th such end while
    /// committing, not resumed for ever: failed, nothing rolled back, saying what is where, and
    /// a retry finishes it. Ends in the phases before count towards the rollback, not this.
    @Test func aCommitWhoseRunsKeepDyingStopsAndItsRetryFinishesIt() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let ended = UnexpectedEnds.processEnded + " (signal 9)"
            /// A move of `from`/data into `to`, copied and published, in `committing` with
            /// `before` unexpected ends while copying and `during` while committing.
            func published(from: String, to: String, before: Int, during: Int) async throws -> TaskRecord {
                let a = try fs.makeProjectDirectory(from, project: 100)
                let b = try fs.makeProjectDirectory(to, project: 200)
                try makeTree(a + "/data")
                try publishCopy(of: a + "/data", in: b)
                let task = try await harness.task(at: .copying, source: a + "/data", destination: b)
                for _ in 0..<before { try await harness.store.record(task.id, message: ended) }
                try await harness.store.advance(id: task.id, worker: "test-worker", to: .committing, plan: nil, message: "publishing")
                for _ in 0..<during { try await harness.store.record(task.id, message: ended) }
                return try #require(try await harness.store.task(task.id))
            }
            // Ends before the commit do not count towards its stop: resumed, and finished.
            let below = try await published(from: "a1", to: "b1", before: UnexpectedEnds.limit, during: UnexpectedEnds.limit - 1)
            #expect(UnexpectedEnds.count(try await harness.store.events(below.id)) == 2 * UnexpectedEnds.limit - 1)
            let resumed = await harness.engine.run(below)
            #expect(resumed.status == .completed, "\(String(describing: resumed.failure))")
            #expect(listing(fs.mountPoint + "/a1").isEmpty && listing(fs.mountPoint + "/b1") == ["data"])

            let task = try await published(from: "a", to: "b", before: 0, during: UnexpectedEnds.limit)
            let a = fs.mountPoint + "/a", b = fs.mountPoint + "/b"
            let before = try TreeSnapshot.take(a + "/data")
            let stopped = await harness.engine.run(task)
            #expect(stopped.status == .failed && stopped.failure?.code == TaskFailure.crashedCode, "\(String(describing: stopped.failure))")
            let message = stopped.failure?.message ?? ""
            #expect(message.contains("the commit's run ended unexpectedly \(UnexpectedEnds.limit) times"), "\(message)")
            #expect(message.contains("1 of 1 published in \(b)") && message.contains("ferry task retry \(task.id) finishes the commit"), "\(message)")
            #expect(stopped.plan?.stoppedCommitting == true)
            #expect(listing(a) == ["data"] && listing(b) == ["data"], "\(listing(a)) \(listing(b))")
            #expect(try before.differences(to: TreeSnapshot.take(a + "/data")).isEmpty)
            #expect(try await harness.store.locks().isEmpty)

            _ = try await harness.store.retry(task.id)
            let finished = try await harness.runUntil(task.id) { $0.status.isTerminal }
            #expect(finished.status == .completed, "\(String(describing: finished.failure))")
            #expect(listing(b) == ["data"] && listing(a).isEmpty)
            #expect(try before.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)
        }
    }

    /// A rename refused in its commit (the name taken after the plan was made) renamed nothing:
    /// nothing to finish, so it fails as before its commit, and a retry plans it anew.
    @Test func aRenameRefusedInItsCommitFailsAndIsPlannedAnewOnRetry() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            try TreeBuilder.write(a + "/data", bytes: 10)
            try FileManager.default.createDirectory(atPath: fs.mountPoint + "/b", withIntermediateDirectories: true)
            try TreeBuilder.write(fs.mountPoint + "/b/data", bytes: 20)
            let task = try await harness.task(at: .committing, source: a + "/data", destination: fs.mountPoint + "/b", strategy: "rename")
            let record = await harness.engine.run(task)
            #expect(record.status == .failed && record.failure?.code == "destination.exists", "\(String(describing: record.failure))")
            #expect(record.plan?.stoppedCommitting != true && record.failure?.message.contains("ferry task retry") == false)
            #expect(try await harness.store.retry(task.id).status == .pending)
            #expect(FileManager.default.fileExists(atPath: a + "/data"))
        }
    }

    /// The same for a source that cannot be removed (an immutable file in it): the copy is
    /// published, the deletion stops, the task says what is left; a retry once the file may go
    /// finishes the deletion.
    @Test func aSourceThatCannotBeRemovedStopsTheCommitAndItsRetryFinishesIt() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeTree(a + "/data")
            try Shell.run(["chattr", "+i", a + "/data/sub/f3"])
            defer { _ = try? Shell.run(["chattr", "-i", a + "/data/sub/f3"]) }
            let before = try TreeSnapshot.take(a + "/data")
            let stopped = try await harness.run([a + "/data"], to: b)
            #expect(stopped.status == .failed && stopped.failure?.code == "permission", "\(String(describing: stopped.failure))")
            #expect(stopped.failure?.message.contains("The commit stopped with 1 of 1 published in \(b) (data); the source was being removed, 1 of 1 left") == true,
                    "\(String(describing: stopped.failure))")
            #expect(listing(b) == ["data"] && FileManager.default.fileExists(atPath: a + "/data/sub/f3"))
            #expect(try before.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)

            try Shell.run(["chattr", "-i", a + "/data/sub/f3"])
            _ = try await harness.store.retry(stopped.id)
            let finished = try await harness.runUntil(stopped.id) { $0.status.isTerminal }
            #expect(finished.status == .completed, "\(String(describing: finished.failure))")
            #expect(listing(a).isEmpty)
            #expect(try before.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)
        }
    }

    /// A staging directory written on another machine, or before a restart, is not trusted: a
    /// staged file whose size, mode and times match its source may never have had its data
    /// flushed (here: zeros in its place). The copy is made again, and the published copy is the
    /// source's, byte for byte.
    @Test func stagingWrittenBeforeARestartIsCopiedAgain() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try FileManager.default.createDirectory(atPath: a + "/data", withIntermediateDirectories: true)
            try TreeBuilder.write(a + "/data/f", bytes: 65536, seed: 7)
            try TreeBuilder.write(a + "/data/g", bytes: 100, seed: 8)
            let source = try TreeSnapshot.take(a + "/data")
            let task = try await harness.task(at: .copying, source: a + "/data", destination: b) {
                $0.stagedOn = "another-node 00000000-0000-0000-0000-000000000000"
            }
            // What a power cut can leave: the file's size, mode and times, and no data.
            let staged = "\(b)/.ferry-staging-\(task.id)/data"
            try TreeBuilder.stagingDirectory("\(b)/.ferry-staging-\(task.id)", id: task.id)
            try FileManager.default.createDirectory(atPath: staged, withIntermediateDirectories: true)
            try stageWithoutData(copyOf: a + "/data/f", at: staged + "/f")
            let record = await harness.engine.run(task)
            #expect(record.status == .completed, "\(String(describing: record.failure))")
            #expect(try source.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)
            #expect(try await harness.store.events(task.id).contains { $0.message.hasPrefix("copying again") })
            #expect(record.plan?.stagedOn == bootIdentity)
        }
    }

    /// An untrusted staging directory that cannot be removed whole (here a directory in it is
    /// immutable; as well a run killed while removing it) stays untrusted: neither the next run
    /// nor a retry resumes into what is left of it. Before, the new boot was recorded before the
    /// removal, and the next run kept the staged file that matched its source in size, mode and
    /// times but held no data, published it and deleted the source.
    @Test func anUntrustedStagingPartlyRemovedIsNeverResumedInto() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try FileManager.default.createDirectory(atPath: a + "/data/sub", withIntermediateDirectories: true)
            try TreeBuilder.write(a + "/data/sub/f", bytes: 65536, seed: 7)
            let source = try TreeSnapshot.take(a + "/data")
            let task = try await harness.task(at: .copying, source: a + "/data", destination: b) {
                $0.stagedOn = "another-node 00000000-0000-0000-0000-000000000000"
            }
            let staged = "\(b)/.ferry-staging-\(task.id)/data"
            try TreeBuilder.stagingDirectory("\(b)/.ferry-staging-\(task.id)", id: task.id)
            try FileManager.default.createDirectory(atPath: staged + "/sub", withIntermediateDirectories: true)
            try stageWithoutData(copyOf: a + "/data/sub/f", at: staged + "/sub/f")
            try Shell.run(["chattr", "+i", staged + "/sub"])
            var immutable = true
            defer { if immutable { _ = try? Shell.run(["chattr", "-i", staged + "/sub"]) } }
            let first = await harness.engine.run(task)
            #expect(first.status != .completed)
            #expect(first.plan?.stagedOn != bootIdentity, "\(String(describing: first.plan?.stagedOn))")
            #expect(try source.differences(to: TreeSnapshot.take(a + "/data")).isEmpty)
            try Shell.run(["chattr", "-i", staged + "/sub"])
            immutable = false
            // Run again (handed back) or retried (failed): the copy is made anew either way.
            if first.status.isTerminal { _ = try await harness.store.retry(task.id) }
            let record = try await harness.runUntil(task.id) { $0.status.isTerminal }
            #expect(record.status == .completed, "\(String(describing: record.failure))")
            #expect(try source.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)
            #expect(listing(a).isEmpty)
        }
    }

    /// A destination with a default ACL gives nothing of it to what is moved in: each copy has its
    /// source's ACL, or none, as `cp -a` and `rsync -A` leave it. Before, the staging directory
    /// inherited the default and every entry made in it too: a 0640 file without an ACL arrived
    /// readable by the user the destination's default named, and a directory with that default.
    @Test func aDestinationsDefaultACLIsNotGivenToTheCopies() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try Shell.run(["setfacl", "-d", "-m", "u:nobody:rwx", b])
            try FileManager.default.createDirectory(atPath: a + "/data/sub", withIntermediateDirectories: true)
            try TreeBuilder.write(a + "/data/plain", bytes: 100)
            try TreeBuilder.write(a + "/data/sub/deeper", bytes: 100)
            try TreeBuilder.write(a + "/data/shared", bytes: 100)
            chmod(a + "/data/plain", 0o640)
            try Shell.run(["setfacl", "-m", "u:daemon:r", a + "/data/shared"])
            let record = try await harness.run([a + "/data"], to: b)
            #expect(record.status == .completed, "\(String(describing: record.failure))")
            func acl(_ path: String) throws -> String { try Shell.run(["getfacl", "-c", "-p", path]) }
            for path in ["", "/plain", "/sub", "/sub/deeper", "/shared"] {
                let entries = try acl(b + "/data" + path)
                #expect(!entries.contains("nobody"), "\(path): \(entries)")
            }
            #expect(try acl(b + "/data/shared").contains("user:daemon:r--"))
            #expect(try acl(b + "/data/plain").split(separator: "\n").sorted() == ["group::r--", "other::---", "user::rw-"])
        }
    }

    /// A directory put in the place of a task's staging directory (a rename within the
    /// destination's parent is all it takes) lacks Ferry's mark: the task neither resumes into it
    /// nor, rolling back, removes it — which a privileged task would otherwise do for the user
    /// who put it there. Before, the rollback deleted the directory and everything in it.
    @Test func aDirectoryInThePlaceOfTheStagingIsNeverResumedIntoOrRemoved() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeTree(a + "/data", files: 4)
            let source = try TreeSnapshot.take(a + "/data")
            // Resumed (copying), or cancelled before its copy began (locked: rolled back at once).
            for cancel in [false, true] {
                let task = try await harness.task(at: cancel ? .locked : .copying, source: a + "/data", destination: b) { $0.stagedOn = bootIdentity }
                let foreign = "\(b)/.ferry-staging-\(task.id)"
                try FileManager.default.createDirectory(atPath: foreign + "/data/sub", withIntermediateDirectories: true)
                try TreeBuilder.write(foreign + "/data/sub/f1", bytes: 100, seed: 99)
                try TreeBuilder.write(foreign + "/precious", bytes: 100, seed: 98)
                let theirs = try TreeSnapshot.take(foreign)
                if cancel { _ = try await harness.store.requestCancel(task.id) }
                let record = await harness.engine.run(task)
                let history = try await harness.store.events(task.id).map(\.message)
                #expect(try theirs.differences(to: TreeSnapshot.take(foreign)).isEmpty, "cancel: \(cancel) \(history)")
                #expect(try source.differences(to: TreeSnapshot.take(a + "/data")).isEmpty)
                #expect(!FileManager.default.fileExists(atPath: b + "/data"))
                #expect(history.contains { $0.hasPrefix("rollback: .ferry-staging-\(task.id) has this task's staging name but not Ferry's mark") }, "\(history)")
                if cancel {
                    #expect(record.status == .rolledBack, "\(history)")
                } else {
                    #expect(record.status == .failed && record.failure?.code == "staging.foreign", "\(String(describing: record.failure))")
                }
                try FileManager.default.removeItem(atPath: foreign)
            }
        }
    }

    /// A staging directory removed before its copy was published (by hand, or by a janitor that
    /// took the task for a dead one) is copied again, whether the task was about to verify it or
    /// to publish it. Before, a copy in `committing` finished "copied: published" with nothing
    /// published, and one in `verifying` failed.
    @Test func aStagingDirectoryThatWentIsCopiedAgain() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeTree(a + "/data", files: 4)
            let source = try TreeSnapshot.take(a + "/data")
            for (kind, status) in [(TaskKind.copy, TaskStatus.committing), (.copy, .verifying), (.move, .verifying)] {
                let task = try await harness.task(at: status, source: a + "/data", destination: b, kind: kind) { $0.stagedOn = bootIdentity }
                var record = await harness.engine.run(task)
                var history = try await harness.store.events(task.id).map(\.message)
                #expect(record.status == .copying && record.leaseOwner == nil, "\(kind) \(status): \(record) \(history)")
                #expect(history.contains("the staged copy is not trusted any more: the staging directory .ferry-staging-\(task.id) was removed before its copy was published"), "\(history)")
                #expect(!FileManager.default.fileExists(atPath: b + "/data"))
                record = try await harness.runUntil(task.id) { $0.status.isTerminal }
                history = try await harness.store.events(task.id).map(\.message)
                #expect(record.status == .completed, "\(kind) \(status): \(String(describing: record.failure)) \(history)")
                #expect(try source.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)
                #expect(FileManager.default.fileExists(atPath: a + "/data") == (kind == .copy))
                if kind == .copy { try FileManager.default.removeItem(atPath: b + "/data") }
            }
        }
    }

    /// A running task stamps its staging directory as it beats, so that the janitor of another
    /// task database (which does not know the task) does not take a long copy that adds nothing
    /// at the staging directory's top level for an abandoned one: that janitor removes a marked
    /// staging directory once it has not changed for an hour. Here the copy is held in its first
    /// progress report and its staging directory dated two hours back. Before, the other janitor
    /// removed it under the running copy.
    @Test func aRunningTaskKeepsItsStagingFreshForAnotherDatabasesJanitor() async throws {
        let gate = DispatchSemaphore(value: 0)
        let held = Mutex(false)
        let harness = try Harness(lease: .seconds(3)) { _, progress in
            guard progress.phase == .copying, held.withLock({ let first = !$0; $0 = true; return first }) else { return }
            _ = gate.wait(timeout: .now() + 60)
        }
        defer { harness.cleanup() }
        let other = try Harness()
        defer { other.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeTree(a + "/data", files: 4)
            let source = try TreeSnapshot.take(a + "/data")
            let task = try await harness.store.create(NewTask(kind: .move, sources: [StoredPath(a + "/data")], destination: StoredPath(b), owner: "test"))
            let claimed = try #require(try await harness.store.claim(id: task.id, worker: "test-worker", lease: .seconds(3)))
            async let finished = harness.engine.run(claimed)
            let staging = "\(b)/.ferry-staging-\(task.id)"
            func modified() -> Date? { (try? FileManager.default.attributesOfItem(atPath: staging))?[.modificationDate] as? Date }
            for _ in 0..<400 where !held.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(50)) }
            #expect(held.withLock { $0 })
            try Shell.run(["touch", "-d", "2 hours ago", staging])
            for _ in 0..<400 where (modified() ?? .distantPast) < Date().addingTimeInterval(-60) { try await Task.sleep(for: .milliseconds(50)) }
            let report = try await Janitor(engine: other.engine).run(directories: [Array(b.utf8)], recover: false)
            #expect(report.kept == [staging] && report.removed.isEmpty, "\(report)")
            gate.signal()
            let record = await finished
            #expect(record.status == .completed, "\(String(describing: record.failure))")
            #expect(try source.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)
        }
    }

    /// A rename task recovered in `committing` whose source is gone, and not at the destination
    /// either, fails saying so: it does not report a rename that did not happen.
    @Test func aRenameWhoseSourceVanishedIsNotReportedDone() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            try FileManager.default.createDirectory(atPath: a + "/sub", withIntermediateDirectories: true)
            let b = a + "/b"
            try FileManager.default.createDirectory(atPath: b, withIntermediateDirectories: true)
            let task = try await harness.task(at: .committing, source: a + "/sub/data", destination: b, strategy: "rename")
            try FileManager.default.removeItem(atPath: a + "/sub")  // the source's directory, gone
            let record = await harness.engine.run(task)
            #expect(record.status == .failed, "\(record.status)")
            #expect(record.failure?.code == "source.missing", "\(String(describing: record.failure))")
        }
    }

    /// A worker whose lease expired and was taken by another worker rolls nothing back when its
    /// run fails: the staging directory is the new owner's now.
    @Test func aWorkerThatLostTheTaskRollsNothingBack() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            let stale = try await harness.task(at: .copying, source: a + "/data", destination: b, lease: .milliseconds(300)) {
                $0.stagedOn = bootIdentity
            }
            let task = stale
            try TreeBuilder.stagingDirectory("\(b)/.ferry-staging-\(task.id)", id: task.id)
            try TreeBuilder.write("\(b)/.ferry-staging-\(task.id)/staged", bytes: 10)
            try await Task.sleep(for: .milliseconds(400))
            #expect(try await harness.store.claim(id: task.id, worker: "another-worker", lease: .seconds(30)) != nil)
            // The source is gone, so the stale worker's copy fails.
            let record = await harness.engine.run(stale)
            #expect(record.leaseOwner == "another-worker", "\(String(describing: record.leaseOwner))")
            #expect(FileManager.default.fileExists(atPath: "\(b)/.ferry-staging-\(task.id)/staged"), "\(listing(b))")
        }
    }

    /// A commit that fails while where the task stands cannot be read rolls nothing back: the
    /// task is handed back. Before, a refusal then (a name taken in the destination as the second
    /// of two sources was published) was taken for one before the commit: the staged second source
    /// was deleted, the first left published, and the task failed saying the staged data was removed.
    @Test func aCommitThatFailsWhileTheTaskCannotBeReadIsHandedBackNotRolledBack() async throws {
        let unreadable = Mutex(false)
        let destination = Mutex<String?>(nil)
        let directory = try TemporaryDirectory.make(prefix: "ferry-hooked")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let base = try SQLiteTaskStore(path: directory + "/ferry.sqlite")
        let store = HookedStore(base, beforeRead: { _ in
            if unreadable.withLock({ let was = $0; $0 = false; return was }) { throw TaskStoreError.database("the database does not answer") }
        }, afterAdvance: { _, status in
            guard status == .committing, let b = destination.withLock({ $0 }) else { return }
            // The second source's name is taken as the copy is published, and the next read of
            // the task fails (a moment's loss of the database).
            _ = FileManager.default.createFile(atPath: b + "/two", contents: Data("someone else's".utf8))
            unreadable.withLock { $0 = true }
        })
        let engine = MoveEngine(store: store, settings: .init(worker: "test-worker", lease: .seconds(30), jobs: 2))
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            destination.withLock { $0 = b }
            try makeTree(a + "/one", files: 3)
            try makeTree(a + "/two", files: 3)
            let created = try await store.create(NewTask(kind: .move, sources: [StoredPath(a + "/one"), StoredPath(a + "/two")],
                                                         destination: StoredPath(b), owner: "test"))
            let claimed = try #require(try await store.claim(id: created.id, worker: "test-worker", lease: .seconds(30)))
            _ = await engine.run(claimed)
            let record = try #require(try await store.task(created.id))
            let history = try await store.events(created.id).map(\.message)
            #expect(record.status == .committing && record.leaseOwner == nil, "\(record.status) \(history)")
            #expect(!history.contains { $0.contains("staged data removed") }, "\(history)")
            #expect(history.last?.hasPrefix("retrying in 30 s: two appeared in the destination") == true, "\(history)")
            #expect(listing(b).sorted() == [".ferry-staging-\(created.id)", "one", "two"])
            #expect(listing(b + "/.ferry-staging-\(created.id)") == ["two"])
            #expect(listing(a).sorted() == ["one", "two"])
        }
    }

    /// A path named through a symlinked directory is the same path: a move into `alias/` (a
    /// symlink to `b`) conflicts with a task holding `b/data`. Before, locks compared the paths as
    /// given, and the two ran on one tree at once.
    @Test func aPathNamedThroughASymlinkIsLockedAsTheSamePath() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeTree(a + "/data")
            try FileManager.default.createSymbolicLink(atPath: fs.mountPoint + "/alias", withDestinationPath: "b")
            let other = try await harness.store.create(NewTask(kind: .move, sources: [StoredPath(b + "/data")], destination: StoredPath(a), owner: "other"))
            _ = try await harness.store.claim(id: other.id, worker: "other-worker", lease: .seconds(60))
            let device = try FileDescriptor.openDirectory(Array(b.utf8)).status()
            try await harness.store.acquireLocks(id: other.id, worker: "other-worker",
                                                  [PathLock(taskID: other.id, filesystem: "\(device.deviceMajor):\(device.deviceMinor)", path: StoredPath(b + "/data"))])
            let refused = try await harness.run([a + "/data"], to: fs.mountPoint + "/alias")
            #expect(refused.status == .failed && refused.failure?.code == "locked", "\(String(describing: refused.failure))")
            #expect(listing(a) == ["data"] && listing(b).isEmpty)
        }
    }

    @Test func conflictingMovesAreHeldApartByPathLocks() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeTree(a + "/data")
            // Another task holds the source's parent.
            let other = try await harness.store.create(NewTask(kind: .move, sources: [StoredPath(a)], destination: StoredPath(b), owner: "other"))
            _ = try await harness.store.claim(id: other.id, worker: "other-worker", lease: .seconds(60))
            let device = try FileDescriptor.openDirectory(Array(a.utf8)).status()
            try await harness.store.acquireLocks(id: other.id, worker: "other-worker",
                                                  [PathLock(taskID: other.id, filesystem: "\(device.deviceMajor):\(device.deviceMinor)", path: StoredPath(a))])
            let refused = try await harness.run([a + "/data"], to: b)
            #expect(refused.status == .failed && refused.failure?.code == "locked", "\(String(describing: refused.failure))")
            #expect(refused.failure?.message.contains(other.id) == true)
            // Waiting instead: the task steps back and is not failed.
            var options = TaskOptions()
            options.waitForLocks = true
            var waiting = try await harness.run([a + "/data"], to: b, options: options)
            #expect(waiting.status == .validating && waiting.leaseOwner == nil)
            #expect(listing(a) == ["data"] && listing(b).isEmpty)
            // Not claimable again until the other ends (or the wait's delay is up)…
            #expect(try await harness.store.claim(worker: "test-worker", limit: 1, lease: .seconds(30)).isEmpty)
            #expect(waiting.notBefore.map { $0 > Date().addingTimeInterval(5) } == true, "\(String(describing: waiting.notBefore))")
            // …and each look meanwhile leaves no history entry and counts no attempt: one line
            // for the wait, however long it lasts.
            let history = try await harness.store.events(waiting.id).count
            for _ in 0..<3 {
                let look = try #require(try await harness.store.claim(id: waiting.id, worker: "test-worker", lease: .seconds(30)))
                waiting = await harness.engine.run(look)
                #expect(waiting.status == .validating && waiting.leaseOwner == nil && waiting.attempts == 1, "\(waiting.attempts)")
            }
            let events = try await harness.store.events(waiting.id)
            #expect(events.count == history, "\(events.map(\.message))")
            #expect(events.filter { $0.message.hasPrefix("waiting: \(a) is locked by task \(other.id)") }.count == 1, "\(events.map(\.message))")
            // Once the other task ends, the waiting one is claimable at once, and a worker runs it
            // to completion.
            try await harness.store.finish(id: other.id, worker: "other-worker", status: .completed, failure: nil, message: "done")
            let records = await Worker(engine: harness.engine, concurrency: 1).run(once: true)
            #expect(records.contains { $0.id == waiting.id && $0.status == .completed && $0.attempts == 2 })
            #expect(listing(b) == ["data"])
            // The run that found the path free is recorded once it has locked it.
            let after = try await harness.store.events(waiting.id).map(\.message).drop { !$0.hasPrefix("waiting: ") }
            #expect(after.dropFirst().first == "claimed by test-worker#1 (attempt 2)", "\(after)")
        }
    }

    @Test func pathsOutsideTheRootsAreRefusedAndSymlinksNeverFollowed() async throws {
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            let outside = fs.directory + "/outside"
            try FileManager.default.createDirectory(atPath: outside + "/secret", withIntermediateDirectories: true)
            try TreeBuilder.write(outside + "/secret/key", bytes: 10)
            try FileManager.default.createSymbolicLink(atPath: a + "/escape", withDestinationPath: outside)
            try makeTree(a + "/data")
            try FileManager.default.createSymbolicLink(atPath: a + "/data/planted", withDestinationPath: outside + "/secret")
            let harness = try Harness(roots: [fs.mountPoint])
            defer { harness.cleanup() }
            // Through a symlinked directory that leads out of the root: refused, nothing read.
            let escaped = try await harness.run([a + "/escape/secret"], to: b)
            // As root, refused at the symlink itself: root follows none beneath the roots.
            #expect(escaped.status == .failed && escaped.failure?.code == (geteuid() == 0 ? "path.symlink" : "path.outside"),
                    "\(String(describing: escaped.failure))")
            #expect(FileManager.default.fileExists(atPath: outside + "/secret/key"))
            #expect(try await harness.run([outside + "/secret"], to: b).failure?.code == "path.outside")
            // A symlink inside the tree moves as a symlink; its target is neither read nor moved.
            let record = try await harness.run([a + "/data"], to: b)
            #expect(record.status == .completed, "\(String(describing: record.failure))")
            #expect(try FileManager.default.destinationOfSymbolicLink(atPath: b + "/data/planted") == outside + "/secret")
            #expect(FileManager.default.fileExists(atPath: outside + "/secret/key"))
        }
    }

    /// From an strace of a real move: data flushed (syncfs), then the atomic rename into place, then
    /// the destination directory fsynced, and only then the source removed.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/strace")))
    func commitDurabilityOrderFromStrace() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeTree(a + "/data", files: 5)
            let log = fs.directory + "/strace.log"
            // -y: every descriptor is shown with its path, so each call is matched by what it acts on.
            let result = try Shell.execute(["strace", "-f", "-qq", "-y", "-o", log, "-e", "trace=syncfs,renameat2,fsync,unlinkat",
                                            ferryBinary(), "move", a + "/data", b],
                                           environment: ["FERRY_DATABASE_URL": "sqlite://\(fs.directory)/db.sqlite"])
            #expect(result.status == 0, "\(result.standardError)")
            let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").map(String.init)
            let syncfs = try #require(lines.lastIndex { $0.contains("syncfs(") && $0.contains(".ferry-staging-") && $0.hasSuffix("= 0") })
            let publish = try #require(lines.firstIndex {
                $0.contains("renameat2(") && $0.contains(".ferry-staging-") && $0.contains("\"data\"") && $0.contains("RENAME_NOREPLACE") && $0.hasSuffix("= 0")
            }, "\(lines.filter { $0.contains("renameat2") })")
            let parentSync = try #require(lines[publish...].firstIndex { $0.contains("fsync(") && $0.contains("<\(b)>") })
            let firstRemoval = try #require(lines.firstIndex { $0.contains("unlinkat(") && $0.contains("<\(a)/data") })
            #expect(syncfs < publish, "syncfs must come before the rename")
            #expect(publish < parentSync, "the destination directory is fsynced after the rename")
            #expect(parentSync < firstRemoval, "the source is removed only after the rename is durable")
            #expect(!FileManager.default.fileExists(atPath: a + "/data"))
        }
    }
}

import Synchronization
