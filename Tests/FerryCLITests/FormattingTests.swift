import FerryMove
import FerryCopy
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
