import FerryCopy
import FerryJobs
import FerryMove
import FerryStorage
import FerrySystem
import Foundation

/// The entry points of `ferry agent …`, the processes the server starts as a user.
public enum AgentMain {
    /// `ferry agent request`: one request on standard input, one answer on standard output.
    /// Exit 0: the answer; exit 3 (`AgentExit.refused`): an `APIError`.
    public static func request() -> Int32 {
        UserIdentity.forbidInspection()
        let input = FileHandle.standardInput.readDataToEndOfFile()
        let answer: Data
        var status: Int32 = 0
        do {
            let request: AgentRequest
            do { request = try WireJSON.decoder.decode(AgentRequest.self, from: input) } catch {
                throw APIError(.badRequest, "request.invalid", "unreadable agent request: \(error)")
            }
            answer = try AgentOperations(request).answer()
        } catch let error as APIError {
            answer = (try? WireJSON.encoder.encode(error)) ?? Data()
            status = AgentExit.refused
        } catch {
            answer = (try? WireJSON.encoder.encode(APIError(.internalError, "internal", "\(error)"))) ?? Data()
            status = AgentExit.refused
        }
        answer.withUnsafeBytes { _ = Console.write($0, to: STDOUT_FILENO) }
        return status
    }

    /// `ferry agent run-task SETTINGS`: carries one claimed task on, as its owner, through a task
    /// store relayed by the server over standard input and output. SIGTERM: stop at the next
    /// checkpoint and hand the lease back.
    public static func runTask(settingsJSON: String) async -> Int32 {
        UserIdentity.forbidInspection()
        guard let settings = try? WireJSON.decoder.decode(RunTaskSettings.self, from: Data(settingsJSON.utf8)) else {
            Console.standardError("ferry agent run-task: unreadable settings\n")
            return 2
        }
        // The channel to the relay moves to close-on-exec descriptors, so that no program the task
        // starts (lfs) inherits it; standard output then goes to standard error, standard input
        // reads /dev/null.
        let requests = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3)
        let responses = fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 3)
        guard requests >= 0, responses >= 0 else {
            Console.standardError("ferry agent run-task: cannot set up the task channel\n")
            return 2
        }
        dup2(STDERR_FILENO, STDOUT_FILENO)
        let null = open("/dev/null", O_RDONLY)
        if null >= 0 { dup2(null, STDIN_FILENO); close(null) }
        let store = RemoteTaskStore(requests: requests, responses: responses)
        let planner = Planner.serving(settings.roots, lfsPath: settings.lfsPath, jobs: settings.jobs)
        let engine = MoveEngine(store: store, settings: .init(worker: settings.worker, lease: .milliseconds(settings.leaseMilliseconds),
                                                              // No roots (a worker without configured roots): the
                                                              // owner's own permissions are the only limit, as for `ferry move`.
                                                              roots: settings.roots.isEmpty ? nil : settings.roots.map { Array($0.path.utf8) },
                                                              jobs: settings.jobs),
                                planner: planner)
        let interrupt = InterruptWatcher { engine.stop() }
        defer { interrupt.stop() }
        guard let task = try? await store.task(settings.taskID) else {
            Console.standardError("ferry agent run-task: task \(settings.taskID) is not available\n")
            return 1
        }
        let record = await engine.run(task)
        return record.status.isTerminal ? 0 : 1
    }
}
