import Foundation
import FerrySystem
import FerryTestSupport
import Testing

@Suite("ferry move, tasks, worker, janitor (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct MoveCLITests {
    /// A database of the test's own, so task listings are predictable.
    func database(_ fs: LoopXFS) -> [String: String] { ["FERRY_DATABASE_URL": "sqlite://\(fs.directory)/tasks.sqlite"] }

    @Test func dryRunSaysWhatWouldHappenAndChangesNothing() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try FileManager.default.createDirectory(atPath: a + "/data", withIntermediateDirectories: true)
            for i in 0..<12 { try TreeBuilder.write("\(a)/data/f\(i)", bytes: 100_000) }
            let copy = try ferry("move", "--dry-run", a + "/data", b, environment: database(fs))
            #expect(copy.status == 0)
            #expect(copy.standardOutput.hasPrefix("Copy 1.14 MiB, 12 files into project 200, which has"), "\(copy.standardOutput)")
            #expect(copy.standardOutput.contains("the source is deleted only after the copy is verified"))
            let rename = try ferry("move", "--dry-run", "--json", a + "/data", a + "/renamed", environment: database(fs))
            let verdict = try jsonObject(rename.standardOutput)
            #expect(verdict["strategy"] as? String == "rename")
            #expect((verdict["summary"] as? String)?.hasPrefix("Instant") == true)
            #expect(try FileManager.default.contentsOfDirectory(atPath: a) == ["data"])
            #expect(try FileManager.default.contentsOfDirectory(atPath: b).isEmpty)
            let tasks = try jsonObject(try ferry("tasks", "--all", "--json", environment: database(fs)).standardOutput)
            #expect((tasks["tasks"] as? [Any])?.isEmpty == true)
            // A rename asked for across projects is refused before it is tried, in a dry run as in a run.
            for dryRun in [true, false] {
                let forced = try ferry(["move", "--strategy", "rename"] + (dryRun ? ["--dry-run"] : []) + [a + "/data", b], environment: database(fs))
                #expect(forced.status == 3, "\(forced.standardOutput)\(forced.standardError)")
                #expect((forced.standardOutput + forced.standardError).contains("a rename cannot do this move: the destination's project (inherited) differs"),
                        "\(forced.standardOutput)\(forced.standardError)")
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: b).isEmpty)
            // On Lustre, a project quota that cannot be read (no lfs here) is no quota at all: refused,
            // unless the space check is turned off.
            let unknown = try ferry("move", "--dry-run", "--backend", "lustre", "--lfs", fs.directory + "/no-such-lfs", a + "/data", b, environment: database(fs))
            #expect(unknown.status == 3, "\(unknown.standardOutput)\(unknown.standardError)")
            #expect((unknown.standardOutput + unknown.standardError).contains("project 200's quota could not be read"), "\(unknown.standardOutput)\(unknown.standardError)")
            let unchecked = try ferry("move", "--dry-run", "--no-space-check", "--backend", "lustre", "--lfs", fs.directory + "/no-such-lfs",
                                      a + "/data", b, environment: database(fs))
            #expect(unchecked.status == 0, "\(unchecked.standardOutput)\(unchecked.standardError)")
            let within = try ferry("move", "--strategy", "rename", a + "/data", a + "/renamed", environment: database(fs))
            #expect(within.status == 0, "\(within.standardError)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: a) == ["renamed"])
        }
    }

    @Test func refusedExitsThreeAndLockedExitsFour() throws {
        try withLoopXFS(sizeMiB: 300) { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try FileManager.default.createDirectory(atPath: a + "/data", withIntermediateDirectories: true)
            try Shell.run(["dd", "if=/dev/urandom", "of=\(a)/data/big", "bs=1M", "count=40", "status=none"])
            let free = try FileDescriptor.openDirectory(Array(fs.mountPoint.utf8)).filesystemStatistics().availableBytes
            try Shell.run(["fallocate", "-l", String(free - (20 << 20)), fs.mountPoint + "/filler"])
            let refused = try ferry("move", a + "/data", b, environment: database(fs))
            #expect(refused.status == 3)
            #expect(refused.standardError.contains("needs 42.0 MiB"), "\(refused.standardError)")
            try FileManager.default.removeItem(atPath: fs.mountPoint + "/filler")
            // A queued task that a stopped worker left holding the lock on the source's directory.
            let held = try ferry("move", "--detach", a, b, environment: database(fs))
            let id = held.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(id.count == 16)
            try lockAsIfRunning(id: id, path: a, database: "\(fs.directory)/tasks.sqlite")
            let locked = try ferry("move", a + "/data", b, environment: database(fs))
            #expect(locked.status == 4, "\(locked.standardError)")
            #expect(locked.standardError.contains("locked by task \(id) (copying, run by stopped-worker); wait for it (--wait-for-locks) or cancel it (`ferry task cancel \(id)`)"),
                    "\(locked.standardError)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: a) == ["data"])
        }
    }

    /// `ferry move` to a destination that refuses an extended attribute of the source fails (exit
    /// 1) saying which and how to go on, and moves nothing; `--allow-xattr-loss` moves it.
    @Test(.enabled(if: QuotaFS.available)) func aMoveThatWouldLoseAnExtendedAttributeNeedsAllowXattrLoss() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            try FileManager.default.createDirectory(atPath: a + "/data", withIntermediateDirectories: true)
            try TreeBuilder.write(a + "/data/tagged", bytes: 5000)
            try Shell.run(["setfattr", "-n", "user.origin", "-v", "beamline 7", a + "/data/tagged"])
            let quota = try QuotaFS(budget: 1 << 30, refuseXattrs: true)
            defer { quota.tearDown() }
            let refused = try ferry("move", a + "/data", quota.mountPoint, environment: database(fs))
            #expect(refused.status == 1, "\(refused.standardError)")
            #expect(refused.standardError.contains("data/tagged: fsetxattr user.origin") && refused.standardError.contains("--allow-xattr-loss"),
                    "\(refused.standardError)")
            let staged = try FileManager.default.contentsOfDirectory(atPath: quota.backing)
            #expect(FileManager.default.fileExists(atPath: a + "/data/tagged") && staged.isEmpty, "\(staged)")
            let moved = try ferry("move", "--allow-xattr-loss", a + "/data", quota.mountPoint, environment: database(fs))
            #expect(moved.status == 0, "\(moved.standardError)")
            #expect(!FileManager.default.fileExists(atPath: a + "/data") && FileManager.default.fileExists(atPath: quota.backing + "/data/tagged"))
        }
    }

    /// Within one project a move is one rename, done without a task: the entry keeps its inode, the
    /// rename is made durable (both directories fsynced after it, from an strace), no task is
    /// recorded, and the database is not even created. A path a task holds is still respected
    /// (exit 4, nothing moves), and an existing name is never replaced (exit 3).
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/strace")))
    func sameProjectMoveIsADurableRenameWithoutATask() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            try FileManager.default.createDirectory(atPath: a + "/data/sub", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: a + "/elsewhere", withIntermediateDirectories: true)
            try TreeBuilder.write(a + "/data/sub/f", bytes: 10_000)
            let inode = try FileDescriptor.openDirectory(Array((a + "/data").utf8)).status().fileID
            let log = fs.directory + "/strace.log"
            let moved = try Shell.execute(["strace", "-f", "-qq", "-y", "-o", log, "-e", "trace=renameat2,fsync",
                                           ferryBinary(), "move", "--json", a + "/data", a + "/elsewhere/renamed"], environment: database(fs))
            #expect(moved.status == 0, "\(moved.standardError)")
            let summary = try jsonObject(moved.standardOutput)
            #expect(summary["strategy"] as? String == "rename" && summary["status"] as? String == "completed")
            #expect(summary["published"] as? [String] == [a + "/elsewhere/renamed"])
            #expect(try FileDescriptor.openDirectory(Array((a + "/elsewhere/renamed").utf8)).status().fileID == inode)
            #expect(!FileManager.default.fileExists(atPath: a + "/data"))
            let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").map(String.init)
            let rename = try #require(lines.firstIndex { $0.contains("renameat2(") && $0.contains("RENAME_NOREPLACE") && $0.hasSuffix("= 0") })
            #expect(lines[rename...].contains { $0.contains("fsync(") && $0.contains("<\(a)>") }, "the source directory is fsynced after the rename")
            #expect(lines[rename...].contains { $0.contains("fsync(") && $0.contains("<\(a)/elsewhere>") }, "the destination directory is fsynced after the rename")
            #expect(!FileManager.default.fileExists(atPath: fs.directory + "/tasks.sqlite"), "no task, so no database")

            // A task holding the destination directory: the rename waits for it or, as here, is refused.
            let b = try fs.makeProjectDirectory("b", project: 200)
            try FileManager.default.createDirectory(atPath: b + "/queued", withIntermediateDirectories: true)
            let held = try ferry("move", "--detach", b + "/queued", a, environment: database(fs))
            let id = held.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
            try lockAsIfRunning(id: id, path: a + "/elsewhere", database: "\(fs.directory)/tasks.sqlite")
            let locked = try ferry("move", a + "/elsewhere/renamed", a + "/elsewhere/again", environment: database(fs))
            #expect(locked.status == 4, "\(locked.standardError)")
            #expect(locked.standardError.contains("locked by task \(id)"))
            #expect(FileManager.default.fileExists(atPath: a + "/elsewhere/renamed"))

            // Nothing is replaced: an existing name is refused before anything moves.
            try TreeBuilder.write(a + "/g", bytes: 10)
            try TreeBuilder.write(a + "/h", bytes: 20)
            let collision = try ferry("move", a + "/g", a + "/h", environment: database(fs))
            #expect(collision.status == 3, "\(collision.standardError)")
            #expect(try FileManager.default.attributesOfItem(atPath: a + "/h")[.size] as? Int == 20)
            #expect(FileManager.default.fileExists(atPath: a + "/g"))
        }
    }

    /// `ferry` makes a plain same-project move itself, durably, without starting the engine; every
    /// request it cannot finish that way reaches the engine untouched. With FERRY_ENGINE pointing
    /// nowhere, whatever was handed over fails to start, which shows what the front end kept.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/strace")))
    func theFrontEndRenamesAndHandsEverythingElseOver() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try FileManager.default.createDirectory(atPath: a + "/data/sub", withIntermediateDirectories: true)
            try TreeBuilder.write(a + "/data/sub/f", bytes: 10_000)
            let inode = try FileDescriptor.openDirectory(Array((a + "/data").utf8)).status().fileID
            let nowhere = database(fs).merging(["FERRY_ENGINE": fs.directory + "/no-engine"]) { $1 }

            let log = fs.directory + "/strace.log"
            let moved = try Shell.execute(["strace", "-f", "-qq", "-y", "-o", log, "-e", "trace=execve,renameat2,fsync",
                                           ferryBinary(), "move", a + "/data", a + "/renamed"], environment: nowhere)
            #expect(moved.status == 0, "\(moved.standardError)")
            #expect(moved.standardError == "renamed (same filesystem and project: nothing to copy)\n")
            #expect(try FileDescriptor.openDirectory(Array((a + "/renamed").utf8)).status().fileID == inode)
            #expect(!FileManager.default.fileExists(atPath: a + "/data"))
            let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").map(String.init)
            #expect(lines.filter { $0.contains("execve(") }.count == 1, "only ferry itself was started: \(lines)")
            let rename = try #require(lines.firstIndex { $0.contains("renameat2(") && $0.contains("RENAME_NOREPLACE") && $0.hasSuffix("= 0") })
            #expect(lines[rename...].contains { $0.contains("fsync(") && $0.contains("<\(a)>") }, "the directory is fsynced after the rename")
            #expect(lines.filter { $0.contains("fsync(") }.count == 1, "one directory, so one fsync: \(lines)")
            #expect(!FileManager.default.fileExists(atPath: fs.directory + "/tasks.sqlite"), "no task, so no database")

            // Handed over, so failing here for want of an engine, and having changed nothing: a move
            // that needs a copy, any option, any other command, a name that exists, a locked path.
            func handedOver(_ arguments: String...) throws {
                let result = try Shell.execute([ferryBinary()] + arguments, environment: nowhere)
                #expect(result.status == 1, "\(arguments)")
                #expect(result.standardError.contains("cannot start the Ferry engine \(fs.directory)/no-engine"), "\(arguments): \(result.standardError)")
            }
            try handedOver("move", a + "/renamed", b)
            try handedOver("move", "--json", a + "/renamed", a + "/again")
            try handedOver("move", "--", a + "/renamed", b + "/across")
            try handedOver("copy", a + "/renamed", a + "/copied")
            try handedOver("--version")
            try TreeBuilder.write(a + "/taken", bytes: 20)
            try handedOver("move", a + "/renamed", a + "/taken")
            #expect(try FileManager.default.attributesOfItem(atPath: a + "/taken")[.size] as? Int == 20)
            let queued = try ferry("move", "--detach", b, a + "/queued", environment: database(fs))
            #expect(queued.status == 0, "\(queued.standardError)")
            try lockAsIfRunning(id: queued.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines), path: a,
                                database: fs.directory + "/tasks.sqlite")
            try handedOver("move", a + "/renamed", a + "/again")
            #expect(try FileManager.default.contentsOfDirectory(atPath: a).sorted() == ["renamed", "taken"])
            #expect(try FileManager.default.contentsOfDirectory(atPath: b).isEmpty)

            // A `--` ends the options of a plain move; with the engine back, a locked path is refused.
            let plain = try ferry("move", "--", a + "/renamed", a + "/again", environment: database(fs))
            #expect(plain.status == 4, "\(plain.standardError)")

            // Elsewhere, with the task database present: a task holds a lock (on `a`), so its
            // marker sends the front end to the lock table, which it reads and renames. Alone
            // with the file, the read keeps SQLite's log index in memory and never creates the
            // shared-memory file (nor runs the engine).
            let c = try fs.makeProjectDirectory("c", project: 300)
            try TreeBuilder.write(c + "/x", bytes: 10)
            let readLog = fs.directory + "/strace-read.log"
            func traced(_ arguments: String...) throws -> String {
                let result = try Shell.execute(["strace", "-f", "-qq", "-o", readLog, "-e", "trace=execve,openat,renameat2",
                                                ferryBinary()] + arguments, environment: nowhere)
                #expect(result.status == 0, "\(arguments): \(result.standardError)")
                return try String(contentsOfFile: readLog, encoding: .utf8)
            }
            var reads = try traced("move", c + "/x", c + "/y")
            #expect(reads.contains("tasks.sqlite\""), "the lock table was read: \(reads)")
            #expect(!reads.contains("tasks.sqlite-shm"), "\(reads)")
            #expect(!reads.contains("no-engine"), "\(reads)")
            #expect(FileManager.default.fileExists(atPath: c + "/y") && !FileManager.default.fileExists(atPath: c + "/x"))

            // Once no task holds a lock, its empty marker directory answers alone: the database
            // is not opened at all.
            try releaseAsIfFinished(id: queued.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines),
                                    database: fs.directory + "/tasks.sqlite")
            reads = try traced("move", c + "/y", c + "/z")
            #expect(reads.contains("tasks.sqlite-locks\""), "\(reads)")
            #expect(!reads.contains("tasks.sqlite\""), "the database was opened: \(reads)")
            #expect(FileManager.default.fileExists(atPath: c + "/z") && !FileManager.default.fileExists(atPath: c + "/y"))
        }
    }

    @Test func commandsLeaveNoWriteAheadLogBehind() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try FileManager.default.createDirectory(atPath: a + "/one", withIntermediateDirectories: true)
            let log = fs.directory + "/tasks.sqlite-wal"
            func logBytes() -> Int { (try? FileManager.default.attributesOfItem(atPath: log)[.size] as? Int) ?? 0 }

            // A command that wrote closes the database as it exits: the log is folded in and removed.
            let queued = try ferry("move", "--detach", a + "/one", b, environment: database(fs))
            #expect(queued.status == 0, "\(queued.standardError)")
            #expect(!FileManager.default.fileExists(atPath: log), "the log was left with \(logBytes()) bytes")

            // A writer that died left a lock on the source in the log alone. The task-less rename
            // honours it, and as the file's last user folds the log in, so no later command has
            // to read it through again; the lock survives that.
            let id = queued.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
            try lockAsIfRunning(id: id, path: a + "/one", database: fs.directory + "/tasks.sqlite", dying: true)
            #expect(logBytes() > 0)
            let locked = try ferry("move", a + "/one", a + "/two", environment: database(fs))
            #expect(locked.status == 4, "\(locked.standardError)")
            #expect(!FileManager.default.fileExists(atPath: log), "the log was left with \(logBytes()) bytes")
            #expect(try ferry("move", a + "/one", a + "/two", environment: database(fs)).status == 4)
            #expect(FileManager.default.fileExists(atPath: a + "/one") && !FileManager.default.fileExists(atPath: a + "/two"))
        }
    }

    @Test func detachedTasksRunOnAWorkerAndCanBeCancelledAndRetried() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            for name in ["one", "two"] {
                try FileManager.default.createDirectory(atPath: "\(a)/\(name)", withIntermediateDirectories: true)
                try TreeBuilder.write("\(a)/\(name)/file", bytes: 300_000)
            }
            let first = try ferry("move", "--detach", a + "/one", b, environment: database(fs)).standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
            let second = try ferry("move", "--detach", a + "/two", b, environment: database(fs)).standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
            let listed = try ferry("tasks", environment: database(fs)).standardOutput
            #expect(listed.contains(first) && listed.contains(second) && listed.contains("pending"))
            let cancel = try ferry("task", "cancel", second, environment: database(fs))
            #expect(cancel.status == 0 && cancel.standardOutput.contains("cancelled \(second)"))
            let worker = try ferry("worker", "--once", environment: database(fs))
            #expect(worker.status == 0, "\(worker.standardError)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: b) == ["one"])
            let shown = try jsonObject(try ferry("task", "show", "--json", first, environment: database(fs)).standardOutput)
            #expect(shown["status"] as? String == "completed")
            let history = (shown["events"] as? [[String: Any]])?.compactMap { $0["status"] as? String } ?? []
            #expect(history.contains("copying") && history.contains("verifying") && history.last == "completed")
            // The cancelled one is queued again and runs.
            #expect(try ferry("task", "retry", second, environment: database(fs)).status == 0)
            #expect(try ferry("worker", "--once", environment: database(fs)).status == 0)
            #expect(try FileManager.default.contentsOfDirectory(atPath: b).sorted() == ["one", "two"])
            #expect(try FileManager.default.contentsOfDirectory(atPath: a).isEmpty)
            #expect(try ferry("task", "retry", second, environment: database(fs)).status == 1)  // completed: nothing to retry
            #expect(try ferry("task", "show", "0000000000000000", environment: database(fs)).status == 1)
        }
    }

    /// A `ferry move` killed mid-copy leaves its task stalled, its paths locked. Whatever meets it
    /// says so, and what ends it: the next move of those paths (exit 4), `ferry tasks`, `task show`
    /// and `task cancel`. After the cancel, the janitor rolls it back, and the move can run again.
    @Test func aKilledMoveLeavesAStalledTaskThatSaysHowToEndIt() throws {
        try withLoopXFS(sizeMiB: 1024) { fs in
            let (a, b, before) = try bigTree(fs)
            let environment = database(fs).merging(["FERRY_LEASE_SECONDS": "1"]) { $1 }
            let move = try startFerry(["move", "--jobs", "1", a + "/big", b], environment: environment)
            waitUntilStaging(in: b, holds: "big", seconds: 20)
            kill(move.processIdentifier, SIGKILL)
            move.waitUntilExit()
            let listed = try jsonObject(try ferry("tasks", "--json", environment: environment).standardOutput)
            let stalled = try #require((listed["tasks"] as? [[String: Any]])?.first)
            let id = try #require(stalled["id"] as? String)
            Thread.sleep(forTimeInterval: 1.5)  // the killed move's lease runs out

            let again = try ferry("move", a + "/big", b, environment: environment)
            #expect(again.status == 4, "\(again.standardError)")
            #expect(again.standardError.contains("is locked by task \(id), stalled at copying: its worker "), "\(again.standardError)")
            #expect(again.standardError.contains("`ferry janitor` or any `ferry worker` resumes it, or rolls it back after `ferry task cancel \(id)`"),
                    "\(again.standardError)")
            let text = try ferry("tasks", environment: environment).standardOutput
            #expect(text.contains("    stalled: its worker ") && text.contains("stopped without handing it back"), "\(text)")
            #expect(try jsonObject(try ferry("task", "show", "--json", id, environment: environment).standardOutput)["stalled"] as? Bool == true)
            #expect(try ferry("task", "show", id, environment: environment).standardOutput.contains("\n  stalled: its worker "))

            let cancel = try ferry("task", "cancel", id, environment: environment)
            #expect(cancel.standardOutput.contains("\(id): cancel requested; its worker ") && cancel.standardOutput.contains("rolls it back, as cancelled"),
                    "\(cancel.standardOutput)")
            #expect(try ferry("janitor", environment: environment).status == 0)
            let ended = try jsonObject(try ferry("task", "show", "--json", id, environment: environment).standardOutput)
            #expect(ended["status"] as? String == "rolled_back" && ended["stalled"] as? Bool == false, "\(ended)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: b).isEmpty)
            #expect(try before.differences(to: TreeSnapshot.take(a + "/big")).isEmpty)

            let moved = try ferry("move", a + "/big", b, environment: environment)
            #expect(moved.status == 0, "\(moved.standardError)")
            #expect(try before.differences(to: TreeSnapshot.take(b + "/big")).isEmpty)
            #expect(try ferry("task", "cancel", id, environment: environment).standardOutput == "\(id) has already ended: rolled_back\n")
        }
    }

    /// A closed terminal window or a dropped ssh session hangs up the terminal `ferry move` runs
    /// on. That is no request to undo anything: the task stops at its next checkpoint and is handed
    /// back with what it staged (exit 129), nothing stalled or locked for a lease, and the next
    /// worker finishes it.
    @Test func aHangupHandsTheMoveBackWholeForAWorkerToFinish() throws {
        try withLoopXFS(sizeMiB: 1024) { fs in
            let (a, b, before) = try bigTree(fs)
            let run = try ferryOnATerminalThatHangsUp(["move", "--jobs", "1", a + "/big", b], environment: database(fs), destination: b)
            #expect(run.status == 129, "\(run.output)")
            let tasks = try jsonObject(try ferry("tasks", "--json", environment: database(fs)).standardOutput)
            let task = try #require((tasks["tasks"] as? [[String: Any]])?.first)
            #expect(["validating", "locked", "copying", "verifying"].contains(task["status"] as? String ?? ""), "\(task)")
            #expect(task["leaseOwner"] is NSNull && task["stalled"] as? Bool == false, "\(task)")
            let listing = try ferry("tasks", environment: database(fs)).standardOutput
            #expect(listing.contains("    waiting: no worker holds it; the next `ferry worker` (or `ferry janitor`) resumes it at \(task["status"] as? String ?? "?")"),
                    "\(listing)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: b).contains { $0.hasPrefix(".ferry-staging-") })
            #expect(try before.differences(to: TreeSnapshot.take(a + "/big")).isEmpty)
            #expect(try ferry("worker", "--once", environment: database(fs)).status == 0)
            let done = try jsonObject(try ferry("task", "show", "--json", task["id"] as? String ?? "", environment: database(fs)).standardOutput)
            #expect(done["status"] as? String == "completed", "\(done)")
            #expect(try before.differences(to: TreeSnapshot.take(b + "/big")).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: a + "/big"))
        }
    }

    /// A `ferry move` of `bigTree` (lease 1 s) stopped (SIGSTOP) with part of it staged, its output
    /// in `output`, and a `ferry worker` started on the same database to take it over.
    func stoppedMoveAndAWorker(_ fs: LoopXFS) throws
        -> (a: String, b: String, before: TreeSnapshot, environment: [String: String], output: Pipe, move: Process, worker: Process) {
        let (a, b, before) = try bigTree(fs)
        let environment = database(fs).merging(["FERRY_LEASE_SECONDS": "1"]) { $1 }
        let output = Pipe()
        let move = try startFerry(["move", "--jobs", "1", a + "/big", b], environment: environment, output: output)
        waitUntilStaging(in: b, holds: "big", seconds: 20)
        kill(move.processIdentifier, SIGSTOP)
        let worker = try startFerry(["worker", "--concurrency", "1"], environment: environment)
        return (a, b, before, environment, output, move, worker)
    }

    /// A `ferry move` stopped (Ctrl-Z) for longer than its lease, whose task a worker took over
    /// meanwhile, follows that task once it runs again, and ends as the task ends: it does not
    /// exit as if it had failed while the move goes on elsewhere.
    @Test func aMoveStoppedPastItsLeaseFollowsTheWorkerThatTookItOver() throws {
        try withLoopXFS(sizeMiB: 1024) { fs in
            let (a, b, before, environment, output, move, worker) = try stoppedMoveAndAWorker(fs)
            defer { if worker.isRunning { worker.terminate(); worker.waitUntilExit() } }
            let deadline = Date().addingTimeInterval(30)
            var taken = false
            while !taken && Date() < deadline {
                let tasks = try jsonObject(try ferry("tasks", "--all", "--json", environment: environment).standardOutput)
                let task = (tasks["tasks"] as? [[String: Any]])?.first
                taken = (task?["leaseOwner"] as? String)?.contains(":worker") == true || task?["status"] as? String == "completed"
                if !taken { Thread.sleep(forTimeInterval: 0.1) }
            }
            kill(move.processIdentifier, SIGCONT)
            move.waitUntilExit()
            let said = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(taken, "no worker took the task over: \(said)")
            #expect(move.terminationStatus == 0, "\(said)")
            #expect(said.contains("took it over while this command was stopped); following it"), "\(said)")
            #expect(said.contains("moved 7 entries, 240 MiB, verified and durable"), "\(said)")
            #expect(try before.differences(to: TreeSnapshot.take(b + "/big")).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: a + "/big"))
        }
    }

    /// A worker told to stop twice leaves at once (exit 130) instead of waiting for its tasks'
    /// checkpoints; the next worker finishes what it was running.
    @Test func aWorkerInterruptedTwiceLeavesAtOnce() throws {
        try withLoopXFS(sizeMiB: 1024) { fs in
            let (a, b, before) = try bigTree(fs)
            let environment = database(fs).merging(["FERRY_LEASE_SECONDS": "1"]) { $1 }
            let queued = try ferry("move", "--detach", "--jobs", "1", a + "/big", b, environment: environment)
            #expect(queued.status == 0, "\(queued.standardError)")
            let output = Pipe()
            let worker = try startFerry(["worker", "--concurrency", "1"], environment: environment, output: output)
            defer { if worker.isRunning { worker.terminate(); worker.waitUntilExit() } }
            waitUntilStaging(in: b, holds: "big", seconds: 20)
            // Its task's process held still: the checkpoint the first SIGTERM asks for never comes.
            let id = queued.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
            let child = WorkerAsOwnerTests.processes(matching: ["agent", "run-task"], and: id).last ?? ""
            try #require(!child.isEmpty)
            _ = try Shell.run(["kill", "-STOP", child])
            defer { _ = try? Shell.execute(["kill", "-CONT", child]) }
            kill(worker.processIdentifier, SIGTERM)
            Thread.sleep(forTimeInterval: 0.5)  // two signals at once would be one
            #expect(worker.isRunning, "the worker left before its task's checkpoint")
            kill(worker.processIdentifier, SIGTERM)
            let leftBy = Date().addingTimeInterval(20)
            while worker.isRunning && Date() < leftBy { Thread.sleep(forTimeInterval: 0.05) }
            #expect(!worker.isRunning, "the worker still waits for its task after a second SIGTERM")
            _ = try Shell.run(["kill", "-CONT", child])
            worker.waitUntilExit()
            let said = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(worker.terminationStatus == 130, "\(said)")
            #expect(said.contains("interrupted again: leaving now"), "\(said)")
            // Its task process stops (parent-death signal) and hands the task back, or its lease runs out.
            var finished = ""
            let deadline = Date().addingTimeInterval(30)
            while !finished.contains(": completed") && Date() < deadline {
                Thread.sleep(forTimeInterval: 0.5)
                finished = try ferry("worker", "--once", environment: environment).standardError
            }
            #expect(finished.contains(": completed"), "\(finished)")
            #expect(try before.differences(to: TreeSnapshot.take(b + "/big")).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: a + "/big"))
        }
    }

    /// A hangup while a `ferry move` follows the worker that took its task over leaves the task to
    /// that worker and exits 129, saying so (it used to exit 1 without a word).
    @Test func aHangupWhileFollowingLeavesTheTaskToItsWorker() throws {
        try withLoopXFS(sizeMiB: 1024) { fs in
            let (a, b, before, environment, output, move, worker) = try stoppedMoveAndAWorker(fs)
            defer { if worker.isRunning { kill(worker.processIdentifier, SIGCONT); worker.terminate(); worker.waitUntilExit() } }
            var deadline = Date().addingTimeInterval(30)
            var holder: String?
            while holder == nil && Date() < deadline {
                let tasks = try jsonObject(try ferry("tasks", "--all", "--json", environment: environment).standardOutput)
                holder = ((tasks["tasks"] as? [[String: Any]])?.first?["leaseOwner"] as? String).flatMap { $0.contains(":worker") ? $0 : nil }
                if holder == nil { Thread.sleep(forTimeInterval: 0.05) }
            }
            // The worker is held still while the command follows it, so that the task is running when the terminal goes.
            kill(worker.processIdentifier, SIGSTOP)
            kill(move.processIdentifier, SIGCONT)
            var said = ""
            deadline = Date().addingTimeInterval(30)
            while !said.contains("following it") && Date() < deadline {
                var ready = pollfd(fd: output.fileHandleForReading.fileDescriptor, events: Int16(POLLIN), revents: 0)
                guard poll(&ready, 1, 100) == 1 else { continue }
                let data = output.fileHandleForReading.availableData
                if data.isEmpty { break }
                said += String(decoding: data, as: UTF8.self)
            }
            kill(move.processIdentifier, SIGHUP)
            move.waitUntilExit()
            said += String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            kill(worker.processIdentifier, SIGCONT)
            #expect(holder != nil, "no worker took the task over: \(said)")
            #expect(move.terminationStatus == 129, "\(said)")
            #expect(said.contains("the terminal hung up; task "), "\(said)")
            #expect(said.contains("runs on \(holder ?? "?"), which carries it on"), "\(said)")
            deadline = Date().addingTimeInterval(60)
            var status = ""
            while status != "completed" && Date() < deadline {
                let tasks = try jsonObject(try ferry("tasks", "--all", "--json", environment: environment).standardOutput)
                status = (tasks["tasks"] as? [[String: Any]])?.first?["status"] as? String ?? ""
                if status != "completed" { Thread.sleep(forTimeInterval: 0.1) }
            }
            #expect(status == "completed")
            #expect(try before.differences(to: TreeSnapshot.take(b + "/big")).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: a + "/big"))
        }
    }

    /// Started as `nohup` starts it (SIGHUP ignored), a move outlives its terminal: the writes of its
    /// progress to the hung-up terminal fail (EIO) and are dropped, and the move completes.
    @Test func underNohupAMoveOutlivesItsTerminal() throws {
        try withLoopXFS(sizeMiB: 1024) { fs in
            let (a, b, before) = try bigTree(fs)
            let run = try ferryOnATerminalThatHangsUp(["move", "--jobs", "1", a + "/big", b], environment: database(fs), destination: b,
                                                      ignoringHangup: true)
            #expect(run.status == 0, "\(run.output)")
            #expect(run.output.contains("240 MiB"), "the progress bar was drawn on the terminal first: \(run.output)")
            #expect(try before.differences(to: TreeSnapshot.take(b + "/big")).isEmpty)
            #expect(try FileManager.default.contentsOfDirectory(atPath: b) == ["big"])
        }
    }

    /// Output nobody reads any more (a pipe whose reader has gone) neither kills a move (SIGPIPE)
    /// nor crashes it: the move completes and exits 0.
    @Test func aMoveWhoseOutputNobodyReadsStillCompletes() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeSmallTree(a + "/data")
            let before = try TreeSnapshot.take(a + "/data")
            let process = Process()
            process.executableURL = URL(fileURLWithPath: ferryBinary())
            process.arguments = ["move", a + "/data", b]
            process.environment = ProcessInfo.processInfo.environment.merging(database(fs)) { $1 }
            let gone = Pipe()
            process.standardError = gone
            process.standardOutput = gone
            try process.run()
            try gone.fileHandleForReading.close()
            process.waitUntilExit()
            #expect(process.terminationReason == .exit && process.terminationStatus == 0,
                    "\(process.terminationReason == .exit ? "exit" : "signal") \(process.terminationStatus)")
            #expect(try before.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)
        }
    }

    /// `ferry move --wait-for-locks` in the foreground waits for a locked path and then moves,
    /// saying once what it waits for; Ctrl-C while it waits cancels it (exit 130, nothing moved).
    @Test func aForegroundMoveWaitsForALockedPathThenMoves() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try makeSmallTree(a + "/data")
            try makeSmallTree(a + "/other")
            let before = try TreeSnapshot.take(a + "/data")
            let holder = try ferry("move", "--detach", a + "/data", b, environment: database(fs)).standardOutput
                .trimmingCharacters(in: .whitespacesAndNewlines)
            try lockAsIfRunning(id: holder, path: a + "/data", database: "\(fs.directory)/tasks.sqlite")
            func waiting(_ process: Process, for path: String) throws -> String {
                let deadline = Date().addingTimeInterval(20)
                while Date() < deadline && process.isRunning {
                    let tasks = try jsonObject(try ferry("tasks", "--json", environment: database(fs)).standardOutput)
                    let mine = (tasks["tasks"] as? [[String: Any]] ?? []).first { ($0["sources"] as? [String]) == [path] && $0["id"] as? String != holder }
                    if let id = mine?["id"] as? String,
                       try ferry("task", "show", id, environment: database(fs)).standardOutput.contains("waiting: \(a)/data is locked by task \(holder)") {
                        return id
                    }
                    Thread.sleep(forTimeInterval: 0.1)
                }
                return ""
            }

            // Ctrl-C while waiting: cancelled, rolled back, nothing moved.
            let errors = Pipe()
            let interrupted = try startFerry(["move", "--wait-for-locks", a + "/data/sub", b], environment: database(fs), output: errors)
            let cancelled = try waiting(interrupted, for: a + "/data/sub")
            try #require(!cancelled.isEmpty, "the move did not wait")
            interrupted.interrupt()
            interrupted.waitUntilExit()
            #expect(interrupted.terminationStatus == 130)
            let ended = try jsonObject(try ferry("task", "show", "--json", cancelled, environment: database(fs)).standardOutput)
            #expect(["rolled_back", "cancelled"].contains(ended["status"] as? String ?? ""), "\(ended)")
            #expect(try before.differences(to: TreeSnapshot.take(a + "/data")).isEmpty)

            // Waits until the path is free, then moves.
            let output = Pipe()
            let move = try startFerry(["move", "--wait-for-locks", a + "/data", b], environment: database(fs), output: output)
            try #require(!(try waiting(move, for: a + "/data")).isEmpty, "the move did not wait")
            try releaseAsIfFinished(id: holder, database: "\(fs.directory)/tasks.sqlite")
            // The holder's end makes the waiting task claimable at once, and the command, which
            // reads its task twice a second while it waits, runs it then: well before the 15 s
            // a wait lasts at most.
            let released = Date()
            move.waitUntilExit()
            let waited = Date().timeIntervalSince(released)
            let said = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(move.terminationStatus == 0, "\(said)")
            #expect(waited < 10, "the move ran \(waited) s after the holder ended")
            #expect(said.components(separatedBy: "ferry move: waiting: \(a)/data is locked by task \(holder)").count == 2, "said once: \(said)")
            #expect(try before.differences(to: TreeSnapshot.take(b + "/data")).isEmpty)
            #expect(try FileManager.default.contentsOfDirectory(atPath: a) == ["other"])
        }
    }

    @Test func interruptRollsBackAndExits130() throws {
        try withLoopXFS(sizeMiB: 1024) { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try FileManager.default.createDirectory(atPath: a + "/big", withIntermediateDirectories: true)
            for i in 0..<6 { try Shell.run(["dd", "if=/dev/zero", "of=\(a)/big/f\(i)", "bs=1M", "count=40", "status=none"]) }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: ferryBinary())
            process.arguments = ["move", "--jobs", "1", a + "/big", b]
            process.environment = ProcessInfo.processInfo.environment.merging(database(fs)) { $1 }
            let errors = Pipe()
            process.standardError = errors
            try process.run()
            waitUntilStaging(in: b, holds: "big")
            process.interrupt()
            process.waitUntilExit()
            let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(process.terminationStatus == 130, "\(message)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: b).isEmpty)
            #expect(try FileManager.default.contentsOfDirectory(atPath: a + "/big").count == 6)
            let tasks = try jsonObject(try ferry("tasks", "--all", "--json", environment: database(fs)).standardOutput)
            #expect(((tasks["tasks"] as? [[String: Any]])?.first?["status"] as? String) == "rolled_back")
        }
    }

    /// SIGTERM (or SIGHUP, its terminal gone): the worker stops its task at the next checkpoint,
    /// flushes what it staged (through the staging's descriptor, the one a write-back error in
    /// those files is reported to: the next worker resumes from them on this boot and trusts
    /// them; seen in an `strace` of the worker), gives the lease back and keeps what it staged;
    /// the next worker resumes the task (no lease wait) and finishes it.
    @Test(arguments: [SIGTERM, SIGHUP])
    func terminatedWorkerReleasesItsTaskForTheNext(signal: Int32) throws {
        try withLoopXFS(sizeMiB: 1024) { fs in
            let move = try QueuedBigMove(fs, environment: database(fs))
            let (b, before, id) = (move.b, move.before, move.id)
            let log = fs.directory + "/strace.log"
            let traced = FileManager.default.isExecutableFile(atPath: "/usr/bin/strace")
            let worker = Process()
            worker.executableURL = URL(fileURLWithPath: traced ? "/usr/bin/strace" : ferryBinary())
            worker.arguments = (traced ? ["-f", "-qq", "-y", "-o", log, "-e", "trace=syncfs", ferryBinary()] : []) + ["worker", "--lease", "600"]
            worker.environment = ProcessInfo.processInfo.environment.merging(database(fs)) { $1 }
            worker.standardError = FileHandle.nullDevice
            try worker.run()
            waitUntilStaging(in: b, holds: "big")
            // Under strace the worker is strace's child.
            var pid = worker.processIdentifier
            if traced {
                let children = try String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)
                pid = try #require(children.split(separator: " ").first.flatMap { pid_t($0) })
            }
            kill(pid, signal)
            worker.waitUntilExit()
            #expect(worker.terminationStatus == 0)
            let paused = try jsonObject(try ferry("task", "show", "--json", id, environment: database(fs)).standardOutput)
            #expect(["copying", "verifying", "validating", "locked"].contains(paused["status"] as? String ?? ""), "\(paused["status"] ?? "")")
            if traced && paused["status"] as? String == "copying" {
                // Stopped while copying: what it staged was flushed after the signal.
                let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").map(String.init)
                let received = try #require(lines.firstIndex { $0.contains("--- SIG") }, "\(lines)")
                #expect(lines[received...].contains { $0.contains("syncfs(") && $0.contains(".ferry-staging-") && $0.hasSuffix("= 0") }, "\(lines)")
            }
            #expect(paused["leaseOwner"] is NSNull, "the lease was given back")
            #expect(try FileManager.default.contentsOfDirectory(atPath: b).contains { $0.hasPrefix(".ferry-staging-") })
            // A 600 s lease was released, so the next worker need not wait for it.
            let next = try ferry("worker", "--once", environment: database(fs))
            #expect(next.status == 0)
            let done = try jsonObject(try ferry("task", "show", "--json", id, environment: database(fs)).standardOutput)
            #expect(done["status"] as? String == "completed")
            #expect(try before.differences(to: TreeSnapshot.take(b + "/big")).isEmpty)
            #expect(try FileManager.default.contentsOfDirectory(atPath: b) == ["big"])
        }
    }

    @Test func janitorRemovesOrphanedStagingAndKeepsLiveOnes() throws {
        try withLoopXFS { fs in
            let b = try fs.makeProjectDirectory("b", project: 200)
            try TreeBuilder.stagingDirectory(b + "/.ferry-staging-0123456789abcdef", id: "0123456789abcdef")
            try FileManager.default.createDirectory(atPath: b + "/.ferry-staging-0123456789abcdef/data", withIntermediateDirectories: true)
            try TreeBuilder.write(b + "/.ferry-staging-0123456789abcdef/data/partial", bytes: 1000)
            try Shell.run(["chmod", "0555", b + "/.ferry-staging-0123456789abcdef/data"])
            try FileManager.default.createDirectory(atPath: b + "/keep", withIntermediateDirectories: true)
            let young = try ferry("janitor", "--scan", b, environment: database(fs))
            #expect(young.standardOutput.contains("kept"), "\(young.standardOutput)")  // within the grace period
            let dry = try ferry("janitor", "--scan", b, "--grace", "0", "--dry-run", environment: database(fs))
            #expect(dry.standardOutput.contains("would remove"))
            #expect(try FileManager.default.contentsOfDirectory(atPath: b).count == 2)
            let run = try ferry("janitor", "--scan", b, "--grace", "0", environment: database(fs))
            #expect(run.status == 0 && run.standardOutput.contains("removed"), "\(run.standardOutput)\(run.standardError)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: b) == ["keep"])
        }
    }

    /// A staging name is all someone who may rename entries in a shared directory needs to give
    /// another user's directory: the janitor (root here) must not delete a directory for its name.
    /// One renamed after a finished task and one after an unknown id are both left whole, and the
    /// report says why.
    @Test func janitorLeavesDirectoriesWithoutFerrysMarkAlone() throws {
        try withLoopXFS { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try TreeBuilder.write(a + "/done", bytes: 4096)
            let moved = try ferry("move", "--json", a + "/done", b, environment: database(fs))
            #expect(moved.status == 0, "\(moved.standardError)")
            let finished = try #require(try jsonObject(moved.standardOutput)["id"] as? String)
            var victims: [String] = []
            for id in [finished, "0123456789abcdef"] {
                let victim = "\(b)/.ferry-staging-\(id)"
                try FileManager.default.createDirectory(atPath: victim + "/results", withIntermediateDirectories: true)
                try TreeBuilder.write(victim + "/results/run-1", bytes: 5000)
                victims.append(victim)
            }
            let before = try victims.map { try TreeSnapshot.take($0) }
            let run = try ferry("janitor", "--scan", b, "--grace", "0", environment: database(fs))
            #expect(run.status == 0, "\(run.standardError)")
            for (victim, snapshot) in zip(victims, before) {
                #expect(try snapshot.differences(to: TreeSnapshot.take(victim)).isEmpty, "the janitor changed \(victim)")
                #expect(run.standardOutput.contains("left \(victim) in place: it is not a staging directory as Ferry makes them"), "\(run.standardOutput)")
            }
            #expect(!run.standardOutput.contains("removed"), "\(run.standardOutput)")
        }
    }
}

