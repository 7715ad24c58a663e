import CFerrySystem
import Glibc

/// Writes for a process's own output, to a descriptor that may lead nowhere any more: a pipe whose
/// reader has gone (EPIPE, reported instead of SIGPIPE ending the process) or a terminal that has
/// hung up (EIO). What cannot be written is dropped: a long move must not die half done because
/// nobody reads its progress any more. (Foundation's `FileHandle.write(_:)` traps on such an error.)
public enum Console {
    /// Writes all of `buffer` to `fd`, retrying interrupted and partial writes; false once a write fails.
    @discardableResult
    public static func write(_ buffer: UnsafeRawBufferPointer, to fd: Int32) -> Bool {
        var offset = 0
        while offset < buffer.count {
            let written = cferry_write_nosigpipe(fd, buffer.baseAddress! + offset, buffer.count - offset)
            if written > 0 {
                offset += written
            } else if written < 0 && errno == EINTR {
                continue
            } else {
                return false
            }
        }
        return true
    }

    @discardableResult
    public static func write(_ bytes: [UInt8], to fd: Int32) -> Bool {
        bytes.withUnsafeBytes { write($0, to: fd) }
    }

    /// C0 controls, DEL and C1 controls: what drives a terminal rather than shows on it.
    public static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value)
    }

    /// Text for a terminal: control characters (an escape sequence that would drive it, a
    /// carriage return that would overwrite what is shown) escaped as `\xNN`, each of their
    /// UTF-8 bytes; newlines and tabs kept unless `oneLine`.
    public static func printable(_ text: String, oneLine: Bool = false) -> String {
        guard text.unicodeScalars.contains(where: { isControl($0) && (oneLine || ($0 != "\n" && $0 != "\t")) }) else { return text }
        var shown = ""
        for scalar in text.unicodeScalars {
            if isControl(scalar) && (oneLine || (scalar != "\n" && scalar != "\t")) {
                for byte in String(scalar).utf8 {
                    let hex = String(byte, radix: 16, uppercase: true)
                    shown += "\\x" + (hex.count == 1 ? "0" + hex : hex)
                }
            } else {
                shown.unicodeScalars.append(scalar)
            }
        }
        return shown
    }

    /// `text` to standard error, as it is (add the newline).
    public static func standardError(_ text: String) {
        write(Array(text.utf8), to: STDERR_FILENO)
    }

    /// `text` to standard output, as it is (add the newline).
    public static func standardOutput(_ text: String) {
        write(Array(text.utf8), to: STDOUT_FILENO)
    }
}
