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
    /// `find` lists the one released file until `hsm_action` has been asked (restored), or always
    /// when a file `lost` exists (a restore that failed). `quota`: a fixture, or `quota` when given.
    func standIn(in directory: String, quota: String? = nil) throws -> String {
        let fixture = try #require(Bundle.module.resourceURL?.appendingPathComponent("Fixtures/lfs_quota_p_v2.17.txt").path)
        if let quota { try quota.write(toFile: directory + "/quota.txt", atomically: true, encoding: .utf8) }
        let script = """
            #!/bin/sh
            echo "$@" >> '\(directory)/lfs.log'
            case "$1" in
              quota) cat '\(quota == nil ? fixture : directory + "/quota.txt")' ;;
              find) if [ ! -e '\(directory)/asked' ] || [ -e '\(directory)/lost' ]; then printf '%s/rel\\351ased\\0' "$2"; fi ;;
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

    /// A restore the HSM could not carry out (here: the file stays released once nothing is
    /// pending) fails the task, naming the file, before a byte is copied; the source stays.
    @Test func aRestoreThatLeavesFilesReleasedFailsTheTask() async throws {
        try await withLoopXFSAsync { fs in
            let (a, b) = (try fs.makeProjectDirectory("a", project: 100), try fs.makeProjectDirectory("b", project: 200))
            try FileManager.default.createDirectory(atPath: a + "/data", withIntermediateDirectories: true)
            try Shell.run(["truncate", "-s", "1M", a + "/data/released"])
            let lfs = try standIn(in: fs.directory)
            _ = FileManager.default.createFile(atPath: fs.directory + "/lost", contents: nil)
            var planner = Planner(jobs: 2) { _, _ in LustreBackend(lfsPath: lfs) }
            planner.recall.pollInterval = .milliseconds(20)
            let store = try SQLiteTaskStore(path: fs.directory + "/tasks.sqlite")
            let engine = MoveEngine(store: store, settings: .init(worker: "w", jobs: 2), planner: planner)
            var options = TaskOptions()
            options.recall = true
            let task = try await store.create(NewTask(kind: .move, sources: [StoredPath(a + "/data")], destination: StoredPath(b), options: options, owner: "t"))
            let ended = await engine.run(try #require(try await store.claim(id: task.id, worker: "w", lease: .seconds(30))))
            #expect(ended.failure?.code == "hsm.restore_failed", "\(String(describing: ended.failure))")
            #expect(ended.failure?.message.contains("did not restore 1 of 1 files") == true, "\(String(describing: ended.failure))")
            #expect(FileManager.default.fileExists(atPath: a + "/data/released"))
            #expect(try FileManager.default.contentsOfDirectory(atPath: b).isEmpty)
        }
    }

    /// Only a source on Lustre can hold released files: a file with no blocks on XFS is a hole,
    /// moved as one into Lustre; a Lustre source's released files are refused even into XFS.
    /// A recall needs room for what it brings back: the released files' size counts.
    @Test func releasedFilesAreTheSourcesAndNeedRoom() async throws {
        try await withLoopXFSAsync { fs in
            let (a, b) = (try fs.makeProjectDirectory("a", project: 100), try fs.makeProjectDirectory("b", project: 200))
            let quota = """
                Disk quotas for prj 200 (pid 200):
                     Filesystem  kbytes  bquota  blimit  bgrace   files  iquota  ilimit  igrace
                    \(fs.mountPoint)       0       0     512       -       0       0 1000000       -

                """
            let lfs = try standIn(in: fs.directory, quota: quota)
            let store = try SQLiteTaskStore(path: fs.directory + "/tasks.sqlite")
            func run(_ name: String, lustre: String, recall: Bool = false) async throws -> TaskRecord {
                try FileManager.default.createDirectory(atPath: "\(a)/\(name)", withIntermediateDirectories: true)
                try TreeBuilder.write("\(a)/\(name)/online", bytes: 5000)
                try Shell.run(["truncate", "-s", "1M", "\(a)/\(name)/hole"])
                let planner = Planner(jobs: 2) { fd, path in
                    PathDisplay.string(path).hasPrefix(lustre) ? LustreBackend(lfsPath: lfs) : try Storage.backend(for: fd)
                }
                let engine = MoveEngine(store: store, settings: .init(worker: "w", jobs: 2), planner: planner)
                var options = TaskOptions()
                options.recall = recall
                let task = try await store.create(NewTask(kind: .move, sources: [StoredPath("\(a)/\(name)")], destination: StoredPath(b), options: options, owner: "t"))
                return await engine.run(try #require(try await store.claim(id: task.id, worker: "w", lease: .seconds(30))))
            }
            let intoLustre = try await run("fromxfs", lustre: b)
            #expect(intoLustre.status == .completed, "\(String(describing: intoLustre.failure))")
            #expect(FileManager.default.fileExists(atPath: b + "/fromxfs/hole"))
            let fromLustre = try await run("fromlustre", lustre: a)
            #expect(fromLustre.failure?.code == "hsm.released", "\(String(describing: fromLustre.failure))")
            #expect(FileManager.default.fileExists(atPath: a + "/fromlustre/hole"))
            // Into a Lustre project with 512 KiB left: the online file fits, the recalled MiB does not.
            let noRoom = try await run("recalled", lustre: "/", recall: true)
            #expect(noRoom.failure?.code == "quota.insufficient", "\(String(describing: noRoom.failure))")
            #expect(noRoom.failure?.message.contains("512 KiB") == true, "\(String(describing: noRoom.failure))")
            #expect(FileManager.default.fileExists(atPath: a + "/recalled/hole"))
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
