import Foundation

/// A failure to understand the text that an `lfs` command printed.
///
/// Every Lustre output parser throws this instead of trapping: the text comes from another
/// program (and another Lustre version), so anything unexpected is reported, never assumed.
public struct LustreParseError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The command whose output was being read, e.g. "lfs quota".
    public var command: String
    /// The 1-based line of the input the problem was found on, when known.
    public var line: Int?
    /// What was wrong, in words.
    public var reason: String

    public init(command: String, line: Int? = nil, reason: String) {
        self.command = command
        self.line = line
        self.reason = reason
    }

    /// "could not read `lfs quota` output at line 3: <reason>" (or without "at line N").
    public var description: String {
        if let line {
            return "could not read `\(command)` output at line \(line): \(reason)"
        }
        return "could not read `\(command)` output: \(reason)"
    }
}

// MARK: - Shared text helpers for the `lfs` parsers (internal)

/// One line of command output with its 1-based line number.
struct LustreLine: Sendable {
    var number: Int
    var text: String

    /// The line split on runs of spaces and tabs (how the C code's `%Ns` columns are best read).
    var fields: [String] { LustreText.fields(text) }
    /// The line without leading and trailing spaces and tabs.
    var trimmed: String { LustreText.trim(text) }
    var isBlank: Bool { trimmed.isEmpty }
}

enum LustreText {
    /// Splits text into numbered lines on "\n" (a "\r\n" pair counts as one line break).
    static func lines(_ text: String) -> [LustreLine] {
        var result: [LustreLine] = []
        var number = 0
        for piece in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            number += 1
            result.append(LustreLine(number: number, text: String(piece)))
        }
        // A final newline yields one empty trailing piece: it is not a line of its own.
        if let last = result.last, last.text.isEmpty { result.removeLast() }
        return result
    }

    static func isSpace(_ c: Character) -> Bool { c == " " || c == "\t" }

    static func fields(_ text: String) -> [String] {
        text.split(whereSeparator: isSpace).map(String.init)
    }

    static func trim(_ text: some StringProtocol) -> String {
        guard let first = text.firstIndex(where: { !isSpace($0) }),
            let last = text.lastIndex(where: { !isSpace($0) })
        else { return "" }
        return String(text[first...last])
    }

    /// A non-negative decimal number, or a hexadecimal one written "0x…"; nil when it is
    /// neither or does not fit (UInt64's own parsing never traps on overflow).
    static func unsigned(_ text: some StringProtocol) -> UInt64? {
        let t = String(text)
        if t.hasPrefix("0x") || t.hasPrefix("0X") {
            let digits = t.dropFirst(2)
            guard !digits.isEmpty, digits.allSatisfy(\.isHexDigit) else { return nil }
            return UInt64(digits, radix: 16)
        }
        guard !t.isEmpty, t.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return UInt64(t, radix: 10)
    }

    /// A signed decimal (possibly "-1") or "0x…" hexadecimal number that fits in Int.
    static func integer(_ text: some StringProtocol) -> Int? {
        let t = String(text)
        if t.hasPrefix("-") {
            guard let magnitude = unsigned(t.dropFirst()), magnitude <= UInt64(Int.max) else { return nil }
            return -Int(magnitude)
        }
        guard let value = unsigned(t), value <= UInt64(Int.max) else { return nil }
        return Int(value)
    }

    /// Splits "key: value" (value may be empty). Returns nil when there is no ':' after a
    /// key made only of lowercase letters, digits, '_' and '.'.
    static func keyValue(_ text: String) -> (key: String, value: String)? {
        guard let colon = text.firstIndex(of: ":") else { return nil }
        let key = String(text[..<colon])
        guard !key.isEmpty,
            key.allSatisfy({ ($0.isASCII && ($0.isLowercase || $0.isNumber)) || $0 == "_" || $0 == "." })
        else { return nil }
        let value = trim(text[text.index(after: colon)...])
        return (key, value)
    }
}
