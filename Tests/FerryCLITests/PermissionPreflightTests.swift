import Foundation
import FerrySystem
import FerryTestSupport
import Testing

/// What the kernel would refuse at the end of a move is refused before it starts: a source in a
/// directory the user may not write, another user's entry in a sticky directory, a destination the
/// user may not write. (Found late, the copy would be made and the source's deletion retried.)
@Suite("pre-flight permission checks (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct PermissionPreflightTests {
    @Test func movesTheKernelWouldRefuseAreRefusedFirst() throws {
        try withTestUser { user in
            try withLoopXFS { fs in
                let sandbox = try UserSandbox(fs)  // a and b: sticky, like shared project roots
                let (a, b) = (sandbox.a, sandbox.b)
                let readOnly = a + "/readonly"
                try FileManager.default.createDirectory(atPath: readOnly + "/data", withIntermediateDirectories: true)
                try TreeBuilder.write(readOnly + "/data/f", bytes: 1000)
                chmod(readOnly + "/data", 0o755)
                chmod(readOnly, 0o755)  // root's, not writable by the user
                try FileManager.default.createDirectory(atPath: a + "/roots-data", withIntermediateDirectories: true)
                try TreeBuilder.write(a + "/roots-data/f", bytes: 1000)
                chmod(a + "/roots-data", 0o755)
                let closed = b + "/closed"
                try FileManager.default.createDirectory(atPath: closed, withIntermediateDirectories: true)
                chmod(closed, 0o755)
                func asUser(_ arguments: String...) throws -> Shell.Result { try sandbox.ferry(as: user, arguments) }
                let notWritable = try asUser("move", readOnly + "/data", b)
                #expect(notWritable.status == 3, "\(notWritable.standardError)")
                #expect(notWritable.standardError.contains("may not remove entries from \(readOnly)"), "\(notWritable.standardError)")
                let sticky = try asUser("move", "--dry-run", a + "/roots-data", a + "/renamed")
                #expect(sticky.status == 3, "\(sticky.standardError)\(sticky.standardOutput)")
                #expect((sticky.standardError + sticky.standardOutput).contains("sticky directory"))
                let destination = try asUser("copy", readOnly + "/data", closed)
                #expect(destination.status == 3, "\(destination.standardError)")
                #expect(destination.standardError.contains("may not create entries in \(closed)"))
                // A copy out of the read-only directory is fine: nothing there needs removing.
                let copy = try asUser("copy", readOnly + "/data", b)
                #expect(copy.status == 0, "\(copy.standardError)")
                #expect(FileManager.default.fileExists(atPath: readOnly + "/data/f") && FileManager.default.fileExists(atPath: b + "/data/f"))
                #expect(FileManager.default.fileExists(atPath: a + "/roots-data/f"))
            }
        }
    }

    /// A user's move keeps the tree's group where the user is in it, setgid directory and all, as
    /// `cp -a` run by the user would: the project's collaborators keep their access. Before, an
    /// unprivileged copy changed no owner at all, and everything arrived with the user's own group.
    @Test func aUsersMoveKeepsTheGroupsTheUserIsIn() throws {
        try withTestUser(extraGroup: true) { user in
            try withLoopXFS { fs in
                let sandbox = try UserSandbox(fs)
                let group = try #require(user.extraGroup)
                let data = sandbox.a + "/data"
                try FileManager.default.createDirectory(atPath: data + "/sub", withIntermediateDirectories: true)
                try TreeBuilder.write(data + "/sub/f", bytes: 1000)
                try Shell.run(["chown", "-R", "\(user.name):\(group)", data])
                try Shell.run(["chmod", "2770", data, data + "/sub"])
                try Shell.run(["chmod", "0660", data + "/sub/f"])
                let moved = try sandbox.ferry(as: user, ["move", data, sandbox.b])
                #expect(moved.status == 0, "\(moved.standardError)")
                for path in ["", "/sub", "/sub/f"] {
                    let owner = try Shell.run(["stat", "-c", "%U:%G %a", sandbox.b + "/data" + path]).trimmingCharacters(in: .whitespacesAndNewlines)
                    #expect(owner == "\(user.name):\(group) \(path == "/sub/f" ? "660" : "2770")", "\(path)")
                }
            }
        }
    }

    /// A user's relink of a tree with directories nobody may write (0555, one with an access ACL):
    /// the relinked directories end read-only, as the sources were, ACL and all, and the move
    /// completes. (Removing Ferry's record from a directory needs write permission, which the user
    /// no longer had once its mode, or its ACL, was applied.)
    @Test func aUsersRelinkKeepsAReadOnlyDirectoryReadOnly() throws {
        try withTestUser { user in
            try withLoopXFS { fs in
                let sandbox = try UserSandbox(fs)
                let plain = try Self.plainDirectory(fs)
                let data = sandbox.a + "/data"
                try FileManager.default.createDirectory(atPath: data + "/sealed", withIntermediateDirectories: true)
                try FileManager.default.createDirectory(atPath: data + "/listed", withIntermediateDirectories: true)
                try TreeBuilder.write(data + "/f", bytes: 1000)
                try Shell.run(["chown", "-R", "\(user.name):\(user.name)", data])
                chmod(data + "/sealed", 0o555)
                chmod(data + "/listed", 0o555)
                try Shell.run(["setfacl", "-m", "u:nobody:rx", data + "/listed"])
                let snapshot = try TreeSnapshot.take(data)
                let moved = try sandbox.ferry(as: user, ["move", "--strategy", "relink", data, plain])
                #expect(moved.status == 0, "\(moved.standardError)")
                #expect(!FileManager.default.fileExists(atPath: data))
                let differences = snapshot.differences(to: try TreeSnapshot.take(plain + "/data"))
                #expect(differences.isEmpty, "\(differences)")
            }
        }
    }

    /// A user's move of a read-only tree (0555 top directory, 0444 files, each with a `user.*`
    /// attribute): it completes, the copy read-only as the source was, its attributes kept. The
    /// kernel lets a user set `user.*` attributes only on an inode they may write, and rename a
    /// directory to another parent only if they may write it (its `..`). A relink renames files
    /// out of their directories, so it takes the inner directory writable; asked to relink out of
    /// a read-only one, it refuses before touching anything.
    @Test(arguments: ["copy", "relink", "relink-refused"])
    func aUsersMoveOfAReadOnlyTreeKeepsItsAttributes(variant: String) throws {
        try withTestUser { user in
            try withLoopXFS { fs in
                let sandbox = try UserSandbox(fs)
                let plain = try Self.plainDirectory(fs)
                let strategy = variant == "copy" ? "copy" : "relink"
                let destination = strategy == "relink" ? plain : sandbox.b
                let data = sandbox.a + "/archive"
                try FileManager.default.createDirectory(atPath: data + "/inner", withIntermediateDirectories: true)
                try TreeBuilder.write(data + "/inner/f", bytes: 70_000)
                if strategy == "copy" { try TreeBuilder.write(data + "/g", bytes: 1000) }
                try Shell.run(["chown", "-R", "\(user.name):\(user.name)", data])
                for path in [data, data + "/inner", data + "/inner/f"] + (strategy == "copy" ? [data + "/g"] : []) {
                    try Shell.run(["runuser", "-u", user.name, "--", "setfattr", "-n", "user.checksum", "-v", "sum-of-\(path.count)", path])
                    if !path.hasSuffix("inner") && path != data { chmod(path, 0o444) }
                }
                if variant != "relink" { chmod(data + "/inner", 0o555) }
                chmod(data, 0o555)
                let snapshot = try TreeSnapshot.take(data)
                let moved = try sandbox.ferry(as: user, ["move", "--strategy", strategy, data, destination])
                if variant == "relink-refused" {
                    #expect(moved.status == 3, "\(moved.standardError)")
                    #expect(moved.standardError.contains("chmod -R u+w"), "\(moved.standardError)")
                    #expect(snapshot.differences(to: try TreeSnapshot.take(data)).isEmpty)
                    #expect(!FileManager.default.fileExists(atPath: destination + "/archive"))
                    return
                }
                #expect(moved.status == 0, "\(moved.standardError)")
                #expect(!FileManager.default.fileExists(atPath: data))
                let copy = destination + "/archive"
                let differences = snapshot.differences(to: try TreeSnapshot.take(copy))
                #expect(differences.isEmpty, "\(differences)")
                #expect(try Shell.run(["stat", "-c", "%a", copy]).trimmingCharacters(in: .whitespacesAndNewlines) == "555")
                let attribute = try Shell.run(["getfattr", "--only-values", "-n", "user.checksum", copy + "/inner/f"])
                #expect(attribute == "sum-of-\((data + "/inner/f").count)")
            }
        }
    }

    /// A shared directory without a project on the sandbox's filesystem: a file may be renamed into it.
    static func plainDirectory(_ fs: LoopXFS) throws -> String {
        let plain = fs.mountPoint + "/plain"
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        chmod(plain, 0o1777)
        return plain
    }
}
