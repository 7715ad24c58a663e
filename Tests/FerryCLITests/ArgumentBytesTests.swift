import Foundation
import FerrySystem
import FerryTestSupport
import Testing

/// Paths given on the command line reach Ferry as their bytes: `caf\xE9` (Latin-1) is moved as
/// itself, never read as `caf\u{FFFD}` — which is another file's name.
@Suite("command-line paths as bytes")
struct ArgumentBytesTests {
    /// `ferry ARGUMENTS` with arguments as bytes (Foundation's `Process` can only pass UTF-8).
    func ferry(_ arguments: [ByteString]) throws -> (status: Int32, error: String) {
        let outcome = try ChildProcess.run(executable: ferryBinary(), byteArguments: arguments,
                                           environment: ["FERRY_DATABASE_URL": testDatabase, "PATH": "/usr/bin:/bin"], identity: nil)
        guard case .exited(let status)? = outcome.termination else { return (-1, "") }
        return (status, String(decoding: outcome.standardError, as: UTF8.self))
    }

    @Test func aNameThatIsNotUTF8IsMovedAndCopiedAsItself() throws {
        let directory = NSTemporaryDirectory() + "ferry-argument-bytes-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let base = Array(directory.utf8) + [0x2F]
        let latin1 = base + Array("caf".utf8) + [0xE9]
        let lookalike = base + Array("caf\u{FFFD}".utf8)
        func cString(_ path: ByteString) -> [CChar] { path.map { CChar(bitPattern: $0) } + [0] }
        for (path, content) in [(latin1, "latin-1"), (lookalike, "replacement")] {
            let fd = Glibc.open(cString(path), O_WRONLY | O_CREAT | O_EXCL, 0o600)
            #expect(fd >= 0)
            #expect(Array(content.utf8).withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == content.utf8.count)
            close(fd)
        }
        func content(_ path: ByteString) -> String? {
            let fd = Glibc.open(cString(path), O_RDONLY)
            guard fd >= 0 else { return nil }
            defer { close(fd) }
            var buffer = [UInt8](repeating: 0, count: 64)
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            return count < 0 ? nil : String(decoding: buffer[..<count], as: UTF8.self)
        }
        // The front end's own rename (same filesystem, no options)…
        let moved = try ferry([Array("move".utf8), latin1, base + Array("moved".utf8)])
        #expect(moved.status == 0, "\(moved.error)")
        #expect(content(base + Array("moved".utf8)) == "latin-1")
        #expect(content(lookalike) == "replacement")
        // …and the engine's copy task, handed the same bytes through exec.
        let copied = try ferry([Array("copy".utf8), Array("--verify=checksum".utf8), base + Array("moved".utf8), latin1])
        #expect(copied.status == 0, "\(copied.error)")
        #expect(content(latin1) == "latin-1")
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        #expect(names.count == 3, "\(names)")
        let moveBack = try ferry([Array("move".utf8), Array("--verify=checksum".utf8), latin1, base + Array("again".utf8)])
        #expect(moveBack.status == 0, "\(moveBack.error)")
        #expect(content(base + Array("again".utf8)) == "latin-1")
        #expect(content(lookalike) == "replacement")
        // Valid UTF-8 is taken as it is, even with the characters that stand for bytes in the
        // text form of names that are not (U+F700–U+F7FF): it names itself, not those bytes.
        let privateUse = base + Array("p\u{F7E9}".utf8)
        let fd = Glibc.open(cString(privateUse), O_WRONLY | O_CREAT | O_EXCL, 0o600)
        #expect(fd >= 0)
        close(fd)
        let plain = try ferry([Array("move".utf8), privateUse, base + Array("plain".utf8)])
        #expect(plain.status == 0, "\(plain.error)")
        #expect(content(base + Array("plain".utf8)) == "")
        #expect(content(base + Array("p".utf8) + [0xE9]) == nil)
    }
}
