import Foundation
import FerryStorage
import FerrySystem
import FerryTestSupport
import Testing

/// A stand-in `lfs`: records its arguments and prints a fixture, as the real one prints quota.
func makeStandInLFS(in directory: String, printing fixture: String, exitStatus: Int = 0) throws -> (program: String, log: String) {
    let program = directory + "/lfs"
    let log = directory + "/lfs.args"
    let fixtureURL = try #require(Bundle.module.resourceURL).appendingPathComponent("Fixtures/\(fixture)")
    let script = """
        #!/bin/sh
        printf '%s\\n' "$@" > '\(log)'
        cat '\(fixtureURL.path)'
        exit \(exitStatus)
        """
    try script.write(toFile: program, atomically: true, encoding: .utf8)
    try Shell.run(["chmod", "755", program])
    return (program, log)
}

@Suite("Storage backends on loop XFS (root)", .enabled(if: Environment.canMountXFS), .serialized)
struct StorageBackendTests {
    @Test func detectsXFSAndItsProjects() throws {
        try withLoopXFS { fs in
            let path = try fs.makeProjectDirectory("p", project: 4242)
            let fd = try FileDescriptor.openDirectory(Array(path.utf8))
            defer { fd.closeQuietly() }
            let backend = try Storage.backend(for: fd)
            #expect(backend.kind == .xfs)
            #expect(try backend.projectAttributes(of: fd) == ProjectAttributes(projectID: 4242, inherit: true))
            try FileManager.default.createDirectory(atPath: path + "/child", withIntermediateDirectories: false)
            let child = try FileDescriptor.openDirectory(Array((path + "/child").utf8))
            defer { child.closeQuietly() }
            #expect(try backend.projectAttributes(of: child) == ProjectAttributes(projectID: 4242, inherit: true))
            try backend.setProjectAttributes(ProjectAttributes(projectID: 7, inherit: false), on: child)
            #expect(try backend.projectAttributes(of: child) == ProjectAttributes(projectID: 7, inherit: false))
        }
    }

    /// No quota in this kernel: the figures come from statvfs, marked as such, with the reason.
    @Test func quotaFallsBackToStatvfs() throws {
        try withLoopXFS { fs in
            let path = try fs.makeProjectDirectory("p", project: 5)
            let fd = try FileDescriptor.openDirectory(Array(path.utf8))
            defer { fd.closeQuietly() }
            let quota = try Storage.backend(for: fd).quota(of: fd, path: Array(path.utf8))
            #expect(quota.source == .statvfs)
            #expect(quota.projectID == 5)
            let stats = try fd.filesystemStatistics()
            #expect(quota.bytesFree == stats.availableBytes)
            #expect(quota.inodesFree == stats.freeInodes)
            #expect(quota.note?.contains("quotactl") == true)
        }
    }

    /// `backend = lustre` on any filesystem runs `lfs quota -p ID MOUNT` and parses it.
    @Test func lustreOverrideRunsLfsQuota() throws {
        try withLoopXFS { fs in
            let path = try fs.makeProjectDirectory("p", project: 1000)
            let lfs = try makeStandInLFS(in: fs.directory, printing: "lfs_quota_p_v2.17.txt")
            let fd = try FileDescriptor.openDirectory(Array(path.utf8))
            defer { fd.closeQuietly() }
            let backend = try Storage.backend(for: fd, choice: .lustre, lfsPath: lfs.program)
            #expect(backend.kind == .lustre)
            let quota = try backend.quota(of: fd, path: Array(path.utf8))
            #expect(quota.source == .lfs)
            #expect(quota.projectID == 1000)
            #expect(quota.bytesUsed == 1_225_350_212 * 1024)
            #expect(quota.bytesHardLimit == UInt64(2_147_483_648) * 1024)
            #expect(quota.inodesUsed == 714_982 && quota.inodesHardLimit == 1_000_000)
            // Headroom under the limit, capped by what the filesystem itself has left.
            let freeInodes = try fd.filesystemStatistics().freeInodes
            #expect(quota.inodesFree == min(1_000_000 - 714_982, freeInodes))
            #expect(quota.overLimit == false && quota.inaccurate == false)
            let arguments = try String(contentsOfFile: lfs.log, encoding: .utf8).split(separator: "\n")
            #expect(arguments == ["quota", "-p", "1000", Substring(fs.mountPoint)])
        }
    }

