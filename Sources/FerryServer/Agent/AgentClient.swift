import FerryConfig
import FerryMove
import FerrySystem
import Foundation
import Synchronization

/// Starts agents: `ferry agent request` for one filesystem question, as the requesting user. When
/// the server is not root it cannot change identity, and every agent runs as the server's user
/// (who is then the only one allowed to log in).
public struct AgentClient: Sendable {
    /// The `ferry` executable agents are started from.
    public var executable: String
    public var configuration: FerryConfiguration
    /// Agents running now: each is a process and a thread, so one user (or everyone together)
    /// may keep only so many at once.
    let slots: AgentSlots
    /// How long an agent may take (a pre-flight measures a whole tree, so it has its own).
    public var timeout: Duration
    public var preflightTimeout: Duration

    public init(executable: String, configuration: FerryConfiguration, perUser: Int = 8, total: Int = 64) {
        self.executable = executable
        self.configuration = configuration
        self.slots = AgentSlots(perUser: perUser, total: total)
        self.timeout = .milliseconds(Int64(configuration.serve.agentTimeoutSeconds * 1000))
        self.preflightTimeout = .milliseconds(Int64(configuration.serve.preflightTimeoutSeconds * 1000))
    }

    /// The credentials an agent for `user` runs with: nil for "as the server", when that is who
    /// the user is or the server cannot switch.
    public static func identity(for user: String) throws(APIError) -> UserIdentity? {
        let current = UserIdentity.current
        if user == current.name { return nil }
        guard geteuid() == 0 else {
            throw APIError(.forbidden, "forbidden", "this server runs as \(current.name) and can act only as that user")
        }
        // No such user is an answer; a user database that cannot answer (LDAP or SSSD down) is not.
        let found: UserIdentity?
        do {
            found = try UserIdentity.lookup(name: user)
        } catch {
            throw APIError(.unavailable, "accounts.unavailable", "cannot look up the account \(user) now (\(error.reason)); try again in a moment")
        }
        guard let found else { throw APIError(.forbidden, "forbidden", "there is no local account \(user) on this host") }
        return found
    }

    /// Asks an agent running as `user`; returns its JSON answer as it wrote it. An agent that has
    /// not answered by its deadline (a hung NFS or Lustre mount) is killed and the request
    /// answered 504 (`agent.timeout`); its place among the user's agents is given back only when
    /// it has ended, for a process stuck in the kernel is still there, and must not be joined by
    /// another each time the page is reloaded. (It leaves the limit of all at once: `overran`.)
    public func ask(_ request: AgentRequest, as user: String) async throws(APIError) -> Data {
        let identity = try Self.identity(for: user)
        try slots.take(for: user)
        var held = true
        defer { if held { slots.release(user) } }
        let limit = request.operation == .preflight ? preflightTimeout : timeout
        var request = request
        let seconds = Double(limit.components.seconds) + Double(limit.components.attoseconds) / 1e18
        request.lfsTimeoutSeconds = seconds - min(5, seconds / 4)
        let input: Data
        do { input = try WireJSON.encoder.encode(request) } catch { throw APIError(.internalError, "internal", "\(error)") }
        let executable = executable
        let outcome: ChildProcess.Outcome
        do {
            outcome = try await Blocking.run {
                try ChildProcess.run(executable: executable, arguments: ["agent", "request"], environment: Self.environment(),
                                     identity: identity, input: Array(input), deadline: .now + limit)
            }
        } catch {
            throw APIError(.internalError, "agent.failed", "could not start a process as \(user): \(error)")
        }
        switch outcome {
        case .overran(let child):
            held = false
            let slots = slots
            slots.overran()
            Thread.detachNewThread {
                _ = child.wait()
                slots.ended(user)
            }
            throw APIError(.gatewayTimeout, "agent.timeout",
                           "the file system did not answer within \(Format.span(Double(limit.components.seconds) + Double(limit.components.attoseconds) / 1e18)) (a hung mount?); the request was stopped")
        case .ended(.exited(0), let standardOutput, _):
            return Data(standardOutput)
        case .ended(let termination, let standardOutput, let standardError):
            if termination == .exited(AgentExit.refused), let error = try? WireJSON.decoder.decode(APIError.self, from: Data(standardOutput)) {
                throw error
            }
            let detail = String(decoding: standardError, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw APIError(.internalError, "agent.failed", "the request failed (\(termination)): \(detail)")
        }
    }

    public func ask<T: Decodable>(_ request: AgentRequest, as user: String, decoding type: T.Type) async throws(APIError) -> T {
        let data = try await ask(request, as: user)
        do { return try WireJSON.decoder.decode(type, from: data) } catch {
            throw APIError(.internalError, "internal", "unreadable agent answer: \(error)")
        }
    }

    /// A small, fixed environment: nothing of the server's leaks into a user's process.
    static func environment() -> [String: String] {
        var environment = ["PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"]
        if let lfs = ProcessInfo.processInfo.environment["FERRY_LFS"], !lfs.isEmpty { environment["FERRY_LFS"] = lfs }
        return environment
    }
}

/// How many agents run at once, for each user and in all: past either limit a request is refused
/// with 429, so that requests sent faster than they finish cannot start processes without end.
final class AgentSlots: Sendable {
    private let running = Mutex<(total: Int, byUser: [String: Int], stuck: Int)>((0, [:], 0))
    let perUser: Int
    let total: Int

