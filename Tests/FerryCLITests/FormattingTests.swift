import FerryMove
import FerryCopy
import FerryJobs
import FerryTestSupport
import Foundation
@testable import FerryCLI
import Testing

@Suite struct FormattingTests {
    @Test func bytesCountsAndDurations() {
        #expect(Format.bytes(0) == "0 B")
        #expect(Format.bytes(1536) == "1.50 KiB")
        #expect(Format.bytes(3_650_722_201) == "3.40 GiB")
        #expect(Format.bytes(1 << 40) == "1.00 TiB")
        #expect(Format.count(1_234_567) == "1,234,567")
        #expect(Format.count(999) == "999")
        #expect(Format.duration(65) == "1:05")
        #expect(Format.duration(7384) == "2:03:04")
        #expect(Format.duration(.infinity) == "--:--")
        // An estimate from a rate near zero (a sparse file's apparent size ahead): no figure, no trap.
        #expect(Format.duration(359_999_999) == "99999:59:59")
        #expect(Format.duration(9.3e18) == "--:--")
        #expect(Format.duration(1e300) == "--:--")
        #expect(Format.rate(Double(256 << 20)) == "256 MiB/s")
        #expect([0, -1, .nan, .infinity].map(Format.rate) == ["", "", "", ""])
        #expect(Format.rate(1e300) == "15.6 EiB/s")
        #expect(Format.span(1e300) == "\(Int(1e15) / 86_400) days")
        #expect([0, 59.9, 60, 3599, 3600, 86_399, 86_400, 172_800, -5].map(Format.span)
                == ["0 s", "59 s", "1 min", "59 min", "1 h", "23 h", "1 day", "2 days", "0 s"])
    }

    @Test func progressLineShowsPhaseBytesFilesRateAndETA() {
        let progress = CopyProgress(
            phase: .copying, bytesDone: 512 << 20, bytesTotal: 2 << 30, entriesDone: 1200, entriesTotal: 5000,
            currentPath: "results/runs/run-1200.txt", bytesPerSecond: Double(256 << 20), secondsRemaining: 6, elapsedSeconds: 2)
        let line = ProgressBar.line(for: progress, width: 160)
        #expect(line.hasPrefix("copying  [#####---------------]   25%"))
        #expect(line.contains("512 MiB/2.00 GiB"))
        #expect(line.contains("1,200/5,000 files"))
        #expect(line.contains("256 MiB/s"))
        #expect(line.contains("ETA 0:06"))
        #expect(line.hasSuffix("results/runs/run-1200.txt"))
        // Narrow terminals: the line is cut to fit, the path shortened from the left.
        let narrow = ProgressBar.line(for: progress, width: 100)
        #expect(narrow.count <= 100)
        #expect(narrow.contains("…") || !narrow.contains("results/"))
    }

    /// A file name is someone else's text: its control characters (an escape sequence, a newline)
    /// never reach the terminal, and a wide name is cut by the columns it takes, not its characters.
    @Test func pathsReachTheTerminalPrintableAndWithinItsWidth() {
        func line(_ path: String, width: Int) -> String {
            ProgressBar.line(for: CopyProgress(phase: .copying, bytesDone: 1, bytesTotal: 2, entriesDone: 1, entriesTotal: 2, currentPath: path,
                                               bytesPerSecond: 0, secondsRemaining: nil, elapsedSeconds: 1), width: width)
        }
        let hostile = line("a/\u{1B}]0;owned\u{07}\u{1B}[2Jb\nc\u{9B}d", width: 200)
        #expect(!hostile.unicodeScalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }, "\(hostile.debugDescription)")
        #expect(hostile.hasSuffix(#"a/\x1B]0;owned\x07\x1B[2Jb\x0Ac\xC2\x9Bd"#), "\(hostile)")
        let wide = line("データ/" + String(repeating: "結果", count: 40), width: 80)
        #expect(ProgressBar.columns(of: wide) <= 80, "\(wide)")
        #expect(ProgressBar.columns(of: wide) >= 78, "the room is used: \(wide)")
        #expect(wide.hasSuffix("結果") && wide.contains("…"))
        #expect(ProgressBar.columns(of: "e\u{301}") == 1)
        #expect(ProgressBar.columns(of: line("x", width: 12)) <= 12)
    }

    /// Measuring has no totals (they are what it finds): counts so far and entries per second,
    /// no bar, no percentage, no byte rate, no ETA.
    @Test func measuringLineShowsCountsSoFarAndEntriesPerSecond() {
        let progress = CopyProgress(
            phase: .measuring, bytesDone: 3 << 30, bytesTotal: 0, entriesDone: 250_000, entriesTotal: 0,
            currentPath: nil, bytesPerSecond: Double(1 << 30), secondsRemaining: nil, elapsedSeconds: 5)
        let line = ProgressBar.line(for: progress, width: 160)
        #expect(line == "measuring  3.00 GiB  250,000 files  50,000 files/s", "\(line)")
    }
}

