import CFerrySystem
import Glibc

/// How many CPUs this process can keep busy: the online CPUs, narrowed by its affinity mask
/// (`taskset`, a Slurm or cgroup cpuset) as `nproc(1)` counts them, and by a cgroup CPU bandwidth
/// limit (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`) rounded up, as container
/// runtimes count it. A batch job given 4 cores of a 128-core node must size its threads for 4:
/// walks that only `stat` are bound by the CPU, and threads beyond it only queue.
public struct ProcessorBudget: Sendable, Equatable {
    public var online: Int
    /// CPUs in the affinity mask; nil if it could not be read.
    public var affinity: Int?
    /// CPUs' worth of bandwidth the tightest cgroup limit allows (quota / period); nil if none.
    public var bandwidth: Double?

    public init(online: Int, affinity: Int?, bandwidth: Double?) {
        self.online = online
        self.affinity = affinity
        self.bandwidth = bandwidth
    }

    public var usable: Int {
        var count = max(1, online)
        if let affinity, affinity > 0 { count = min(count, affinity) }
        if let bandwidth, bandwidth > 0 { count = min(count, Int(bandwidth.rounded(.up))) }
        return max(1, count)
    }

    /// What narrowed the count, in words ("affinity mask of 4 CPUs"), or nil if nothing did.
    public var limit: String? {
        var parts: [String] = []
        if let affinity, affinity > 0, affinity < online { parts.append("affinity mask of \(Self.cpus(Double(affinity)))") }
        if let bandwidth, bandwidth > 0, Int(bandwidth.rounded(.up)) < min(online, affinity ?? online) {
            parts.append("cgroup CPU limit of \(Self.cpus(bandwidth))")
        }
        return parts.isEmpty ? nil : parts.joined(separator: ", ")
    }

    private static func cpus(_ value: Double) -> String {
        if value == 1 { return "1 CPU" }
        return "\(value == value.rounded() ? String(Int(value)) : String((value * 100).rounded() / 100)) CPUs"
    }
}

public enum Processors {
    /// This process's budget, read once: what the thread counts follow and `--dry-run` shows.
    public static let budget: ProcessorBudget = current()
    /// CPUs this process can keep busy (see `ProcessorBudget`).
    public static var usable: Int { budget.usable }

    /// The budget now, for the calling thread's affinity.
    public static func current() -> ProcessorBudget {
        let online = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let affinity = cferry_affinity_cpus()
        let bandwidth = cgroupBandwidth(cgroups: readKernelFile("/proc/self/cgroup") ?? "", mounts: MountInfoEntry.current()) {
            readKernelFile($0, limit: 4096)
        }
        return ProcessorBudget(online: online, affinity: affinity > 0 ? Int(affinity) : nil, bandwidth: bandwidth)
    }

    /// The tightest CPU bandwidth limit on this process's cgroup and its ancestors, in CPUs, from
    /// `/proc/self/cgroup` (`ID:CONTROLLERS:PATH` lines), the mounts, and a reader of control files.
    /// v2: `cpu.max` (`max 100000` or `QUOTA PERIOD`) in the unified hierarchy; v1: the `cpu`
    /// controller's `cpu.cfs_quota_us` (-1: none) over `cpu.cfs_period_us`. Both are read where
    /// both exist (a hybrid system); nil when no level sets a limit.
    public static func cgroupBandwidth(cgroups: String, mounts: [MountInfoEntry], read: (String) -> String?) -> Double? {
        var tightest: Double?
        func consider(_ value: Double?) {
            guard let value, value > 0 else { return }
            tightest = min(tightest ?? value, value)
        }
        for line in cgroups.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
            guard fields.count == 3, fields[2].hasPrefix("/") else { continue }
            let controllers = fields[1].split(separator: ",").map(String.init)
            if fields[0] == "0" && fields[1].isEmpty {
                for mount in mounts where mount.filesystemType == "cgroup2" {
                    for directory in levels(of: fields[2], in: mount) {
                        consider(read(directory + "/cpu.max").flatMap(parseCPUMax))
                    }
                }
            } else if controllers.contains("cpu") {
                for mount in mounts where mount.filesystemType == "cgroup" && mount.superOptions.contains("cpu") {
                    for directory in levels(of: fields[2], in: mount) {
                        guard let quota = read(directory + "/cpu.cfs_quota_us").flatMap({ Int64($0.trimmed) }),
                              let period = read(directory + "/cpu.cfs_period_us").flatMap({ Int64($0.trimmed) }),
                              quota > 0, period > 0 else { continue }
                        consider(Double(quota) / Double(period))
                    }
                }
            }
        }
        return tightest
    }

    /// `cpu.max`: `max PERIOD` (no limit) or `QUOTA PERIOD`, in microseconds.
    public static func parseCPUMax(_ text: String) -> Double? {
        let parts = text.trimmed.split(separator: " ")
        guard parts.count == 2, let quota = Double(parts[0]), let period = Double(parts[1]), quota > 0, period > 0 else { return nil }
        return quota / period
    }

    /// The directories of a cgroup and its ancestors in a mounted hierarchy, deepest first. The
    /// path in `/proc/self/cgroup` is relative to the hierarchy's root; the mount shows the part
    /// at `mount.root` (inside a cgroup namespace, or a bind mount), so a path outside it is not
    /// reachable through this mount.
    static func levels(of path: String, in mount: MountInfoEntry) -> [String] {
        let root = mount.root == "/" ? "" : mount.root
        guard root.isEmpty || path == root || path.hasPrefix(root + "/") else { return [] }
        let parts = path.dropFirst(root.count).split(separator: "/").map(String.init)
        return (0...parts.count).reversed().map { depth in ([mount.mountPoint] + parts.prefix(depth)).joined(separator: "/") }
    }
}

extension String {
    fileprivate var trimmed: String {
        String(self.drop { $0 == " " || $0 == "\n" }.reversed().drop { $0 == " " || $0 == "\n" }.reversed())
    }
}
