import Foundation
import FerrySystem
import FerryTestSupport
import Testing

/// The pre-flight margin of `ferry move` and `ferry copy`: `--margin` (percent), else
/// `FERRY_MARGIN`, else the configuration file's `margin` (fractions, as `ferry serve` reads
/// them), else 5%.
@Suite("ferry move's space margin (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct MarginTests {
    @Test func theMarginComesFromTheFlagTheEnvironmentOrTheConfiguration() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            var before = statvfs()
            #expect(statvfs(b, &before) == 0)
            let free = UInt64(before.f_bavail) * UInt64(before.f_frsize)
            // A file of free/2.4: with 5% it fits in what is left; with 90% it does not.
            try Shell.run(["fallocate", "-l", String(free * 10 / 24), a + "/big"])
            let configuration = fs.directory + "/ferry.toml"
            try "margin = 0.9\n".write(toFile: configuration, atomically: true, encoding: .utf8)

            let plain = try ferry("move", "--dry-run", a + "/big", b)
            #expect(plain.status == 0, "\(plain.standardOutput)\(plain.standardError)")
            let fromEnvironment = try ferry("move", "--dry-run", a + "/big", b, environment: ["FERRY_MARGIN": "0.9"])
            #expect(fromEnvironment.status == 3, "\(fromEnvironment.standardOutput)\(fromEnvironment.standardError)")
            #expect((fromEnvironment.standardOutput + fromEnvironment.standardError).contains("with a 90% margin"))
            let fromFile = try ferry("move", "--dry-run", "--config", configuration, a + "/big", b)
            #expect(fromFile.status == 3, "\(fromFile.standardOutput)\(fromFile.standardError)")
            let flagWins = try ferry("move", "--dry-run", "--config", configuration, "--margin", "5", a + "/big", b,
                                     environment: ["FERRY_MARGIN": "0.9"])
            #expect(flagWins.status == 0, "\(flagWins.standardOutput)\(flagWins.standardError)")
            let broken = try ferry("move", "--dry-run", a + "/big", b, environment: ["FERRY_MARGIN": "5"])
            #expect(broken.status == 2 && broken.standardError.contains("FERRY_MARGIN"), "\(broken.standardError)")
            #expect(try ferry("move", "--dry-run", "--margin", "100", a + "/big", b).status == 2)
            #expect(FileManager.default.fileExists(atPath: a + "/big"))
        }
    }
}
