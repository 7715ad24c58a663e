import Foundation
import FerrySystem
import FerryTestSupport
import Testing

@Suite("Two ferry workers on PostgreSQL (root)", .enabled(if: Environment.canMountXFS && PostgresCluster.available), .serialized)
struct PostgresWorkersTests {
    @Test func tasksRunOnceAndADeadWorkersTaskIsTakenOver() throws {
        let cluster = try PostgresCluster()
        defer { cluster.stop() }
        try cluster.createDatabase("workers")
        let url = "postgres://postgres@127.0.0.1:\(cluster.port)/workers"
        let environment = ["FERRY_DATABASE_URL": url, "FERRY_LEASE_SECONDS": "2"]
        try withLoopXFS(sizeMiB: 1024) { fs in
            let a = try fs.makeProjectDirectory("a", project: 100)
            let b = try fs.makeProjectDirectory("b", project: 200)
            // Ten small tasks for two workers.
            var ids: [String] = []
            for i in 0..<10 {
                try FileManager.default.createDirectory(atPath: "\(a)/d\(i)", withIntermediateDirectories: true)
                for f in 0..<20 { try TreeBuilder.write("\(a)/d\(i)/f\(f)", bytes: 20_000, seed: UInt64(i * 100 + f)) }
                let queued = try ferry("move", "--detach", "\(a)/d\(i)", b, environment: environment)
                #expect(queued.status == 0, "\(queued.standardError)")
                ids.append(queued.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            let workers = try (0..<2).map { _ in try startWorker(environment) }
            try waitUntil(seconds: 60) { (try? FileManager.default.contentsOfDirectory(atPath: b).count) == 10 && (try? FileManager.default.contentsOfDirectory(atPath: a).isEmpty) == true }
            for worker in workers { worker.terminate(); worker.waitUntilExit() }
            for id in ids {
                let task = try jsonObject(try ferry("task", "show", "--json", id, environment: environment).standardOutput)
                #expect(task["status"] as? String == "completed")
                let claims = (task["events"] as? [[String: Any]])?.filter { ($0["message"] as? String)?.hasPrefix("claimed by") == true } ?? []
                #expect(claims.count == 1, "task \(id) was claimed \(claims.count) times")
            }

            // One big task; the worker running it dies; the other takes it over after the lease.
            try FileManager.default.createDirectory(atPath: a + "/big", withIntermediateDirectories: true)
            for i in 0..<6 { try Shell.run(["dd", "if=/dev/urandom", "of=\(a)/big/f\(i)", "bs=1M", "count=25", "status=none"]) }
            let before = try TreeSnapshot.take(a + "/big")
            let big = try ferry("move", "--detach", "--jobs", "1", a + "/big", b, environment: environment).standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
            let doomed = try startWorker(environment)
            try waitUntil(seconds: 30) {
                let staged = (try? FileManager.default.contentsOfDirectory(atPath: b).filter { $0.hasPrefix(".ferry-staging-") }) ?? []
                return staged.contains { (try? FileManager.default.contentsOfDirectory(atPath: "\(b)/\($0)/big"))?.isEmpty == false }
            }
            kill(doomed.processIdentifier, SIGKILL)
            doomed.waitUntilExit()
            let survivor = try startWorker(environment)
            defer { survivor.terminate(); survivor.waitUntilExit() }
            try waitUntil(seconds: 90) {
                let task = try? jsonObject(try ferry("task", "show", "--json", big, environment: environment).standardOutput)
                return task?["status"] as? String == "completed"
            }
            let task = try jsonObject(try ferry("task", "show", "--json", big, environment: environment).standardOutput)
            let claimers = (task["events"] as? [[String: Any]])?.compactMap { $0["message"] as? String }.filter { $0.hasPrefix("claimed by") } ?? []
            #expect(claimers.count == 2, "\(claimers)")
            #expect(Set(claimers).count == 2, "two different workers")
            #expect(try before.differences(to: TreeSnapshot.take(b + "/big")).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: a + "/big"))
            #expect(try FileManager.default.contentsOfDirectory(atPath: b).filter { $0.hasPrefix(".ferry-staging-") }.isEmpty)
        }
    }

    func startWorker(_ environment: [String: String]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ferryBinary())
        process.arguments = ["worker", "--concurrency", "2"]
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    func waitUntil(seconds: Double, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return }
            usleep(50_000)
        }
        Issue.record("condition not met within \(seconds) s")
    }
}