    @Test func ferryLfsEnvironmentVariableAndFailures() throws {
        try withLoopXFS { fs in
            let path = try fs.makeProjectDirectory("p", project: 1000)
            let fd = try FileDescriptor.openDirectory(Array(path.utf8))
            defer { fd.closeQuietly() }
            let over = try makeStandInLFS(in: fs.directory, printing: "lfs_quota_p_overquota_v2.15.txt")
            setenv("FERRY_LFS", over.program, 1)
            defer { unsetenv("FERRY_LFS") }
            let backend = LustreBackend()
            #expect(backend.lfsPath == over.program)
            let quota = try backend.quota(of: fd, path: Array(path.utf8))
            #expect(quota.overLimit == true)
            // Used 30720 KiB: at the soft limit (so `*`), 200 KiB under the hard limit.
            #expect(quota.bytesFree == 200 * 1024)
            // An lfs that printed its figures and then failed (a target down: EIO) is read, its
            // figures taken as estimates; before, its project's quota was not checked at all.
            let partial = try makeStandInLFS(in: fs.directory, printing: "lfs_quota_p_overquota_v2.15.txt", exitStatus: 5)
            let estimated = try LustreBackend(lfsPath: partial.program).quota(of: fd, path: Array(path.utf8))
            #expect(estimated.source == .lfs && estimated.inaccurate == true && estimated.bytesFree == 200 * 1024, "\(estimated)")
            // One that failed outright prints its zeroed buffer (no limits): that is no figure either.
            let zeroed = fs.directory + "/zeroed-lfs"
            try """
                #!/bin/sh
                echo 'Disk quotas for prj 1000 (pid 1000):'
                echo '     Filesystem  kbytes   quota   limit   grace   files   quota   limit   grace'
                echo '    \(fs.mountPoint)       0       0       0       -       0       0       0       -'
                echo 'Some errors happened when getting quota info. Some devices may be not working or deactivated.'
                exit 110
                """.write(toFile: zeroed, atomically: true, encoding: .utf8)
            try Shell.run(["chmod", "755", zeroed])
            let unanswered = try LustreBackend(lfsPath: zeroed).quota(of: fd, path: Array(path.utf8))
            #expect(unanswered.source == .statvfs && unanswered.note?.contains("exited with 110") == true, "\(unanswered)")
            // A failing lfs that printed no figures: figures from statvfs, with the reason.
            let broken = try makeStandInLFS(in: fs.directory, printing: "lfs_project_c.txt", exitStatus: 3)
            let fallback = try LustreBackend(lfsPath: broken.program).quota(of: fd, path: Array(path.utf8))
            #expect(fallback.source == .statvfs)
            #expect(fallback.note?.contains("exited with 3") == true)
            // A missing lfs: the same, and the note says how to configure it.
            let missing = try LustreBackend(lfsPath: fs.directory + "/no-such-lfs").quota(of: fd, path: Array(path.utf8))
            #expect(missing.source == .statvfs)
            #expect(missing.note?.contains("FERRY_LFS") == true)
        }
    }

    @Test func lustreHSMAndReleasedFilesThroughLfs() throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-lfs")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let hsm = try makeStandInLFS(in: directory, printing: "lfs_hsm_state.txt")
        let states = try LustreBackend(lfsPath: hsm.program).hsmState(of: ["/mnt/lustre/released_file"])
        #expect(states.first?.isReleased == true)
        #expect(try String(contentsOfFile: hsm.log, encoding: .utf8) == "hsm_state\n/mnt/lustre/released_file\n")
        let script = directory + "/find"
        try "#!/bin/sh\nprintf '%s\\n' \"$@\" > '\(directory)/find.args'\nprintf '/l/a\\0/l/b\\377\\0'\n".write(toFile: script, atomically: true, encoding: .utf8)
        try Shell.run(["chmod", "755", script])
        // A directory whose name is not UTF-8 is passed as its bytes.
        let released = try LustreBackend(lfsPath: script).releasedFiles(under: Array("/l/caf".utf8) + [0xE9])
        #expect(released == [Array("/l/a".utf8), Array("/l/b".utf8) + [0xFF]])
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: directory + "/find.args")))
                == Array("find\n/l/caf".utf8) + [0xE9] + Array("\n--layout\nreleased\n--print0\n".utf8))
    }
}

@Suite struct LfsCommandTests {
    /// An `lfs` that hangs (a target that does not answer) is killed at its time limit, and the
    /// call fails saying so; one that fails says how it ended.
    @Test func aHungLfsIsGivenUpAtItsTimeLimit() throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-lfs")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let hung = directory + "/hung-lfs"
        try "#!/bin/sh\necho started > '\(directory)/started'\nexec sleep 60\n".write(toFile: hung, atomically: true, encoding: .utf8)
        let failing = directory + "/failing-lfs"
        try "#!/bin/sh\necho 'no such target' >&2\nexit 5\n".write(toFile: failing, atomically: true, encoding: .utf8)
        try Shell.run(["chmod", "755", hung, failing])
        #expect {
            _ = try LustreBackend(lfsPath: hung, timeout: 1).layout(of: "/mnt/lustre/x")
        } throws: { error in
            "\(error)".contains("\(hung) getstripe /mnt/lustre/x did not answer within 1 s")
        }
        #expect(FileManager.default.fileExists(atPath: directory + "/started"))
        #expect {
            _ = try LustreBackend(lfsPath: failing).layout(of: "/mnt/lustre/x")
        } throws: { error in
            "\(error)".contains("lfs getstripe /mnt/lustre/x failed: no such target")
        }
    }
}

