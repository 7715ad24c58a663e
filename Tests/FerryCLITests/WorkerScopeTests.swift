import Foundation
import FerrySystem
import FerryTestSupport
import Testing

/// A worker without root's rights runs tasks with its own, so on a database that several users
/// share it takes only its own user's tasks: another user's would run with rights its owner never
/// had, or (with `--as-owner`, which cannot change identity without root) be put off for the
/// worker that can run it.
@Suite("ferry worker without root takes only its user's tasks (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct WorkerScopeTests {
    @Test(arguments: [false, true])
    func aUsersWorkerLeavesOtherUsersTasksAlone(asOwner: Bool) throws {
        try withTestUser { user in
            try withLoopXFS { fs in
                let sandbox = try UserSandbox(fs)
                let (a, b, environment) = (sandbox.a, sandbox.b, sandbox.environment)
                _ = try Shell.run(["runuser", "-u", user.name, "--", "mkdir", "\(a)/mine"])
                _ = try Shell.run(["runuser", "-u", user.name, "--", "dd", "if=/dev/urandom", "of=\(a)/mine/data", "bs=64k", "count=4", "status=none"])
                let mine = try sandbox.ferry(as: user, ["move", "--detach", "\(a)/mine", b])
                #expect(mine.status == 0, "\(mine.standardError)")
                // Root's task: data the user may read, into a place the user may write. A worker
                // of the user's that took it would carry it out, with the user's rights.
                try FileManager.default.createDirectory(atPath: "\(a)/roots", withIntermediateDirectories: false)
                try TreeBuilder.write("\(a)/roots/data", bytes: 50_000)
                chmod("\(a)/roots", 0o755)
                chmod("\(a)/roots/data", 0o644)
                let roots = try ferry("copy", "--detach", "\(a)/roots", b, environment: environment)
                #expect(roots.status == 0, "\(roots.standardError)")
                // The database stays the user's to write (root's enqueue may have made files in it).
                _ = try Shell.run(["chown", "-R", "\(user.name):", "\(fs.directory)/db"])

                let worker = try sandbox.ferry(as: user, ["worker", "--once"] + (asOwner ? ["--as-owner"] : []))
                #expect(worker.status == 0, "\(worker.standardError)")

                func show(_ id: String) throws -> [String: Any] {
                    try jsonObject(try ferry("task", "show", "--json", id, environment: environment).standardOutput)
                }
                let ids = [mine.standardOutput, roots.standardOutput].map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
                let done = try show(ids[0])
                #expect(done["status"] as? String == "completed", "\(done)\n\(worker.standardError)")
                let left = try show(ids[1])
                #expect(left["status"] as? String == "pending", "\(left)\n\(worker.standardError)")
                #expect(left["attempts"] as? Int == 0, "\(left)")
                #expect(left["error"] == nil || left["error"] is NSNull, "\(left)")
                let messages = (left["events"] as? [[String: Any]] ?? []).compactMap { $0["message"] as? String }
                #expect(!messages.contains { $0.hasPrefix("claimed by") }, "\(messages)")
                #expect(!FileManager.default.fileExists(atPath: "\(b)/roots"))

                // Root's worker then runs it.
                let rootWorker = try ferry("worker", "--once", environment: environment)
                #expect(rootWorker.status == 0, "\(rootWorker.standardError)")
                #expect(try show(ids[1])["status"] as? String == "completed")
                #expect(FileManager.default.fileExists(atPath: "\(b)/roots/data"))
            }
        }
    }
}
