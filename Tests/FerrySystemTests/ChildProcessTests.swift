import Foundation
import FerrySystem
import FerryTestSupport
import Glibc
import Testing

private func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

/// Spawning, pipes and descriptors, with the test's own credentials.
@Suite("ChildProcess", .serialized)
struct ChildProcessTests {
    @Test func exitStatusAndEnvironmentAreExact() throws {
        let env = try ChildProcess.run(executable: "/usr/bin/env", arguments: [], environment: ["FERRY_A": "b c"], identity: nil)
        #expect(env.termination == .exited(0))
        #expect(text(env.standardOutput) == "FERRY_A=b c\n")
        let failing = try ChildProcess.run(executable: "/bin/sh", arguments: ["-c", "echo oops >&2; exit 3"], environment: [:], identity: nil)
        #expect(failing.termination == .exited(3))
        #expect(text(failing.standardError) == "oops\n")
    }

    /// A child still running at its deadline is killed and handed back unreaped; one that ends in
    /// time is read to its end, its output whole, as without a deadline.
    @Test func aDeadlineStopsAChildThatOverrunsIt() throws {
        let started = ContinuousClock.now
        let slow = try ChildProcess.run(executable: "/bin/sh", arguments: ["-c", "echo started; exec sleep 30"], environment: [:], identity: nil,
                                        deadline: .now + .milliseconds(300))
        guard case .overran(let child) = slow else { Issue.record("not overrun: \(slow)"); return }
        #expect(slow.termination == nil)
        #expect(child.wait() == .signalled(SIGKILL))
        #expect(started.duration(to: .now) < .seconds(10))
        let quick = try ChildProcess.run(executable: "/bin/sh", arguments: ["-c", "head -c 200000 /dev/zero; echo done >&2"], environment: [:], identity: nil,
                                         deadline: .now + .seconds(30))
        #expect(quick.termination == .exited(0))
        #expect(quick.standardOutput.count == 200_000 && text(quick.standardError) == "done\n")
    }

    /// A child's output is taken up to a limit (its user may flood it); past it the child is
    /// stopped and the run fails, EFBIG. Standard error past its own limit is dropped.
    @Test func outputIsBounded() throws {
        let error = #expect(throws: SystemError.self) {
            try ChildProcess.run(executable: "/bin/sh", arguments: ["-c", "exec head -c 80000000 /dev/zero"], environment: [:], identity: nil)
        }
        #expect(error?.errno.rawValue == EFBIG, "\(String(describing: error))")
        let noisy = try ChildProcess.run(executable: "/bin/sh", arguments: ["-c", "head -c 3000000 /dev/zero >&2; echo out"], environment: [:], identity: nil)
        #expect(noisy.termination == .exited(0) && text(noisy.standardOutput) == "out\n")
        #expect(noisy.standardError.count == 1 << 20)
    }

    @Test func aMissingProgramThrowsENOENTFromExecve() throws {
        let error = #expect(throws: SystemError.self) {
            try ChildProcess.spawn(executable: "/nonexistent/ferry-no-such-program", arguments: [], environment: [:], identity: nil)
        }
        #expect(error?.code == .notFound)
        #expect(error?.syscall == "execve")
        #expect(error?.description.contains("/nonexistent/ferry-no-such-program") == true)
    }

    @Test func aMissingWorkingDirectoryThrowsFromChdir() throws {
        let error = #expect(throws: SystemError.self) {
            try ChildProcess.spawn(executable: "/bin/true", arguments: [], environment: [:], identity: nil, workingDirectory: "/nonexistent-ferry-dir")
        }
        #expect(error?.code == .notFound)
        #expect(error?.syscall == "chdir")
    }

    @Test func oneMebibyteRoundTripsThroughCatWithoutDeadlock() throws {
        var generator = SystemRandomNumberGenerator()
        let input = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let result = try ChildProcess.run(executable: "/bin/cat", arguments: [], environment: [:], identity: nil, input: input)
        #expect(result.termination == .exited(0))
        #expect(result.standardOutput == input)
    }

    @Test func aChildThatStopsReadingDoesNotKillUs() throws {
        let input = [UInt8](repeating: 0x61, count: 4 << 20)
        let result = try ChildProcess.run(executable: "/usr/bin/head", arguments: ["-c", "5"], environment: [:], identity: nil, input: input)
        #expect(result.termination == .exited(0))
        #expect(text(result.standardOutput) == "aaaaa")
    }

    @Test func theChildHasOnlyDescriptorsZeroOneAndTwo() throws {
        // A descriptor of ours without close-on-exec must not reach the child either.
        let leaky = open("/dev/null", O_RDONLY)
        #expect(leaky >= 3)
        defer { close(leaky) }
        let result = try ChildProcess.run(executable: "/bin/sh", arguments: ["-c", "ls /proc/$$/fd"], environment: [:], identity: nil)
        #expect(result.termination == .exited(0))
        #expect(text(result.standardOutput) == "0\n1\n2\n")
    }

    @Test func signalsAreUnblockedAndDefaultInTheChild() throws {
        let previous = Glibc.signal(SIGPIPE, SIG_IGN)
        defer { _ = Glibc.signal(SIGPIPE, previous) }
        let result = try ChildProcess.run(executable: "/bin/grep", arguments: ["-E", "^Sig(Blk|Ign)", "/proc/self/status"],
                                          environment: [:], identity: nil)
        let masks = Dictionary(uniqueKeysWithValues: text(result.standardOutput).split(separator: "\n").map { line in
            let parts = line.split(separator: "\t")
            return (String(parts[0]), UInt64(parts[1], radix: 16) ?? .max)
        })
        #expect(masks["SigBlk:"] == 0)
        // Signals 1-31; glibc keeps 32 and 33 for itself, refuses to set them, and installs its own
        // handlers for them when it needs them.
        #expect(masks["SigIgn:"].map { $0 & 0x7FFF_FFFF } == 0)
    }

    @Test func signalAndWait() throws {
        let child = try ChildProcess.spawn(executable: "/bin/sleep", arguments: ["30"], environment: [:], identity: nil, standardError: .discard)
        defer { child.standardInput.closeQuietly(); child.standardOutput.closeQuietly() }
        #expect(child.standardError == nil)
        #expect(child.signal(SIGTERM))
        #expect(child.wait() == .signalled(SIGTERM))
        #expect(child.wait() == .signalled(SIGTERM))
        #expect(child.signal(SIGTERM) == false)  // reaped: the pid is no longer ours to signal
    }

    @Test func ourDescriptorsAreCloseOnExec() throws {
        let child = try ChildProcess.spawn(executable: "/bin/cat", arguments: [], environment: [:], identity: nil)
        for fd in [child.standardInput, child.standardOutput, child.standardError!] {
            #expect(fcntl(fd.rawValue, F_GETFD) & FD_CLOEXEC != 0)
        }
        child.standardInput.closeQuietly()
        #expect(child.wait() == .exited(0))
        child.standardOutput.closeQuietly()
        child.standardError?.closeQuietly()
    }

    @Test func userLookup() throws {
        let root = try #require(try UserIdentity.lookup(name: "root"))
        #expect(root.uid == 0 && root.gid == 0 && root.home == "/root" && root.groups.contains(0))
        #expect(try UserIdentity.lookup(uid: 0) == root)
        #expect(try UserIdentity.lookup(name: "ferry-no-such-user") == nil)
        #expect(try UserIdentity.lookup(uid: 4_000_000_000) == nil)
        for invalid in ["", "a/b", "a:b", "a\u{0}b", String(repeating: "x", count: 257)] {
            #expect(try UserIdentity.lookup(name: invalid) == nil)
        }
        #expect(UserIdentity.current.uid == geteuid())
        let encoded = try JSONEncoder().encode(root)
        #expect(try JSONDecoder().decode(UserIdentity.self, from: encoded) == root)
    }
}

