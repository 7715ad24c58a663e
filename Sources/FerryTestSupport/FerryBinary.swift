import Foundation

/// The built `ferry` executable: FERRY_BINARY, else beside the test bundle (SwiftPM builds it into
/// the same directory when a test target depends on it).
public func ferryBinary() -> String {
    if let configured = ProcessInfo.processInfo.environment["FERRY_BINARY"] { return configured }
    let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for candidate in [bundle, bundle.deletingLastPathComponent()] {
        let path = candidate.appendingPathComponent("ferry").path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return "ferry"
}

/// Polls until `directory` holds a `.ferry-staging-*` whose `item` has entries (a copy is under
/// way), for at most `seconds`.
public func waitUntilStaging(in directory: String, holds item: String, seconds: Double = 4) {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        let staged = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasPrefix(".ferry-staging-") }
        if staged.contains(where: { (try? FileManager.default.contentsOfDirectory(atPath: "\(directory)/\($0)/\(item)"))?.isEmpty == false }) { return }
        usleep(2_000)
    }
}
