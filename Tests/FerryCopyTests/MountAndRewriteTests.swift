import Foundation
@testable import FerryCopy
import FerrySystem
import FerryTestSupport
import Glibc
import Testing

/// What a move's removal of its source must leave alone: a filesystem mounted inside the tree (a
/// bind mount here), and a file rewritten after its copy was made with its size and mtime as
/// before. Bind mounts need root.
@Suite("Mounts and rewrites the removal leaves alone (root)", .enabled(if: geteuid() == 0), .serialized)
struct MountAndRewriteTests {
    /// `src/tree` (with `a.txt` and an empty `mnt`) copied to `pub/tree`; the body gets the
    /// temporary directory. Everything mounted under it is unmounted afterwards.
    func withCopiedTree(_ body: (String) throws -> Void) throws {
        let root = try TemporaryDirectory.make(prefix: "ferry-mounts")
        defer {
            _ = try? Shell.run(["umount", "-R", root + "/src/tree/mnt"])
            try? FileManager.default.removeItem(atPath: root)
        }
        for directory in ["src/tree/mnt", "pub", "outside"] {
            try FileManager.default.createDirectory(atPath: root + "/" + directory, withIntermediateDirectories: true)
        }
        try TreeBuilder.write(root + "/src/tree/a.txt", bytes: 3000)
        try engineCopy(root + "/src", "tree", to: root + "/pub")
        try body(root)
    }

    func removeMoved(_ root: String) throws(CopyError) -> (count: Int, first: [String]) {
        let source = try! openDir(root + "/src")
        let published = try! openDir(root + "/pub")
        defer { source.closeQuietly(); published.closeQuietly() }
        return try CopyEngine(options: CopyOptions(jobs: 2)).removeMoved([CopySource(directory: source, name: Array("tree".utf8))],
                                                                           publishedIn: published)
    }

    /// A filesystem mounted in the source after its copy was made, holding a file that the copy
    /// happens to hold too (same name, size and mtime): the removal stops at the mount, and what
    /// the mount holds (it lives elsewhere) is not touched.
    @Test func theRemovalNeverEntersAMount() throws {
        try withCopiedTree { root in
            try TreeBuilder.write(root + "/outside/precious", bytes: 5000)
            try Shell.run(["cp", "-p", root + "/outside/precious", root + "/pub/tree/mnt/precious"])
            try Shell.run(["mount", "--bind", root + "/outside", root + "/src/tree/mnt"])
            do {
                _ = try removeMoved(root)
                Issue.record("the removal went through a mount")
            } catch let error as CopyError {
                guard case .mountPoint(let path) = error else { Issue.record("not a mount refusal: \(error)"); return }
                #expect(path == "tree/mnt")
            }
            try Shell.run(["umount", root + "/src/tree/mnt"])
            #expect(FileManager.default.fileExists(atPath: root + "/outside/precious"), "what the mount held is where it lives")
        }
    }

    /// A filesystem mounted over the named source itself after its copy was made (a move refuses
    /// a mount point as its source before it starts): the removal does not empty it.
    @Test func theRemovalDoesNotEmptyAMountOverTheSource() throws {
        try withCopiedTree { root in
            try Shell.run(["cp", "-p", root + "/src/tree/a.txt", root + "/outside/a.txt"])
            try Shell.run(["mount", "--bind", root + "/outside", root + "/src/tree"])
            defer { _ = try? Shell.run(["umount", root + "/src/tree"]) }
            do {
                _ = try removeMoved(root)
                Issue.record("the removal went into a mount over the source")
            } catch let error as CopyError {
                guard case .mountPoint = error else { Issue.record("not a mount refusal: \(error)"); return }
            }
            #expect(FileManager.default.fileExists(atPath: root + "/outside/a.txt"))
        }
    }

    /// The pre-flight measurement refuses a tree with a mount inside, and measures a mount point
    /// named as the source itself.
    @Test func theMeasurementRefusesAMountInsideOnly() throws {
        try withCopiedTree { root in
            try TreeBuilder.write(root + "/outside/precious", bytes: 5000)
            try Shell.run(["mount", "--bind", root + "/outside", root + "/src/tree/mnt"])
            let src = try openDir(root + "/src")
            let tree = try openDir(root + "/src/tree")
            defer { src.closeQuietly(); tree.closeQuietly() }
            let engine = CopyEngine(options: CopyOptions(jobs: 2))
            do {
                _ = try engine.measure([CopySource(directory: src, name: Array("tree".utf8))], reporting: false)
                Issue.record("a tree with a mount inside was measured")
            } catch let error as CopyError {
                guard case .mountPoint = error else { Issue.record("not a mount refusal: \(error)"); return }
            }
            let named = try engine.measure([CopySource(directory: tree, name: Array("mnt".utf8))], reporting: false)
            #expect(named.files == 1 && named.bytes == 5000)
        }
    }

