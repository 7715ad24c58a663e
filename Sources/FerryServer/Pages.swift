import FerryJobs
import FerryMove
import FerrySystem
import Foundation
import Hummingbird
import NIOCore

/// The server-rendered pages: the file browser, tasks, a task's detail, the admin page. They ask
/// the same agents and the same store as the API; the little JavaScript in `ferry.js` adds the
/// move dialog and live progress on top.
enum Pages {
    static func add(to router: Router<FerryContext>, state: ServerState) {
        router.get("/") { _, _ in Reply.redirect("/browse") }
        router.get("/static/:name") { _, context in
            guard let name = context.parameters.get("name"), let data = Web.file(name) else {
                return Response(status: .notFound)
            }
            let type = name.hasSuffix(".css") ? "text/css" : name.hasSuffix(".js") ? "text/javascript" : name.hasSuffix(".svg") ? "image/svg+xml" : "application/octet-stream"
            return Response(status: .ok, headers: [.contentType: "\(type); charset=utf-8", .cacheControl: "max-age=300", Reply.noSniff: "nosniff"],
                            body: .init(byteBuffer: ByteBuffer(bytes: data)))
        }
        router.get("/browse") { request, context in await browse(request, context, state) }
        router.get("/tasks") { request, context in await tasks(request, context, state) }
        router.get("/tasks/:id") { _, context in await task(context, state) }
        router.get("/admin") { _, context in await admin(context, state) }
    }

    // MARK: rendering

    static func render(_ template: String, _ values: [String: Any], state: ServerState, context: FerryContext?,
                       status: HTTPResponse.Status = .ok) -> Response {
        var page = values
        if let context, let principal = context.principal {
            page["user"] = principal.user
            page["isAdmin"] = principal.isAdmin
            page["csrfToken"] = context.session?.csrfToken ?? ""
        }
        page["authMode"] = state.settings.authMode.rawValue
        // Behind a login proxy, signing out is the proxy's: Ferry's own would last one request.
        page["signedInByProxy"] = state.settings.authMode == .proxy
        guard let html = state.templates.render(page, withTemplate: template) else {
            return Reply.html("<h1>Missing template \(template)</h1>", status: .internalServerError)
        }
        return Reply.html(html, status: status)
    }

    static func login(state: ServerState, error: String?, status: HTTPResponse.Status = .ok) -> Response {
        var values: [String: Any] = ["title": "Sign in — Ferry", "tokenMode": state.settings.authMode == .token,
                                     "pamMode": state.settings.authMode == .pam, "proxyMode": state.settings.authMode == .proxy]
        if let error { values["error"] = error }
        return render("login", values, state: state, context: nil, status: status)
    }

    static func error(_ error: APIError, state: ServerState, context: FerryContext) -> Response {
        render("error", ["title": "Error — Ferry", "status": error.status.rawValue, "code": error.code, "message": error.message],
               state: state, context: context, status: error.httpStatus)
    }

    // MARK: pages

