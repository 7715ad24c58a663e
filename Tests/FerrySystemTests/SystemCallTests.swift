import Foundation
import FerrySystem
import FerryTestSupport
import Glibc
import Testing

/// Syscall wrappers on a real loop-mounted XFS (needs root): typed errno cases, byte names,
/// project attributes, sparse seeking, clone support and path resolution beneath a root.
@Suite("FerrySystem on loop XFS (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct SystemCallTests {
    @Test func renameAcrossProjectsIsTypedCrossDevice() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try Data("x".utf8).write(to: URL(fileURLWithPath: a + "/f"))
            let from = try FileDescriptor.openDirectory(Array(a.utf8))
            let to = try FileDescriptor.openDirectory(Array(b.utf8))
            defer { from.closeQuietly(); to.closeQuietly() }
            let error = #expect(throws: SystemError.self) { try rename(from: from, Array("f".utf8), to: to, Array("f".utf8)) }
            #expect(error?.code == .crossDevice)
            #expect(error?.errnoName == "EXDEV")
            #expect(error?.description.contains("renameat2") == true)
            // The failed rename left the source where it was.
            #expect(FileManager.default.fileExists(atPath: a + "/f"))
            #expect(try from.projectAttributes() == ProjectAttributes(projectID: 100, inherit: true))
            #expect(try to.projectAttributes() == ProjectAttributes(projectID: 200, inherit: true))
        }
    }

    @Test func renameNoReplaceAndExchange() throws {
        try withLoopXFS { fs in
            let dir = try FileDescriptor.openDirectory(Array(fs.mountPoint.utf8))
            defer { dir.closeQuietly() }
            try Data("one".utf8).write(to: URL(fileURLWithPath: fs.mountPoint + "/one"))
            try Data("two".utf8).write(to: URL(fileURLWithPath: fs.mountPoint + "/two"))
            let error = #expect(throws: SystemError.self) {
                try rename(from: dir, Array("one".utf8), to: dir, Array("two".utf8), flags: .noReplace)
            }
            #expect(error?.code == .exists)
            #expect(try String(contentsOfFile: fs.mountPoint + "/two", encoding: .utf8) == "two")
            try rename(from: dir, Array("one".utf8), to: dir, Array("two".utf8), flags: .exchange)
            #expect(try String(contentsOfFile: fs.mountPoint + "/two", encoding: .utf8) == "one")
            #expect(try String(contentsOfFile: fs.mountPoint + "/one", encoding: .utf8) == "two")
        }
    }

    @Test func byteNamesSurviveListingAndStat() throws {
        try withLoopXFS { fs in
            let dir = try FileDescriptor.openDirectory(Array(fs.mountPoint.utf8))
            defer { dir.closeQuietly() }
            let invalid: ByteString = [0x62, 0x61, 0x64, 0xFF, 0xFE, 0x0A, 0x6E]  // "bad\xff\xfe\nn"
            let long = ByteString(repeating: UInt8(ascii: "L"), count: 255)
            for name in [invalid, long] {
                let fd = try dir.openAt(name, [.writeOnly, .create, .exclusive])
                fd.closeQuietly()
            }
            let tooLong = ByteString(repeating: UInt8(ascii: "L"), count: 256)
            #expect((#expect(throws: SystemError.self) { try dir.openAt(tooLong, [.writeOnly, .create]) })?.code == .nameTooLong)
            for i in 0..<3000 { try dir.makeDirectory(Array("d\(i)".utf8)) }
            let stream = DirectoryStream(dir, bufferSize: 4096)
            var names = Set<ByteString>()
            while let entry = try stream.next() { names.insert(entry.name) }
            #expect(names.count == 3002)
            #expect(names.contains(invalid) && names.contains(long))
            #expect(try dir.status(invalid).kind == .regular)
            #expect(PathDisplay.string(invalid) == "bad\\xFF\\xFE\\x0An", "a newline in a name is shown escaped too")
            #expect(PathText.encode(invalid) == "bad\u{F7FF}\u{F7FE}\nn" && PathText.decode(PathText.encode(invalid)) == invalid)
        }
    }

    /// `PathText` gives every byte string a text of its own and takes it back: valid UTF-8 as it
    /// is, any other byte (a lone continuation, a truncated or overlong sequence, an encoded
    /// surrogate) and the UTF-8 of the escape range itself as escapes.
    @Test func pathTextGoesBothWaysForEveryByteString() {
        #expect(PathText.encode(Array("plain/é/\u{1F600}".utf8)) == "plain/é/\u{1F600}")
        #expect(PathText.encode([0x63, 0x61, 0x66, 0xE9]) == "caf\u{F7E9}")
        #expect(PathText.encode(Array("\u{F7E9}".utf8)) == "\u{F7EF}\u{F79F}\u{F7A9}")  // not the same as [0xE9]
        #expect(PathText.encode([0xC0, 0xAF]) == "\u{F7C0}\u{F7AF}")  // overlong "/"
        #expect(PathText.encode([0xED, 0xA0, 0x80]) == "\u{F7ED}\u{F7A0}\u{F780}")  // a surrogate
        #expect(PathText.encode([0xE2, 0x82]) == "\u{F7E2}\u{F782}")  // truncated
        #expect(PathText.decode("caf\u{F7E9}") == [0x63, 0x61, 0x66, 0xE9])
        // Shown, a name holding an escape character does not read as its Latin-1 twin.
        #expect(PathDisplay.string(Array("caf\u{F7E9}".utf8)) == "caf\\xEF\\x9F\\xA9")
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            // Bytes drawn mostly from the ranges UTF-8 sequences are made of.
            let pool: [ClosedRange<UInt8>] = [0x00...0x7F, 0x80...0xBF, 0xC0...0xF7, 0xEF...0xEF, 0xF8...0xFF]
            let bytes: ByteString = (0..<Int.random(in: 0...6, using: &generator)).map { _ in
                UInt8.random(in: pool.randomElement(using: &generator)!, using: &generator)
            }
            // Decoding undoes encoding: no two byte strings share a text.
            let text = PathText.encode(bytes)
            #expect(PathText.decode(text) == bytes, "\(bytes)")
            // The web UI shows the text with each escape, and each byte of a control character, as
            // \xNN: the display the CLI gives. (It keeps newlines and tabs, which its messages
            // hold, and which HTML text shows as spaces.)
            func escaped(_ byte: UInt32) -> String {
                let hex = String(byte, radix: 16, uppercase: true)
                return "\\x" + (hex.count == 1 ? "0" + hex : hex)
            }
            let shown = text.unicodeScalars.map { scalar -> String in
                if Console.isControl(scalar) { return String(scalar).utf8.map { escaped(UInt32($0)) }.joined() }
                guard (0xF700...0xF7FF).contains(scalar.value) else { return String(scalar) }
                return escaped(scalar.value - 0xF700)
            }.joined()
            #expect(shown == PathDisplay.string(bytes), "\(bytes)")
        }
    }

    @Test func typedErrorsForCommonFailures() throws {
        try withLoopXFS { fs in
            let dir = try FileDescriptor.openDirectory(Array(fs.mountPoint.utf8))
            defer { dir.closeQuietly() }
            #expect((#expect(throws: SystemError.self) { try dir.status(Array("missing".utf8)) })?.code == .notFound)
            try dir.makeDirectory(Array("d".utf8))
            #expect((#expect(throws: SystemError.self) { try dir.makeDirectory(Array("d".utf8)) })?.code == .exists)
            try dir.makeSymlink(Array("link".utf8), target: Array("d".utf8))
            let loop = #expect(throws: SystemError.self) { try dir.openAt(Array("link".utf8), [.directory, .noFollow]) }
            #expect(loop?.code == .symlinkLoop || loop?.code == .notDirectory)
            try Data("x".utf8).write(to: URL(fileURLWithPath: fs.mountPoint + "/d/f"))
            #expect((#expect(throws: SystemError.self) { try dir.removeEntry(Array("d".utf8), isDirectory: true) })?.code == .notEmpty)
            // Hard links: EEXIST for a taken name.
            #expect((#expect(throws: SystemError.self) { try link(from: dir, Array("d/f".utf8), to: dir, Array("d".utf8)) })?.code == .exists)
        }
    }

    @Test func spaceRunsOutWithTypedNoSpace() throws {
        try withLoopXFS(sizeMiB: 300) { fs in
            let dir = try FileDescriptor.openDirectory(Array(fs.mountPoint.utf8))
            defer { dir.closeQuietly() }
            let fd = try dir.openAt(Array("fill".utf8), [.writeOnly, .create])
            defer { fd.closeQuietly() }
            let error = #expect(throws: SystemError.self) { try fd.allocate(offset: 0, length: 400 << 20) }
            #expect(error?.code == .noSpace)
        }
    }

    @Test func timesToTheNanosecondAndOwnership() throws {
        try withLoopXFS { fs in
            let dir = try FileDescriptor.openDirectory(Array(fs.mountPoint.utf8))
            defer { dir.closeQuietly() }
            let fd = try dir.openAt(Array("t".utf8), [.writeOnly, .create])
            defer { fd.closeQuietly() }
            let when = Timespec(seconds: 1_234_567_890, nanoseconds: 123_456_789)
            try fd.setTimes(access: when, modification: when)
            try fd.changeOwner(uid: 65534, gid: 65534)
            try fd.changeMode(permissions: 0o4751)
            let status = try fd.status()
            #expect(status.modificationTime == when && status.accessTime == when)
            #expect(status.uid == 65534 && status.gid == 65534)
            #expect(status.permissions == 0o4751)
        }
    }

    @Test func extendedAttributesAndACLs() throws {
        try withLoopXFS { fs in
            let path = fs.mountPoint + "/x"
            try Data().write(to: URL(fileURLWithPath: path))
            try Shell.run(["setfacl", "-m", "u:nobody:rw", path])
            let fd = try currentWorkingDirectory.openAt(Array(path.utf8), [])
            defer { fd.closeQuietly() }
            let value: ByteString = [0, 1, 2, 255]
            try ExtendedAttributes.set(fd, Array("user.bin".utf8), value)
            try ExtendedAttributes.set(fd, Array("trusted.t".utf8), Array("root only".utf8))
            let names = try ExtendedAttributes.names(fd)
            #expect(names.contains(Array("user.bin".utf8)))
            #expect(names.contains(Array("trusted.t".utf8)))
            #expect(names.contains(ExtendedAttributes.accessACL))
            #expect(try ExtendedAttributes.value(fd, Array("user.bin".utf8)) == value)
            #expect(try ExtendedAttributes.value(fd, Array("user.none".utf8)) == nil)
            try ExtendedAttributes.remove(fd, Array("user.bin".utf8))
            #expect(try ExtendedAttributes.value(fd, Array("user.bin".utf8)) == nil)
            // Symlinks, through the l* calls: trusted.* is allowed on them for root.
            let dir = try FileDescriptor.openDirectory(Array(fs.mountPoint.utf8))
            defer { dir.closeQuietly() }
            try dir.makeSymlink(Array("s".utf8), target: Array("/nowhere".utf8))
            try ExtendedAttributes.set(in: dir, symlink: Array("s".utf8), Array("trusted.l".utf8), [7])
            #expect(try ExtendedAttributes.value(in: dir, symlink: Array("s".utf8), Array("trusted.l".utf8)) == [7])
            #expect(try dir.readSymlink(Array("s".utf8)) == Array("/nowhere".utf8))
        }
    }

    @Test func sparseSeekingAndInKernelCopy() throws {
        try withLoopXFS { fs in
            let path = fs.mountPoint + "/sparse"
            try TreeBuilder.sparse(path, size: 64 << 20, dataBytes: 1 << 20, at: 8 << 20)
            let dir = try FileDescriptor.openDirectory(Array(fs.mountPoint.utf8))
            defer { dir.closeQuietly() }
            let source = try dir.openAt(Array("sparse".utf8), [])
            defer { source.closeQuietly() }
            #expect(try source.seekData(from: 0) == 8 << 20)
            #expect(try source.seekHole(from: 8 << 20) == 9 << 20)
            #expect(try source.seekData(from: 9 << 20) == nil)
            let target = try dir.openAt(Array("copy".utf8), [.writeOnly, .create])
            defer { target.closeQuietly() }
            var inOff: UInt64 = 8 << 20, outOff: UInt64 = 8 << 20
            let n = try source.copyRange(to: target, sourceOffset: &inOff, destinationOffset: &outOff, length: 1 << 20)
            #expect(n == 1 << 20 && inOff == 9 << 20 && outOff == 9 << 20)
            // reflink=0: FICLONE is refused as unsupported, which the engine takes as "use another way".
            let clone = try dir.openAt(Array("clone".utf8), [.writeOnly, .create])
            defer { clone.closeQuietly() }
            #expect((#expect(throws: SystemError.self) { try clone.cloneContents(of: source) })?.code == .notSupported)
        }
    }

    @Test func cloneWorksWithReflink() throws {
        try withLoopXFS(reflink: true) { fs in
            try TreeBuilder.write(fs.mountPoint + "/a", bytes: 1 << 20)
            let dir = try FileDescriptor.openDirectory(Array(fs.mountPoint.utf8))
            defer { dir.closeQuietly() }
            let source = try dir.openAt(Array("a".utf8), [])
            let target = try dir.openAt(Array("b".utf8), [.readWrite, .create])
            defer { source.closeQuietly(); target.closeQuietly() }
            try target.cloneContents(of: source)
            #expect(try target.status().size == 1 << 20)
            #expect(FileManager.default.contentsEqual(atPath: fs.mountPoint + "/a", andPath: fs.mountPoint + "/b"))
        }
    }

    @Test func filesystemStatisticsAndQuotaFailCleanly() throws {
        try withLoopXFS { fs in
            let dir = try FileDescriptor.openDirectory(Array(fs.mountPoint.utf8))
            defer { dir.closeQuietly() }
            let stats = try dir.filesystemStatistics()
            #expect(stats.magic == 0x5846_5342)
            #expect(stats.availableBytes > 400 << 20 && stats.availableBytes < 512 << 20)
            #expect(stats.freeInodes > 0)
            // This kernel has no quota support: a typed failure, not a crash.
            let error = #expect(throws: SystemError.self) {
                try QuotaControl.projectQuota(dir, project: 100, device: fs.loopDevice.map { Array($0.utf8) })
            }
            #expect(error != nil)
        }
    }

    @Test func pathsResolveBeneathTheRootOnly() throws {
        try withLoopXFS { fs in
            let rootPath = try fs.makeProjectDirectory("root", project: 1)
            try FileManager.default.createDirectory(atPath: rootPath + "/inside", withIntermediateDirectories: true)
            try Data("secret".utf8).write(to: URL(fileURLWithPath: fs.mountPoint + "/outside"))
            try Data("ok".utf8).write(to: URL(fileURLWithPath: rootPath + "/inside/file"))
            try FileManager.default.createSymbolicLink(atPath: rootPath + "/escape", withDestinationPath: "../outside")
            try FileManager.default.createSymbolicLink(atPath: rootPath + "/absolute", withDestinationPath: fs.mountPoint + "/outside")
            try FileManager.default.createSymbolicLink(atPath: rootPath + "/internal", withDestinationPath: "inside/file")
            let root = try FileDescriptor.openDirectory(Array(rootPath.utf8))
            defer { root.closeQuietly() }
            for forceWalk in [false, true] {
                let ok = try PathResolver.open(beneath: root, Array("inside/file".utf8), [], forceWalk: forceWalk)
                ok.closeQuietly()
                // Directories, the root itself included (O_DIRECTORY must not be taken for O_TMPFILE).
                for directory in ["", "inside", "inside/"] {
                    let fd = try PathResolver.open(beneath: root, Array(directory.utf8), [.directory], forceWalk: forceWalk)
                    #expect(try fd.status().kind == .directory)
                    fd.closeQuietly()
                }
                for hostile in ["../outside", "inside/../../outside", fs.mountPoint + "/outside"] {
                    let error = #expect(throws: SystemError.self) {
                        try PathResolver.open(beneath: root, Array(hostile.utf8), [], forceWalk: forceWalk)
                    }
                    #expect(error?.code == .escapesRoot, "\(hostile) walk=\(forceWalk)")
                }
                for link in ["escape", "absolute", "internal"] {
                    let error = #expect(throws: SystemError.self) {
                        try PathResolver.open(beneath: root, Array(link.utf8), [], symlinks: .refuse, forceWalk: forceWalk)
                    }
                    #expect(error?.code == .symlinkRefused || error?.code == .escapesRoot, "\(link) walk=\(forceWalk)")
                }
            }
            // Following links is allowed only while they stay beneath the root.
            let inside = try PathResolver.open(beneath: root, Array("internal".utf8), [], symlinks: .followBeneath)
            inside.closeQuietly()
            for link in ["escape", "absolute"] {
                let error = #expect(throws: SystemError.self) {
                    try PathResolver.open(beneath: root, Array(link.utf8), [], symlinks: .followBeneath)
                }
                #expect(error?.code == .escapesRoot)
            }
            #expect(throws: SystemError.self) { try PathResolver.open(beneath: root, [0x61, 0, 0x62], []) }
        }
    }
}

@Suite struct BytePathTests {
    @Test func splitAndJoin() {
        #expect(BytePath.split(Array("a/b/c".utf8)) == (Array("a/b".utf8), Array("c".utf8)))
        #expect(BytePath.split(Array("/c".utf8)) == (Array("/".utf8), Array("c".utf8)))
        #expect(BytePath.split(Array("c/".utf8)) == (Array(".".utf8), Array("c".utf8)))
        #expect(BytePath.join(Array("a".utf8), Array("b".utf8)) == Array("a/b".utf8))
        #expect(BytePath.join([], Array("b".utf8)) == Array("b".utf8))
    }

    @Test func errorsNameTheCallAndTheErrno() {
        let error = SystemError(errno: EDQUOT, syscall: "write", path: "x")
        #expect(error.code == .quotaExceeded)
        #expect(error.description.contains("EDQUOT") && error.description.contains("write x"))
        #expect(SystemError(errno: EMLINK, syscall: "linkat").code == .tooManyLinks)
        #expect(SystemError(errno: ENOSPC, syscall: "write").code == .noSpace)
        #expect(SystemError(errno: EACCES, syscall: "openat").code == .permissionDenied)
        #expect(SystemError(errno: EIO, syscall: "read").code == .io)
    }
}
