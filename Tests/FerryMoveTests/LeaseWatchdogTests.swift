import Foundation
import FerryCopy
import FerryJobs
import FerryMove
import FerryTestSupport
import Synchronization
import Testing

/// A run whose lease is not confirmed — no heartbeat answered for two thirds of it, the database
/// unreachable or busy — writes nothing more until it is: once the lease runs out another worker
/// may take the task over, and two runs would write into one staging directory (the fence
/// guards the database, not the files). A late answer that the lease is still its own lets it
/// go on, in the same attempt.
@Suite("A run whose lease is not confirmed")
struct LeaseWatchdogTests {
    @Test func aRunWritesNothingWhileItsLeaseIsUnconfirmedAndGoesOnOnceItIs() async throws {
        let started = Mutex(false)
        let database = Mutex<String?>(nil)
        let holder = Mutex<Process?>(nil)
        let harness = try Harness(lease: .milliseconds(150)) { _, progress in
            guard progress.phase == .copying, progress.bytesDone > 0, let path = database.withLock({ $0 }),
                  started.withLock({ let first = !$0; $0 = true; return first }) else { return }
            // The database stops taking writes (another connection holds its write lock) for
            // eight leases, and meanwhile the size of the file being staged is read twice.
            holder.withLock { $0 = try? Self.holdWriteLock(path, staged: (path as NSString).deletingLastPathComponent + "/dst") }
        }
        defer { harness.cleanup() }
        database.withLock { $0 = harness.directory + "/ferry.sqlite" }
        try FileManager.default.createDirectory(atPath: harness.directory + "/src/data", withIntermediateDirectories: true)
        try Shell.run(["dd", "if=/dev/zero", "of=\(harness.directory)/src/data/big", "bs=1M", "count=1024", "status=none"])
        try FileManager.default.createDirectory(atPath: harness.directory + "/dst", withIntermediateDirectories: true)
        var options = TaskOptions()
        options.jobs = 1
        let record = try await harness.run([harness.directory + "/src/data"], to: harness.directory + "/dst", kind: .copy, options: options)
        let process = try #require(holder.withLock { $0 }, "the write lock was never taken")
        process.waitUntilExit()
        let seen = String(decoding: (process.standardOutput as! Pipe).fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .split(separator: "\n").compactMap { Int($0) }
        #expect(process.terminationStatus == 0 && seen.count == 2, "\(seen)")
        // Held: the staged file did not grow while no heartbeat was answered (unless it was all
        // copied before the hold, which this test then cannot tell).
        if let first = seen.first, first < 1 << 30 { #expect(seen.last == first, "\(seen)") }
        // The late answer said the lease was still its own: it went on, in its first attempt.
        #expect(record.status == .completed, "\(String(describing: record.failure))")
        #expect(record.attempts == 1)
        #expect(try FileManager.default.attributesOfItem(atPath: harness.directory + "/dst/data/big")[.size] as? Int == 1 << 30)
    }

    /// Starts a process that holds the SQLite database's write lock for 1.2 s, printing the size of
    /// the file staged under `staged` at 0.5 s and at 1.1 s; returns once it holds the lock.
    static func holdWriteLock(_ path: String, staged: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", """
            import glob, os, sqlite3, sys, time
            db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
            db.execute('BEGIN EXCLUSIVE')
            print('locked', flush=True)
            def size():
                return sum(os.path.getsize(f) for f in glob.glob(sys.argv[2] + '/.ferry-staging-*/data/big'))
            time.sleep(0.5)
            print(size(), flush=True)
            time.sleep(0.6)
            print(size(), flush=True)
            db.execute('COMMIT')
            """, path, staged]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        var line: [UInt8] = []
        while line.last != 0x0A {
            let byte = output.fileHandleForReading.readData(ofLength: 1)
            if byte.isEmpty { break }
            line += byte
        }
        guard String(decoding: line, as: UTF8.self) == "locked\n" else {
            process.terminate()
            throw CocoaError(.fileLocking)
        }
        return process
    }
}
