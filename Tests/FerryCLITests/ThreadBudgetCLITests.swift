import Foundation
import FerrySystem
import FerryTestSupport
import Testing

/// A batch job given fewer CPUs than the node has (an affinity mask, a cgroup CPU limit) gets
/// threads for those CPUs, not the node's: what `--dry-run` says the run would use.
@Suite(.serialized)
struct ThreadBudgetCLITests {
    /// A tree to plan a copy of, in a directory of the test's own.
    func area() throws -> String {
        let area = NSTemporaryDirectory() + "ferry-threads-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: area + "/src/sub", withIntermediateDirectories: true)
        for i in 0..<5 { try TreeBuilder.write("\(area)/src/sub/f\(i)", bytes: 4096) }
        return area
    }

    func plan(_ command: [String]) throws -> [String: Any] {
        let result = try Shell.execute(command, environment: ["FERRY_DATABASE_URL": testDatabase])
        #expect(result.status == 0, "\(result.standardError)")
        return try jsonObject(result.standardOutput)
    }

    @Test func threadsFollowTheCPUsTheProcessMayUse() throws {
        let area = try area()
        defer { try? FileManager.default.removeItem(atPath: area) }
        let online = Processors.current().online
        let free = try plan([ferryBinary(), "copy", "--dry-run", "--json", area + "/src", area + "/dst"])
        let cpus = try #require(free["cpus"] as? [String: Any])
        let usable = try #require(cpus["usable"] as? Int)
        #expect(cpus["online"] as? Int == online)
        #expect(free["copiers"] as? Int == max(2, 2 * usable))
        #expect(free["walkers"] as? Int == usable)

        // One CPU by affinity, as `taskset` or a Slurm cpuset gives it.
        let pinned = try plan(["taskset", "-c", "0", ferryBinary(), "copy", "--dry-run", "--json", area + "/src", area + "/dst"])
        #expect(pinned["copiers"] as? Int == 2)
        #expect(pinned["walkers"] as? Int == 1)
        let pinnedCPUs = try #require(pinned["cpus"] as? [String: Any])
        #expect(pinnedCPUs["usable"] as? Int == 1)
        if online > 1 { #expect((pinnedCPUs["limit"] as? String)?.contains("affinity mask of 1 CPU") == true, "\(pinnedCPUs)") }

        // --jobs still decides when given.
        let given = try plan(["taskset", "-c", "0", ferryBinary(), "copy", "--dry-run", "--json", "--jobs", "6", area + "/src", area + "/dst"])
        #expect(given["copiers"] as? Int == 6)
        #expect(given["walkers"] as? Int == 6)

        // The text says it too.
        let text = try Shell.execute(["taskset", "-c", "0", ferryBinary(), "copy", "--dry-run", area + "/src", area + "/dst"],
                                     environment: ["FERRY_DATABASE_URL": testDatabase])
        #expect(text.standardOutput.contains("Threads: 2 copying, 1 for the walks that move no data (1 CPU usable of \(online) online"),
                "\(text.standardOutput)")
        #expect(!FileManager.default.fileExists(atPath: area + "/dst"))
    }

    /// The CPU controller's directory for a new cgroup, where this kernel has one writable: v1's
    /// `cpu` hierarchy (this project's VM), or v2 with the controller enabled for children.
    static var cpuControllerParent: (path: String, version: Int)? {
        guard Environment.isRoot else { return nil }
        for mount in MountInfoEntry.current() {
            if mount.filesystemType == "cgroup", mount.superOptions.contains("cpu"), mount.root == "/",
               FileManager.default.fileExists(atPath: mount.mountPoint + "/cpu.cfs_period_us") {
                return (mount.mountPoint, 1)
            }
            if mount.filesystemType == "cgroup2", mount.root == "/",
               (readKernelFile(mount.mountPoint + "/cgroup.subtree_control") ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("cpu") {
                return (mount.mountPoint, 2)
            }
        }
        return nil
    }

    @Test(.enabled(if: cpuControllerParent != nil && Processors.current().online > 1, "host limit: needs root, a writable cgroup CPU controller and two CPUs"))
    func aCgroupCPULimitCountsAsOneCPU() throws {
        let (parent, version) = try #require(Self.cpuControllerParent)
        let area = try area()
        defer { try? FileManager.default.removeItem(atPath: area) }
        let group = parent + "/ferrytest-\(getpid())"
        try FileManager.default.createDirectory(atPath: group, withIntermediateDirectories: false)
        // The group can only go once nothing is in it: the shell below exits before this runs.
        defer { rmdir(group) }
        if version == 1 {
            try "100000".write(toFile: group + "/cpu.cfs_period_us", atomically: false, encoding: .utf8)
            try "100000".write(toFile: group + "/cpu.cfs_quota_us", atomically: false, encoding: .utf8)
        } else {
            try "100000 100000".write(toFile: group + "/cpu.max", atomically: false, encoding: .utf8)
        }
        let limited = try plan(["sh", "-c", "echo $$ > \(group)/cgroup.procs && exec \"$0\" copy --dry-run --json \"$1\" \"$2\"",
                                ferryBinary(), area + "/src", area + "/dst"])
        #expect(limited["copiers"] as? Int == 2)
        #expect(limited["walkers"] as? Int == 1)
        let cpus = try #require(limited["cpus"] as? [String: Any])
        #expect(cpus["usable"] as? Int == 1)
        #expect((cpus["limit"] as? String)?.contains("cgroup CPU limit of 1 CPU") == true, "\(cpus)")
    }
}
