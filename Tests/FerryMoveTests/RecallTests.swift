import Foundation
import FerryJobs
import FerryMove
import FerryStorage
import FerrySystem
import FerryTestSupport
import Testing

/// HSM-released files (Lustre): refused unless the user asks for a recall; with `--recall`, listed by
/// `lfs find --layout released`, restored with `lfs hsm_restore`, and waited for until `lfs
/// hsm_action` is idle — through a stand-in `lfs` on XFS, where a file with no blocks looks released.
@Suite("HSM recall (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct RecallTests {
    func standIn(in directory: String) throws -> String {
        let fixture = try #require(Bundle.module.resourceURL?.appendingPathComponent("Fixtures/lfs_quota_p_v2.17.txt").path)
        let script = """
            #!/bin/sh
            echo "$@" >> '\(directory)/lfs.log'
            case "$1" in
              quota) cat '\(fixture)' ;;
              find) printf '%s/rel\\351ased\\0' "$2" ;;
              hsm_restore) : ;;
              hsm_action)
                shift
                for f in "$@"; do
                  if [ -e '\(directory)/asked' ]; then echo "$f: NOOP"; else echo "$f: RESTORE running (0x0, 0x100000)"; fi
                done
                touch '\(directory)/asked' ;;
            esac
            """
        let path = directory + "/lfs"
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        try Shell.run(["chmod", "755", path])
        return path
    }

    @Test func releasedFilesAreRefusedOrRecalled() async throws {
        try await withLoopXFSAsync { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try FileManager.default.createDirectory(atPath: a + "/data", withIntermediateDirectories: true)
            try TreeBuilder.write(a + "/data/online", bytes: 5000)
            // Size, no blocks: "released". Named in Latin-1 (`rel\xE9ased`), not UTF-8: its name
            // must reach `lfs` as the bytes it is.
            try Shell.run(["sh", "-c", "truncate -s 1M \"$1/$(printf 'rel\\351ased')\"", "sh", a + "/data"])
            let lfs = try standIn(in: fs.directory)
            var planner = Planner(jobs: 2) { _, _ in LustreBackend(lfsPath: lfs) }
            planner.recall.pollInterval = .milliseconds(20)
            let store = try SQLiteTaskStore(path: fs.directory + "/tasks.sqlite")
            let engine = MoveEngine(store: store, settings: .init(worker: "w", jobs: 2), planner: planner)
            func run(_ options: TaskOptions) async throws -> TaskRecord {
                let task = try await store.create(NewTask(kind: .move, sources: [StoredPath(a + "/data")], destination: StoredPath(b), options: options, owner: "t"))
                return await engine.run(try #require(try await store.claim(id: task.id, worker: "w", lease: .seconds(30))))
            }
            let refused = try await run(TaskOptions())
            #expect(refused.failure?.code == "hsm.released")
            #expect(refused.failure?.message.contains("--recall") == true)
            var recall = TaskOptions()
            recall.recall = true
            let recalled = try await run(recall)
            #expect(recalled.status == .completed, "\(String(describing: recalled.failure))")
            let log = try Data(contentsOf: URL(fileURLWithPath: fs.directory + "/lfs.log")).split(separator: UInt8(ascii: "\n")).map(Array.init)
            let released = Array("\(a)/data/rel".utf8) + [0xE9] + Array("ased".utf8)
            #expect(log.contains(Array("find \(a)/data --layout released --print0".utf8)))
            #expect(log.contains(Array("hsm_restore ".utf8) + released), "\(log.map { PathDisplay.string($0) })")
            #expect(log.filter { $0 == Array("hsm_action ".utf8) + released }.count == 2)  // pending, then idle
            let history = try await store.events(recalled.id).map(\.message)
            #expect(history.contains("1 files restored from the HSM archive"))
        }
    }

    @Test func hsmActionParser() throws {
        let entries = try LfsHSMActionParser.parse("/mnt/l/a: NOOP\n/mnt/l/odd: name: RESTORE running (0x0, 0x100000)\n/mnt/l/c: ARCHIVE SUCCEED\n")
        #expect(entries.map(\.path) == ["/mnt/l/a", "/mnt/l/odd: name", "/mnt/l/c"])
        #expect(entries.map(\.isIdle) == [true, false, true])
        #expect(throws: LustreParseError.self) { try LfsHSMActionParser.parse("garbage\n") }
        #expect(throws: LustreParseError.self) { try LfsHSMActionParser.parse("") }
    }
}
