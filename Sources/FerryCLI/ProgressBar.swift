import FerryMove
import FerryCopy
import FerryJobs
import FerrySystem
import Foundation
import Glibc

/// A one-line progress display on a terminal: phase, percentage, bytes, files, rate and ETA,
/// redrawn in place. Silent when standard error is not a terminal.
final class ProgressBar: @unchecked Sendable {
    private let enabled: Bool
    private let lock = NSLock()
    private var lastWidth = 0

    init(enabled: Bool = isatty(STDERR_FILENO) == 1) { self.enabled = enabled }

    static func line(for progress: CopyProgress, width: Int) -> String {
        var parts: [String] = [progress.phase.rawValue]
        let fraction: Double? = progress.bytesTotal > 0
            ? Double(progress.bytesDone) / Double(progress.bytesTotal)
            : progress.entriesTotal > 0 ? Double(progress.entriesDone) / Double(progress.entriesTotal) : nil
        if let fraction {
            let clamped = min(1, max(0, fraction))
            let cells = 20
            let filled = Int(clamped * Double(cells))
            parts.append("[" + String(repeating: "#", count: filled) + String(repeating: "-", count: cells - filled) + "]")
            parts.append(String(format: "%3.0f%%", clamped * 100))
        }
        if progress.bytesTotal > 0 {
            parts.append("\(Format.bytes(progress.bytesDone))/\(Format.bytes(progress.bytesTotal))")
        } else if progress.bytesDone > 0 {
            parts.append(Format.bytes(progress.bytesDone))
        }
        if progress.entriesTotal > 0 {
            parts.append("\(Format.count(progress.entriesDone))/\(Format.count(progress.entriesTotal)) files")
        } else if progress.entriesDone > 0 {
            parts.append("\(Format.count(progress.entriesDone)) files")
        }
        if progress.phase == .measuring {
            // Nothing is moved yet: the pace is entries looked at.
            if progress.elapsedSeconds > 0 && progress.entriesDone > 0 {
                parts.append("\(Format.count(UInt64(Double(progress.entriesDone) / progress.elapsedSeconds))) files/s")
            }
        } else if progress.bytesPerSecond > 0 {
            parts.append(Format.rate(progress.bytesPerSecond))
        }
        if let eta = progress.secondsRemaining { parts.append("ETA \(Format.duration(eta))") }
        var line = parts.joined(separator: "  ")
        if let path = progress.currentPath, line.count + 2 < width {
            let room = width - line.count - 2
            let shown = path.count > room ? "…" + path.suffix(max(0, room - 1)) : Substring(path)
            line += "  " + shown
        }
        return String(line.prefix(width))
    }

    func update(_ progress: CopyProgress) {
        guard enabled else { return }
        let width = Self.terminalWidth()
        let line = Self.line(for: progress, width: width - 1)
        lock.lock()
        defer { lock.unlock() }
        let padding = max(0, lastWidth - line.count)
        Console.standardError("\r" + line + String(repeating: " ", count: padding))
        lastWidth = line.count
    }

    func finish() {
        guard enabled else { return }
        lock.lock()
        defer { lock.unlock() }
        if lastWidth > 0 { Console.standardError("\r" + String(repeating: " ", count: lastWidth) + "\r") }
        lastWidth = 0
    }

    static func terminalWidth() -> Int {
        var size = winsize()
        if ioctl(STDERR_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 20 { return Int(size.ws_col) }
        return 100
    }
}

extension TaskRecord {
    /// The task's recorded progress as the bar shows a copy's (for a task another worker runs).
    var copyProgress: CopyProgress {
        let phase: CopyProgress.Phase = switch status {
        case .pending, .validating: .measuring
        case .verifying: .verifying
        case .committing: .publishing
        default: .copying
        }
        return CopyProgress(phase: phase, bytesDone: progress.bytesDone, bytesTotal: progress.bytesTotal,
                            entriesDone: progress.entriesDone, entriesTotal: progress.entriesTotal, currentPath: nil,
                            bytesPerSecond: progress.bytesPerSecond, secondsRemaining: progress.secondsRemaining, elapsedSeconds: 0)
    }
}
