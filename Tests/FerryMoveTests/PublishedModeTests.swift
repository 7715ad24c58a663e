import Foundation
import FerryCopy
@testable import FerryMove
import FerrySystem
import FerryTestSupport
import Testing

/// A run that ended between giving a read-only directory owner write for its publishing rename
/// and giving its mode back left the published copy writable; the resumed commit puts the mode
/// back before it compares the copy with the source (which would call the source changed), and
/// changes nothing else.
@Suite struct PublishedModeTests {
    @Test func aPublishedDirectoryLeftWritableGetsItsSourcesModeBack() throws {
        let root = try TemporaryDirectory.make(prefix: "ferry-published-mode")
        defer { _ = try? Shell.run(["chmod", "-R", "u+w", root]); try? FileManager.default.removeItem(atPath: root) }
        for name in ["sealed", "open", "other"] {
            try FileManager.default.createDirectory(atPath: "\(root)/src/\(name)", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: "\(root)/dst/\(name)", withIntermediateDirectories: true)
        }
        chmod("\(root)/src/sealed", 0o555)
        chmod("\(root)/dst/sealed", 0o755)  // left so by the crash
        chmod("\(root)/src/open", 0o755)
        chmod("\(root)/dst/open", 0o700)    // not a difference of owner write alone: left alone
        chmod("\(root)/src/other", 0o555)
        chmod("\(root)/dst/other", 0o775)   // more than owner write: left for the verification to report
        let source = try FileDescriptor.openDirectory(Array("\(root)/src".utf8))
        let destination = try FileDescriptor.openDirectory(Array("\(root)/dst".utf8))
        defer { source.closeQuietly(); destination.closeQuietly() }
        MoveEngine.restoreReadOnlyModes(["sealed", "open", "other"].map { CopySource(directory: source, name: Array($0.utf8)) },
                                        publishedIn: destination)
        func mode(_ name: String) throws -> UInt32 { try destination.status(Array(name.utf8)).permissions }
        #expect(try mode("sealed") == 0o555)
        #expect(try mode("open") == 0o700)
        #expect(try mode("other") == 0o775)
    }
}
