import Foundation

/// The grace column of `lfs quota` for blocks or inodes.
public enum QuotaGrace: Equatable, Sendable {
    /// "-": no grace period is running (under the soft limit, or over the hard limit).
    case notSet
    /// "none": lfs prints this when the grace period has already run out
    /// (`diff2str()` in lfs.c: the grace deadline is not after "now").
    case none
    /// A running grace period, printed as a duration such as "6d23h56m44s" (units w d h m s).
    case remaining(seconds: Int)
    /// "expired": accepted for safety; the lfs versions read so far print "none" instead.
    case expired

    /// True when the soft limit's grace period is over ("none" or "expired").
    public var hasRunOut: Bool { self == .none || self == .expired }
}

/// One `lfs quota -p ID MOUNT` report (also fits `-u`/`-g`, which carry no project ID).
public struct LustreQuotaReport: Equatable, Sendable {
    public var filesystem: String
    /// From "(pid N)" in the title line; nil with `-q` (no title) or for user/group reports.
    public var projectID: UInt32?
    public var bytesUsed: UInt64
    /// nil when lfs prints 0, which means "no limit".
    public var bytesSoftLimit: UInt64?
    public var bytesHardLimit: UInt64?
    public var bytesGrace: QuotaGrace
    public var inodesUsed: UInt64
    public var inodesSoftLimit: UInt64?
    public var inodesHardLimit: UInt64?
    public var inodesGrace: QuotaGrace
    /// A `*` after the used figure: over the limit.
    public var bytesOverLimit: Bool
    public var inodesOverLimit: Bool
    /// Some figure was printed in [brackets] (or lfs said "The data in "[]" is inaccurate").
    public var inaccurate: Bool

    public init(
        filesystem: String, projectID: UInt32?, bytesUsed: UInt64, bytesSoftLimit: UInt64?,
        bytesHardLimit: UInt64?, bytesGrace: QuotaGrace, inodesUsed: UInt64, inodesSoftLimit: UInt64?,
        inodesHardLimit: UInt64?, inodesGrace: QuotaGrace, bytesOverLimit: Bool = false,
        inodesOverLimit: Bool = false, inaccurate: Bool = false
    ) {
        self.filesystem = filesystem
        self.projectID = projectID
        self.bytesUsed = bytesUsed
        self.bytesSoftLimit = bytesSoftLimit
        self.bytesHardLimit = bytesHardLimit
        self.bytesGrace = bytesGrace
        self.inodesUsed = inodesUsed
        self.inodesSoftLimit = inodesSoftLimit
        self.inodesHardLimit = inodesHardLimit
        self.inodesGrace = inodesGrace
        self.bytesOverLimit = bytesOverLimit
        self.inodesOverLimit = inodesOverLimit
        self.inaccurate = inaccurate
    }
}

/// Reads the output of `lfs quota [-h] [-q] -p ID MOUNT`.
///
/// Layouts read (lustre-release lfs.c `print_quota_title()` / `print_quota()`): the ≤2.15 and
/// 2.16 headers (`kbytes|used quota limit grace files quota limit grace`) and the ≥2.17 one
/// (`bquota blimit bgrace … iquota ilimit igrace`, trailing space on every line). The columns
/// are read as whitespace-separated fields, never by position. A mount point longer than 15
/// characters is printed alone on its line with the figures on the next line.
///
/// Not read: the `-v` per-target lines, `lfs quota -t` (grace times only), the default-quota
/// layout (`-P`/`-U`/`-G`), and 2.17's `-q --space`/`--inodes` single-value forms, whose exact
/// output could not be confirmed from the lfs.c sources available.
public enum LfsQuotaParser {
    static let command = "lfs quota"