/// Project directories a (100) and b (200) with a tree `a/big` of 240 MiB (six files): a move of
/// it takes long enough to be caught part way. Returns them and the tree's snapshot.
func bigTree(_ fs: LoopXFS) throws -> (a: String, b: String, before: TreeSnapshot) {
    let a = try fs.makeProjectDirectory("a", project: 100)
    let b = try fs.makeProjectDirectory("b", project: 200)
    try FileManager.default.createDirectory(atPath: a + "/big", withIntermediateDirectories: true)
    for i in 0..<6 { try Shell.run(["dd", "if=/dev/urandom", "of=\(a)/big/f\(i)", "bs=1M", "count=40", "status=none"]) }
    return (a, b, try TreeSnapshot.take(a + "/big"))
}

func makeSmallTree(_ root: String) throws {
    try FileManager.default.createDirectory(atPath: root + "/sub", withIntermediateDirectories: true)
    for i in 0..<20 { try TreeBuilder.write("\(root)/sub/f\(i)", bytes: 10_000, seed: UInt64(i + 1)) }
}

/// Runs `ferry ARGUMENTS` on a terminal of its own (a pseudo-terminal it controls, as a login
/// shell's command does) and hangs the terminal up once `destination` holds a staging directory
/// with something in it: what closing a terminal window or losing an ssh session does.
/// `ignoringHangup`: started as `nohup` starts it. Returns its exit status (128 + N for a signal)
/// and what it wrote to the terminal until then.
func ferryOnATerminalThatHangsUp(_ arguments: [String], environment: [String: String], destination: String,
                                 ignoringHangup: Bool = false) throws -> (status: Int, output: String) {
    let result = try Shell.execute(["python3", "-c", """
        import json, os, pty, select, signal, sys, time
        ferry, destination, ignore, arguments = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4:]
        pid, fd = pty.fork()
        if pid == 0:
            if ignore:
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
            os.execv(ferry, [ferry] + arguments)
        output = b""
        deadline = time.time() + 30
        def staged():
            for name in os.listdir(destination):
                if name.startswith(".ferry-staging-") and any(os.scandir(os.path.join(destination, name))):
                    return True
            return False
        while time.time() < deadline and not staged():
            if select.select([fd], [], [], 0.005)[0]:
                try:
                    output += os.read(fd, 65536)
                except OSError:
                    break
        os.close(fd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        print(json.dumps({"status": code if code >= 0 else 128 - code, "output": output.decode("utf-8", "replace")}))
        """, ferryBinary(), destination, ignoringHangup ? "1" : "0"] + arguments, environment: environment)
    let answer = try jsonObject(result.standardOutput.split(separator: "\n").last.map(String.init) ?? "{}")
    return (answer["status"] as? Int ?? -1, (answer["output"] as? String ?? "") + result.standardError)
}

