import FerryJobs
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Synchronization

/// Server-sent events of task progress: `event: task` with the task's JSON whenever it changes,
/// `event: end` once the watched task has ended. Woken at once by changes this server's runners
/// report, and re-reads the store every second for changes made by workers elsewhere.
enum EventStream {
    /// `slot`: the user's stream slot, given back when the body ends or is dropped unsent.
    /// `allowed`: whether the request's session is still live; a stream ends (`event: end` with
    /// `"reason": "session ended"`) once it is not, so that logging out, or a session expiring,
    /// also stops what a stream opened with its cookie still sends.
    static func response(state: ServerState, slot: StreamSlot, allowed: @escaping @Sendable () -> Bool = { true },
                         fetch: @escaping @Sendable () async throws -> [TaskRecord],
                         endWhen: @escaping @Sendable ([TaskRecord]) -> Bool) -> Response {
        let headers: HTTPFields = [.contentType: "text/event-stream; charset=utf-8", .cacheControl: "no-store",
                                   HTTPField.Name("X-Accel-Buffering")!: "no"]
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            defer { withExtendedLifetime(slot) {} }
            var sent: [String: TaskRecord] = [:]
            var lastWrite = ContinuousClock.now
            var lastReread = ContinuousClock.now
            var rereadFrom = 0
            try await writer.write(ByteBuffer(string: "retry: 2000\n\n"))
            while !Task.isCancelled {
                // The server is stopping: the response ends without `end`, so the browser
                // reconnects (to the next server) as after any dropped connection.
                if state.feed.isClosed { break }
                guard allowed() else {
                    try await writer.write(ByteBuffer(string: "event: end\ndata: {\"reason\":\"session ended\"}\n\n"))
                    break
                }
                let seen = state.feed.current
                let tasks = try await fetch()
                // A task sent as running that the fetch no longer lists (it ended past what the
                // list keeps, e.g. beyond its newest 50) is read by itself, so that the page
                // sees it end instead of showing it running for good: every 5 s, 64 at a time
                // in turn, so that a page following thousands of queued tasks costs little.
                let listed = Set(tasks.map(\.id))
                var changed = tasks
                if ContinuousClock.now - lastReread >= .seconds(5) {
                    lastReread = .now
                    let missing = sent.filter { !$0.value.status.isTerminal && !listed.contains($0.key) }.keys.sorted()
                    let turn = missing.isEmpty ? [] : (0..<min(64, missing.count)).map { missing[(rereadFrom + $0) % missing.count] }
                    rereadFrom += turn.count
                    for id in turn {
                        if let now = try await state.store.task(id) { changed.append(now) } else { sent[id] = nil }
                    }
                }
                for task in changed where sent[task.id] != task {
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

/// The event streams each user holds open, at most `perUser` at once. Every stream re-reads the
/// task store each second, so without a bound one user (or a script of theirs gone wrong) could
/// make the server do any amount of work; the stream past the bound is refused with 429.
final class StreamSlots: Sendable {
    private let open = Mutex<[String: Int]>([:])
    let perUser: Int

    init(perUser: Int) {
        self.perUser = max(1, perUser)
    }

    /// A slot for one more stream of `user`, or `stream.limit` when all of theirs are taken.
    func take(for user: String) throws(APIError) -> StreamSlot {
        let taken = open.withLock { open -> Bool in
            guard open[user, default: 0] < perUser else { return false }
            open[user, default: 0] += 1
            return true
        }
        guard taken else {
            throw APIError(.tooManyRequests, "stream.limit",
                           "\(user) already has \(perUser) event streams open, the most one user may hold; close a page that follows tasks, or wait for a stream to end")
        }
        return StreamSlot(slots: self, user: user)
    }

    /// Streams `user` holds open now.
    func count(for user: String) -> Int {
        open.withLock { $0[user] ?? 0 }
    }

    fileprivate func release(_ user: String) {
        open.withLock { open in
            let left = (open[user] ?? 1) - 1
            open[user] = left > 0 ? left : nil
        }
    }
}

/// One open stream's place in `StreamSlots`, given back when the last reference goes.
final class StreamSlot: Sendable {
    private let slots: StreamSlots
    private let user: String

    fileprivate init(slots: StreamSlots, user: String) {
        self.slots = slots
        self.user = user
    }

    deinit {
        slots.release(user)
    }
}