    public static func parse(_ text: String) throws(LustreParseError) -> LustreQuotaReport {
        var projectID: UInt32?
        var sawTitle = false
        var inaccurate = false
        var pendingName: LustreLine?
        var record: (filesystem: String, figures: [String], line: Int)?
        var sawAnyText = false

        for line in LustreText.lines(text) {
            let trimmed = line.trimmed
            if trimmed.isEmpty { continue }
            sawAnyText = true

            if trimmed.hasPrefix("Disk default ") {
                throw fail(line.number, "default-quota output (`lfs quota -P/-U/-G`) is not a usage report")
            }
            if trimmed.hasPrefix("Disk quotas for ") {
                guard !sawTitle, record == nil, pendingName == nil else {
                    throw fail(line.number, "a second report title; only one report per output is read")
                }
                sawTitle = true
                projectID = try projectIDFromTitle(trimmed, line: line.number)
                continue
            }
            if trimmed.hasPrefix("Filesystem") {
                let headers = line.fields
                guard headers.count == 9 else {
                    throw fail(line.number, "a column header with \(headers.count) columns instead of 9")
                }
                continue
            }
            // Informational lines lfs adds after the figures.
            if trimmed.contains(" is using default "), trimmed.hasSuffix("quota setting") { continue }
            if trimmed.hasPrefix("Total allocated ") { continue }
            if trimmed.hasPrefix("Some errors happened") {
                inaccurate = true
                continue
            }

            guard record == nil else {
                throw fail(line.number, "unexpected line after the quota figures: \"\(trimmed)\"")
            }
            let fields = line.fields
            if let name = pendingName {
                guard fields.count == 8 else {
                    throw fail(
                        line.number,
                        "expected 8 figures after the filesystem name \"\(name.trimmed)\", found \(fields.count) fields")
                }
                record = (name.trimmed, fields, line.number)
                pendingName = nil
            } else if (1..<8).contains(fields.count) {
                // A long name (more than 15 characters, spaces and all: "/mnt/lustre scratch"):
                // the figures follow on the next line.
                pendingName = line
            } else if fields.count >= 9 {
                let nameFields = fields[..<(fields.count - 8)]
                record = (nameFields.joined(separator: " "), Array(fields.suffix(8)), line.number)
            } else {
                throw fail(
                    line.number, "expected a filesystem name and 8 figures, found \(fields.count) fields")
            }
        }

        if let name = pendingName {
            throw fail(name.number, "the filesystem name \"\(name.trimmed)\" has no figures after it (truncated?)")
        }
        guard let record else {
            throw fail(nil, sawAnyText ? "no line of quota figures found" : "the output is empty")
        }

        let f = record.figures
        let n = record.line
        guard f.count == 8 else { throw fail(n, "expected 8 figures, found \(f.count)") }
        let used = try figure(f[0], blocks: true, line: n, column: "used space")
        let bSoft = try figure(f[1], blocks: true, line: n, column: "block soft limit")
        let bHard = try figure(f[2], blocks: true, line: n, column: "block hard limit")
        let bGrace = try grace(f[3], line: n, column: "block grace")
        let files = try figure(f[4], blocks: false, line: n, column: "files")
        let iSoft = try figure(f[5], blocks: false, line: n, column: "inode soft limit")
        let iHard = try figure(f[6], blocks: false, line: n, column: "inode hard limit")
        let iGrace = try grace(f[7], line: n, column: "inode grace")

        let anyBracket = [used, bSoft, bHard, files, iSoft, iHard].contains { $0.bracketed }
        return LustreQuotaReport(
            filesystem: record.filesystem,
            projectID: projectID,
            bytesUsed: used.value,
            bytesSoftLimit: bSoft.value == 0 ? nil : bSoft.value,
            bytesHardLimit: bHard.value == 0 ? nil : bHard.value,
            bytesGrace: bGrace.grace,
            inodesUsed: files.value,
            inodesSoftLimit: iSoft.value == 0 ? nil : iSoft.value,
            inodesHardLimit: iHard.value == 0 ? nil : iHard.value,
            inodesGrace: iGrace.grace,
            bytesOverLimit: used.starred,
            inodesOverLimit: files.starred,
            inaccurate: inaccurate || anyBracket || bGrace.bracketed || iGrace.bracketed)
    }

    // MARK: - Pieces

    static func fail(_ line: Int?, _ reason: String) -> LustreParseError {
        LustreParseError(command: command, line: line, reason: reason)
    }

    /// "Disk quotas for prj 1000 (pid 1000):" → 1000. User and group titles ("(uid N)",
    /// "(gid N)") are accepted and give nil.
    static func projectIDFromTitle(_ title: String, line: Int) throws(LustreParseError) -> UInt32? {
        guard let open = title.range(of: "(pid ", options: .backwards) else {
            if title.contains("(uid ") || title.contains("(gid ") { return nil }
            throw fail(line, "the title has no \"(pid N)\"")
        }
        let rest = title[open.upperBound...]
        guard let close = rest.firstIndex(of: ")") else {
            throw fail(line, "the title's \"(pid\" is not closed")
        }
        let digits = rest[..<close]
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
            let id = UInt32(digits, radix: 10)
        else {
            throw fail(line, "\"\(digits)\" is not a project ID")
        }
        return id
    }

    struct Figure {
        var value: UInt64
        var starred: Bool
        var bracketed: Bool
    }

    /// Strips the markers lfs puts around a figure: trailing `*` (over the limit; lfs also adds
    /// one for -EREMOTEIO, which is reported as over-limit too) and `[...]` (inaccurate).
    static func unwrap(_ token: String) -> (core: String, starred: Bool, bracketed: Bool) {
        var core = Substring(token)
        var starred = false
        while core.hasSuffix("*") {
            starred = true
            core = core.dropLast()
        }
        var bracketed = false
        if core.hasPrefix("["), core.hasSuffix("]"), core.count >= 2 {
            bracketed = true
            core = core.dropFirst().dropLast()
        }
        while core.hasSuffix("*") {  // "[123*]" cannot be printed, but cost nothing to accept
            starred = true
            core = core.dropLast()
        }
        return (String(core), starred, bracketed)
    }

