/// File names and relative paths are bytes: Linux allows any byte but `/` and NUL in a name, and
/// a name that is not valid UTF-8 must survive every operation. Strings appear only for display.
public typealias ByteString = [UInt8]

extension Array where Element == UInt8 {
    /// The bytes as a NUL-terminated C string for the duration of `body`.
    @inline(__always)
    public func withCPath<R, E: Error>(_ body: (UnsafePointer<CChar>) throws(E) -> R) throws(E) -> R {
        var terminated = self
        terminated.append(0)
        let result: Result<R, E> = terminated.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { chars in
                do throws(E) { return .success(try body(chars.baseAddress!)) } catch { return .failure(error) }
            }
        }
        return try result.get()
    }

    /// For people: valid UTF-8 as is, other bytes (and control characters) escaped as `\xNN`.
    public var displayString: String { PathDisplay.string(self) }
}

public enum PathDisplay {
    /// Also the characters `PathText` uses as escapes (U+F700…U+F7FF), byte by byte: displayed,
    /// a name holding one must not read as the name whose byte it stands for. So are control
    /// characters (C0, DEL, C1): a name someone chose, shown in a terminal or a log, must neither
    /// drive the terminal (escape sequences) nor start a line of its own.
    public static func string(_ bytes: some Collection<UInt8>) -> String {
        let raw = Array(bytes)
        if !raw.contains(where: { $0 < 0x20 || $0 == 0x7F || $0 == 0xC2 || $0 == 0xEF }), let valid = String(validating: raw, as: UTF8.self) {
            return valid
        }
        var out = ""
        var index = 0
        while index < raw.count {
            let lead = raw[index]
            let length = lead < 0x80 ? 1 : lead >> 5 == 0x6 ? 2 : lead >> 4 == 0xE ? 3 : lead >> 3 == 0x1E ? 4 : 0
            if length > 0, index + length <= raw.count,
               let piece = String(validating: raw[index..<index + length], as: UTF8.self),
               !piece.unicodeScalars.contains(where: { (0xF700...0xF7FF).contains($0.value) || Console.isControl($0) }) {
                out += piece
                index += length
            } else {
                // (An escape character's lead byte: its two continuation bytes follow here too.)
                let hex = String(lead, radix: 16, uppercase: true)
                out += "\\x" + (hex.count == 1 ? "0" + hex : hex)
                index += 1
            }
        }
        return out
    }

    /// Joins a directory's display path and an entry name.
    public static func join(_ parent: String, _ name: ByteString) -> String {
        parent.isEmpty ? string(name) : parent + "/" + string(name)
    }
}

extension String {
    /// The path's bytes, for the byte-based API.
    public var bytes: ByteString { Array(utf8) }
}

/// Paths as text that goes both ways: the REST API and the agents speak JSON, whose strings are
/// Unicode, while a Linux name is any bytes. Valid UTF-8 is itself; each byte that is not part of
/// valid UTF-8 becomes the private-use character U+F700 + byte (`\xFF` → U+F7FF). So that no name
/// reads as another, a name's own characters of that range are written byte by byte the same way.
/// `decode(encode(b)) == b` for every byte string; a lossy decoding (U+FFFD) would make two names
/// one, and a request for the one could reach the other.
public enum PathText {
    static let base: UInt32 = 0xF700

    public static func encode(_ bytes: some Collection<UInt8>) -> String {
        let raw = Array(bytes)
        // UTF-8 of U+F700…U+F7FF begins EF 9C…EF 9F: without EF, valid UTF-8 is its own text.
        if !raw.contains(0xEF), let valid = String(validating: raw, as: UTF8.self) { return valid }
        var scalars = String.UnicodeScalarView()
        func escape(_ byte: UInt8) { scalars.append(Unicode.Scalar(base + UInt32(byte))!) }
        var parser = Unicode.UTF8.ForwardParser()
        var input = raw.makeIterator()
        var offset = 0
        while true {
            switch parser.parseScalar(from: &input) {
            case .valid(let encoded):
                let scalar = Unicode.UTF8.decode(encoded)
                if (base...base + 0xFF).contains(scalar.value) { encoded.forEach(escape) } else { scalars.append(scalar) }
                offset += encoded.count
            case .error(let length):
                raw[offset..<offset + length].forEach(escape)
                offset += length
            case .emptyInput:
                return String(scalars)
            }
        }
    }

    public static func decode(_ text: String) -> ByteString {
        var bytes: ByteString = []
        bytes.reserveCapacity(text.utf8.count)
        // Escapes are EF 9C 80 … EF 9F BF in the text's UTF-8.
        guard text.utf8.contains(0xEF) else { return Array(text.utf8) }
        for scalar in text.unicodeScalars {
            if (base...base + 0xFF).contains(scalar.value) {
                bytes.append(UInt8(scalar.value - base))
            } else {
                bytes.append(contentsOf: String(scalar).utf8)
            }
        }
        return bytes
    }
}
