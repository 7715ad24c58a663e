import Foundation
import FerryCopy
import FerryJobs
import FerryMove
import FerrySystem
import FerryTestSupport
import Synchronization
import Testing

/// The validate phase measures the whole source before anything is written: on a big tree that is
/// minutes of work, which is reported as it goes and can be cancelled.
@Suite("Measuring progress and cancel")
struct MeasuringProgressTests {
    final class Recorder: @unchecked Sendable {
        private let lock = NSLock()
        private var seen: [CopyProgress] = []
        func add(_ progress: CopyProgress) { lock.withLock { seen.append(progress) } }
        var measuring: [CopyProgress] { lock.withLock { seen.filter { $0.phase == .measuring } } }
        var all: [CopyProgress] { lock.withLock { seen } }
    }

    /// A tree of 30 files copied by a task run here, which must complete; its record and plan.
    func copiedTree(_ harness: Harness) async throws -> (TaskRecord, TaskPlan) {
        try makeTree(harness.directory + "/src/data", files: 30, size: 10_000)
        try FileManager.default.createDirectory(atPath: harness.directory + "/dst", withIntermediateDirectories: true)
        let record = try await harness.run([harness.directory + "/src/data"], to: harness.directory + "/dst", kind: .copy)
        #expect(record.status == .completed, "\(String(describing: record.failure))")
        return (record, try #require(record.plan))
    }

    @Test func validationReportsWhatTheMeasurementFinds() async throws {
        let recorder = Recorder()
        let harness = try Harness(progress: { _, progress in recorder.add(progress) })
        defer { harness.cleanup() }
        let (_, plan) = try await copiedTree(harness)
        let last = try #require(recorder.measuring.last, "no progress while measuring")
        #expect(last.bytesTotal == 0 && last.entriesTotal == 0)
        #expect(last.entriesDone == plan.entries && last.bytesDone == plan.bytes, "\(last) against \(plan)")
    }

    /// A finished task shows all it moved, however seldom progress is written; the verification
    /// counts against the plan's entries.
    @Test func aCompletedTaskShowsAllItMoved() async throws {
        let recorder = Recorder()
        let harness = try Harness(progressInterval: .seconds(60), progress: { _, progress in recorder.add(progress) })
        defer { harness.cleanup() }
        let (record, plan) = try await copiedTree(harness)
        #expect(plan.bytes >= 300_000)
        #expect(record.progress == TaskProgress(bytesDone: plan.bytes, bytesTotal: plan.bytes, entriesDone: plan.entries,
                                                entriesTotal: plan.entries, bytesPerSecond: 0), "\(record.progress)")
        let verified = try #require(recorder.all.last { $0.phase == .verifying && $0.isFinal })
        #expect(verified.entriesTotal > 30 && verified.entriesDone == verified.entriesTotal, "\(verified)")
    }

    /// A task that waits for another's lock is released with no counts: it takes its locks
    /// before it measures, so it has measured nothing (and walks nothing each time it looks again).
    @Test func aTaskWaitingForALockHasNotMeasured() async throws {
        let recorder = Recorder()
        let harness = try Harness(progress: { _, progress in recorder.add(progress) })
        defer { harness.cleanup() }
        let source = harness.directory + "/src/data"
        try makeTree(source, files: 30, size: 1000)
        try FileManager.default.createDirectory(atPath: harness.directory + "/dst", withIntermediateDirectories: true)
        let other = try await harness.store.create(NewTask(kind: .copy, sources: [StoredPath(source)],
                                                           destination: StoredPath(harness.directory + "/elsewhere"), owner: "test"))
        _ = try await harness.store.claim(id: other.id, worker: "other", lease: .seconds(30))
        let parent = try FileDescriptor.openDirectory(Array((harness.directory + "/src").utf8))
        let status = try parent.status()
        parent.closeQuietly()
        try await harness.store.acquireLocks(id: other.id, worker: "other",
                                             [PathLock(taskID: other.id, filesystem: "\(status.deviceMajor):\(status.deviceMinor)", path: StoredPath(source))])
        var options = TaskOptions()
        options.waitForLocks = true
        let waiting = try await harness.run([source], to: harness.directory + "/dst", kind: .copy, options: options)
        #expect(waiting.status == .validating && waiting.leaseOwner == nil, "\(waiting.status)")
        #expect(waiting.progress == TaskProgress(), "\(waiting.progress)")
        #expect(recorder.measuring.isEmpty, "measured while waiting: \(recorder.measuring.count) reports")
        // Once the lock is free it measures, under its own locks.
        try await harness.store.finish(id: other.id, worker: "other", status: .completed, failure: nil, message: "done")
        let again = try #require(try await harness.store.claim(id: waiting.id, worker: "test-worker", lease: .seconds(30)))
        let record = await harness.engine.run(again)
        #expect(record.status == .completed, "\(String(describing: record.failure))")
        #expect(!recorder.measuring.isEmpty)
    }

    /// A worker that stops while measuring hands the task back without the counts it had found:
    /// the next worker measures again, and until then the task is shown waiting, not half measured.
    @Test func aWorkerStoppingWhileMeasuringHandsBackNoCounts() async throws {
        let engine = Mutex<MoveEngine?>(nil)
        let stoppedAt = Mutex<UInt64>(0)
        let harness = try Harness { _, progress in
            guard progress.phase == .measuring, progress.entriesDone > 0 else { return }
            stoppedAt.withLock { if $0 == 0 { $0 = progress.entriesDone } }
            engine.withLock { $0 }?.stop()
        }
        engine.withLock { $0 = harness.engine }
        defer { harness.cleanup() }
        let source = harness.directory + "/src/data"
        try makeTree(source, files: 0)
        for i in 0..<8000 { try TreeBuilder.write("\(source)/sub/f\(i)", bytes: 0) }
        try FileManager.default.createDirectory(atPath: harness.directory + "/dst", withIntermediateDirectories: true)
        let task = try await harness.store.create(NewTask(kind: .copy, sources: [StoredPath(source)],
                                                          destination: StoredPath(harness.directory + "/dst"), owner: "test"))
        let claimed = try #require(try await harness.store.claim(id: task.id, worker: "test-worker", lease: .seconds(30)))
        let record = await harness.engine.run(claimed)
        // Stopped part way through the measurement, which had written counts by then.
        #expect((1..<8000).contains(stoppedAt.withLock { $0 }), "\(stoppedAt.withLock { $0 })")
        #expect(record.status == .validating && record.leaseOwner == nil, "\(record.status)")
        #expect(record.plan == nil)
        #expect(record.progress == TaskProgress(), "\(record.progress)")
        #expect(listing(harness.directory + "/dst").isEmpty)
    }

    @Test func aCancelStopsTheMeasurement() async throws {
        let harness = try Harness()
        defer { harness.cleanup() }
        try makeTree(harness.directory + "/src/data", files: 30, size: 1000)
        try FileManager.default.createDirectory(atPath: harness.directory + "/dst", withIntermediateDirectories: true)
        let cancelled = CancellationFlag()
        cancelled.cancel()

        let transfer = try Transfer(sources: [Array((harness.directory + "/src/data").utf8)], destination: Array((harness.directory + "/dst").utf8))
        #expect(throws: CopyError.self) {
            try harness.engine.planner.preflight(kind: .copy, transfer: transfer, options: TaskOptions(), cancellation: cancelled)
        }

        // Cancelled (as by Ctrl-C) while validating: rolled back before any plan was made, so the
        // measurement did not run to its end.
        let task = try await harness.store.create(NewTask(kind: .copy, sources: [StoredPath(harness.directory + "/src/data")],
                                                          destination: StoredPath(harness.directory + "/dst"), owner: "test"))
        let claimed = try #require(try await harness.store.claim(id: task.id, worker: "test-worker", lease: .seconds(30)))
        let record = await harness.engine.run(claimed, cancellation: cancelled)
        #expect(record.status == .rolledBack)
        #expect(record.plan == nil)
        #expect(listing(harness.directory + "/dst").isEmpty)
    }
}