/// Marks a queued task as claimed by a (stopped) worker and holding a lock on `path`, through
/// Python's sqlite3: as a task mid-run would be, its lock marker made first (as the store does,
/// inside the write transaction).
/// `dying`: the writer exits without closing the database, as a killed process would, so what it
/// committed stays in the write-ahead log.
func lockAsIfRunning(id: String, path: String, database: String, dying: Bool = false) throws {
    let status = try FileDescriptor.openDirectory(Array(path.utf8)).status()
    let hex = Array(path.utf8).map { String(format: "%02x", $0) }.joined()
    try Shell.run(["python3", "-c", """
        import sqlite3, time
        db = sqlite3.connect("\(database)", isolation_level=None)
        db.create_function("ferry_lock_marker", 1, lambda task: None)  # the store's check, its marker made
        db.execute("BEGIN IMMEDIATE")
        open("\(database)-locks/\(id)", "w").close()
        db.execute("UPDATE tasks SET status='copying', lease_owner='stopped-worker', lease_expires_at=? WHERE id=?", (time.time() + 3600, "\(id)"))
        db.execute("INSERT INTO path_locks (task_id, filesystem, path) VALUES (?, ?, x'\(hex)')", ("\(id)", "\(status.deviceMajor):\(status.deviceMinor)"))
        db.execute("COMMIT")
        \(dying ? "import os; os._exit(0)" : "")
        """])
}

/// Ends what `lockAsIfRunning` began, as the store does when a task finishes: the rows go first,
/// and the marker only in a later write transaction that finds none left.
func releaseAsIfFinished(id: String, database: String) throws {
    try Shell.run(["python3", "-c", """
        import os, sqlite3
        db = sqlite3.connect("\(database)", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE tasks SET status='cancelled', lease_owner=NULL, lease_expires_at=NULL WHERE id=?", ("\(id)",))
        db.execute("DELETE FROM path_locks WHERE task_id=?", ("\(id)",))
        # As the store's finish does: the tasks waiting for this one may run now.
        db.execute("UPDATE tasks SET not_before=NULL WHERE waiting_for=? AND lease_owner IS NULL", ("\(id)",))
        db.execute("COMMIT")
        db.execute("BEGIN IMMEDIATE")
        if db.execute("SELECT count(*) FROM path_locks WHERE task_id=?", ("\(id)",)).fetchone()[0] == 0:
            os.unlink("\(database)-locks/\(id)")
        db.execute("COMMIT")
        """])
}
