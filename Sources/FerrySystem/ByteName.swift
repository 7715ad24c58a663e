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

    /// For people: valid UTF-8 as is, other bytes escaped as `\xNN`.
    public var displayString: String { PathDisplay.string(self) }
}

public enum PathDisplay {
    public static func string(_ bytes: some Collection<UInt8>) -> String {
        let raw = Array(bytes)
        if let valid = String(validating: raw, as: UTF8.self) { return valid }
        var out = ""
        var index = 0
        while index < raw.count {
            let lead = raw[index]
            let length = lead < 0x80 ? 1 : lead >> 5 == 0x6 ? 2 : lead >> 4 == 0xE ? 3 : lead >> 3 == 0x1E ? 4 : 0
            if length > 0, index + length <= raw.count,
               let piece = String(validating: raw[index..<index + length], as: UTF8.self) {
                out += piece
                index += length
            } else {
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