    /// Binary multipliers of the `-h` suffixes, in units of the column's base unit.
    static func suffixPower(_ c: Character) -> UInt64? {
        switch c {
        case "k", "K": return 1 << 10
        case "M": return 1 << 20
        case "G": return 1 << 30
        case "T": return 1 << 40
        case "P": return 1 << 50
        case "E": return 1 << 60
        default: return nil
        }
    }

    /// A block figure (KiB without a suffix; `-h` suffixes k M G T P E = 2^10…2^60 bytes,
    /// per lfs.c `kbytes2str()`, which prints "%5.4g" so "1.234e+04T" is possible) converted to
    /// bytes, or an inode figure converted to a count.
    ///
    /// Inodes: lfs.c prints inode counts with "%ju" even under `-h`, so no suffix is expected.
    /// Should a version print one anyway, it is read as a power of 1024 like the block suffixes
    /// (`kbytes2str`-style); this is an assumption, not something seen in lfs output.
    static func figure(_ token: String, blocks: Bool, line: Int, column: String) throws(LustreParseError) -> Figure {
        let (core, starred, bracketed) = unwrap(token)
        guard !core.isEmpty else { throw fail(line, "empty \(column) figure \"\(token)\"") }
        var number = Substring(core)
        var unitBytes: UInt64 = blocks ? 1024 : 1
        if let last = number.last, let power = suffixPower(last) {
            number = number.dropLast()
            unitBytes = power  // blocks: "k" = KiB = 1024 bytes, "M" = MiB…; counts: "k" = 1024
        }
        guard !number.isEmpty else { throw fail(line, "\(column) figure \"\(token)\" has no digits") }

        if number.allSatisfy({ $0.isASCII && $0.isNumber }) {
            guard let whole = UInt64(number, radix: 10) else {
                throw fail(line, "\(column) figure \"\(token)\" is too large")
            }
            let (product, overflow) = whole.multipliedReportingOverflow(by: unitBytes)
            guard !overflow else { throw fail(line, "\(column) figure \"\(token)\" is too large in bytes") }
            return Figure(value: product, starred: starred, bracketed: bracketed)
        }
        guard number.allSatisfy({ $0.isASCII && ($0.isNumber || ".eE+-".contains($0)) }),
            number.first.map({ $0.isNumber || $0 == "." }) == true,
            let decimal = Double(number), decimal.isFinite, decimal >= 0
        else {
            throw fail(line, "\(column) figure \"\(token)\" is not a number")
        }
        let scaled = (decimal * Double(unitBytes)).rounded()
        guard scaled < 18_446_744_073_709_551_616.0 else {  // 2^64
            throw fail(line, "\(column) figure \"\(token)\" is too large in bytes")
        }
        return Figure(value: UInt64(scaled), starred: starred, bracketed: bracketed)
    }

    /// "-", "none", "expired", or a duration "1w2d3h4m5s" (lfs.c `__sec2str()`: units w d h m s,
    /// each optional, largest first). A bare number is read as seconds.
    static func grace(_ token: String, line: Int, column: String) throws(LustreParseError) -> (
        grace: QuotaGrace, bracketed: Bool
    ) {
        let (core, _, bracketed) = unwrap(token)
        switch core {
        case "-": return (.notSet, bracketed)
        case "none": return (.none, bracketed)
        case "expired": return (.expired, bracketed)
        default: break
        }
        guard !core.isEmpty else { throw fail(line, "empty \(column)") }
        var total = 0
        var current = 0
        var digitsPending = false
        for c in core {
            if c.isASCII, c.isNumber, let d = c.wholeNumberValue {
                let (times10, o1) = current.multipliedReportingOverflow(by: 10)
                let (next, o2) = times10.addingReportingOverflow(d)
                guard !o1, !o2 else { throw fail(line, "\(column) \"\(token)\" is too long a duration") }
                current = next
                digitsPending = true
                continue
            }
            let unit: Int
            switch c {
            case "w": unit = 7 * 24 * 3600
            case "d": unit = 24 * 3600
            case "h": unit = 3600
            case "m": unit = 60
            case "s": unit = 1
            default: throw fail(line, "\(column) \"\(token)\" is not \"-\", \"none\" or a duration")
            }
            guard digitsPending else { throw fail(line, "\(column) \"\(token)\" has a unit without a number") }
            let (part, o1) = current.multipliedReportingOverflow(by: unit)
            let (sum, o2) = total.addingReportingOverflow(part)
            guard !o1, !o2 else { throw fail(line, "\(column) \"\(token)\" is too long a duration") }
            total = sum
            current = 0
            digitsPending = false
        }
        if digitsPending {  // trailing digits without a unit: seconds
            let (sum, overflow) = total.addingReportingOverflow(current)
            guard !overflow else { throw fail(line, "\(column) \"\(token)\" is too long a duration") }
            total = sum
        }
        return (.remaining(seconds: total), bracketed)
    }
}