    static func browse(_ request: Request, _ context: FerryContext, _ state: ServerState) async -> Response {
        guard let principal = context.principal else { return Reply.redirect("/login") }
        let roots = state.configuration.roots
        let requested = (try? request.query("path")) ?? nil
        // In its normal form (`PathText` decoded and written again), as listed and linked.
        let asked = requested ?? roots.first?.path ?? "/"
        let path = (try? ServerPath.check(asked, roots: roots.map(\.path)))?.path ?? asked
        let sort = ((try? request.query("sort")) ?? nil).flatMap(ListingSort.init(rawValue:)) ?? .name
        let descending = ((try? request.query("order")) ?? nil) == "desc"
        let offset = min(10_000_000, max(0, Int(((try? request.query("offset")) ?? nil) ?? "0") ?? 0))
        let limit = 100
        var values: [String: Any] = ["title": "\(shown(path)) — Ferry", "navBrowse": true, "path": path, "pathShown": shown(path)]
        let activeRoot = state.configuration.root(containing: path)
        values["roots"] = roots.map { root -> [String: Any] in
            ["name": root.name ?? root.path, "path": root.path, "url": browseURL(root.path), "active": root.path == activeRoot?.path]
        }
        values["breadcrumbs"] = breadcrumbs(path, root: activeRoot.map { ($0.path, $0.name ?? $0.path) })
        do {
            var ask = state.rootsRequest(.list)
            ask.path = try ServerPath.check(path, roots: roots.map(\.path)).path
            ask.offset = offset
            ask.limit = limit
            ask.sort = sort
            ask.descending = descending
            async let listingData = state.agent.ask(ask, as: principal.user, decoding: Listing.self)
            var quotaAsk = state.rootsRequest(.quota)
            quotaAsk.path = ask.path
            let quota = try? await state.agent.ask(quotaAsk, as: principal.user, decoding: QuotaResult.self)
            let listing = try await listingData
            // A page past the end (entries moved away since the link was made): the last one.
            // Only ever back: a folder whose entries cannot be listed (readable, not searchable)
            // has a total and no entries, and must not send the browser to itself.
            let lastPage = max(0, (listing.total - 1) / limit * limit)
            if listing.entries.isEmpty && offset > 0 && lastPage < offset {
                return Reply.redirect(browseURL(path, sort: sort, descending: descending, offset: lastPage))
            }
            if let parent = listing.parent { values["parentURL"] = browseURL(parent) }
            values["entries"] = listing.entries.map { entry -> [String: Any] in
                var row: [String: Any] = [
                    "name": shown(entry.name), "path": entry.path, "type": entry.type, "isDirectory": entry.type == "directory",
                    "sizeText": entry.type == "directory" ? "—" : Format.bytes(entry.size), "size": entry.size,
                    "modifiedText": Date(timeIntervalSince1970: entry.modified).formatted(date: .abbreviated, time: .shortened),
                    "modifiedISO": TaskView.iso(Date(timeIntervalSince1970: entry.modified)),
                    "modified": entry.modified, "owner": entry.owner, "mode": entry.mode,
                ]
                if entry.type == "directory" { row["url"] = browseURL(entry.path) }
                if let target = entry.symlinkTarget { row["symlinkTarget"] = shown(target) }
                return row
            }
            values["empty"] = listing.entries.isEmpty
            values["total"] = listing.total
            let first = listing.total == 0 ? 0 : offset + 1
            let last = offset + listing.entries.count
            var paging: [String: Any] = ["rangeText": "\(Format.count(UInt64(first)))–\(Format.count(UInt64(last))) of \(Format.count(UInt64(listing.total)))"]
            if offset > 0 { paging["prevURL"] = browseURL(path, sort: sort, descending: descending, offset: max(0, offset - limit)) }
            if last < listing.total { paging["nextURL"] = browseURL(path, sort: sort, descending: descending, offset: last) }
            values["paging"] = paging
            values["sortLinks"] = ListingSort.allCases.map { key -> [String: Any] in
                let active = key == sort
                return ["label": key == .modified ? "Modified" : key.rawValue.capitalized, "key": key.rawValue, "active": active,
                        "ascending": !(active && descending),
                        "url": browseURL(path, sort: key, descending: active ? !descending : false, offset: 0)]
            }
            if let quota {
                values["filesystem"] = quota.filesystem
                if let project = quota.project, project.id != 0 {
                    values["hasProject"] = true
                    values["projectID"] = project.id
                    values["inherit"] = project.inherit
                }
                values["quota"] = quotaView(quota.quota)
            }
        } catch let error as APIError {
            values["error"] = ["code": error.code, "message": error.message]
        } catch {
            values["error"] = ["code": "internal", "message": "\(error)"]
        }
        return render("browse", values, state: state, context: context)
    }

    static func quotaView(_ quota: QuotaInfo) -> [String: Any] {
        func bar(used: UInt64?, limit: UInt64?, free: UInt64?, format: (UInt64) -> String) -> [String: Any] {
            // Unknown figures are left out; the template says so in words.
            var view: [String: Any] = [:]
            if let used { view["usedText"] = format(used) }
            if let limit { view["limitText"] = format(limit) }
            if let free { view["freeText"] = format(free) }
            let total = limit ?? used.flatMap { u in free.map { u + $0 } }
            if let used, let total, total > 0 {
                let percent = min(100, Double(used) * 100 / Double(total))
                view["percent"] = (percent * 10).rounded() / 10
                view["level"] = percent > 95 ? "crit" : percent >= 80 ? "warn" : "ok"
            } else {
                view["level"] = "ok"
            }
            return view
        }
        var view: [String: Any] = ["source": quota.source,
                                   "bytes": bar(used: quota.bytesUsed, limit: quota.bytesHardLimit, free: quota.bytesFree, format: Format.bytes),
                                   "inodes": bar(used: quota.inodesUsed, limit: quota.inodesHardLimit, free: quota.inodesFree, format: Format.count)]
        if let note = quota.note { view["note"] = note }
        return view
    }

