/// A TOML value, as far as Ferry's configuration needs: strings, integers, floats, booleans,
/// arrays, tables and arrays of tables (TOML 1.0 syntax for each; dates are not used by Ferry and
/// are refused with a clear error).
public indirect enum TOMLValue: Equatable, Sendable {
    case string(String)
    case integer(Int64)
    case float(Double)
    case boolean(Bool)
    case array([TOMLValue])
    case table([String: TOMLValue])

    public var string: String? { if case .string(let v) = self { v } else { nil } }
    public var integer: Int64? { if case .integer(let v) = self { v } else { nil } }
    public var boolean: Bool? { if case .boolean(let v) = self { v } else { nil } }
    public var array: [TOMLValue]? { if case .array(let v) = self { v } else { nil } }
    public var table: [String: TOMLValue]? { if case .table(let v) = self { v } else { nil } }
}

public struct TOMLError: Error, Equatable, CustomStringConvertible, Sendable {
    public var line: Int
    public var message: String
    public var description: String { "line \(line): \(message)" }
}

/// Parses TOML text into a table. Strict: a duplicate key, a redefined table or anything it does
/// not understand is an error naming the line, never a guess.
public enum TOMLParser {
    public static func parse(_ text: String) throws(TOMLError) -> [String: TOMLValue] {
        var reader = Reader(Array(text.unicodeScalars))
        return try reader.document()
    }
}

private struct Reader {
    let s: [Unicode.Scalar]
    var i = 0
    var line = 1
    var root: [String: TOMLValue] = [:]
    /// The table new keys go into, as a path from the root; arrays of tables address their last element.
    var current: [String] = []
    var definedTables: Set<[String]> = []
    /// Arrays made by `[[…]]` headers: only those take more elements from one (`a = []` is a
    /// static array, which `[[a]]` may not extend).
    var tableArrays: Set<[String]> = []

    /// A byte-order mark at the start (editors on some systems write one) is no part of the text.
    init(_ scalars: [Unicode.Scalar]) { s = scalars.first == "\u{FEFF}" ? Array(scalars.dropFirst()) : scalars }

    func fail(_ message: String) -> TOMLError { TOMLError(line: line, message: message) }

    var atEnd: Bool { i >= s.count }
    var peek: Unicode.Scalar? { i < s.count ? s[i] : nil }

    mutating func skipSpaces() {
        while let c = peek, c == " " || c == "\t" { i += 1 }
    }

    mutating func skipComment() {
        if peek == "#" { while let c = peek, c != "\n" { i += 1 } }
    }

    mutating func endOfLine() throws(TOMLError) {
        skipSpaces()
        skipComment()
        if atEnd { return }
        if peek == "\r" { i += 1 }
        guard peek == "\n" else { throw fail("unexpected text after the value") }
        i += 1
        line += 1
    }

    mutating func document() throws(TOMLError) -> [String: TOMLValue] {
        while !atEnd {
            skipSpaces()
            switch peek {
            case "#", "\n", "\r":
                try endOfLine()
            case "[":
                try tableHeader()
                try endOfLine()
            case nil:
                break
            default:
                let key = try keyPath()
                skipSpaces()
                guard peek == "=" else { throw fail("expected = after the key") }
                i += 1
                skipSpaces()
                let value = try self.value()
                try insert(current + key, value)
                try endOfLine()
            }
        }
        return root
    }

    mutating func tableHeader() throws(TOMLError) {
        i += 1
        let isArray = peek == "["
        if isArray { i += 1 }
        skipSpaces()
        let path = try keyPath()
        skipSpaces()
        guard peek == "]" else { throw fail("expected ] to close the table header") }
        i += 1
        if isArray {
            guard peek == "]" else { throw fail("expected ]] to close the array-of-tables header") }
            i += 1
            if value(at: path[...], in: root) != nil && !tableArrays.contains(path) {
                throw fail("\(path.joined(separator: ".")) is not an array of tables ([[\(path.joined(separator: "."))]] cannot extend a value set with =)")
            }
            try appendTable(path)
            tableArrays.insert(path)
            // A new element: its sub-tables ([a.b] after [[a]]) are its own, not yet defined.
            definedTables = definedTables.filter { !($0.count > path.count && $0.starts(with: path)) }
        } else {
            guard definedTables.insert(path).inserted else { throw fail("table [\(path.joined(separator: "."))] is defined twice") }
            if case .array? = value(at: path[...], in: root) {
                throw fail("[\(path.joined(separator: "."))] names an array of tables ([[\(path.joined(separator: "."))]]); a table header cannot reopen it")
            }
            try ensureTable(path)
        }
        current = path
    }

    mutating func keyPath() throws(TOMLError) -> [String] {
        var parts = [try key()]
        skipSpaces()
        while peek == "." {
            i += 1
            skipSpaces()
            parts.append(try key())
            skipSpaces()
        }
        return parts
    }

