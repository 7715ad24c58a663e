import Foundation

/// One line of `lfs hsm_state FILE...`.
public struct LustreHSMState: Equatable, Sendable {
    public var path: String
    /// The `hus_states` bits lfs prints in hex: 0x1 exists, 0x2 dirty, 0x4 released,
    /// 0x8 archived, 0x10 never release, 0x20 never archive, 0x40 lost from HSM.
    public var flags: UInt32
    /// The words lfs prints after the hex value, e.g. ["released", "exists", "archived"].
    public var states: [String]
    /// From ", archive_id:N"; lfs prints it only when some state bit is set.
    public var archiveID: Int?
    /// The data is not on the Lustre OSTs (only in the archive): bit 0x4 or the word "released".
    public var isReleased: Bool
    public var isDirty: Bool
    public var isArchived: Bool

    public init(path: String, flags: UInt32, states: [String], archiveID: Int?) {
        self.path = path
        self.flags = flags
        self.states = states
        self.archiveID = archiveID
        self.isReleased = flags & LfsHSMStateParser.released != 0 || states.contains("released")
        self.isDirty = flags & LfsHSMStateParser.dirty != 0 || states.contains("dirty")
        self.isArchived = flags & LfsHSMStateParser.archived != 0 || states.contains("archived")
    }
}

/// Reads `lfs hsm_state` output: one `PATH: (0x0000000d) released exists archived, archive_id:1`
/// line per file. A path may itself contain ": (0x", so each line is split on the LAST
/// occurrence of a ':' followed by blanks and "(0x".
public enum LfsHSMStateParser {
    static let command = "lfs hsm_state"
    static let exists: UInt32 = 0x1
    static let dirty: UInt32 = 0x2
    static let released: UInt32 = 0x4
    static let archived: UInt32 = 0x8

    public static func parse(_ text: String) throws(LustreParseError) -> [LustreHSMState] {
        var result: [LustreHSMState] = []
        for line in LustreText.lines(text) where !line.isBlank {
            result.append(try parseLine(line))
        }
        guard !result.isEmpty else {
            throw LustreParseError(command: command, reason: "the output is empty")
        }
        return result
    }

    static func parseLine(_ line: LustreLine) throws(LustreParseError) -> LustreHSMState {
        func fail(_ reason: String) -> LustreParseError {
            LustreParseError(command: command, line: line.number, reason: reason)
        }
        let text = line.text
        // Find the last "(0x" that is preceded by ':' and optional blanks.
        var searchEnd = text.endIndex
        var split: (pathEnd: String.Index, hexStart: String.Index)?
        while let found = text.range(of: "(0x", options: .backwards, range: text.startIndex..<searchEnd) {
            var i = found.lowerBound
            while i > text.startIndex, LustreText.isSpace(text[text.index(before: i)]) {
                i = text.index(before: i)
            }
            if i > text.startIndex, i < found.lowerBound, text[text.index(before: i)] == ":" {
                split = (text.index(before: i), found.upperBound)
                break
            }
            searchEnd = found.lowerBound
        }
        guard let split else { throw fail("no \": (0x…)\" state value in \"\(text)\"") }
        let path = String(text[..<split.pathEnd])
        guard !path.isEmpty else { throw fail("the line has no path") }

        let afterHex = text[split.hexStart...]
        guard let close = afterHex.firstIndex(of: ")") else { throw fail("the state value is not closed by ')'") }
        let hex = afterHex[..<close]
        guard !hex.isEmpty, hex.count <= 8, hex.allSatisfy(\.isHexDigit), let flags = UInt32(hex, radix: 16) else {
            throw fail("\"0x\(hex)\" is not a 32-bit state value")
        }

        var rest = LustreText.trim(afterHex[afterHex.index(after: close)...])
        var archiveID: Int?
        if let marker = rest.range(of: "archive_id:", options: .backwards) {
            let number = LustreText.trim(rest[marker.upperBound...])
            guard let id = LustreText.integer(number), id >= 0 else {
                throw fail("\"\(number)\" is not an archive ID")
            }
            archiveID = id
            var words = rest[..<marker.lowerBound]
            while let last = words.last, last == "," || LustreText.isSpace(last) { words = words.dropLast() }
            rest = String(words)
        }
        let states = LustreText.fields(rest)
        guard states.allSatisfy({ $0.allSatisfy { $0.isLetter || $0 == "_" } }) else {
            throw fail("unexpected state words \"\(rest)\"")
        }
        return LustreHSMState(path: path, flags: flags, states: states, archiveID: archiveID)
    }
}

/// Reads `lfs hsm_action FILE...`: one `PATH: ACTION [STATE ...]` line per file, where ACTION is
/// NOOP when no HSM request is pending (lfs.c prints `hsm_user_action2name`, an upper-case word:
/// NOOP, ARCHIVE, RESTORE, REMOVE, CANCEL, RELEASE, UNKNOWN…, then for a pending request its state
/// in lower case: waiting, running, done). The exact tail after the state (extent) varies between
/// Lustre versions, so only the action word and the state word after it are read; the path ends
/// at the last ": " that is followed by an upper-case word alone or before a space.
///
/// The MDT stops reporting a request once it has ended, failed or not: NOOP says only that nothing
/// is pending, never that a restore succeeded (`Recall` looks at the files again for that).
public enum LfsHSMActionParser {
    public struct Entry: Equatable, Sendable {
        public var path: String
        public var action: String
        public var state: String?
        /// No request pending, or the last one has ended.
        public var isIdle: Bool {
            action == "NOOP" || ["done", "succeed", "failed", "canceled", "cancelled"].contains(state?.lowercased() ?? "")
        }
    }

    /// An action word: upper-case letters and underscores, then the end or a space.
    static func startsWithAction(_ rest: Substring) -> Bool {
        let word = rest.prefix { $0 != " " }
        return !word.isEmpty && word.allSatisfy { ("A"..."Z").contains($0) || $0 == "_" }
    }

    public static func parse(_ text: String) throws(LustreParseError) -> [Entry] {
        var entries: [Entry] = []
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty { continue }
            var split: String.Index?
            var searchEnd = line.endIndex
            while let range = line.range(of: ": ", options: .backwards, range: line.startIndex..<searchEnd) {
                let rest = line[range.upperBound...]
                if startsWithAction(rest) { split = range.lowerBound; break }
                searchEnd = range.lowerBound
            }
            guard let split else {
                throw LustreParseError(command: "lfs hsm_action", line: number + 1, reason: "no HSM action word (NOOP, RESTORE, …) in \"\(line)\"")
            }
            let words = line[line.index(split, offsetBy: 2)...].split(separator: " ").map(String.init)
            entries.append(Entry(path: String(line[..<split]), action: words[0], state: words.count > 1 ? words[1] : nil))
        }
        if entries.isEmpty { throw LustreParseError(command: "lfs hsm_action", line: nil, reason: "no output") }
        return entries
    }
}
