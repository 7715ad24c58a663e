import Foundation
import FerrySystem
import FerryTestSupport
import Testing

/// `ferry worker --as-owner` (and ferry serve's runners): each task runs in a process with its
/// owner's identity, so the kernel decides what the task may read and write.
@Suite("ferry worker --as-owner (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct WorkerAsOwnerTests {
    @Test func tasksRunWithTheirOwnersIdentity() throws {
        try withTestUser { user in
            try withLoopXFS { fs in
                let sandbox = try UserSandbox(fs)
                let (a, b, environment) = (sandbox.a, sandbox.b, sandbox.environment)
                func asUser(_ arguments: String...) throws -> Shell.Result { try sandbox.ferry(as: user, arguments) }
                _ = try Shell.run(["runuser", "-u", user.name, "--", "mkdir", "-p", "\(a)/mine/inner", "\(a)/theirs"])
                _ = try Shell.run(["runuser", "-u", user.name, "--", "dd", "if=/dev/urandom", "of=\(a)/mine/inner/data", "bs=64k", "count=16", "status=none"])
                _ = try Shell.run(["runuser", "-u", user.name, "--", "dd", "if=/dev/urandom", "of=\(a)/theirs/data", "bs=64k", "count=4", "status=none"])
                let mine = try asUser("move", "--detach", "\(a)/mine", b)
                #expect(mine.status == 0, "\(mine.standardError)")
                let theirs = try asUser("copy", "--detach", "\(a)/theirs", b)
                #expect(theirs.status == 0, "\(theirs.standardError)")
                // Before a worker runs it, root takes the second task's source away from the user:
                // a worker acting as root would still copy it; one acting as the owner must not.
                _ = try Shell.run(["chown", "root:root", "\(a)/theirs/data"])
                chmod("\(a)/theirs/data", 0o600)

                let log = Pipe()
                let worker = try startFerry(["worker", "--as-owner", "--lease", "5"], environment: environment, output: log)
                defer { if worker.isRunning { worker.terminate(); worker.waitUntilExit() } }

                func status(_ id: String) throws -> [String: Any] {
                    try jsonObject(try ferry("task", "show", "--json", id, environment: environment).standardOutput)
                }
                let ids = [mine.standardOutput, theirs.standardOutput].map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
                let deadline = Date().addingTimeInterval(60)
                while Date() < deadline, try ids.contains(where: { id in
                    !["completed", "failed", "rolled_back", "cancelled"].contains(try status(id)["status"] as? String ?? "")
                }) { Thread.sleep(forTimeInterval: 0.2) }
                worker.terminate()
                worker.waitUntilExit()
                let output = String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                #expect(worker.terminationStatus == 0, "\(output)")

                let first = try status(ids[0])
                #expect(first["status"] as? String == "completed", "\(first)")
                let moved = try FileDescriptor.openDirectory(Array("\(b)/mine/inner".utf8))
                defer { moved.closeQuietly() }
                let uid = try #require(try UserIdentity.lookup(name: user.name)).uid
                #expect(try moved.status(Array("data".utf8)).uid == uid, "the copy is made by the owner, so it is theirs")
                #expect(!FileManager.default.fileExists(atPath: "\(a)/mine"))

                let refused = try status(ids[1])
                #expect(["failed", "rolled_back"].contains(refused["status"] as? String ?? ""), "\(refused)")
                #expect("\(refused["error"] ?? "")".contains("EACCES") || "\(refused["error"] ?? "")".contains("ermission"), "\(refused)")
                #expect(!FileManager.default.fileExists(atPath: "\(b)/theirs"))
            }
        }
    }

    /// The other side of the watchdog: a task whose lease runs out while the database is busy (here
    /// another process holds SQLite's write lock for 2.5 leases; on a real machine, a commit
    /// queued behind a slow fsync) keeps its process. The process was calling all along; its late
    /// heartbeat renews the lease nobody else claimed, and the task completes in its first attempt.
    @Test func aTaskWaitingOnABusyDatabaseIsNotKilled() throws {
        try withLoopXFS(sizeMiB: 1024) { fs in
            let database = "\(fs.directory)/tasks.sqlite"
            let environment = ["FERRY_DATABASE_URL": "sqlite://\(database)"]
            let move = try QueuedBigMove(fs, environment: environment)
            let (b, before, id) = (move.b, move.before, move.id)
            let log = Pipe()
            let worker = try startFerry(["worker", "--as-owner", "--lease", "1"], environment: environment, output: log)
            defer { if worker.isRunning { worker.terminate(); worker.waitUntilExit() } }
            waitUntilStaging(in: b, holds: "big", seconds: 20)
            let held = fs.directory + "/write-lock-held"
            _ = try Shell.run(["python3", "-c", """
                import os, sqlite3, sys, time
                db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
                db.execute("BEGIN IMMEDIATE")
                open(sys.argv[2], "w").close()
                time.sleep(2.5)
                db.execute("COMMIT")
                """, database, held])
            #expect(FileManager.default.fileExists(atPath: held))
            var record: [String: Any] = [:]
            let deadline = Date().addingTimeInterval(60)
            repeat {
                Thread.sleep(forTimeInterval: 0.3)
                record = try jsonObject(try ferry("task", "show", "--json", id, environment: environment).standardOutput)
            } while Date() < deadline && !["completed", "failed", "rolled_back"].contains(record["status"] as? String ?? "")
            worker.terminate()
            worker.waitUntilExit()
            let output = String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(record["status"] as? String == "completed", "\(record)\n\(output)")
            #expect(record["attempts"] as? Int == 1, "\(record)\n\(output)")
            #expect(!output.contains("stopping it"), "\(output)")
            #expect(try before.differences(to: TreeSnapshot.take(b + "/big")).isEmpty)
        }
    }

    /// A root worker (tasks as their owners) cleans up on its own schedule, `--janitor-minutes`,
    /// as `ferry serve` does: a staging directory that a finished task left behind goes, a lock
    /// marker whose task holds no lock goes, and the marker of a task that still holds its lock,
    /// deleted meanwhile (as a cleaner of old files under /tmp would), comes back, so that a
    /// same-project move sees that lock again. The worker's log says what each pass did.
    @Test func aRootWorkerRunsItsJanitorOnSchedule() throws {
        try withLoopXFS { fs in
            let database = "\(fs.directory)/tasks.sqlite"
            let markers = database + "-locks"
            let environment = ["FERRY_DATABASE_URL": "sqlite://\(database)"]
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            try TreeBuilder.write(a + "/done", bytes: 4096)
            let moved = try ferry("move", "--json", a + "/done", b, environment: environment)
            #expect(moved.status == 0, "\(moved.standardError)")
            let finished = try #require(try jsonObject(moved.standardOutput)["id"] as? String)
            let leftover = "\(b)/.ferry-staging-\(finished)"
            try TreeBuilder.stagingDirectory(leftover, id: finished)
            try FileManager.default.createDirectory(atPath: leftover + "/partial", withIntermediateDirectories: true)

            try FileManager.default.createDirectory(atPath: a + "/held", withIntermediateDirectories: true)
            let held = try ferry("move", "--detach", a + "/held", b, environment: environment).standardOutput
                .trimmingCharacters(in: .whitespacesAndNewlines)
            try lockAsIfRunning(id: held, path: a + "/held", database: database)
            try FileManager.default.removeItem(atPath: "\(markers)/\(held)")
            _ = FileManager.default.createFile(atPath: "\(markers)/0123456789abcdef", contents: nil)
            func marked() -> Set<String> { Set((try? FileManager.default.contentsOfDirectory(atPath: markers)) ?? []) }

            let log = Pipe()
            let worker = try startFerry(["worker", "--as-owner", "--janitor-minutes", "0.01"], environment: environment, output: log)
            defer { if worker.isRunning { worker.terminate(); worker.waitUntilExit() } }
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline && (FileManager.default.fileExists(atPath: leftover) || marked() != [held]) {
                Thread.sleep(forTimeInterval: 0.2)
            }
            worker.terminate()
            worker.waitUntilExit()
            let output = String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(!FileManager.default.fileExists(atPath: leftover), "\(output)")
            #expect(marked() == [held], "\(output)")
            #expect(output.contains("janitor removed a staging directory no live task owns"), "\(output)")
            #expect(output.contains("put back the lock marker of task \(held)"), "\(output)")
            #expect(output.contains("removed the lock marker of task 0123456789abcdef"), "\(output)")
            let refused = try ferry("move", a + "/held", a + "/elsewhere", environment: environment)
            #expect(refused.status == 4, "\(refused.standardOutput)\(refused.standardError)")
            #expect(FileManager.default.fileExists(atPath: a + "/held"))
        }
    }

    /// A task's process that stops heartbeating (here stopped with SIGSTOP, as its owner could)
    /// must not hold a runner forever, and its task resumes. With a free runner, that runner
    /// claims the task once the lease expires and the stopped process is killed as taken over
    /// (or, when the other run has finished the task before the runner looked, as a process
    /// that did not exit once its task ended: the worker would otherwise wait for it forever,
    /// and never stop); with none (`--concurrency 1`), the process is killed after two leases of
    /// silence (here the 10 s minimum), and the task is claimed again.
    @Test(arguments: [1, 2])
    func aStoppedTaskProcessIsKilledAndItsTaskResumed(concurrency: Int) throws {
        try withLoopXFS(sizeMiB: 1024) { fs in
            let environment = ["FERRY_DATABASE_URL": "sqlite://\(fs.directory)/tasks.sqlite"]
            let move = try QueuedBigMove(fs, environment: environment)
            let (b, before, id) = (move.b, move.before, move.id)
            let log = Pipe()
            let worker = try startFerry(["worker", "--as-owner", "--lease", "2", "--concurrency", "\(concurrency)"],
                                        environment: environment, output: log)
            defer { if worker.isRunning { worker.terminate(); worker.waitUntilExit() } }
            waitUntilStaging(in: b, holds: "big", seconds: 20)
            let pid = Self.processes(matching: ["agent", "run-task"], and: id).last ?? ""
            #expect(!pid.isEmpty)
            // Its settings are in its environment, which only root reads; `ps` shows everyone its arguments.
            let arguments = String(decoding: FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") ?? Data(), as: UTF8.self)
            #expect(!arguments.contains(id), "\(arguments)")
            _ = try Shell.run(["kill", "-STOP", pid])
            var record: [String: Any] = [:]
            let deadline = Date().addingTimeInterval(90)
            repeat {
                Thread.sleep(forTimeInterval: 0.5)
                record = try jsonObject(try ferry("task", "show", "--json", id, environment: environment).standardOutput)
            } while Date() < deadline && record["status"] as? String != "completed"
            #expect(record["status"] as? String == "completed", "\(record)")
            #expect((record["attempts"] as? Int ?? 0) >= 2, "\(record)")
            func gone() -> Bool { Self.gone(pid) }
            let killedBy = Date().addingTimeInterval(30)
            while !gone() && Date() < killedBy { Thread.sleep(forTimeInterval: 0.2) }
            #expect(gone(), "the stopped process of the finished task is still there")
            #expect(try before.differences(to: TreeSnapshot.take(b + "/big")).isEmpty)
            // A worker that cannot stop would hang the tests: it gets 30 s, then SIGKILL.
            worker.terminate()
            let stopsBy = Date().addingTimeInterval(30)
            while worker.isRunning && Date() < stopsBy { Thread.sleep(forTimeInterval: 0.1) }
            if worker.isRunning {
                kill(worker.processIdentifier, SIGKILL)
                _ = try? Shell.execute(["kill", "-KILL", pid])
                worker.waitUntilExit()
                Issue.record("the worker did not stop within 30 s of SIGTERM")
                return
            }
            #expect(worker.terminationStatus == 0)
            let output = String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            // Two runners: killed as taken over, or, if the other run finished the task before the
            // runner looked, as a process that did not exit once its task ended (as said above).
            let reasons = concurrency == 1 ? ["task process missed its heartbeats; stopping it"]
                : ["task taken over by another run; stopping its process", "task ended but its process did not exit; stopping it"]
            #expect(reasons.contains { output.contains($0) }, "\(output)")
        }
    }

    /// A task given up after three unexpected ends (`record`, rolled back): `runner.crashed`, its
    /// source whole, nothing in the destination; `ferry task retry` then runs it to the end.
    static func expectRolledBackThenRetriedToTheEnd(_ record: [String: Any], _ move: QueuedBigMove, environment: [String: String],
                                                    _ show: () throws -> [String: Any]) throws {
        let error = record["error"] as? [String: Any]
        #expect(error?["code"] as? String == "runner.crashed", "\(record)")
        #expect((error?["message"] as? String)?.contains("ended unexpectedly 3 times") == true, "\(record)")
        #expect(try move.before.differences(to: TreeSnapshot.take(move.a + "/big")).isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: move.b).isEmpty)

        // Retried, it starts counting again and runs to the end.
        #expect(try ferry("task", "retry", move.id, environment: environment).status == 0)
        let done = try waitUntil("completed", seconds: 60, show)
        #expect(done["status"] as? String == "completed", "\(done)")
        #expect(try move.before.differences(to: TreeSnapshot.take(move.b + "/big")).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: move.a + "/big"))
    }

    /// Whether the process `pid` has exited (gone, or a zombie not yet reaped).
    static func gone(_ pid: String) -> Bool {
        !FileManager.default.fileExists(atPath: "/proc/\(pid)/status")
            || (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8))?.contains("zombie") == true
    }

    /// Reads the task with `show` until its status is `status` or `seconds` have passed; the last record read.
    static func waitUntil(_ status: String, seconds: Double, _ show: () throws -> [String: Any]) throws -> [String: Any] {
        var record: [String: Any] = [:]
        let deadline = Date().addingTimeInterval(seconds)
        repeat {
            Thread.sleep(forTimeInterval: 0.2)
            record = try show()
        } while Date() < deadline && record["status"] as? String != status
        return record
    }

    /// The pids of processes whose arguments include `words` and one containing `text`.
    /// Processes whose arguments include `words` and whose arguments or environment (where a
    /// task process gets its settings) contain `text`, oldest first.
    static func processes(matching words: [String], and text: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).filter { entry in
            guard entry.allSatisfy(\.isNumber), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { return false }
            let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            let environment = (FileManager.default.contents(atPath: "/proc/\(entry)/environ") ?? Data()).split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return words.allSatisfy(arguments.contains) && (arguments + environment).contains { $0.contains(text) }
        }.sorted { Int($0) ?? 0 < Int($1) ?? 0 }
    }

    /// A task whose process keeps dying (a crash met on one of its files, memory it cannot have)
    /// is not run, and killed, forever: it is resumed after 5 s, then 10 s, and at its third
    /// unexpected end rolled back, with a failure that says so, the source untouched and no
    /// staging left; `ferry task retry` runs it once more, to the end.
    @Test func aTaskWhoseProcessKeepsDyingIsRolledBack() throws {
        try withLoopXFS(sizeMiB: 1024) { fs in
            let environment = ["FERRY_DATABASE_URL": "sqlite://\(fs.directory)/tasks.sqlite"]
            let move = try QueuedBigMove(fs, environment: environment)
            let id = move.id
            let log = Pipe()
            let worker = try startFerry(["worker", "--as-owner", "--lease", "2", "--concurrency", "1"], environment: environment, output: log)
            defer { if worker.isRunning { worker.terminate(); worker.waitUntilExit() } }
            func show() throws -> [String: Any] { try jsonObject(try ferry("task", "show", "--json", id, environment: environment).standardOutput) }
            var killed: Set<String> = []
            for _ in 1...3 {
                var pid = ""
                let deadline = Date().addingTimeInterval(40)
                // Read from /proc, not with pgrep: the process must die as it starts, long before
                // its copy could be staged whole and published (a published task is resumed).
                while Date() < deadline {
                    if let found = Self.processes(matching: ["agent", "run-task"], and: id).first(where: { !killed.contains($0) }) {
                        pid = found
                        break
                    }
                    Thread.sleep(forTimeInterval: 0.002)
                }
                let state = pid.isEmpty ? ((try? show()).map { "\($0)" } ?? "?") : ""
                try #require(!pid.isEmpty, "no new process for the task: \(state)")
                _ = try Shell.execute(["kill", "-KILL", pid])
                killed.insert(pid)
            }
            let record = try Self.waitUntil("rolled_back", seconds: 30, show)
            if record["status"] as? String != "rolled_back" {
                worker.terminate()
                worker.waitUntilExit()
                Issue.record("not rolled back: \(record)\n\(String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))")
                return
            }
            let messages = (record["events"] as? [[String: Any]] ?? []).compactMap { $0["message"] as? String }
            #expect(messages.contains { $0.hasPrefix("task process ended unexpectedly") && $0.hasSuffix("resuming it in 5 s") }, "\(messages)")
            #expect(messages.contains { $0.hasPrefix("task process ended unexpectedly") && $0.hasSuffix("resuming it in 10 s") }, "\(messages)")
            try Self.expectRolledBackThenRetriedToTheEnd(record, move, environment: environment, show)
        }
    }

    /// A task that takes its worker down with it every time (each worker here killed with SIGKILL
    /// while running it; its process then stops on the parent-death signal, unable to hand the
    /// task back) is taken over by the next worker once the lease expires, twice; the third time
    /// (`ferry worker --once`), it is rolled back instead (staging removed, source untouched) with `runner.crashed`, and
    /// `ferry task retry` runs it once more, to the end.
    @Test func aTaskWhoseWorkersKeepDyingIsRolledBack() throws {
        try withLoopXFS(sizeMiB: 1024) { fs in
            let environment = ["FERRY_DATABASE_URL": "sqlite://\(fs.directory)/tasks.sqlite"]
            let move = try QueuedBigMove(fs, environment: environment)
            let (b, id) = (move.b, move.id)
            func show() throws -> [String: Any] { try jsonObject(try ferry("task", "show", "--json", id, environment: environment).standardOutput) }
            var killed: Set<String> = []
            for round in 1...3 {
                let worker = try startFerry(["worker", "--lease", "2", "--concurrency", "1"], environment: environment)
                var pid = ""
                let deadline = Date().addingTimeInterval(40)
                while Date() < deadline && worker.isRunning {
                    if let found = Self.processes(matching: ["agent", "run-task"], and: id).first(where: { !killed.contains($0) }) {
                        pid = found
                        break
                    }
                    Thread.sleep(forTimeInterval: 0.002)
                }
                // The first dies with part of the copy staged; the others as soon as they start the task.
                if round == 1 { waitUntilStaging(in: b, holds: "big", seconds: 20) }
                kill(worker.processIdentifier, SIGKILL)
                worker.waitUntilExit()
                let state = pid.isEmpty ? ((try? show()).map { "\($0)" } ?? "?") : ""
                try #require(!pid.isEmpty, "round \(round): the worker started no process for the task: \(state)")
                killed.insert(pid)
                let stopsBy = Date().addingTimeInterval(30)
                while !Self.gone(pid) && Date() < stopsBy { Thread.sleep(forTimeInterval: 0.05) }
                if !Self.gone(pid) {
                    _ = try? Shell.execute(["kill", "-KILL", pid])
                    Issue.record("round \(round): the task's process outlived its worker by 30 s")
                }
            }
            let staged = (try? FileManager.default.contentsOfDirectory(atPath: b)) ?? []
            #expect(staged.contains { $0.hasPrefix(".ferry-staging-") }, "the first run staged nothing: \(staged)")

            // One `ferry worker --once`, once the last lease has run out, gives the task up and
            // then rolls it back (it used to stop after giving it up, with nothing else claimed).
            let stalledBy = Date().addingTimeInterval(20)
            while (try show())["stalled"] as? Bool != true && Date() < stalledBy { Thread.sleep(forTimeInterval: 0.1) }
            let once = try ferry("worker", "--once", "--lease", "2", "--concurrency", "1", environment: environment)
            #expect(once.status == 0, "\(once.standardError)")
            let record = try show()
            try #require(record["status"] as? String == "rolled_back", "\(record)")
            let worker = try startFerry(["worker", "--lease", "2", "--concurrency", "1"], environment: environment)
            defer { if worker.isRunning { worker.terminate(); worker.waitUntilExit() } }
            let messages = (record["events"] as? [[String: Any]] ?? []).compactMap { $0["message"] as? String }
            #expect(messages.filter { $0.hasPrefix("claimed by") && $0.contains(" after the lease of ") }.count == 3, "\(messages)")
            try Self.expectRolledBackThenRetriedToTheEnd(record, move, environment: environment, show)
        }
    }
}
