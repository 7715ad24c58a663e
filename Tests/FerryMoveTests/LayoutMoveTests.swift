import Foundation
import FerryCopy
import FerryJobs
import FerryMove
import FerryStorage
import FerrySystem
import FerryTestSupport
import Glibc
import Synchronization
import Testing

/// XFS, with a file layout carried by a user attribute as Lustre's is by `lustre.lov` (Lustre
/// cannot run here): a backend that gives files layouts, as the move engine finds Lustre's.
struct AttributeLayoutBackend: StorageBackend {
    static let name: ByteString = Array("user.test.layout".utf8)
    /// Per file cloned: its size, and whether it was made with the delayed-layout flags.
    final class Calls: Sendable { let list = Mutex<[(size: UInt64, delayed: Bool)]>([]) }
    let calls = Calls()
    var refusing = false
    var kind: FilesystemKind { .xfs }
    var layoutAttributeNames: Set<ByteString> { [Self.name] }
    var layoutCreateFlags: OpenFlags { .delayLayout }

    func quota(of fd: FileDescriptor, path: ByteString) throws(StorageError) -> QuotaReport {
        try LinuxProjectBackend(kind: .xfs).quota(of: fd, path: path)
    }

    func cloneLayout(from source: FileDescriptor, to destination: FileDescriptor) throws(StorageError) {
        do {
            let size = try destination.status().size
            calls.list.withLock { $0.append((UInt64(size), Glibc.fcntl(destination.rawValue, F_GETFL) & O_ASYNC != 0)) }
            if refusing { throw StorageError(.system, "could not set the layout: EINVAL") }
            guard let value = try ExtendedAttributes.value(source, Self.name) else { return }
            try ExtendedAttributes.set(destination, Self.name, value + Array("/cloned".utf8))
        } catch let error as StorageError {
            throw error
        } catch {
            throw StorageError(.system, "\(error)")
        }
    }
}

private func layout(_ path: String) -> String? {
    guard let fd = try? currentWorkingDirectory.openAt(Array(path.utf8), [.noFollow]) else { return nil }
    defer { fd.closeQuietly() }
    guard let value = try? ExtendedAttributes.value(fd, AttributeLayoutBackend.name) else { return nil }
    return String(decoding: value, as: UTF8.self)
}

private func setLayout(_ path: String, _ value: String) throws {
    let fd = try currentWorkingDirectory.openAt(Array(path.utf8), [.noFollow])
    defer { fd.closeQuietly() }
    try ExtendedAttributes.set(fd, AttributeLayoutBackend.name, Array(value.utf8))
}

/// Moves `source` into `destination` in one run of an engine whose filesystems are `backend`;
/// returns the store and the run's record.
private func move(_ source: String, to destination: String, on fs: LoopXFS, backend: AttributeLayoutBackend) async throws -> (SQLiteTaskStore, TaskRecord) {
    let planner = Planner(jobs: 2) { _, _ in backend }
    let store = try SQLiteTaskStore(path: fs.directory + "/tasks.sqlite")
    let engine = MoveEngine(store: store, settings: .init(worker: "w", jobs: 2), planner: planner)
    let task = try await store.create(NewTask(kind: .move, sources: [StoredPath(source)], destination: StoredPath(destination), owner: "t"))
    return (store, await engine.run(try #require(try await store.claim(id: task.id, worker: "w", lease: .seconds(30)))))
}

@Suite("Layouts through the move engine (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct LayoutMoveTests {
    /// The engine asks the destination's backend for layouts, and a cross-project move gives each
    /// staged file its source's layout while it is still empty (Lustre striping: the seed's
    /// "shadow copy with stripe preservation"); a directory keeps its default layout, within one
    /// filesystem as here.
    @Test func aMoveGivesEachFileItsSourcesLayout() async throws {
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeTree(a + "/data", files: 6)
            try setLayout(a + "/data", "default: 4 stripes")
            try setLayout(a + "/data/sub/f0", "8 stripes of 4 MiB")
            try setLayout(a + "/data/sub/deeper/last", "PFL: 1 MiB on 1 OST, the rest on 16")
            let backend = AttributeLayoutBackend()
            let (_, record) = try await move(a + "/data", to: b, on: fs, backend: backend)
            #expect(record.status == .completed, "\(String(describing: record.failure))")
            #expect(record.plan?.strategy == "copy")
            #expect(!FileManager.default.fileExists(atPath: a + "/data"))
            #expect(layout(b + "/data/sub/f0") == "8 stripes of 4 MiB/cloned")
            #expect(layout(b + "/data/sub/deeper/last") == "PFL: 1 MiB on 1 OST, the rest on 16/cloned")
            #expect(layout(b + "/data/sub/f1") == nil)
            #expect(layout(b + "/data") == "default: 4 stripes")
            #expect(layout(b + "/data/sub") == nil)
            let calls = backend.calls.list.withLock { $0 }
            #expect(calls.count == 7)
            #expect(calls.allSatisfy { $0.size == 0 && $0.delayed })
        }
    }

    /// A layout the destination refuses does not fail the move: the data is moved with the
    /// directory's default layout, and the task's history says which files lost theirs.
    @Test func aRefusedLayoutIsRecordedAndTheMoveCompletes() async throws {
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeTree(a + "/data", files: 2)
            try setLayout(a + "/data/sub/f0", "pool: flash")
            var backend = AttributeLayoutBackend()
            backend.refusing = true
            let (store, record) = try await move(a + "/data", to: b, on: fs, backend: backend)
            #expect(record.status == .completed, "\(String(describing: record.failure))")
            #expect(listing(b + "/data/sub") == ["deeper", "f0", "f1"])
            let history = try await store.events(record.id).map(\.message)
            #expect(history.contains { $0.hasPrefix("not preserved (3): ") && $0.contains("layout not preserved") }, "\(history)")
        }
    }
}