    /// A file rewritten after its copy was made, with its size and mtime put back (`touch -r`):
    /// left in the source, counted as a survivor; so is one given an attribute since (the copy
    /// lacks it). One whose status only changed (a mode changed and put back, as `chattr -i` does)
    /// goes: its bytes and attributes are the copy's. Two names of one inode
    /// both go (removing the first moves the second's ctime on).
    @Test func aFileRewrittenWithItsMtimePutBackStays() throws {
        try withCopiedTree { root in
            let tree = root + "/src/tree"
            try FileManager.default.linkItem(atPath: tree + "/a.txt", toPath: tree + "/mnt/link")
            try FileManager.default.removeItem(atPath: root + "/pub/tree")
            try TreeBuilder.write(tree + "/b.txt", bytes: 4096, seed: 1)
            try TreeBuilder.write(tree + "/c.txt", bytes: 4096, seed: 3)
            try TreeBuilder.write(tree + "/d.txt", bytes: 4096, seed: 4)
            try engineCopy(root + "/src", "tree", to: root + "/pub")
            let mode = try Shell.run(["stat", "-c", "%a", tree + "/c.txt"]).trimmingCharacters(in: .whitespacesAndNewlines)
            try Shell.run(["chmod", "000", tree + "/c.txt"])
            try Shell.run(["chmod", mode, tree + "/c.txt"])
            try Shell.run(["setfattr", "-n", "user.added", "-v", "after the copy", tree + "/d.txt"])
            try Shell.run(["cp", "-p", tree + "/b.txt", root + "/reference"])
            try TreeBuilder.write(tree + "/b.txt", bytes: 4096, seed: 2)
            try Shell.run(["touch", "-r", root + "/reference", tree + "/b.txt"])
            let rewritten = try Data(contentsOf: URL(fileURLWithPath: tree + "/b.txt"))
            let left = try removeMoved(root)
            #expect(left.count == 2 && Set(left.first) == ["tree/b.txt", "tree/d.txt"], "\(left)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: tree + "/b.txt")) == rewritten)
            #expect(!FileManager.default.fileExists(atPath: tree + "/a.txt") && !FileManager.default.fileExists(atPath: tree + "/mnt/link"))
            #expect(!FileManager.default.fileExists(atPath: tree + "/c.txt"))
        }
    }
}

@Suite("A resumed stage and default ACLs (root)", .enabled(if: geteuid() == 0))
struct ResumeACLTests {
    /// A directory an earlier attempt finished carries its source's default ACL; a file made in it
    /// by the resumed attempt must not inherit it when its source has no ACL.
    @Test func entriesRemadeInAFinishedDirectoryInheritNoACL() throws {
        let root = try TemporaryDirectory.make(prefix: "ferry-acl")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let tree = root + "/src/tree"
        try FileManager.default.createDirectory(atPath: tree + "/d", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/dest", withIntermediateDirectories: true)
        try TreeBuilder.write(tree + "/d/f", bytes: 100)
        try Shell.run(["setfacl", "-d", "-m", "u:nobody:rwx", tree + "/d"])  // after f: f has none
        let source = try openDir(root + "/src")
        let destination = try openDir(root + "/dest")
        defer { source.closeQuietly(); destination.closeQuietly() }
        let engine = CopyEngine(options: CopyOptions(jobs: 2))
        let sources = [CopySource(directory: source, name: Array("tree".utf8))]
        let staging = try engine.createStaging(in: destination, id: "acl")
        defer { staging.directory.closeQuietly() }
        _ = try engine.stage(sources, into: staging, resume: false, discardOnFailure: false)
        let staged = root + "/dest/" + PathDisplay.string(staging.name) + "/tree/d"
        #expect(try Shell.run(["getfacl", "-c", "-p", staged]).contains("default:user:nobody:rwx"))
        try FileManager.default.removeItem(atPath: staged + "/f")
        _ = try engine.stage(sources, into: staging, resume: true, discardOnFailure: false)
        let acl = try Shell.run(["getfacl", "-c", "-p", staged + "/f"])
        #expect(!acl.contains("nobody"), "\(acl)")
        #expect(try Shell.run(["getfacl", "-c", "-p", staged]).contains("default:user:nobody:rwx"), "the directory's own default comes back")
    }
}