    static func tasks(_ request: Request, _ context: FerryContext, _ state: ServerState) async -> Response {
        guard let principal = context.principal else { return Reply.redirect("/login") }
        let showAll = ((try? request.query("all")) ?? nil) == "1"
        let owner = principal.isAdmin && showAll ? nil : principal.user
        // A page of 100, newest first; one more is read to know whether older ones follow.
        let pageSize = 100
        let offset = min(10_000_000, max(0, Int(((try? request.query("offset")) ?? nil) ?? "0") ?? 0))
        // A database that cannot answer is said as such, not shown as "no tasks".
        let found: [TaskRecord]
        do { found = try await Routes.database { try await state.store.list(TaskFilter(owner: owner, limit: pageSize + 1, offset: offset)) } } catch {
            return Pages.error(error, state: state, context: context)
        }
        let records = Array(found.prefix(pageSize))
        func page(_ at: Int) -> String {
            var query = [showAll ? "all=1" : nil, at > 0 ? "offset=\(at)" : nil].compactMap { $0 }.joined(separator: "&")
            if !query.isEmpty { query = "?" + query }
            return "/tasks" + query
        }
        var values: [String: Any] = ["title": "Tasks — Ferry", "navTasks": true, "tasks": records.map(taskView),
                                     "empty": records.isEmpty && offset == 0, "showAll": showAll, "offset": offset]
        if offset > 0 { values["newerURL"] = page(max(0, offset - pageSize)) }
        if found.count > pageSize { values["olderURL"] = page(offset + pageSize) }
        if offset > 0 || found.count > pageSize {
            values["pagingText"] = records.isEmpty ? "No tasks this far back" : "Tasks \(offset + 1)–\(offset + records.count), newest first"
        }
        return render("tasks", values, state: state, context: context)
    }

    static func task(_ context: FerryContext, _ state: ServerState) async -> Response {
        let record: TaskRecord
        do { record = try await Routes.visibleTask(context, state: state) } catch { return Pages.error(error, state: state, context: context) }
        let events: [TaskEvent]
        do { events = try await Routes.database { try await state.store.events(record.id) } } catch {
            return Pages.error(error, state: state, context: context)
        }
        let order: [TaskStatus] = [.pending, .validating, .locked, .copying, .verifying, .committing, .completed]
        let reached = Set(events.map(\.status))
        let current = order.firstIndex(of: record.status)
        let phases = order.enumerated().map { index, phase -> [String: Any] in
            let state: String
            if record.status == phase && phase != .completed { state = "current" }
            else if record.status == .completed || (current.map { index < $0 } ?? reached.contains(phase)) { state = "done" }
            else if record.status.isTerminal && record.status != .completed && phase == .completed { state = "failed" }
            else { state = "todo" }
            return ["name": phase.rawValue, "state": state]
        }
        let view = TaskView(record)
        var values: [String: Any] = [:]
        if let strategy = record.plan?.strategy { values["strategy"] = strategy }
        return render("task", values.merging([
            "title": "Task \(record.id) — Ferry", "navTasks": true, "task": taskView(record), "phases": phases,
            "summary": view.summary,
            "events": events.map { ["atText": $0.at.formatted(date: .abbreviated, time: .standard), "atISO": TaskView.iso($0.at), "status": $0.status.rawValue, "message": $0.message] },
        ]) { $1 }, state: state, context: context)
    }

