import Foundation
@testable import FerryCopy
import FerrySystem
import FerryTestSupport
import Glibc
import Synchronization
import Testing

/// A regular file swapped for a fifo between the listing and the open is refused at once: opening
/// a fifo to read waits for a writer, and a task waiting so would hold its worker and its path
/// locks for ever, its lease kept alive by the heartbeat.
@Suite("A fifo in a regular file's place")
struct FifoSwapTests {
    @Test func theChecksumOfAFifoIsRefusedWithoutWaitingForAWriter() throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-fifo")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(mkfifo(directory + "/f", 0o600) == 0)
        let parent = try FileDescriptor.openDirectory(Array(directory.utf8))
        defer { parent.closeQuietly() }
        let outcome = Mutex<String?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            do {
                _ = try VerifyVisitor.digest(parent, Array("f".utf8), cancellation: CancellationFlag()) { _ in }
                outcome.withLock { $0 = "read" }
            } catch {
                outcome.withLock { $0 = "\(error)" }
            }
            done.signal()
        }
        if done.wait(timeout: .now() + 10) == .timedOut {
            // Release the reader that waits, so that the test ends.
            let writer = open(directory + "/f", O_WRONLY | O_NONBLOCK)
            if writer >= 0 { close(writer) }
            done.wait()
            Issue.record("the open of a fifo waited for a writer")
        }
        let result = outcome.withLock { $0 } ?? ""
        #expect(result.contains("no longer a regular file"), "\(result)")
    }

    /// A regular file so opened reads as blocking: Lustre heeds O_NONBLOCK on its locks, and a
    /// read that would wait for another client's lock would fail with EAGAIN.
    @Test func aRegularFileOpenedSoReadsAsBlocking() throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-fifo")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try TreeBuilder.write(directory + "/f", bytes: 100)
        let parent = try FileDescriptor.openDirectory(Array(directory.utf8))
        defer { parent.closeQuietly() }
        let (file, status) = try parent.openRegularForReading(Array("f".utf8), [.noFollow])
        defer { file.closeQuietly() }
        #expect(status.kind == .regular && status.size == 100)
        #expect(fcntl(file.rawValue, F_GETFL) & O_NONBLOCK == 0)
    }
}

/// Where the filesystem has no `RENAME_NOREPLACE`, a file is published by `link` then `unlink`. A
/// run that ended between the two left it under both names; the next publish of it finds the
/// same file already there, and finishes (before, `link` failed with EEXIST for ever, and the
/// commit stopped at every retry). Another file of that name is never replaced.
@Suite("Publishing without RENAME_NOREPLACE", .enabled(if: QuotaFS.available), .serialized)
struct LinkPublishTests {
    @Test func aFileLeftUnderBothNamesIsPublishedAndAnotherIsNotReplaced() throws {
        let fs = try QuotaFS(budget: 1 << 30, renameFlags: false)
        defer { fs.tearDown() }
        let staging = fs.mountPoint + "/.ferry-staging-x"
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
        try TreeBuilder.write(staging + "/done", bytes: 1000, seed: 1)
        #expect(link(staging + "/done", fs.mountPoint + "/done") == 0)
        try TreeBuilder.write(staging + "/taken", bytes: 1000, seed: 2)
        try TreeBuilder.write(fs.mountPoint + "/taken", bytes: 10, seed: 3)
        try TreeBuilder.write(staging + "/fresh", bytes: 1000, seed: 4)
        let from = try FileDescriptor.openDirectory(Array(staging.utf8))
        let to = try FileDescriptor.openDirectory(Array(fs.mountPoint.utf8))
        defer { from.closeQuietly(); to.closeQuietly() }
        try CopyEngine.renameNoReplace(from: from, Array("done".utf8), to: to, Array("done".utf8))
        try CopyEngine.renameNoReplace(from: from, Array("fresh".utf8), to: to, Array("fresh".utf8))
        #expect(throws: SystemError.self) { try CopyEngine.renameNoReplace(from: from, Array("taken".utf8), to: to, Array("taken".utf8)) }
        #expect(try entries(staging) == ["taken"])
        #expect(try FileManager.default.attributesOfItem(atPath: fs.mountPoint + "/taken")[.size] as? Int == 10)
        #expect(try FileManager.default.attributesOfItem(atPath: fs.mountPoint + "/done")[.size] as? Int == 1000)
        #expect(try FileManager.default.attributesOfItem(atPath: fs.mountPoint + "/fresh")[.size] as? Int == 1000)
    }
}

/// On FUSE, `syncfs` reaches the filesystem only for virtiofs: what is staged there is made
/// durable with an `fsync` of every file and directory, each seen by the filesystem itself,
/// before anything is published.
@Suite("Flushing a copy on FUSE", .enabled(if: QuotaFS.available), .serialized)
struct FuseFlushTests {
    @Test func everyStagedFileAndDirectoryIsSyncedByTheFilesystem() throws {
        let source = try TemporaryDirectory.make(prefix: "ferry-fuse-flush")
        defer { try? FileManager.default.removeItem(atPath: source) }
        try FileManager.default.createDirectory(atPath: source + "/d/sub", withIntermediateDirectories: true)
        try TreeBuilder.write(source + "/d/a", bytes: 5000, seed: 1)
        try TreeBuilder.write(source + "/d/sub/b", bytes: 70_000, seed: 2)
        try TreeBuilder.write(source + "/d/sub/unreadable", bytes: 10, seed: 3)
        chmod(source + "/d/sub/unreadable", 0o200)
        #expect(symlink("a", source + "/d/link") == 0)
        let fs = try QuotaFS(budget: 1 << 30, logFsync: true)
        defer { fs.tearDown() }
        let report = try engineCopy(source, "d", to: fs.mountPoint, options: CopyOptions(jobs: 2))
        #expect(report.published == [Array("d".utf8)])
        let log = fs.fsyncLog
        let staging = try #require(log.first { $0.hasPrefix("dir /.ferry-staging-") }.map { String($0.dropFirst(4)).split(separator: "/")[0] },
                                   "\(log)")
        for file in ["d/a", "d/sub/b", "d/sub/unreadable"] {
            #expect(log.contains("file /\(staging)/\(file)"), "\(log)")
        }
        for directory in ["d", "d/sub"] {
            #expect(log.contains("dir /\(staging)/\(directory)"), "\(log)")
        }
        #expect(log.contains("dir /\(staging)"), "\(log)")
        #expect(FileManager.default.contentsEqual(atPath: source + "/d/sub/b", andPath: fs.mountPoint + "/d/sub/b"))
    }
}
