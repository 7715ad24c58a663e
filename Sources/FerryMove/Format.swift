import Foundation

/// Numbers for people: binary byte units (as quotas are counted), grouped counts, durations.
public enum Format {
    /// 1536 → "1.5 KiB": binary units, as storage quotas are counted.
    public static func bytes(_ value: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var amount = Double(value)
        var unit = 0
        while amount >= 1024 && unit < units.count - 1 {
            amount /= 1024
            unit += 1
        }
        if unit == 0 { return "\(value) B" }
        return String(format: amount >= 100 ? "%.0f %@" : amount >= 10 ? "%.1f %@" : "%.2f %@", amount, units[unit])
    }

    /// Bytes per second → "256 MiB/s"; "" for no rate. Takes any figure, one a task's process
    /// reported included (it runs as the task's owner, who could make it report anything).
    public static func rate(_ bytesPerSecond: Double) -> String {
        guard bytesPerSecond.isFinite, bytesPerSecond > 0 else { return "" }
        return "\(bytes(UInt64(min(bytesPerSecond, 1.8e19))))/s"
    }

    /// 1234567 → "1,234,567".
    public static func count(_ value: UInt64) -> String {
        let digits = String(value)
        var out = ""
        for (index, character) in digits.enumerated() {
            if index > 0 && (digits.count - index) % 3 == 0 { out.append(",") }
            out.append(character)
        }
        return out
    }

    /// Seconds → "1:05" or "2:03:04"; "--:--" for what is unknown, or beyond 100,000 hours (an
    /// estimate made from a rate near zero: a figure that large says nothing, and one past
    /// `Int.max` seconds would trap).
    public static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0, seconds < 360_000_000 else { return "--:--" }
        let total = Int(seconds.rounded())
        let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60)
        return h > 0 ? String(format: "%d:%02d:%02d", h, m, s) : String(format: "%d:%02d", m, s)
    }

    /// A time span in words, rounded down to its largest unit: "12 s", "4 min", "3 h", "2 days".
    public static func span(_ seconds: Double) -> String {
        let total = seconds.isFinite ? Int(min(max(0, seconds), 1e15)) : 0
        if total < 60 { return "\(total) s" }
        if total < 3600 { return "\(total / 60) min" }
        if total < 86_400 { return "\(total / 3600) h" }
        return total < 172_800 ? "1 day" : "\(total / 86_400) days"
    }
}
