import Foundation
import FerryJobs
import FerryMove
import FerryStorage
import FerrySystem
import FerryTestSupport
import Testing

/// On Lustre 2.15 and later a file may be renamed across projects, so a cross-project move on one
/// filesystem relinks instead of copying; older servers (and every other filesystem) copy. The
/// version comes from `lfs --version`, here a stand-in `lfs` on XFS.
@Suite("relink chosen on Lustre 2.15+ (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct RelinkSelectionTests {
    func standIn(in directory: String, version: String) throws -> String {
        let fixture = try #require(Bundle.module.resourceURL?.appendingPathComponent("Fixtures/lfs_quota_p_v2.17.txt").path)
        let path = "\(directory)/lfs-\(version)"
        try """
            #!/bin/sh
            case "$1" in
              --version) echo "lfs \(version)" ;;
              quota) cat '\(fixture)' ;;
              *) exit 1 ;;
            esac
            """.write(toFile: path, atomically: true, encoding: .utf8)
        try Shell.run(["chmod", "755", path])
        return path
    }

    @Test func theStrategyFollowsTheLustreVersion() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try FileManager.default.createDirectory(atPath: a + "/data", withIntermediateDirectories: true)
            try TreeBuilder.write(a + "/data/f", bytes: 5000)
            func strategy(version: String, kind: TaskKind = .move) throws -> (Strategy, String) {
                let lfs = try standIn(in: fs.directory, version: version)
                let planner = Planner(jobs: 1) { _, _ in LustreBackend(lfsPath: lfs) }
                let transfer = try Transfer(sources: [Array((a + "/data").utf8)], destination: Array(b.utf8))
                let verdict = try planner.preflight(kind: kind, transfer: transfer, options: TaskOptions())
                return (verdict.strategy, verdict.summary)
            }
            let new = try strategy(version: "2.15.4")
            #expect(new.0 == .relink, "\(new.1)")
            #expect(new.1.hasPrefix("Relink 1 file (4.88 KiB) into project 200"), "\(new.1)")
            #expect(try strategy(version: "2.16.0_ddn3").0 == .relink)
            #expect(try strategy(version: "2.14.0").0 == .copy)
            #expect(try strategy(version: "2.15.4", kind: .copy).0 == .copy)
            // Within one project a rename is still cheapest.
            let lfs = try standIn(in: fs.directory, version: "2.15.4")
            let planner = Planner(jobs: 1) { _, _ in LustreBackend(lfsPath: lfs) }
            let same = try Transfer(sources: [Array((a + "/data").utf8)], destination: Array((a + "/renamed").utf8))
            #expect(try planner.preflight(kind: .move, transfer: same, options: TaskOptions()).strategy == .rename)
        }
    }
}
