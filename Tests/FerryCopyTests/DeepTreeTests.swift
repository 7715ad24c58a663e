import Foundation
import FerryCopy
import FerrySystem
import FerryTestSupport
import Testing

/// A tree deeper than PATH_MAX (4096 bytes of path) is walked through descriptors, a name at a
/// time, so no path is ever too long, hard links between its deepest files included.
@Suite struct DeepTreeTests {
    @Test func hardLinksDeeperThanPathMaxAreKept() throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-deep")
        defer { _ = try? Shell.run(["rm", "-rf", directory]) }  // rm walks by descriptors too
        let component = String(repeating: "d", count: 200)
        // 30 levels of 200 bytes: about 6,000 bytes of path to the files at the bottom. (Built and
        // read by chdir, a level at a time: the shell's cd would build the whole path, too long.)
        try Shell.run(["python3", "-c", """
            import os, sys
            os.makedirs(sys.argv[1] + "/src/tree"); os.makedirs(sys.argv[1] + "/dst")
            os.chdir(sys.argv[1] + "/src/tree")
            for _ in range(30):
                os.mkdir(sys.argv[2]); os.chdir(sys.argv[2])
            open("f", "w").write("deep data")
            os.link("f", "g")
            """, directory, component])
        _ = try engineCopy(directory + "/src", "tree", to: directory + "/dst", options: CopyOptions(jobs: 2))
        let inodes = try Shell.run(["python3", "-c", """
            import os, sys
            os.chdir(sys.argv[1] + "/dst/tree")
            for _ in range(30):
                os.chdir(sys.argv[2])
            f, g = os.stat("f"), os.stat("g")
            print(f.st_ino, f.st_nlink); print(g.st_ino, g.st_nlink); print(open("f").read())
            """, directory, component]).split(separator: "\n").map(String.init)
        #expect(inodes.count == 3, "\(inodes)")
        #expect(inodes.first == inodes.dropFirst().first, "the copies of f and g are not one file: \(inodes)")
        #expect(inodes.first?.hasSuffix(" 2") == true, "\(inodes)")
        #expect(inodes.last == "deep data")
    }
}

/// XFS keeps speculative preallocation past EOF on a file just written until write-back trims it:
/// a dense file's copy may then allocate more than its source, which is no lost sparseness. A
/// sparse file's copy that filled its holes still fails the verification.
@Suite("Verification and preallocation (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct PreallocationVerifyTests {
    @Test func blocksPastEndOfFileAreNotLostSparseness() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 1)
            let b = try fs.makeProjectDirectory("b", project: 2)
            try FileManager.default.createDirectory(atPath: a + "/d", withIntermediateDirectories: true)
            try TreeBuilder.write(a + "/d/dense", bytes: 1 << 20)
            try TreeBuilder.sparse(a + "/d/sparse", size: 64 << 20, dataBytes: 1 << 20, at: 0)
            let source = try FileDescriptor.openDirectory(Array(a.utf8))
            let target = try FileDescriptor.openDirectory(Array(b.utf8))
            defer { source.closeQuietly(); target.closeQuietly() }
            let engine = CopyEngine(options: CopyOptions(jobs: 2))
            let sources = [CopySource(directory: source, name: Array("d".utf8))]
            let staging = try engine.createStaging(in: target, id: "prealloc")
            defer { engine.discard(staging) }
            _ = try engine.stage(sources, into: staging)
            let copy = b + "/.ferry-staging-prealloc/d"
            // 1 MiB more allocated past EOF, the size kept: what speculative preallocation looks like.
            try Shell.run(["fallocate", "-n", "-o", String(1 << 20), "-l", String(1 << 20), copy + "/dense"])
            try Shell.run(["touch", "-r", a + "/d/dense", copy + "/dense"])
            try Shell.run(["touch", "-r", a + "/d", copy])
            try engine.verify(sources, in: staging)
            // The sparse file's holes filled (64 MiB written): lost sparseness, found.
            try Shell.run(["dd", "if=/dev/zero", "of=\(copy)/sparse", "bs=1M", "count=64", "conv=notrunc", "status=none"])
            try Shell.run(["touch", "-r", a + "/d/sparse", copy + "/sparse"])
            try Shell.run(["touch", "-r", a + "/d", copy])
            let error = #expect(throws: CopyError.self) { try engine.verify(sources, in: staging) }
            guard case .verificationFailed(let differences)? = error else { Issue.record("got \(String(describing: error))"); return }
            #expect(differences.map(\.path) == ["d/sparse"], "\(differences)")
        }
    }
}
