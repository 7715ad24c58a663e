import Foundation
import FerryCopy
import FerryJobs
import FerryStorage
@testable import FerryMove
import FerrySystem
import FerryTestSupport
import Testing

/// The relink strategy, forced with `strategy = relink` on XFS: files are renamed one by one into a
/// recreated directory skeleton (same inodes, no data copied); a cancel puts every file back; a
/// stopped run resumes; the kernel's EXDEV across projects rolls back cleanly.
@Suite("Relink strategy on loop XFS (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct RelinkTests {
    func inodes(_ root: String) throws -> [String: UInt64] {
        var out: [String: UInt64] = [:]
        let enumerator = FileManager.default.enumerator(atPath: root)
        while let relative = enumerator?.nextObject() as? String {
            let attributes = try FileManager.default.attributesOfItem(atPath: root + "/" + relative)
            if attributes[.type] as? FileAttributeType != .typeDirectory {
                out[relative] = (attributes[.systemFileNumber] as? NSNumber)?.uint64Value
            }
        }
        return out
    }

    /// Directories whose mode, owner and times differ from what a directory made now would get.
    func giveDirectoriesTheirOwnMetadata(_ root: String) throws {
        try Shell.run(["chmod", "0751", root + "/sub"])
        try Shell.run(["chmod", "2775", root])
        try Shell.run(["chown", "4321:4322", root + "/sub"])
        for directory in [root, root + "/sub", root + "/sub/deeper"] {
            try Shell.run(["touch", "-h", "-d", "2020-02-02 02:02:02.123456789", directory])
        }
    }

    /// A relink of `source` into `destination` by a worker that stops once 20 entries are relinked:
    /// the task, and its record after that run.
    func relinkStoppedPartWay(_ source: String, to destination: String, harness: Harness) async throws -> (TaskRecord, TaskRecord) {
        let stopping = MoveEngine(store: harness.store, settings: .init(worker: "stopping", jobs: 1, progressInterval: .milliseconds(1)),
                                  progress: { _, progress in if progress.phase == .copying, progress.entriesDone >= 20 { stopperBox.engine?.stop() } })
        stopperBox.engine = stopping
        let task = try await harness.store.create(NewTask(kind: .move, sources: [StoredPath(source)], destination: StoredPath(destination),
                                                          options: relinkOptions(), owner: "t"))
        let claimed = try #require(try await harness.store.claim(id: task.id, worker: "stopping", lease: .seconds(30)))
        return (task, await stopping.run(claimed))
    }

    func relinkOptions() -> TaskOptions {
        var options = TaskOptions()
        options.strategy = "relink"
        return options
    }

    @Test func relinkMovesNamesNotData() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = fs.mountPoint + "/b"  // no inherited project: files may be renamed into it
            try FileManager.default.createDirectory(atPath: b, withIntermediateDirectories: true)
            try makeTree(a + "/data")
            try FileManager.default.linkItem(atPath: a + "/data/sub/f1", toPath: a + "/data/hardlink")
            try Shell.run(["chmod", "0751", a + "/data/sub"])
            let before = try inodes(a + "/data")
            let snapshot = try TreeSnapshot.take(a + "/data")
            let record = try await harness.run([a + "/data"], to: b, options: relinkOptions())
            #expect(record.status == .completed, "\(String(describing: record.failure))")
            #expect(record.plan?.strategy == "relink")
            #expect(try inodes(b + "/data") == before, "every file is the same inode: nothing was copied")
            #expect(try snapshot.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: a + "/data"))
            #expect(listing(b) == ["data"])
        }
    }

    @Test func cancelledRelinkPutsEveryFileBack() async throws {
        let cancel = CancellationFlag()
        let harness = try Harness { _, progress in if progress.phase == .copying, progress.entriesDone >= 10 { cancel.cancel() } }
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = fs.mountPoint + "/b"
            try FileManager.default.createDirectory(atPath: b, withIntermediateDirectories: true)
            try makeTree(a + "/data", files: 2000, size: 100)  // enough that the stop comes long before the last
            try giveDirectoriesTheirOwnMetadata(a + "/data")
            let before = try inodes(a + "/data")
            let snapshot = try TreeSnapshot.take(a + "/data")
            let task = try await harness.store.create(NewTask(kind: .move, sources: [StoredPath(a + "/data")], destination: StoredPath(b),
                                                              options: relinkOptions(), owner: "t"))
            let claimed = try #require(try await harness.store.claim(id: task.id, worker: "test-worker", lease: .seconds(30)))
            let record = await harness.engine.run(claimed, cancellation: cancel)
            #expect(cancel.isCancelled)
            #expect(record.status == .rolledBack, "\(record.status) \(String(describing: record.failure))")
            #expect(try inodes(a + "/data") == before, "every file back where it was, same inode")
            // The source exactly as it was: the directories that were being emptied when the cancel
            // came keep their own mode, owner and times, not the staging directory's.
            let differences = snapshot.differences(to: try TreeSnapshot.take(a + "/data"))
            #expect(differences.isEmpty, "\(differences)")
            #expect(listing(b).isEmpty, "\(listing(b))")
        }
    }

    @Test func stoppedRelinkResumes() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = fs.mountPoint + "/b"
            try FileManager.default.createDirectory(atPath: b, withIntermediateDirectories: true)
            try makeTree(a + "/data", files: 2000, size: 100)  // enough that the stop comes long before the last
            try giveDirectoriesTheirOwnMetadata(a + "/data")
            let before = try inodes(a + "/data")
            let snapshot = try TreeSnapshot.take(a + "/data")
            // A worker that stops part-way: the task is released with half its files relinked.
            let (task, first) = try await relinkStoppedPartWay(a + "/data", to: b, harness: harness)
            #expect(first.status == .copying && first.leaseOwner == nil, "\(first.status)")
            let staging = try #require(listing(b).first { $0.hasPrefix(".ferry-staging-") })
            // Marked as a relink's; a janitor of another database, to which the task is unknown,
            // leaves it alone even past the grace period: its files have no other names.
            let stagingDirectory = try FileDescriptor.openDirectory(Array((b + "/" + staging).utf8))
            defer { stagingDirectory.closeQuietly() }
            #expect(try ExtendedAttributes.value(stagingDirectory, Array("user.ferry.staging".utf8)) == StagingArea.markValue(id: task.id, relink: true, parent: try FileDescriptor.openDirectory(Array(b.utf8)).status()))
            let stranger = try SQLiteTaskStore(path: harness.directory + "/another.sqlite")
            let report = try await Janitor(engine: MoveEngine(store: stranger, settings: .init(worker: "stranger")), grace: .seconds(0))
                .run(directories: [Array(b.utf8)], recover: false)
            #expect(report.kept == [b + "/" + staging] && report.removed.isEmpty, "\(report)")
            let second = await harness.engine.run(try #require(try await harness.store.claim(id: task.id, worker: "test-worker", lease: .seconds(30))))
            #expect(second.status == .completed, "\(String(describing: second.failure))")
            #expect(try inodes(b + "/data") == before)
            // The directory the first run had half emptied arrives with the times it had before
            // the move, not those its emptying gave it.
            let differences = snapshot.differences(to: try TreeSnapshot.take(b + "/data"))
            #expect(differences.isEmpty, "\(differences)")
            #expect(!FileManager.default.fileExists(atPath: a + "/data"))
        }
    }

    /// A source directory emptied by hand and removed between two attempts: the resumed relink
    /// never walks it again, so its staged copy is never finished. The move is not published; it
    /// is rolled back, and the directory is made again in the source as it was.
    @Test func aSourceDirectoryRemovedBetweenAttemptsIsNotPublishedUnfinished() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = fs.mountPoint + "/b"
            try FileManager.default.createDirectory(atPath: b, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: a + "/data/sub", withIntermediateDirectories: true)
            try TreeBuilder.write(a + "/data/top", bytes: 100)
            // Enough entries that the stop, asked for at the 20th, comes long before the last.
            for i in 0..<2000 { try TreeBuilder.write("\(a)/data/sub/f\(i)", bytes: 100, seed: UInt64(i + 1)) }
            try Shell.run(["chmod", "0751", a + "/data/sub"])
            try Shell.run(["chown", "4321:4322", a + "/data/sub"])
            try Shell.run(["touch", "-h", "-d", "2017-05-06 07:08:09.101112131", a + "/data/sub", a + "/data"])
            let snapshot = try TreeSnapshot.take(a + "/data")
            let (task, first) = try await relinkStoppedPartWay(a + "/data", to: b, harness: harness)
            #expect(first.status == .copying, "\(first.status)")
            let staging = try #require(listing(b).first { $0.hasPrefix(".ferry-staging-") })
            let stagedSub = b + "/" + staging + "/data/sub"
            for name in listing(a + "/data/sub") {
                try FileManager.default.moveItem(atPath: a + "/data/sub/" + name, toPath: stagedSub + "/" + name)
            }
            try FileManager.default.removeItem(atPath: a + "/data/sub")
            let second = await harness.engine.run(try #require(try await harness.store.claim(id: task.id, worker: "test-worker", lease: .seconds(30))))
            #expect(second.status == .failed && second.failure?.code == "source.changed", "\(second.status) \(String(describing: second.failure))")
            #expect(second.failure?.message.contains("data/sub") == true, "\(String(describing: second.failure))")
            #expect(listing(b).isEmpty, "\(listing(b))")
            let differences = snapshot.differences(to: try TreeSnapshot.take(a + "/data"))
            #expect(differences.isEmpty, "\(differences)")
        }
    }

    @Test func kernelRefusalAcrossProjectsRollsBack() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)  // inherit flag: XFS answers EXDEV
            try makeTree(a + "/data")
            let before = try inodes(a + "/data")
            let record = try await harness.run([a + "/data"], to: b, options: relinkOptions())
            #expect(record.status == .failed)
            #expect(record.failure?.message.contains("EXDEV") == true, "\(String(describing: record.failure))")
            #expect(try inodes(a + "/data") == before)
            #expect(listing(b).isEmpty)
        }
    }

    /// A relink Ferry chose (a 2.15 client's `lfs` says files rename across projects) that the
    /// servers refuse (XFS, like a Lustre server before 2.15, answers EXDEV): put back, and copied.
    @Test func aRelinkTheServersRefuseCopiesInstead() async throws {
        let planner = Planner(jobs: 2) { fd, _ in ClientSaysRelink(real: try Storage.backend(for: fd)) }
        let harness = try Harness(planner: planner)
        defer { harness.cleanup() }
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeTree(a + "/data")
            try FileManager.default.linkItem(atPath: a + "/data/sub/f1", toPath: a + "/data/hardlink")
            let before = try inodes(a + "/data")
            let snapshot = try TreeSnapshot.take(a + "/data")
            let record = try await harness.run([a + "/data"], to: b)
            let history = try await harness.store.events(record.id).map(\.message)
            #expect(record.status == .completed, "\(String(describing: record.failure)) \(history)")
            #expect(record.plan?.strategy == "copy")
            #expect(history.contains { $0.hasPrefix("Relink ") }, "planned as a relink first: \(history)")
            #expect(history.contains { $0.contains("the servers refused to rename a file across projects") && $0.contains("EXDEV") }, "\(history)")
            #expect(history.contains { $0.hasPrefix("Copying instead of relinking: Copy ") }, "\(history)")
            #expect(try snapshot.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)
            let after = try inodes(b + "/data")
            #expect(Set(after.values).isDisjoint(with: Set(before.values)), "copied: new inodes")
            #expect(after["hardlink"] == after["sub/f1"], "the hard link kept")
            #expect(try Shell.run(["xfs_io", "-c", "lsproj", b + "/data/sub/f1"]).contains("projid = 200"), "a copy, charged to the destination's project")
            #expect(!FileManager.default.fileExists(atPath: a + "/data"))
            #expect(listing(b) == ["data"])
        }
    }

    /// 2000 files in project 100 half relinked into `b` (no project) by a run that stopped: the
    /// body gets the source tree's path, `b`, the task, its staging directory's path and the
    /// source's inodes before.
    func withHalfRelinkedTree(_ harness: Harness, _ body: (String, String, TaskRecord, String, [String: UInt64]) async throws -> Void) async throws {
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = fs.mountPoint + "/b"
            try FileManager.default.createDirectory(atPath: b, withIntermediateDirectories: true)
            try makeTree(a + "/data", files: 2000, size: 100)
            let before = try inodes(a + "/data")
            let (task, first) = try await relinkStoppedPartWay(a + "/data", to: b, harness: harness)
            #expect(first.status == .copying && first.leaseOwner == nil, "\(first.status)")
            let staging = b + "/" + (try #require(listing(b).first { $0.hasPrefix(".ferry-staging-") }))
            try await body(a + "/data", b, task, staging, before)
        }
    }

    /// A relink's staging holds the only names of the files it moved: the janitor keeps them by the
    /// directory's own mark, whatever the task's plan says now (a retry clears it; a cancel then
    /// ends the task before any run looks at the staging).
    @Test func theJanitorKeepsARelinksFilesWhateverThePlanSays() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withHalfRelinkedTree(harness) { _, b, task, staging, _ in
            let staged = FileManager.default.enumerator(atPath: staging)?.allObjects.count ?? 0
            #expect(staged >= 20)
            // Failed with its files still staged (as a rollback cut short leaves it), retried (the
            // plan goes), then cancelled while pending (no run looks at the staging).
            _ = try #require(try await harness.store.claim(id: task.id, worker: "w", lease: .seconds(30)))
            try await harness.store.finish(id: task.id, worker: "w", status: .failed, failure: TaskFailure(code: "io", message: "EIO"), message: "failed")
            #expect(try await harness.store.retry(task.id).plan == nil)
            #expect(try await harness.store.requestCancel(task.id).status == .cancelled)
            let report = try await Janitor(engine: harness.engine, grace: .seconds(0)).run(directories: [Array(b.utf8)], recover: false)
            #expect(report.removed.isEmpty && report.kept == [staging], "\(report)")
            #expect(FileManager.default.enumerator(atPath: staging)?.allObjects.count == staged, "a relink's files were deleted")
        }
    }

    /// An entry the rollback cannot put back (here one it cannot place in any source) stays in
    /// staging, and the task is not reported rolled back with its data out of sight.
    @Test func aRollbackThatLeavesEntriesInStagingIsNotDone() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try await withHalfRelinkedTree(harness) { source, _, task, staging, before in
            try "stray".write(toFile: staging + "/stray", atomically: false, encoding: .utf8)
            // A failure (not a cancel) that rolls back: the source changed, say.
            let claimed = try #require(try await harness.store.claim(id: task.id, worker: "test-worker", lease: .seconds(30)))
            let context = RunContext(task: claimed, worker: "test-worker")
            await harness.engine.fail(context, TaskFailure(code: "source.changed", message: "the source changed"), rollback: true)
            let record = try #require(try await harness.store.task(task.id))
            #expect(record.status != .rolledBack && !record.status.isTerminal, "\(record.status)")
            #expect(record.failure?.code == "rollback.incomplete", "\(String(describing: record.failure))")
            // Cancelled, so that no run carries it on: the next one rolls back, it does not relink again.
            #expect(record.cancelRequested)
            #expect(listing(staging) == ["stray"], "\(listing(staging))")
            #expect(FileManager.default.fileExists(atPath: source + "/sub"), "the rest was put back")
            let events = try await harness.store.events(task.id).map(\.message)
            #expect(events.contains { $0.contains("could not be put back") && $0.contains("stray") }, "\(events)")
            // Once the stray entry is dealt with, the retried rollback finishes, with the source whole.
            try FileManager.default.removeItem(atPath: staging + "/stray")
            // (Claimed by id: the 30 s before its retry are not waited out.)
            let again = await harness.engine.run(try #require(try await harness.store.claim(id: task.id, worker: "test-worker", lease: .seconds(30))))
            #expect(again.status == .rolledBack, "\(again.status) \(String(describing: again.failure))")
            #expect(!FileManager.default.fileExists(atPath: staging))
            #expect(try inodes(source) == before, "every file back in the source, the same inode")
        }
    }
}

