import CFerrySystem
import Glibc

/// `run`'s three pipes, driven by `poll` until both outputs end.
struct ChildProcessStreams {
    var input: FileDescriptor?
    var outputFD: FileDescriptor?
    var errorFD: FileDescriptor?
    var output: [UInt8] = []
    var error: [UInt8] = []
    /// At most this much standard output is taken (more fails the exchange, EFBIG): a program run
    /// as a user answers in pages, and a flood must not take the caller's memory. Standard error
    /// beyond `errorLimit` is read and dropped.
    static let outputLimit = 64 << 20
    static let errorLimit = 1 << 20

    init(input: FileDescriptor, output: FileDescriptor, error: FileDescriptor) {
        self.input = input
        self.outputFD = output
        self.errorFD = error
    }

    /// Returns false if `deadline` came before both outputs ended.
    mutating func exchange(_ bytes: [UInt8], until deadline: ContinuousClock.Instant?) throws(SystemError) -> Bool {
        var offset = 0
        if bytes.isEmpty { closeInput() } else if let input {
            let flags = fcntl(input.rawValue, F_GETFL)
            _ = fcntl(input.rawValue, F_SETFL, flags | O_NONBLOCK)
        }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while input != nil || outputFD != nil || errorFD != nil {
            var polled: [pollfd] = []
            if let input { polled.append(pollfd(fd: input.rawValue, events: Int16(POLLOUT), revents: 0)) }
            if let outputFD { polled.append(pollfd(fd: outputFD.rawValue, events: Int16(POLLIN), revents: 0)) }
            if let errorFD { polled.append(pollfd(fd: errorFD.rawValue, events: Int16(POLLIN), revents: 0)) }
            var timeout: CInt = -1
            if let deadline {
                let left = ContinuousClock.now.duration(to: deadline)
                if left <= .zero { return false }
                let milliseconds = left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1
                timeout = CInt(min(milliseconds, Int64(CInt.max)))
            }
            // A signal ends the wait early: round again, with the time left recomputed.
            if poll(&polled, nfds_t(polled.count), timeout) < 0 {
                if Glibc.errno == EINTR { continue }
                throw SystemError(errno: Glibc.errno, syscall: "poll")
            }
            for entry in polled where entry.revents != 0 {
                if entry.fd == input?.rawValue {
                    let written = bytes.withUnsafeBytes { raw in
                        cferry_write_nosigpipe(entry.fd, raw.baseAddress! + offset, min(raw.count - offset, 65536))
                    }
                    if written >= 0 {
                        offset += written
                        if offset == bytes.count { closeInput() }
                    } else if Glibc.errno == EPIPE {
                        closeInput()  // the child stopped reading: what it wrote still counts
                    } else if Glibc.errno != EAGAIN && Glibc.errno != EINTR {
                        throw SystemError(errno: Glibc.errno, syscall: "write")
                    }
                    continue
                }
                let isOutput = entry.fd == outputFD?.rawValue
                let count = try syscallRetrying("read") { buffer.withUnsafeMutableBytes { Glibc.read(entry.fd, $0.baseAddress, $0.count) } }
                if count == 0 {
                    if isOutput { outputFD?.closeQuietly(); outputFD = nil } else { errorFD?.closeQuietly(); errorFD = nil }
                } else if isOutput {
                    guard output.count + count <= Self.outputLimit else { throw SystemError(errno: EFBIG, syscall: "read") }
                    output += buffer[0..<count]
                } else if error.count < Self.errorLimit {
                    error += buffer[0..<min(count, Self.errorLimit - error.count)]
                }
            }
        }
        return true
    }

    mutating func closeInput() {
        input?.closeQuietly()
        input = nil
    }

    mutating func closeAll() {
        closeInput()
        outputFD?.closeQuietly()
        outputFD = nil
        errorFD?.closeQuietly()
        errorFD = nil
    }
}
