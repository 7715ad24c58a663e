import FerryJobs
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// Server-sent events of task progress: `event: task` with the task's JSON whenever it changes,
/// `event: end` once the watched task has ended. Woken at once by changes this server's runners
/// report, and re-reads the store every second for changes made by workers elsewhere.
enum EventStream {
    static func response(state: ServerState, fetch: @escaping @Sendable () async throws -> [TaskRecord],
                         endWhen: @escaping @Sendable ([TaskRecord]) -> Bool) -> Response {
        let headers: HTTPFields = [.contentType: "text/event-stream; charset=utf-8", .cacheControl: "no-store",
                                   HTTPField.Name("X-Accel-Buffering")!: "no"]
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            var sent: [String: TaskRecord] = [:]
            var lastWrite = ContinuousClock.now
            try await writer.write(ByteBuffer(string: "retry: 2000\n\n"))
            while !Task.isCancelled {
                let seen = state.feed.current
                let tasks = try await fetch()
                for task in tasks where sent[task.id] != task {
                    sent[task.id] = task
                    let json = String(decoding: try WireJSON.encoder.encode(TaskView(task)), as: UTF8.self)
                    try await writer.write(ByteBuffer(string: "event: task\nid: \(task.id)\ndata: \(json)\n\n"))
                    lastWrite = .now
                }
                if endWhen(tasks) {
                    try await writer.write(ByteBuffer(string: "event: end\ndata: {}\n\n"))
                    break
                }
                if ContinuousClock.now - lastWrite > .seconds(15) {
                    try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                    lastWrite = .now
                }
                await state.feed.wait(after: seen, timeout: .seconds(1))
            }
            try await writer.finish(nil)
        })
    }
}