/// The same, as a real other user (needs root to create one and to change credentials).
@Suite("ChildProcess as another user (root)", .enabled(if: Environment.isRoot), .serialized)
struct ChildProcessIdentityTests {
    @Test func theChildHasTheUsersIdsAndGroups() throws {
        try withTestUser(extraGroup: true) { user in
            let identity = try #require(try UserIdentity.lookup(name: user.name))
            let entry = try Shell.run(["getent", "group", user.extraGroup!])
            let fields = entry.split(separator: ":", omittingEmptySubsequences: false)
            let extraGID = try #require(fields.count > 2 ? UInt32(fields[2]) : nil, "getent group: \(entry.debugDescription)")
            #expect(identity.uid == UInt32(try Shell.run(["id", "-u", user.name]).trimmingCharacters(in: .whitespacesAndNewlines)))
            #expect(Set(identity.groups) == [identity.gid, extraGID])
            #expect(try UserIdentity.lookup(uid: identity.uid) == identity)

            func run(_ arguments: [String]) throws -> String {
                let result = try ChildProcess.run(executable: "/usr/bin/id", arguments: arguments, environment: [:], identity: identity)
                #expect(result.termination == .exited(0), "id \(arguments): \(result.termination), \(text(result.standardError))")
                return text(result.standardOutput).trimmingCharacters(in: .whitespacesAndNewlines)
            }
            let uid = try run(["-u"]), gid = try run(["-g"]), groups = try run(["-G"])
            #expect(uid == "\(identity.uid)")
            #expect(gid == "\(identity.gid)")
            #expect(Set(groups.split(separator: " ").compactMap { UInt32($0) }) == [identity.gid, extraGID])

            // Real, effective, saved and filesystem ids all changed: no way back to root.
            let status = try ChildProcess.run(executable: "/bin/grep", arguments: ["-E", "^(Uid|Gid):", "/proc/self/status"],
                                              environment: [:], identity: identity)
            let u = identity.uid, g = identity.gid
            #expect(text(status.standardOutput) == "Uid:\t\(u)\t\(u)\t\(u)\t\(u)\nGid:\t\(g)\t\(g)\t\(g)\t\(g)\n")
        }
    }

    @Test func theChildCannotReadARootOnlyDirectory() throws {
        let secret = try TemporaryDirectory.make(prefix: "ferry-secret")  // 0700, root's
        defer { try? FileManager.default.removeItem(atPath: secret) }
        try Data("root only\n".utf8).write(to: URL(fileURLWithPath: secret + "/file"))
        try withTestUser { user in
            let identity = try #require(try UserIdentity.lookup(name: user.name))
            let asUser = try ChildProcess.run(executable: "/bin/cat", arguments: [secret + "/file"], environment: [:], identity: identity)
            #expect(asUser.termination == .exited(1))
            #expect(text(asUser.standardError).contains("Permission denied"))
            #expect(asUser.standardOutput.isEmpty)
            let asServer = try ChildProcess.run(executable: "/bin/cat", arguments: [secret + "/file"], environment: [:], identity: nil)
            #expect(text(asServer.standardOutput) == "root only\n")

            // The working directory is entered as the user too.
            let error = #expect(throws: SystemError.self) {
                try ChildProcess.spawn(executable: "/bin/true", arguments: [], environment: [:], identity: identity, workingDirectory: secret)
            }
            #expect(error?.code == .permissionDenied)
            #expect(error?.syscall == "chdir")
        }
    }
}