@Suite struct TaskOutcomeTests {
    /// A refusal met in the commit (the name taken meanwhile) is no pre-flight refusal (3):
    /// something was done, and a retry finishes it (1). `ferry task cancel` of a task in its
    /// commit says that the commit is finished, not rolled back.
    @Test func aRefusalWhileCommittingIsAFailureAndItsCancelComesTooLate() async throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-outcome")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try SQLiteTaskStore(path: directory + "/ferry.sqlite")
        func failed(stoppedCommitting: Bool) async throws -> TaskRecord {
            let task = try await store.create(NewTask(kind: .move, sources: [StoredPath("/a/data")], destination: StoredPath("/b"), owner: "u"))
            _ = try await store.claim(id: task.id, worker: "w", lease: .seconds(60))
            var plan = TaskPlan(strategy: "copy", bytes: 1, allocatedBytes: 1, entries: 1, inodes: 1, stagingName: StoredPath(".ferry-staging-\(task.id)"),
                                finalNames: [StoredPath("data")], destinationDirectory: StoredPath("/b"))
            plan.stoppedCommitting = stoppedCommitting ? true : nil
            try await store.advance(id: task.id, worker: "w", to: stoppedCommitting ? .committing : .validating, plan: plan, message: "")
            try await store.finish(id: task.id, worker: "w", status: .failed, failure: TaskFailure(code: "destination.exists", message: "taken"), message: "")
            return try #require(try await store.task(task.id))
        }
        #expect(try await failed(stoppedCommitting: false).exitStatus == FerryCommand.Status.refused.rawValue)
        #expect(try await failed(stoppedCommitting: true).exitStatus == FerryCommand.Status.failure.rawValue)

        let committing = try await store.create(NewTask(kind: .move, sources: [StoredPath("/a/more")], destination: StoredPath("/b"), owner: "u"))
        _ = try await store.claim(id: committing.id, worker: "w", lease: .seconds(60))
        try await store.advance(id: committing.id, worker: "w", to: .committing, plan: nil, message: "renaming")
        await store.close()
        let cancel = try Shell.execute([ferryBinary(), "task", "cancel", committing.id],
                                       environment: ["FERRY_DATABASE_URL": "sqlite://\(directory)/ferry.sqlite"])
        #expect(cancel.status == 0, "\(cancel.standardError)")
        #expect(cancel.standardOutput.contains("too late to cancel; it is finished, not rolled back"), "\(cancel.standardOutput)")
    }

    /// Each run of a command's task has a flag of its own: one the engine raised (its lease lost)
    /// does not cancel the next run; Ctrl-C cancels the run going on and every later one.
    @Test func onlyCtrlCCarriesOverToTheNextRun() {
        let interruptible = Interruptible()
        let first = interruptible.nextRun()
        first.cancel()  // the engine's own doing
        let second = interruptible.nextRun()
        #expect(!second.isCancelled)
        interruptible.cancel()
        #expect(second.isCancelled)
        #expect(interruptible.nextRun().isCancelled)
    }
}
