import FerryMove
import FerrySystem
import FerryTestSupport
import Foundation
import Testing

@Suite("Paths a privileged process resolves beneath the roots")
struct PrivilegedPathTests {
    /// A symlink inside the roots is anyone's to plant in a directory of theirs. Root following
    /// one (an admin's task for a user) would act on whatever tree it names, one that user could
    /// not touch: as root, a path beneath the roots resolves through no symlink at all.
    @Test(.enabled(if: geteuid() == 0)) func rootFollowsNoSymlinkBeneathTheRoots() throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-privileged-path")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let root = directory + "/proj"
        try FileManager.default.createDirectory(atPath: root + "/victim/stuff", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/dest", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: root + "/mallory", withDestinationPath: root + "/victim")
        let roots = [Array(root.utf8)]
        let error = #expect(throws: SystemError.self) {
            _ = try Transfer(sources: [Array((root + "/mallory/stuff").utf8)], destination: Array((root + "/dest").utf8), roots: roots)
        }
        #expect(error?.code == .symlinkRefused, "\(String(describing: error))")
        #expect(error.map { MoveEngine.failure(for: $0).code } == "path.symlink")
        // The same tree named without the symlink is resolved as before.
        let direct = try Transfer(sources: [Array((root + "/victim/stuff").utf8)], destination: Array((root + "/dest").utf8), roots: roots)
        #expect(direct.finalPaths == [Array((root + "/dest/stuff").utf8)])
    }
}