@Suite("Configured strategy and the worker's own janitor (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct ConfiguredBehaviourTests {
    @Test func configuredRelinkIsUsedWhenTheRequestNamesNone() async throws {
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = fs.mountPoint + "/b"
            try FileManager.default.createDirectory(atPath: b, withIntermediateDirectories: true)
            try makeTree(a + "/data")
            var planner = Planner(jobs: 2)
            planner.configuredStrategy = { path in String(decoding: path, as: UTF8.self).hasPrefix(b) ? "relink" : nil }
            let store = try SQLiteTaskStore(path: fs.directory + "/tasks.sqlite")
            let engine = MoveEngine(store: store, settings: .init(worker: "w", jobs: 2), planner: planner)
            let task = try await store.create(NewTask(kind: .move, sources: [StoredPath(a + "/data")], destination: StoredPath(b), owner: "t"))
            let record = await engine.run(try #require(try await store.claim(id: task.id, worker: "w", lease: .seconds(30))))
            #expect(record.status == .completed && record.plan?.strategy == "relink", "\(String(describing: record.plan?.strategy))")
        }
    }

    /// A probe directory a process died beside (it lives for an instant) is removed once old, by
    /// `rmdir` alone: one with anything in it, or a recent one, stays.
    @Test func theJanitorRemovesAnOldEmptyProbeDirectoryOnly() async throws {
        try await withLoopXFSAsync { fs in
            let b = try fs.makeProjectDirectory("b", project: 200)
            for name in ["old", "full", "recent"] {
                try FileManager.default.createDirectory(atPath: "\(b)/.ferry-probe-t-\(name)", withIntermediateDirectories: true)
            }
            try TreeBuilder.write(b + "/.ferry-probe-t-full/kept", bytes: 10)
            for name in ["old", "full"] { try Shell.run(["touch", "-d", "3 hours ago", "\(b)/.ferry-probe-t-\(name)"]) }
            let store = try SQLiteTaskStore(path: fs.directory + "/tasks.sqlite")
            let janitor = Janitor(engine: MoveEngine(store: store, settings: .init(worker: "w")))
            let dry = try await janitor.run(directories: [Array(b.utf8)], dryRun: true, recover: false)
            #expect(dry.removed == [b + "/.ferry-probe-t-old"] && dry.kept == [b + "/.ferry-probe-t-full"], "\(dry)")
            #expect(listing(b).count == 3)
            let report = try await janitor.run(directories: [Array(b.utf8)], recover: false)
            #expect(report.removed == [b + "/.ferry-probe-t-old"] && report.kept == [b + "/.ferry-probe-t-full"], "\(report)")
            #expect(listing(b) == [".ferry-probe-t-full", ".ferry-probe-t-recent"])
            #expect(listing(b + "/.ferry-probe-t-full") == ["kept"])
        }
    }

    @Test func aLongRunningWorkerRemovesOrphanedStagingItself() async throws {
        try await withLoopXFSAsync { fs in
            let b = try fs.makeProjectDirectory("b", project: 200)
            let store = try SQLiteTaskStore(path: fs.directory + "/tasks.sqlite")
            let engine = MoveEngine(store: store, settings: .init(worker: "w", jobs: 1))
            // A task that failed and whose staging directory was left behind (its worker died mid-rollback).
            let task = try await store.create(NewTask(kind: .copy, sources: [StoredPath(fs.mountPoint + "/gone")], destination: StoredPath(b), owner: "t"))
            _ = try await store.claim(id: task.id, worker: "w", lease: .seconds(30))
            let plan = TaskPlan(strategy: "copy", bytes: 1, allocatedBytes: 4096, entries: 1, inodes: 1, stagingName: StoredPath(".ferry-staging-\(task.id)"),
                                finalNames: [StoredPath("gone")], destinationDirectory: StoredPath(b))
            try await store.advance(id: task.id, worker: "w", to: .copying, plan: plan, message: "copying")
            try await store.finish(id: task.id, worker: "w", status: .failed, failure: TaskFailure(code: "io", message: "EIO"), message: "failed")
            try TreeBuilder.stagingDirectory("\(b)/.ferry-staging-\(task.id)", id: task.id)
            try FileManager.default.createDirectory(atPath: "\(b)/.ferry-staging-\(task.id)/gone", withIntermediateDirectories: true)
            let stop = CancellationFlag()
            let worker = Worker(engine: engine, concurrency: 1, janitorInterval: .milliseconds(200))
            async let ran = worker.run(stop: stop)
            // Until the removal is recorded too: stopped between removing and recording, the
            // worker would leave the record out (a race of the test's, not of the janitor's).
            func recorded() async throws -> Bool { try await store.events(task.id).contains { $0.message.hasPrefix("janitor removed") } }
            for _ in 0..<100 {
                if listing(b).isEmpty, try await recorded() { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            stop.cancel()
            _ = await ran
            #expect(listing(b).isEmpty, "\(listing(b))")
            #expect(try await recorded())
        }
    }
}

/// Lets a progress handler reach the engine it belongs to.
final class EngineBox: @unchecked Sendable { var engine: MoveEngine? }
let stopperBox = EngineBox()

/// The filesystem's own backend, except that it says files rename across projects, as a Lustre
/// 2.15+ client's `lfs --version` does whatever its servers are.
struct ClientSaysRelink: StorageBackend {
    let real: any StorageBackend
    var kind: FilesystemKind { real.kind }
    var renamesFilesAcrossProjects: Bool { true }
    var layoutAttributeNames: Set<ByteString> { real.layoutAttributeNames }
    var layoutCreateFlags: OpenFlags { real.layoutCreateFlags }
    func projectAttributes(of fd: FileDescriptor) throws(StorageError) -> ProjectAttributes? { try real.projectAttributes(of: fd) }
    func setProjectAttributes(_ attributes: ProjectAttributes, on fd: FileDescriptor) throws(StorageError) {
        try real.setProjectAttributes(attributes, on: fd)
    }
    func quota(of fd: FileDescriptor, path: ByteString) throws(StorageError) -> QuotaReport { try real.quota(of: fd, path: path) }
    func cloneLayout(from source: FileDescriptor, to destination: FileDescriptor) throws(StorageError) {
        try real.cloneLayout(from: source, to: destination)
    }
}