@Suite struct LustreLayoutCommandTests {
    /// Striping is recreated with `lfs setstripe --copy=SRC DEST` (the whole PFL/DoM layout, not a
    /// plain stripe count), and the layout xattr is left to `cloneLayout`, not the ordinary xattr copy.
    @Test func setstripeCopyAndLayoutAttributes() throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-lfs")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let lfs = try makeStandInLFS(in: directory, printing: "lfs_getstripe_pfl_manual_init.txt")
        let backend = LustreBackend(lfsPath: lfs.program)
        try backend.createFile(withLayoutOf: "/mnt/lustre/src file", at: "/mnt/lustre/.ferry-staging-1/dst")
        #expect(try String(contentsOfFile: lfs.log, encoding: .utf8) == "setstripe\n--copy=/mnt/lustre/src file\n/mnt/lustre/.ferry-staging-1/dst\n")
        let layout = try backend.layout(of: "/mnt/testfs/create_comp")
        #expect(layout.first?.layout.isComposite == true)
        #expect(try String(contentsOfFile: lfs.log, encoding: .utf8) == "getstripe\n/mnt/testfs/create_comp\n")
        #expect(backend.layoutAttributeNames.contains(Array("lustre.lov".utf8)))
        #expect(LinuxProjectBackend(kind: .xfs).layoutAttributeNames.isEmpty)
    }
}

@Suite struct MountTableTests {
    @Test func parsesMountinfoWithEscapes() {
        let text = """
            22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
            35 22 0:40 / /mnt/lustre rw,flock - lustre 10.0.0.1@tcp:/testfs rw,flock
            36 22 7:0 / /mnt/with\\040space rw - xfs /dev/loop0 rw
            """
        let table = MountTable(parsing: text)
        #expect(table.mounts.count == 3)
        #expect(table.mounts[1] == MountTable.Mount(mountPoint: "/mnt/lustre", filesystemType: "lustre", source: "10.0.0.1@tcp:/testfs", device: "0:40"))
        #expect(table.mounts[2].mountPoint == "/mnt/with space")
        #expect(table.mounts.map(\.device) == ["8:1", "0:40", "7:0"])
    }

    /// By bytes and whole names: /mnt/lustre2 is not beneath /mnt/lustre, and a name starting
    /// with a combining mark (which joins the "/" before it into one character) still is.
    @Test func theDeepestMountPointIsMatchedByBytes() {
        let table = MountTable(parsing: """
            22 1 8:1 / / rw - ext4 /dev/sda1 rw
            35 22 0:40 / /mnt/lustre rw - lustre 10.0.0.1@tcp:/one rw
            36 22 0:41 / /mnt/lustre2 rw - lustre 10.0.0.1@tcp:/two rw
            """)
        #expect(table.mount(containing: Array("/mnt/lustre2/x".utf8))?.source == "10.0.0.1@tcp:/two")
        #expect(table.mount(containing: Array("/mnt/lustre/x".utf8))?.source == "10.0.0.1@tcp:/one")
        #expect(table.mount(containing: Array("/mnt/lustre/\u{301}x".utf8))?.source == "10.0.0.1@tcp:/one")
        #expect(table.mount(containing: Array("/mnt/lustrex".utf8))?.source == "/dev/sda1")
    }

    /// The mount of an open directory is found by its device number: on a loop XFS, for a path
    /// spelled through a symlink from elsewhere, and for a name no String prefix would match.
    @Test(.enabled(if: Environment.canMountXFS)) func theMountOfAnOpenDirectoryIsItsDevices() throws {
        try withLoopXFS { fs in
            let odd = fs.mountPoint + "/\u{301}odd"
            try FileManager.default.createDirectory(atPath: odd, withIntermediateDirectories: true)
            let link = fs.directory + "/link-to-odd"
            try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: odd)
            defer { try? FileManager.default.removeItem(atPath: link) }
            for path in [odd, link] {
                let fd = try FileDescriptor.openDirectory(Array(path.utf8))
                defer { fd.closeQuietly() }
                let mount = MountTable.current().mount(of: fd, path: Array(path.utf8))
                #expect(mount?.mountPoint == fs.mountPoint && mount?.filesystemType == "xfs", "\(path): \(String(describing: mount))")
            }
        }
    }
}
