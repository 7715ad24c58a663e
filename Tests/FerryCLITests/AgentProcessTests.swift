import Foundation
import FerrySystem
import FerryTestSupport
import Glibc
import Testing

/// The processes `ferry serve` starts as a user hold pipes to the server. Their user must not be
/// able to reach those pipes through /proc (to flood the server, or to hold a task's channel open
/// after the process ended): an agent makes itself undumpable, so its /proc entries are root's.
@Suite("agent processes (root)", .enabled(if: geteuid() == 0), .serialized)
struct AgentProcessTests {
    @Test func anAgentsDescriptorsAreNotItsUsers() throws {
        try withTestUser { user in
            let identity = try #require(try UserIdentity.lookup(name: user.name))
            // `agent request` waits for its request on standard input: alive while the test looks.
            let agent = try ChildProcess.spawn(executable: ferryBinary(), arguments: ["agent", "request"], environment: ["PATH": "/usr/bin:/bin"],
                                               identity: identity)
            defer {
                agent.standardInput.closeQuietly()
                _ = agent.wait()
            }
            var owner = stat()
            var status = ""
            let deadline = Date().addingTimeInterval(10)
            // Dumpable for the moment between its execve and its first instruction: looked at until it is not.
            repeat {
                status = (try? String(contentsOfFile: "/proc/\(agent.pid)/status", encoding: .utf8)) ?? ""
                _ = stat("/proc/\(agent.pid)/fd", &owner)
                if owner.st_uid == 0 { break }
                usleep(10_000)
            } while Date() < deadline
            #expect(status.contains("Uid:\t\(identity.uid)\t\(identity.uid)\t\(identity.uid)"), "\(status)")
            #expect(owner.st_uid == 0, "/proc/\(agent.pid)/fd belongs to uid \(owner.st_uid)")
            let peek = try Shell.execute(["runuser", "-u", user.name, "--", "ls", "/proc/\(agent.pid)/fd"])
            #expect(peek.status != 0, "\(user.name) listed the agent's descriptors: \(peek.standardOutput)")
        }
    }
}
