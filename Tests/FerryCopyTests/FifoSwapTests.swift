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
}