    init(perUser: Int, total: Int) {
        self.perUser = max(1, perUser)
        self.total = max(1, total)
    }

    func take(for user: String) throws(APIError) {
        let refusal = running.withLock { running -> APIError? in
            if running.byUser[user, default: 0] >= perUser {
                return APIError(.tooManyRequests, "agent.busy",
                                "\(user) has \(perUser) file system requests running already, the most one user may; wait for them to finish")
            }
            if running.total >= total {
                return APIError(.tooManyRequests, "server.busy", "the server is answering \(total) file system requests already; try again shortly")
            }
            if running.stuck >= total {
                return APIError(.unavailable, "server.busy",
                                "\(running.stuck) file system requests are stuck on file systems that do not answer (hung mounts?); try again once they recover")
            }
            running.byUser[user, default: 0] += 1
            running.total += 1
            return nil
        }
        if let refusal { throw refusal }
    }

    func release(_ user: String) {
        running.withLock { running in
            let left = running.byUser[user, default: 1] - 1
            running.byUser[user] = left > 0 ? left : nil
            running.total -= 1
        }
    }

    /// An agent killed at its deadline that has not ended (stuck in the kernel on a dead mount)
    /// stops counting toward the limit of all: a mount that every user browses must not leave the
    /// server refusing everyone, elsewhere too. Its user's place it keeps until `ended(user)`.
    /// Stuck ones (each a process, and a thread waiting for it) have a limit of their own, as
    /// many as may run: past it every request is refused (503) until some end.
    func overran() {
        running.withLock {
            $0.total -= 1
            $0.stuck += 1
        }
    }

    /// The overrun agent of `user` has ended at last.
    func ended(_ user: String) {
        running.withLock { running in
            let left = running.byUser[user, default: 1] - 1
            running.byUser[user] = left > 0 ? left : nil
            running.stuck -= 1
        }
    }

    /// Agents killed at their deadline that have not ended yet.
    var stuck: Int { running.withLock { $0.stuck } }

    /// Agents running now for `user`, and in all.
    func count(for user: String) -> (user: Int, total: Int) {
        running.withLock { ($0.byUser[user] ?? 0, $0.total) }
    }
}

/// Exit statuses of `ferry agent`.
public enum AgentExit {
    /// The answer on standard output is an `APIError`.
    public static let refused: Int32 = 3
}
