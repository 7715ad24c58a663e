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
    private var drawn = false

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
        var line = String(parts.joined(separator: "  ").prefix(width))  // ASCII but for the path
        if let path = progress.currentPath, line.count + 2 < width {
            line += "  " + Self.tail(Self.printable(path), columns: width - line.count - 2)
        }
        return line
    }

    /// A file name as the terminal is to show it, on the bar's one line (`Console.printable`).
    static func printable(_ path: String) -> String { Console.printable(path, oneLine: true) }

    /// The end of `text` that fits in `columns` terminal columns, after "…" when cut.
    static func tail(_ text: String, columns room: Int) -> String {
        if columns(of: text) <= room { return text }
        guard room > 1 else { return "" }
        var kept: [Unicode.Scalar] = []
        var used = 1
        for scalar in text.unicodeScalars.reversed() {
            let width = columns(of: scalar)
            if used + width > room { break }
            used += width
            kept.append(scalar)
        }
        return "…" + String(String.UnicodeScalarView(kept.reversed()))
    }

    /// Terminal columns: none for combining marks and format characters, two for East Asian wide
    /// and full-width characters and emoji, one otherwise.
    static func columns(of text: String) -> Int { text.unicodeScalars.reduce(0) { $0 + columns(of: $1) } }

    static func columns(of scalar: Unicode.Scalar) -> Int {
        switch scalar.properties.generalCategory {
        case .nonspacingMark, .enclosingMark, .format: return 0
        default: break
        }
        switch scalar.value {
        case 0x1100...0x115F, 0x2E80...0x303E, 0x3041...0x33FF, 0x3400...0x4DBF, 0x4E00...0x9FFF, 0xA000...0xA4CF, 0xAC00...0xD7A3,
             0xF900...0xFAFF, 0xFE30...0xFE4F, 0xFF00...0xFF60, 0xFFE0...0xFFE6, 0x1F300...0x1F64F, 0x1F900...0x1F9FF, 0x20000...0x3FFFD:
            return 2
        default:
            return 1
        }
    }

    func update(_ progress: CopyProgress) {
        guard enabled else { return }
        let width = Self.terminalWidth()
        let line = Self.line(for: progress, width: width - 1)
        lock.lock()
        defer { lock.unlock() }
        // Erased to the end of the line (EL), not padded with blanks: padding the width of the
        // last line would wrap once the terminal has been made narrower.
        Console.standardError("\r" + line + "\u{1B}[K")
        drawn = true
    }

    func finish() {
        guard enabled else { return }
        lock.lock()
        defer { lock.unlock() }
        if drawn { Console.standardError("\r\u{1B}[K") }
        drawn = false
    }

    static func terminalWidth() -> Int {
        var size = winsize()
        // A narrow terminal gets a line cut to its width (one longer would wrap at every redraw).
        if ioctl(STDERR_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 1 { return Int(size.ws_col) }
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
