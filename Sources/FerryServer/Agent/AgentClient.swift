import FerryConfig
import FerryMove
import FerrySystem
import Foundation

/// Starts agents: `ferry agent request` for one filesystem question, as the requesting user. When
/// the server is not root it cannot change identity, and every agent runs as the server's user
/// (who is then the only one allowed to log in).
public struct AgentClient: Sendable {
    /// The `ferry` executable agents are started from.
    public var executable: String
    public var configuration: FerryConfiguration

    public init(executable: String, configuration: FerryConfiguration) {
        self.executable = executable
        self.configuration = configuration
    }

    /// The credentials an agent for `user` runs with: nil for "as the server", when that is who
    /// the user is or the server cannot switch.
    public static func identity(for user: String) throws(APIError) -> UserIdentity? {
        let current = UserIdentity.current
        if user == current.name { return nil }
        guard geteuid() == 0 else {
            throw APIError(.forbidden, "forbidden", "this server runs as \(current.name) and can act only as that user")
        }
        guard let identity = try? UserIdentity.lookup(name: user) else {
            throw APIError(.forbidden, "forbidden", "there is no local account \(user) on this host")
        }
        return identity
    }

    /// Asks an agent running as `user`; returns its JSON answer as it wrote it.
    public func ask(_ request: AgentRequest, as user: String) async throws(APIError) -> Data {
        let identity = try Self.identity(for: user)
        let input: Data
        do { input = try WireJSON.encoder.encode(request) } catch { throw APIError(.internalError, "internal", "\(error)") }
        let executable = executable
        let outcome: (termination: ChildProcess.Termination, standardOutput: [UInt8], standardError: [UInt8])
        do {
            outcome = try await Blocking.run {
                try ChildProcess.run(executable: executable, arguments: ["agent", "request"], environment: Self.environment(),
                                     identity: identity, input: Array(input))
            }
        } catch {
            throw APIError(.internalError, "agent.failed", "could not start a process as \(user): \(error)")
        }
        switch outcome.termination {
        case .exited(0):
            return Data(outcome.standardOutput)
        case .exited(AgentExit.refused):
            if let error = try? WireJSON.decoder.decode(APIError.self, from: Data(outcome.standardOutput)) { throw error }
            fallthrough
        default:
            let detail = String(decoding: outcome.standardError, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw APIError(.internalError, "agent.failed", "the request failed (\(outcome.termination)): \(detail)")
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
        if let lfs = ProcessInfo.processInfo.environment["FERRY_LFS"] { environment["FERRY_LFS"] = lfs }
        return environment
    }
}

/// Exit statuses of `ferry agent`.
public enum AgentExit {
    /// The answer on standard output is an `APIError`.
    public static let refused: Int32 = 3
}