    mutating func key() throws(TOMLError) -> String {
        if peek == "\"" { return try basicString() }
        if peek == "'" { return try literalString() }
        var out = ""
        while let c = peek, c.properties.isASCIIHexDigit || ("a"..."z").contains(c) || ("A"..."Z").contains(c) || c == "_" || c == "-" || ("0"..."9").contains(c) {
            out.unicodeScalars.append(c)
            i += 1
        }
        guard !out.isEmpty else { throw fail("expected a key") }
        return out
    }

    mutating func value() throws(TOMLError) -> TOMLValue {
        switch peek {
        case "\"": return .string(try basicString())
        case "'": return .string(try literalString())
        case "[": return try arrayValue()
        case "{": throw fail("inline tables are not supported in Ferry's configuration; use a [table]")
        case "t", "f": return .boolean(try boolean())
        case nil: throw fail("expected a value")
        default: return try number()
        }
    }

    mutating func basicString() throws(TOMLError) -> String {
        if s.count >= i + 3, s[i + 1] == "\"", s[i + 2] == "\"" { throw fail("multi-line strings are not supported") }
        i += 1
        var out = ""
        while true {
            guard let c = peek, c != "\n" else { throw fail("unterminated string") }
            i += 1
            if c == "\"" { return out }
            if Self.isControl(c) { throw fail("a control character (U+\(String(c.value, radix: 16, uppercase: true))) in a string: write it as an escape") }
            if c != "\\" { out.unicodeScalars.append(c); continue }
            guard let e = peek else { throw fail("unterminated escape") }
            i += 1
            switch e {
            case "\"": out += "\""
            case "\\": out += "\\"
            case "n": out += "\n"
            case "t": out += "\t"
            case "r": out += "\r"
            case "b": out += "\u{8}"
            case "f": out += "\u{C}"
            case "u", "U":
                let count = e == "u" ? 4 : 8
                guard i + count <= s.count else { throw fail("short \\\(e) escape") }
                var hex = ""
                hex.unicodeScalars.append(contentsOf: s[i..<i + count])
                i += count
                guard hex.allSatisfy(\.isHexDigit), let code = UInt32(hex, radix: 16), let scalar = Unicode.Scalar(code) else { throw fail("bad \\\(e) escape") }
                out.unicodeScalars.append(scalar)
            default:
                throw fail("unknown escape \\\(e)")
            }
        }
    }

    mutating func literalString() throws(TOMLError) -> String {
        if s.count >= i + 3, s[i + 1] == "'", s[i + 2] == "'" { throw fail("multi-line strings are not supported") }
        i += 1
        var out = ""
        while true {
            guard let c = peek, c != "\n" else { throw fail("unterminated string") }
            i += 1
            if c == "'" { return out }
            if Self.isControl(c) { throw fail("a control character (U+\(String(c.value, radix: 16, uppercase: true))) in a literal string") }
            out.unicodeScalars.append(c)
        }
    }

    mutating func boolean() throws(TOMLError) -> Bool {
        for (word, value) in [("true", true), ("false", false)] {
            let scalars = Array(word.unicodeScalars)
            if i + scalars.count <= s.count, Array(s[i..<i + scalars.count]) == scalars {
                i += scalars.count
                return value
            }
        }
        throw fail("expected true or false")
    }