    static func admin(_ context: FerryContext, _ state: ServerState) async -> Response {
        guard let principal = context.principal else { return Reply.redirect("/login") }
        guard principal.isAdmin else {
            return error(APIError(.forbidden, "forbidden", "the admin page is for Ferry administrators"), state: state, context: context)
        }
        let records: [TaskRecord]
        do { records = try await Routes.database { try await state.store.list(TaskFilter(limit: 200)) } } catch {
            return Pages.error(error, state: state, context: context)
        }
        let leases = records.filter { !$0.status.isTerminal && $0.leaseOwner != nil }.map { task -> [String: Any] in
            ["worker": task.leaseOwner ?? "", "taskID": task.id, "status": task.status.rawValue,
             "expiresText": task.leaseExpiresAt.map { $0.formatted(date: .omitted, time: .standard) } ?? "",
             "expiresISO": task.leaseExpiresAt.map(TaskView.iso) ?? ""]
        }
        let staging = ((try? await Routes.stagingDirectories(state)) ?? []).map { item -> [String: Any] in
            ["path": item.path, "taskID": item.taskID, "taskStatus": item.taskStatus ?? "unknown to the database", "unmarked": !item.marked]
        }
        return render("admin", ["title": "Admin — Ferry", "navAdmin": true, "tasks": records.map(taskView), "leases": leases,
                                "staging": staging, "noLeases": leases.isEmpty, "noStaging": staging.isEmpty], state: state, context: context)
    }

    // MARK: pieces

    static func taskView(_ task: TaskRecord) -> [String: Any] {
        let view = TaskView(task)
        let p = TaskView.progress(task)
        var values: [String: Any] = [
            "id": task.id, "url": "/tasks/\(task.id)", "kind": task.kind.rawValue, "status": task.status.rawValue,
            "statusClass": task.status == .completed ? "ok" : task.status.isTerminal ? "bad" : "running",
            "sourcesText": task.sources.map(\.description).joined(separator: ", "), "destination": task.destination.description,
            "owner": task.owner, "percent": view.progress.percent,
            // Before the plan (while the source is measured) there are counts but no totals.
            "bytesText": p.bytesTotal > 0 ? "\(Format.bytes(p.bytesDone)) of \(Format.bytes(p.bytesTotal))" : p.bytesDone > 0 ? Format.bytes(p.bytesDone) : "—",
            "filesText": p.entriesTotal > 0 ? "\(Format.count(p.entriesDone)) of \(Format.count(p.entriesTotal)) entries"
                : p.entriesDone > 0 ? "\(Format.count(p.entriesDone)) entries" : "—",
            "rateText": view.progress.bytesPerSecond > 0 ? Format.rate(view.progress.bytesPerSecond) : "",
            "etaText": view.progress.etaSeconds.map { Format.duration($0) } ?? "",
            // A commit is past cancelling: it is finished whatever is asked.
            "terminal": task.status.isTerminal, "canCancel": !task.status.isTerminal && task.status != .committing && !task.cancelRequested,
            "createdISO": TaskView.iso(task.createdAt),
            "canRetry": [.failed, .cancelled, .rolledBack].contains(task.status),
            "createdText": task.createdAt.formatted(date: .abbreviated, time: .shortened), "summary": view.summary,
        ]
        if let failure = task.failure { values["errorMessage"] = failure.message }
        if let note = view.note { values["note"] = note }
        return values
    }

    static func breadcrumbs(_ path: String, root: (path: String, name: String)?) -> [[String: Any]] {
        guard let root else { return [] }
        var crumbs: [[String: Any]] = [["name": root.name, "url": browseURL(root.path)]]
        var current = root.path
        let rest = path.dropFirst(root.path.count).split(separator: "/")
        for component in rest {
            current += (current.hasSuffix("/") ? "" : "/") + component
            crumbs.append(["name": shown(String(component)), "url": browseURL(current)])
        }
        crumbs[crumbs.count - 1]["last"] = true
        return crumbs
    }

    /// A path or name as the API's text (`PathText`) for people: other bytes than UTF-8 as `\xNN`.
    static func shown(_ text: String) -> String { PathDisplay.string(PathText.decode(text)) }

    static func browseURL(_ path: String, sort: ListingSort = .name, descending: Bool = false, offset: Int = 0) -> String {
        var url = "/browse?path=" + (path.addingPercentEncoding(withAllowedCharacters: .urlQueryValueAllowed) ?? path)
        if sort != .name { url += "&sort=\(sort.rawValue)" }
        if descending { url += "&order=desc" }
        if offset > 0 { url += "&offset=\(offset)" }
        return url
    }
}

extension CharacterSet {
    static let urlQueryValueAllowed: CharacterSet = {
        var set = CharacterSet.urlQueryAllowed
        set.remove(charactersIn: "&=+?#")
        return set
    }()
}
