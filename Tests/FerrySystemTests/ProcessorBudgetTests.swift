import FerrySystem
import Testing

/// The CPU count the thread pools follow: affinity and cgroup limits read as the kernel shows them
/// (the files below are the shapes of cgroup v1, v2 and a hybrid system, as in cgroups(7)).
@Suite struct ProcessorBudgetTests {
    static let unified = MountInfoEntry(root: "/", mountPoint: "/sys/fs/cgroup", filesystemType: "cgroup2", source: "cgroup2",
                                        superOptions: ["rw", "nsdelegate"])

    @Test func cpuMaxIsQuotaOverPeriodOrNothing() {
        #expect(Processors.parseCPUMax("max 100000\n") == nil)
        #expect(Processors.parseCPUMax("150000 100000\n") == 1.5)
        #expect(Processors.parseCPUMax("400000 100000") == 4)
        #expect(Processors.parseCPUMax("") == nil)
        #expect(Processors.parseCPUMax("garbage") == nil)
    }

    @Test func unifiedHierarchyTakesTheTightestLevel() {
        let files = [
            "/sys/fs/cgroup/system.slice/slurmstepd.scope/job_42/cpu.max": "max 100000\n",
            "/sys/fs/cgroup/system.slice/slurmstepd.scope/cpu.max": "800000 100000\n",
            "/sys/fs/cgroup/system.slice/cpu.max": "300000 100000\n",
        ]
        var asked: [String] = []
        let bandwidth = Processors.cgroupBandwidth(cgroups: "0::/system.slice/slurmstepd.scope/job_42\n", mounts: [Self.unified]) { path in
            asked.append(path)
            return files[path]
        }
        #expect(bandwidth == 3)
        // The cgroup itself first, then every ancestor up to the hierarchy's root.
        #expect(asked == [
            "/sys/fs/cgroup/system.slice/slurmstepd.scope/job_42/cpu.max", "/sys/fs/cgroup/system.slice/slurmstepd.scope/cpu.max",
            "/sys/fs/cgroup/system.slice/cpu.max", "/sys/fs/cgroup/cpu.max",
        ])
        let budget = ProcessorBudget(online: 128, affinity: 128, bandwidth: bandwidth)
        #expect(budget.usable == 3)
        #expect(budget.limit == "cgroup CPU limit of 3 CPUs")
    }

    @Test func versionOneCPUControllerInsideANamespace() {
        // A container's view: the hierarchy is mounted from the container's own cgroup, which is
        // also what /proc/self/cgroup names; the controllers are shared by one hierarchy.
        let mounts = MountInfoEntry.parse("""
            30 25 0:26 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct
            31 25 0:27 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
            """)
        #expect(mounts.count == 2)
        #expect(mounts[0].superOptions == ["rw", "cpu", "cpuacct"])
        let files = ["/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
                     "/sys/fs/cgroup/memory/cpu.cfs_quota_us": "1000\n", "/sys/fs/cgroup/memory/cpu.cfs_period_us": "100000\n"]
        let bandwidth = Processors.cgroupBandwidth(cgroups: "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n", mounts: mounts) { files[$0] }
        #expect(bandwidth == 0.5)
        #expect(ProcessorBudget(online: 8, affinity: 8, bandwidth: bandwidth).usable == 1)
        // No quota (-1): no limit.
        let unlimited = ["/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"]
        #expect(Processors.cgroupBandwidth(cgroups: "4:cpu,cpuacct:/docker/abc\n", mounts: mounts) { unlimited[$0] } == nil)
        // A cgroup outside the mounted part cannot be read through it.
        #expect(Processors.cgroupBandwidth(cgroups: "4:cpu,cpuacct:/other\n", mounts: mounts) { files[$0] } == nil)
    }

    @Test func hybridSystemsCountBothHierarchies() {
        let mounts = [
            MountInfoEntry(root: "/", mountPoint: "/sys/fs/cgroup/cpu", filesystemType: "cgroup", source: "cgroup", superOptions: ["rw", "cpu"]),
            MountInfoEntry(root: "/", mountPoint: "/sys/fs/cgroup/unified", filesystemType: "cgroup2", source: "cgroup2", superOptions: ["rw"]),
        ]
        let files = ["/sys/fs/cgroup/cpu/batch/cpu.cfs_quota_us": "250000", "/sys/fs/cgroup/cpu/batch/cpu.cfs_period_us": "100000",
                     "/sys/fs/cgroup/unified/batch/cpu.max": "600000 100000"]
        let bandwidth = Processors.cgroupBandwidth(cgroups: "1:cpu:/batch\n0::/batch\n", mounts: mounts) { files[$0] }
        #expect(bandwidth == 2.5)
        let budget = ProcessorBudget(online: 16, affinity: 16, bandwidth: bandwidth)
        #expect(budget.usable == 3)
        #expect(budget.limit == "cgroup CPU limit of 2.5 CPUs")
    }

    @Test func affinityAndBandwidthTogether() {
        #expect(ProcessorBudget(online: 64, affinity: 4, bandwidth: nil).usable == 4)
        #expect(ProcessorBudget(online: 64, affinity: 4, bandwidth: nil).limit == "affinity mask of 4 CPUs")
        #expect(ProcessorBudget(online: 64, affinity: 4, bandwidth: 2).usable == 2)
        #expect(ProcessorBudget(online: 64, affinity: 4, bandwidth: 8).usable == 4)
        #expect(ProcessorBudget(online: 64, affinity: 4, bandwidth: 8).limit == "affinity mask of 4 CPUs")
        #expect(ProcessorBudget(online: 2, affinity: nil, bandwidth: 0.1).usable == 1)
        #expect(ProcessorBudget(online: 2, affinity: 2, bandwidth: nil).limit == nil)
    }

    @Test func thisProcessReadsItsOwnBudget() {
        let budget = Processors.current()
        #expect(budget.online >= 1)
        #expect(budget.affinity != nil, "sched_getaffinity must be readable")
        #expect((1...budget.online).contains(budget.usable))
        #expect(Processors.usable == budget.usable)
    }
}
