import ArgumentParser
import FerrySystem
import Foundation

/// `ferry`: the root command. The executable calls `FerryCommand.execute()` and nothing else.
public struct FerryCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ferry",
        abstract: "Move and copy data across project-quota and filesystem boundaries without losing a byte.",
        version: "0.1.0",
        subcommands: [FsCommand.self, CopyCommand.self, MoveCommand.self, TasksCommand.self, TaskCommand.self,
                      WorkerCommand.self, JanitorCommand.self, ServeCommand.self, AgentCommand.self])

    public init() {}

    /// Exit statuses: 0 done, 1 failed (nothing lost, nothing half-visible), 2 bad usage, 3 refused
    /// by the pre-flight check, 4 a path is locked by another task, 129 hung up (the task handed
    /// back, whole, for a worker to finish), 130 interrupted.
    public enum Status: Int32 { case success = 0, failure = 1, usage = 2, refused = 3, locked = 4, hungUp = 129, interrupted = 130 }

    /// Parses and runs, mapping argument errors to status 2 (ArgumentParser's default is 64), then
    /// closes the task stores the command opened and exits. The arguments reach the parser as
    /// `ProcessArguments.text` (bytes that are not UTF-8 kept, not replaced by U+FFFD); commands
    /// that take a path read its bytes back with `ProcessArguments.pathBytes`.
    public static func execute(_ arguments: [String]? = nil) async -> Never {
        let status = await run(arguments ?? Array(ProcessArguments.text.dropFirst()))
        await OpenStores.closeAll()
        Foundation.exit(status)
    }

    private static func run(_ arguments: [String]?) async -> Int32 {
        do {
            var command = try parseAsRoot(arguments)
            if var asynchronous = command as? any AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
            return Status.success.rawValue
        } catch let code as ExitCode {
            return code.rawValue
        } catch {
            let code = exitCode(for: error)
            let message = fullMessage(for: error)
            if code == .success {
                print(message)
                return 0
            }
            Console.standardError(message + "\n")
            return code == .validationFailure ? Status.usage.rawValue : code.rawValue
        }
    }
}

/// Prints to standard error (dropped if nothing reads it any more: see `Console`).
func printError(_ message: String) {
    Console.standardError(Console.printable(message) + "\n")
}

/// A line for people on standard output, its control characters escaped (`Console.printable`):
/// what Ferry prints names files, tasks' errors and histories that others may have chosen, and
/// none of it may drive the terminal. Every `print` of this module is this one.
func print(_ line: String) {
    Console.standardOutput(Console.printable(line) + "\n")
}

/// Writes one JSON object to standard output; nil values are written as `null`.
func printJSON(_ object: [String: Any?]) {
    let data = (try? JSONSerialization.data(withJSONObject: jsonValue(object), options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    Console.write(Array(data) + [0x0A], to: STDOUT_FILENO)
}

private func jsonValue(_ value: Any?) -> Any {
    switch value {
    case nil: return NSNull()
    case let dictionary as [String: Any?]: return dictionary.mapValues { jsonValue($0) }
    case let array as [Any?]: return array.map { jsonValue($0) }
    case let .some(unwrapped):
        return unwrapped
    }
}
