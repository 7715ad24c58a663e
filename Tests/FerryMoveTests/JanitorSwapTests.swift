import Foundation
import FerryCopy
import FerryJobs
import FerryMove
import FerrySystem
import FerryTestSupport
import Testing

@Suite("The janitor and a directory swapped into a staging name")
struct JanitorSwapTests {
    /// Anyone who may write in a destination directory can make a directory of theirs look like
    /// an abandoned staging directory (the mark is a `user.` attribute) and, once the janitor has
    /// looked at it, rename another directory they may rename but not empty — a colleague's tree —
    /// into its name. The janitor removes only what it checked: the mark is checked again on the
    /// descriptor the removal goes through. Before, it reopened the name and emptied whatever was
    /// there.
    @Test func theJanitorRemovesOnlyTheDirectoryWhoseMarkItChecked() async throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-janitor-swap")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let place = directory + "/project"
        let id = "0123456789abcdef"
        let staging = place + "/.ferry-staging-" + id
        try TreeBuilder.stagingDirectory(staging, id: id)
        try makeTree(place + "/colleague", files: 5)
        for path in [staging, place + "/colleague"] { try Shell.run(["touch", "-d", "2 days ago", path]) }
        let before = try TreeSnapshot.take(place + "/colleague")
        let store = HookedStore(try SQLiteTaskStore(path: directory + "/ferry.sqlite")) { asked in
            guard asked == id else { return }
            _ = rename(staging, place + "/decoy")
            _ = rename(place + "/colleague", staging)
        }
        let report = try await Janitor(engine: MoveEngine(store: store, settings: .init(worker: "janitor")))
            .run(directories: [Array(place.utf8)], recover: false)
        #expect(report.removed.isEmpty, "\(report.removed)")
        #expect(report.unmarked.count == 1, "\(report.unmarked)")
        let differences = try before.differences(to: TreeSnapshot.take(staging))
        #expect(differences.isEmpty, "\(differences)")
    }
}
