import FerrySystem
import Foundation
import Logging
import Synchronization

/// Structured logs: one JSON object per line on standard error (time, level, message, and the
/// metadata such as the task id), for journald and log shippers.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String
    private static let lock = Mutex(())

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var object: [String: String] = ["time": Date().formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true)),
                                        "level": event.level.rawValue, "message": event.message.description, "logger": label]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) { object[key] = "\(value)" }
        if let error = event.error, object["error"] == nil { object["error"] = "\(error)" }
        guard var data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
        data.append(0x0A)
        Self.lock.withLock { _ in data.withUnsafeBytes { _ = Console.write($0, to: STDERR_FILENO) } }
    }
}
