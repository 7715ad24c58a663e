import Foundation
import FerrySystem
import FerryTestSupport
import Testing

/// A directory of the source replaced by a symlink to somewhere else while the move is copying
/// (the classic time-of-check/time-of-use attack on tree copiers): nothing outside the source
/// may be read into the copy, and the source's change must stop the move before anything is
/// deleted.
@Suite("symlink swapped in during a move (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct SymlinkSwapTests {
    @Test func aSwappedInSymlinkIsNeverFollowed() throws {
        try withLoopXFS(sizeMiB: 1024) { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            let outside = fs.directory + "/outside"
            try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
            try "not yours".write(toFile: outside + "/secret", atomically: false, encoding: .utf8)
            // Many directories, each slow enough to copy that the swap lands mid-copy.
            for i in 0..<40 {
                let directory = String(format: "%@/data/d%02d", a, i)
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                try Shell.run(["dd", "if=/dev/urandom", "of=\(directory)/file", "bs=1M", "count=4", "status=none"])
            }
            let environment = ["FERRY_DATABASE_URL": "sqlite://\(fs.directory)/tasks.sqlite"]
            let process = Process()
            process.executableURL = URL(fileURLWithPath: ferryBinary())
            process.arguments = ["move", "--jobs", "1", "--json", a + "/data", b]
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
            let output = Pipe()
            process.standardOutput = output
            process.standardError = FileHandle.nullDevice
            try process.run()
            waitUntilStaging(in: b, holds: "data")
            // Swap the last directories (not copied yet with one copier) for symlinks out of the root.
            for i in 30..<40 {
                let directory = String(format: "%@/data/d%02d", a, i)
                try FileManager.default.moveItem(atPath: directory, toPath: directory + "-moved")
                try FileManager.default.createSymbolicLink(atPath: directory, withDestinationPath: outside)
            }
            process.waitUntilExit()
            let result = try jsonObject(String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))

            // Whatever the outcome, the secret was never read into the destination project.
            let found = try Shell.run(["find", b, "-name", "secret"]).trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(found.isEmpty, "a file from outside the source was copied: \(found)")
            let status = result["status"] as? String
            #expect(status == "rolled_back" || status == "failed", "\(result)")
            // Caught as a changed source (while copying) or as a mismatch (by the verification).
            let code = (result["error"] as? [String: Any])?["code"] as? String
            #expect(code == "source.changed" || code == "verify.mismatch", "\(result)")
            // Nothing was published and the source, as the user left it, is all still there.
            #expect(try FileManager.default.contentsOfDirectory(atPath: b).isEmpty)
            #expect(try FileManager.default.contentsOfDirectory(atPath: a + "/data").count == 50)
            #expect(try String(contentsOfFile: outside + "/secret", encoding: .utf8) == "not yours")
        }
    }
}
