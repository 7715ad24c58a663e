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

    /// `text` to standard error, as it is (add the newline).
    public static func standardError(_ text: String) {
        write(Array(text.utf8), to: STDERR_FILENO)
    }

    /// `text` to standard output, as it is (add the newline).
    public static func standardOutput(_ text: String) {
        write(Array(text.utf8), to: STDOUT_FILENO)
    }
}
