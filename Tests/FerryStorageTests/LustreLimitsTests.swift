import Foundation
@testable import FerryStorage
import FerrySystem
import FerryTestSupport
import Testing

@Suite struct LustreLimitsTests {
    /// The limit a copy must fit under: a soft limit alone holds writes once its grace ends (a
    /// long copy outlasts it), and one whose grace has run out allows nothing more.
    @Test func theEnforcedLimitCountsSoftLimitsAndTheirGrace() {
        #expect(LustreBackend.enforced(soft: nil, hard: nil, grace: .notSet) == nil)
        #expect(LustreBackend.enforced(soft: nil, hard: 500, grace: .notSet) == 500)
        #expect(LustreBackend.enforced(soft: 300, hard: nil, grace: .notSet) == 300)
        #expect(LustreBackend.enforced(soft: 300, hard: 500, grace: .notSet) == 500)
        #expect(LustreBackend.enforced(soft: 300, hard: 500, grace: .none) == 300)
        #expect(LustreBackend.enforced(soft: 300, hard: 500, grace: .expired) == 300)
        #expect(LinuxProjectBackend.headroom(limit: LustreBackend.enforced(soft: 300, hard: 500, grace: .none), used: 400, filesystem: 10_000) == 0)
    }

    /// XFS and ext4 hold writes as Lustre does: the kernel's grace timers (0: none running, else
    /// when it ends) read as lfs words them, and a soft limit whose grace has run out leaves nothing.
    @Test func kernelGraceTimersCountAsLustresDo() {
        #expect(LinuxProjectBackend.grace(ends: 0, now: 1_000) == .notSet)
        #expect(LinuxProjectBackend.grace(ends: 999, now: 1_000) == .expired)
        #expect(LinuxProjectBackend.grace(ends: 1_060, now: 1_000) == .remaining(seconds: 60))
        let runOut = LustreBackend.enforced(soft: 300, hard: 500, grace: LinuxProjectBackend.grace(ends: 999, now: 1_000))
        #expect(LinuxProjectBackend.headroom(limit: runOut, used: 400, filesystem: 10_000) == 0)
        let running = LustreBackend.enforced(soft: 300, hard: 500, grace: LinuxProjectBackend.grace(ends: 1_060, now: 1_000))
        #expect(LinuxProjectBackend.headroom(limit: running, used: 400, filesystem: 10_000) == 100)
        let softOnly = LustreBackend.enforced(soft: 300, hard: nil, grace: .notSet)
        #expect(LinuxProjectBackend.headroom(limit: softOnly, used: 100, filesystem: 10_000) == 200)
    }

    /// `lfs` gets the C locale its output is parsed in, and none of the caller's secrets; it runs
    /// in "/" (the caller's directory may be deleted, a shell left inside a tree moved away, or on
    /// a hung mount).
    @Test func lfsRunsWithoutTheCallersEnvironmentInTheRootDirectory() throws {
        let directory = try TemporaryDirectory.make(prefix: "ferry-lfs-env")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let program = directory + "/lfs"
        try "#!/bin/sh\nenv > '\(directory)/env'\npwd > '\(directory)/cwd'\necho 'lfs 2.15.4'\n".write(toFile: program, atomically: true, encoding: .utf8)
        try Shell.run(["chmod", "755", program])
        setenv("FERRY_TEST_SECRET", "hunter2", 1)
        defer { unsetenv("FERRY_TEST_SECRET") }
        #expect(LustreBackend(lfsPath: program).version == LustreVersion(major: 2, minor: 15, patch: 4))
        let environment = try String(contentsOfFile: directory + "/env", encoding: .utf8)
        #expect(!environment.contains("hunter2"), "\(environment)")
        #expect(environment.contains("LC_ALL=C\n"), "\(environment)")
        #expect(environment.contains("PATH="), "\(environment)")
        #expect(try String(contentsOfFile: directory + "/cwd", encoding: .utf8) == "/\n")
    }

    /// An empty program path is no program: `lfs` in PATH, not a spawn of "".
    @Test func anEmptyLfsPathIsUnset() {
        let path = LustreBackend(lfsPath: "").lfsPath
        #expect(!path.isEmpty)
        #expect(path == (ProcessInfo.processInfo.environment["FERRY_LFS"].flatMap { $0.isEmpty ? nil : $0 } ?? "lfs"))
    }

    /// Action words as lfs prints them (`hsm_user_action2name`, any upper-case word) with their
    /// states in lower case; a request that is done is no longer pending.
    @Test func hsmActionWordsAndStates() throws {
        let entries = try LfsHSMActionParser.parse("""
            /l/a: RESTORE waiting (from 0 to EOF)
            /l/b: RESTORE running (0x0, 0x100000)
            /l/c: RESTORE done (0x0, 0x100000)
            /l/d: RELEASE waiting
            /l/e: UNKNOWN
            /l/f: NOOP
            """)
        #expect(entries.map(\.path) == ["/l/a", "/l/b", "/l/c", "/l/d", "/l/e", "/l/f"])
        #expect(entries.map(\.action) == ["RESTORE", "RESTORE", "RESTORE", "RELEASE", "UNKNOWN", "NOOP"])
        #expect(entries.map(\.isIdle) == [false, false, true, false, false, true])
    }
}