    mutating func number() throws(TOMLError) -> TOMLValue {
        var text = ""
        while let c = peek, !(c == " " || c == "\t" || c == "\n" || c == "\r" || c == "," || c == "]" || c == "#") {
            text.unicodeScalars.append(c)
            i += 1
        }
        guard Self.underscoresBetweenDigits(text) else { throw fail("cannot read \(text): an underscore belongs between two digits") }
        let plain = text.replacingUnderscores()
        let unsigned = plain.hasPrefix("+") || plain.hasPrefix("-") ? String(plain.dropFirst()) : plain
        if unsigned.count > 1, unsigned.hasPrefix("0"), unsigned.allSatisfy(\.isNumber) {
            throw fail("cannot read \(text): a decimal integer has no leading zero")
        }
        for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] where plain.hasPrefix(prefix) {
            let digits = plain.dropFirst(2)
            // Digits only: no sign after the prefix, no hexadecimal float.
            guard !digits.isEmpty, digits.allSatisfy({ $0.isHexDigit && Int(String($0), radix: radix) != nil }) else {
                throw fail("cannot read \(text): \(prefix) takes base-\(radix) digits only")
            }
            guard let value = Int64(digits, radix: radix) else { throw fail("cannot read \(text): out of range for a 64-bit integer") }
            return .integer(value)
        }
        // The whole part of a float has no leading zero either, point or not (`05e3`).
        let whole = unsigned.prefix { $0.isNumber }
        if whole.count > 1, whole.hasPrefix("0"), unsigned.count > whole.count {
            throw fail("cannot read \(text): a float has no leading zero")
        }
        if let dot = unsigned.firstIndex(of: ".") {
            let before = unsigned[..<dot], after = unsigned[unsigned.index(after: dot)...]
            guard before.last?.isNumber == true, after.first?.isNumber == true else {
                throw fail("cannot read \(text): a float has digits on both sides of its point (0.5, not .5)")
            }
            if before.count > 1, before.hasPrefix("0") { throw fail("cannot read \(text): a float has no leading zero") }
        }
        if let value = Int64(plain) { return .integer(value) }
        if unsigned.allSatisfy(\.isNumber), !unsigned.isEmpty { throw fail("cannot read \(text): out of range for a 64-bit integer") }
        let exponent = plain.firstIndex { $0 == "e" || $0 == "E" }
        if plain.contains(where: { $0 == "." }) || exponent != nil,
           plain.allSatisfy({ $0.isNumber || "+-.eE".contains($0) }), let value = Double(plain), value.isFinite {
            return .float(value)
        }
        throw fail(text.isEmpty ? "expected a value" : "cannot read \(text) (quote strings: \"\(text)\")")
    }

    mutating func arrayValue() throws(TOMLError) -> TOMLValue {
        i += 1
        var items: [TOMLValue] = []
        while true {
            try skipBlank()
            if peek == "]" { i += 1; return .array(items) }
            items.append(try value())
            try skipBlank()
            if peek == "," { i += 1; continue }
            try skipBlank()
            guard peek == "]" else { throw fail("expected , or ] in the array") }
        }
    }

    /// Inside arrays, newlines and comments are whitespace.
    mutating func skipBlank() throws(TOMLError) {
        while let c = peek {
            if c == " " || c == "\t" || c == "\r" { i += 1 } else if c == "\n" { i += 1; line += 1 } else if c == "#" { skipComment() } else { return }
        }
    }

    // MARK: building the document

    // Each edit works on a copy of the document and stores it back: `modify` reads `self` (for the
    // line of an error) and must not overlap a mutation of `self.root`.
    mutating func insert(_ path: [String], _ value: TOMLValue) throws(TOMLError) {
        var document = root
        try modify(path.dropLast(), in: &document) { (table) throws(TOMLError) in
            let key = path[path.count - 1]
            guard table[key] == nil else { throw fail("key \(path.joined(separator: ".")) is defined twice") }
            table[key] = value
        }
        root = document
    }

    mutating func ensureTable(_ path: [String]) throws(TOMLError) {
        var document = root
        try modify(path[...], in: &document) { _ in }
        root = document
    }

    mutating func appendTable(_ path: [String]) throws(TOMLError) {
        var document = root
        defer { root = document }
        try modify(path.dropLast(), in: &document) { (table) throws(TOMLError) in
            let key = path[path.count - 1]
            switch table[key] {
            case nil: table[key] = .array([.table([:])])
            case .array(var items)? where items.allSatisfy({ if case .table = $0 { true } else { false } }):
                items.append(.table([:]))
                table[key] = .array(items)
            default: throw fail("\(path.joined(separator: ".")) is not an array of tables")
            }
        }
    }

    /// The value at `path`, walking as `modify` does (into the last element of arrays of tables).
    func value(at path: ArraySlice<String>, in table: [String: TOMLValue]) -> TOMLValue? {
        guard let first = path.first, let found = table[first] else { return nil }
        if path.count == 1 { return found }
        switch found {
        case .table(let child): return value(at: path.dropFirst(), in: child)
        case .array(let items): if case .table(let last)? = items.last { return value(at: path.dropFirst(), in: last) }
        default: break
        }
        return nil
    }

    /// Control characters other than tab, which TOML strings may not hold as they are.
    static func isControl(_ c: Unicode.Scalar) -> Bool { (c.value < 0x20 && c != "\t") || c.value == 0x7F }

    /// Each underscore in a number stands between two digits (hex digits after 0x).
    static func underscoresBetweenDigits(_ text: String) -> Bool {
        let scalars = Array(text.unicodeScalars)
        // Hexadecimal digits only in a hexadecimal integer: "1e_5" has no digit before its "_".
        let hex = text.hasPrefix("0x")
        func digit(_ c: Unicode.Scalar) -> Bool { hex ? c.properties.isASCIIHexDigit : ("0"..."9").contains(c) }
        for (index, c) in scalars.enumerated() where c == "_" {
            guard index > 0, index + 1 < scalars.count, digit(scalars[index - 1]), digit(scalars[index + 1]) else { return false }
        }
        return true
    }

    /// Walks to the table at `path` (creating tables, entering the last element of arrays of
    /// tables) and applies `body` to it.
    func modify(_ path: ArraySlice<String>, in table: inout [String: TOMLValue], _ body: (inout [String: TOMLValue]) throws(TOMLError) -> Void) throws(TOMLError) {
        guard let first = path.first else { return try body(&table) }
        switch table[first] {
        case nil:
            var child: [String: TOMLValue] = [:]
            try modify(path.dropFirst(), in: &child, body)
            table[first] = .table(child)
        case .table(var child)?:
            try modify(path.dropFirst(), in: &child, body)
            table[first] = .table(child)
        case .array(var items)?:
            guard case .table(var last)? = items.last else { throw fail("\(first) is not a table") }
            try modify(path.dropFirst(), in: &last, body)
            items[items.count - 1] = .table(last)
            table[first] = .array(items)
        default:
            throw fail("\(first) is a value, not a table")
        }
    }
}

extension String {
    fileprivate func replacingUnderscores() -> String { String(filter { $0 != "_" }) }
}
