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

    /// Setting the mark takes only write permission on a directory. A colleague's tree that is
    /// writable by the group (a shared project directory, its subdirectories each the colleague's
    /// own) could be renamed into a staging name and marked by anyone in the group, and a janitor
    /// running as root would then remove what none of them may. Ferry makes its staging
    /// directories private to their owner; a marked directory others may write to is not Ferry's.
    @Test func aMarkedDirectoryOthersMayWriteIsNotRemoved() async throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-janitor-shared")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let place = directory + "/project"
        let shared = place + "/.ferry-staging-00000000000000aa", own = place + "/.ferry-staging-00000000000000bb"
        try TreeBuilder.stagingDirectory(shared, id: "00000000000000aa", permissions: 0o2770)
        try TreeBuilder.stagingDirectory(own, id: "00000000000000bb")
        for path in [shared, own] {
            try makeTree(path + "/tree", files: 3)
            try Shell.run(["touch", "-d", "2 days ago", path])
        }
        let before = try TreeSnapshot.take(shared)
        let janitor = Janitor(engine: MoveEngine(store: try SQLiteTaskStore(path: directory + "/ferry.sqlite"), settings: .init(worker: "janitor")))
        let report = try await janitor.run(directories: [Array(place.utf8)], recover: false)
        // The private one, unknown to the database and old, goes: the mark and the age suffice.
        #expect(report.removed == [own], "\(report)")
        #expect(report.unmarked == [shared], "\(report)")
        let differences = try before.differences(to: TreeSnapshot.take(shared))
        #expect(differences.isEmpty, "\(differences)")
    }

    /// A staging directory copied elsewhere (`cp -a` of what a stopped commit left, kept as a
    /// backup) carries the mark, the private mode and the old mtime along. The mark names the
    /// directory it was made in, so the copy is not Ferry's to remove; the original still is.
    @Test func aCopyOfAStagingDirectoryElsewhereIsNotRemoved() async throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-janitor-copied")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let place = directory + "/project", backup = directory + "/backup"
        let name = "/.ferry-staging-00000000000000cc"
        try TreeBuilder.stagingDirectory(place + name, id: "00000000000000cc")
        try makeTree(place + name + "/tree", files: 3)
        try Shell.run(["touch", "-d", "2 days ago", place + name])
        try FileManager.default.createDirectory(atPath: backup, withIntermediateDirectories: true)
        try Shell.run(["cp", "-a", place + name, backup + name])
        let before = try TreeSnapshot.take(backup + name)
        let janitor = Janitor(engine: MoveEngine(store: try SQLiteTaskStore(path: directory + "/ferry.sqlite"), settings: .init(worker: "janitor")))
        let report = try await janitor.run(directories: [Array(place.utf8), Array(backup.utf8)], recover: false)
        #expect(report.removed == [place + name], "\(report)")
        #expect(report.unmarked == [backup + name], "\(report)")
        let differences = try before.differences(to: TreeSnapshot.take(backup + name))
        #expect(differences.isEmpty, "\(differences)")
    }
}
