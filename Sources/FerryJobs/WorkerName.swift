import Foundation

/// The names under which processes hold leases: host, process id, a token drawn when the process
/// starts, and the role — `node7:4242-9f3a:worker`. A claim of a task whose expired lease has the
/// claimer's own name is no takeover (it is the same process taking back what it held); without
/// the token, a process restarted with its predecessor's pid on the same host (a container's PID
/// 1) would take the dead one's tasks back as its own, and their crashes would go unrecorded.
public enum WorkerName {
    private static let token = String(UInt16.random(in: .min ... .max), radix: 16)

    public static func make(_ role: String) -> String {
        "\(ProcessInfo.processInfo.hostName):\(getpid())-\(token):\(role)"
    }
}
