import FerryConfig
import FerryJobs
import FerryMove
import FerrySystem
import Foundation
import Hummingbird
import Logging
import NIOCore

/// The REST API under `/api/`, plus `/healthz`, `/metrics` and the login endpoints. Handlers turn
/// every failure into an `APIError` response with a stable code.
enum Routes {
    static func add(to router: Router<FerryContext>, state: ServerState) {
        func handle(_ body: @escaping @Sendable (Request, FerryContext) async throws -> Response) -> @Sendable (Request, FerryContext) async throws -> Response {
            { request, context in
                do { return try await body(request, context) } catch let error as APIError {
                    return error.response()
                } catch {
                    return APIError(.internalError, "internal", "\(error)").response()
                }
            }
        }

        router.get("/healthz") { _, _ in try Reply.json(["status": "ok"]) }
        router.get("/metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(string: await state.metrics.render(store: state.store))))
        }
        router.get("/api/openapi.yaml") { _, _ in
            guard let data = Web.openAPI else { return APIError(.notFound, "not_found", "no OpenAPI document shipped").response() }
            return Response(status: .ok, headers: [.contentType: "application/yaml; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
        }

        router.get("/api/session", use: handle { _, context in
            let principal = try context.requirePrincipal()
            return try Reply.json(SessionInfo(user: principal.user, admin: principal.isAdmin, csrfToken: context.session?.csrfToken,
                                               authMode: state.settings.authMode.rawValue))
        })

        router.get("/api/roots", use: handle { _, _ in
            try Reply.json(["roots": state.configuration.roots.map { RootInfo(path: $0.path, name: $0.name) }])
        })

        router.get("/api/files", use: handle { request, context in
            var ask = state.rootsRequest(.list)
            ask.path = try ServerPath.check(try request.query("path"), roots: state.configuration.roots.map(\.path)).path
            ask.offset = try request.intQuery("offset", range: 0...10_000_000)
            ask.limit = try request.intQuery("limit", range: 1...1000)
            if let sort = try request.query("sort") {
                guard let key = ListingSort(rawValue: sort) else { throw APIError(.badRequest, "request.invalid", "sort must be name, size, modified or owner") }
                ask.sort = key
            }
            if let order = try request.query("order") {
                guard order == "asc" || order == "desc" else { throw APIError(.badRequest, "request.invalid", "order must be asc or desc") }
                ask.descending = order == "desc"
            }
            return Reply.json(try await state.agent.ask(ask, as: try context.requirePrincipal().user))
        })

        for (route, operation) in [("/api/stat", AgentRequest.Operation.stat), ("/api/quota", .quota)] {
            router.get(RouterPath(route), use: handle { request, context in
                var ask = state.rootsRequest(operation)
                ask.path = try ServerPath.check(try request.query("path"), roots: state.configuration.roots.map(\.path)).path
                return Reply.json(try await state.agent.ask(ask, as: try context.requirePrincipal().user))
            })
        }

        router.post("/api/preflight", use: handle { request, context in
            var request = request
            let transfer = try await request.decodeJSON(TransferRequest.self).normalized(roots: state.configuration.roots.map(\.path))
            let (data, _) = try await preflight(transfer, principal: try context.requirePrincipal(), state: state)
            return Reply.json(data)
        })

        router.post("/api/tasks", use: handle { request, context in
            var request = request
            let principal = try context.requirePrincipal()
            let transfer = try await request.decodeJSON(TransferRequest.self).normalized(roots: state.configuration.roots.map(\.path))
            let (_, verdict) = try await preflight(transfer, principal: principal, state: state)
            if let refusal = verdict.refusal {
                // The kernel would refuse it as this user: a 403 like every other permission.denied.
                throw APIError(refusal.code == "permission.denied" ? .forbidden : .unprocessable, refusal.code, refusal.message)
            }
            var options = try AgentOperations.taskOptions(transfer.options)
            options.margin = state.settings.margin
            options.privileged = transfer.options?.privileged ?? false
            let task = try await database {
                try await state.store.create(NewTask(kind: transfer.kind, sources: transfer.sources.map { StoredPath(PathText.decode($0)) },
                                                     destination: StoredPath(PathText.decode(transfer.destination)), options: options, owner: principal.user))
            }
            state.feed.notify(task.id)
            state.logger.info("task created", metadata: ["task": "\(task.id)", "owner": "\(principal.user)", "kind": "\(task.kind.rawValue)"])
            return try Reply.json(TaskView(task), status: .created).with(header: .location, "/api/tasks/\(task.id)")
        })

        router.get("/api/tasks", use: handle { request, context in
            let principal = try context.requirePrincipal()
            let filter = try taskFilter(request, principal: principal)
            let tasks = try await database { try await state.store.list(filter) }
            return try Reply.json(TaskList(tasks: tasks.map { TaskView($0) }, offset: filter.offset, limit: filter.limit))
        })

        router.get("/api/tasks/:id", use: handle { _, context in
            let task = try await visibleTask(context, state: state)
            let events = try await database { try await state.store.events(task.id) }
            return try Reply.json(TaskView(task, events: events))
        })

        router.post("/api/tasks/:id/cancel", use: handle { _, context in
            let task = try await visibleTask(context, state: state)
            guard !task.status.isTerminal else { throw APIError(.conflict, "task.state", "task \(task.id) already ended (\(task.status.rawValue)); nothing to cancel") }
            let tooLate = APIError(.conflict, "task.state", "task \(task.id) is committing (publishing the verified copy"
                + (task.kind == .move ? ", then removing the source" : "") + "): too late to cancel; it is finished, not rolled back")
            guard task.status != .committing else { throw tooLate }
            let updated = try await database { try await state.store.requestCancel(task.id) }
            state.feed.notify(task.id)
            // Its commit began meanwhile: nothing was recorded (a commit is past cancelling).
            guard updated.status != .committing else { throw tooLate }
            return try Reply.json(TaskView(updated))
        })

        router.post("/api/tasks/:id/retry", use: handle { _, context in
            let task = try await visibleTask(context, state: state)
            // Authorised again, now: its owner may be an administrator no longer.
            let isAdmin = try context.requirePrincipal().isAdmin
            if task.options.privileged && !isAdmin {
                throw APIError(.forbidden, "forbidden", "task \(task.id) runs with the server's privileges: only an administrator may retry it")
            }
            let updated = try await database { try await state.store.retry(task.id) }
            state.feed.notify(task.id)
            return try Reply.json(TaskView(updated))
        })

        router.get("/api/tasks/:id/stream", use: handle { _, context in
            let task = try await visibleTask(context, state: state)
            let slot = try state.streams.take(for: try context.requirePrincipal().user)
            return EventStream.response(state: state, slot: slot, allowed: sessionLive(context, state)) {
                try await state.store.task(task.id).map { [$0] } ?? []
            } endWhen: { $0.first?.status.isTerminal ?? true }
        })

        router.get("/api/stream", use: handle { request, context in
            let principal = try context.requirePrincipal()
            // The user's own tasks; an admin's stream has everyone's when it asks (`all=1`), as
            // the admin page and the tasks page's "everyone's" view do.
            let everyone = try request.query("all") == "1"
            let owner = principal.isAdmin && everyone ? nil : principal.user
            let slot = try state.streams.take(for: principal.user)
            return EventStream.response(state: state, slot: slot, allowed: sessionLive(context, state)) {
                // Running tasks and those that ended in the last minute (so a stream sees them finish).
                let running = try await state.store.list(TaskFilter(statuses: TaskStatus.running, owner: owner, limit: 200))
                let recent = try await state.store.list(TaskFilter(owner: owner, limit: 50))
                    .filter { $0.status.isTerminal && ($0.finishedAt ?? .distantPast) > Date().addingTimeInterval(-60) }
                return running + recent
            } endWhen: { _ in false }
        })

        // MARK: admin

        router.get("/api/admin/workers", use: handle { _, context in
            try context.requireAdmin()
            let tasks = try await database { try await state.store.list(TaskFilter(statuses: TaskStatus.running, limit: 1000)) }
            let leases = tasks.compactMap { task -> LeaseInfo? in
                guard let worker = task.leaseOwner, let expires = task.leaseExpiresAt else { return nil }
                return LeaseInfo(worker: worker, taskID: task.id, status: task.status.rawValue, expiresAt: TaskView.iso(expires))
            }
            return try Reply.json(["leases": leases])
        })

        router.get("/api/admin/staging", use: handle { _, context in
            try context.requireAdmin()
            return try Reply.json(["staging": try await stagingDirectories(state)])
        })

        router.post("/api/admin/janitor", use: handle { request, context in
            try context.requireAdmin()
            var request = request
            // No body is a real run; a body must say what it means (a typo must not become a real run,
            // nor a body too long or unreadable to be read).
            let body: ByteBuffer
            do { body = try await request.collectBody(upTo: 1 << 16) } catch {
                throw APIError(.badRequest, "request.invalid", "the body could not be read (at most 64 KiB): send {\"dryRun\": true} or {\"dryRun\": false}")
            }
            var dryRun = false
            if body.readableBytes > 0 {
                guard let decoded = try? WireJSON.decoder.decode(JanitorRequest.self, from: Data(body.readableBytesView)) else {
                    throw APIError(.badRequest, "request.invalid", "send {\"dryRun\": true} or {\"dryRun\": false}")
                }
                dryRun = decoded.dryRun
            }
            let report = try await database {
                try await Janitor(engine: state.janitorEngine).run(directories: state.configuration.roots.map { Array($0.path.utf8) },
                                                                   dryRun: dryRun, recover: false)
            }
            return try Reply.json(JanitorReport(recovered: report.recovered, removed: report.removed, kept: report.kept,
                                                unmarked: report.unmarked, repaired: report.repaired, dryRun: dryRun))
        })

        Login.add(to: router, state: state)
    }

    // MARK: helpers

    static func preflight(_ transfer: TransferRequest, principal: Principal, state: ServerState) async throws(APIError) -> (Data, PreflightResult) {
        if transfer.options?.privileged == true && !principal.isAdmin {
            throw APIError(.forbidden, "forbidden", "only administrators may run privileged tasks")
        }
        var ask = state.rootsRequest(.preflight)
        ask.transfer = transfer
        let user = transfer.options?.privileged == true ? state.serverUser : principal.user
        let data = try await state.agent.ask(ask, as: user)
        do { return (data, try WireJSON.decoder.decode(PreflightResult.self, from: data)) } catch {
            throw APIError(.internalError, "internal", "unreadable pre-flight answer: \(error)")
        }
    }

    static func taskFilter(_ request: Request, principal: Principal) throws(APIError) -> TaskFilter {
        var filter = TaskFilter(limit: try request.intQuery("limit", range: 1...500) ?? 50, offset: try request.intQuery("offset", range: 0...Int.max) ?? 0)
        switch try request.query("state") ?? "all" {
        case "all": break
        case "running": filter.statuses = TaskStatus.running
        case "finished": filter.statuses = TaskStatus.allCases.filter(\.isTerminal)
        case let list:
            var statuses: [TaskStatus] = []
            for word in list.split(separator: ",") {
                guard let status = TaskStatus(rawValue: String(word)) else {
                    throw APIError(.badRequest, "request.invalid", "state must be running, finished, all or task states (\(TaskStatus.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                statuses.append(status)
            }
            filter.statuses = statuses
        }
        let owner = try request.query("owner")
        if principal.isAdmin {
            filter.owner = owner
        } else {
            if let owner, owner != principal.user { throw APIError(.forbidden, "forbidden", "you can see only your own tasks") }
            filter.owner = principal.user
        }
        return filter
    }

    /// For an event stream: whether the session the request came with is still live (always, for
    /// a bearer token, which no logout ends).
    static func sessionLive(_ context: FerryContext, _ state: ServerState) -> @Sendable () -> Bool {
        guard !context.viaBearer, let id = context.session?.id else { return { true } }
        let sessions = state.sessions
        return { sessions.isLive(id) }
    }

    /// The task in the path, if the caller may see it (their own, or any for admins). Others'
    /// tasks are reported as not found, so ids do not leak.
    static func visibleTask(_ context: FerryContext, state: ServerState) async throws(APIError) -> TaskRecord {
        let principal = try context.requirePrincipal()
        guard let id = context.parameters.get("id"), id.count <= 64, id.allSatisfy({ $0.isHexDigit }) else {
            throw APIError(.notFound, "task.not_found", "no such task")
        }
        let task = try await database { try await state.store.task(id) }
        guard let task, principal.isAdmin || task.owner == principal.user else { throw APIError(.notFound, "task.not_found", "no task \(id)") }
        return task
    }

    static func stagingDirectories(_ state: ServerState) async throws(APIError) -> [StagingInfo] {
        let report = try await database {
            try await Janitor(engine: state.janitorEngine, grace: .seconds(0)).run(directories: state.configuration.roots.map { Array($0.path.utf8) },
                                                                                  dryRun: true, recover: false)
        }
        var found: [StagingInfo] = []
        let unmarked = Set(report.unmarked)
        for path in report.removed + report.kept + report.unmarked {
            let name = path.split(separator: "/").last.map(String.init) ?? path
            let id = name.hasPrefix(".ferry-staging-") ? String(name.dropFirst(".ferry-staging-".count)) : ""
            let task = try? await state.store.task(id)
            found.append(StagingInfo(path: path, taskID: id, taskStatus: task?.status.rawValue, marked: !unmarked.contains(path)))
        }
        return found.sorted { $0.path < $1.path }
    }

    /// Runs a store call, reporting its failures as API errors.
    static func database<T>(_ body: () async throws -> T) async throws(APIError) -> T {
        do { return try await body() } catch let error as TaskStoreError {
            switch error {
            case .notFound(let id): throw APIError(.notFound, "task.not_found", "no task \(id)")
            case .invalidTransition(let message): throw APIError(.conflict, "task.state", message)
            case .locked(let other, let path): throw APIError(.conflict, "locked", "\(path) is locked by task \(other)")
            case .leaseLost, .database:
                // The database's own words (SQL, host names) go to the server's log, not to clients.
                Logger(label: "ferry.server").error("task database request failed", metadata: ["error": "\(error)"])
                throw APIError(.unavailable, "database", "the task database did not answer as it should; try again in a moment (the server's log says why)")
            }
        } catch let error as APIError {
            throw error
        } catch {
            throw APIError(.internalError, "internal", "\(error)")
        }
    }
}

extension FerryContext {
    func requirePrincipal() throws(APIError) -> Principal {
        guard let principal else { throw APIError(.unauthorized, "auth.required", "log in first") }
        return principal
    }

    func requireAdmin() throws(APIError) {
        guard try requirePrincipal().isAdmin else { throw APIError(.forbidden, "forbidden", "this needs a Ferry administrator") }
    }
}

extension Request {
    func intQuery(_ name: String, range: ClosedRange<Int>) throws(APIError) -> Int? {
        guard let text = try query(name) else { return nil }
        guard let value = Int(text), range.contains(value) else {
            throw APIError(.badRequest, "request.invalid", "\(name) must be a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }
}

struct SessionInfo: Codable { var user: String; var admin: Bool; @Nullable var csrfToken: String?; var authMode: String }
struct RootInfo: Codable { var path: String; @Nullable var name: String? }
struct TaskList: Codable { var tasks: [TaskView]; var offset: Int; var limit: Int }
struct LeaseInfo: Codable { var worker: String; var taskID: String; var status: String; var expiresAt: String }
struct StagingInfo: Codable { var path: String; var taskID: String; @Nullable var taskStatus: String?; var marked: Bool }
struct JanitorRequest: Codable { var dryRun: Bool }
struct JanitorReport: Codable {
    var recovered: [String]
    var removed: [String]
    var kept: [String]
    var unmarked: [String]
    var repaired: [String]
    var dryRun: Bool
}
