import FerryConfig
import FerrySystem
import Foundation
import HTTPTypes
import Hummingbird

/// Decides who is asking, before any handler runs: a trusted proxy's header, a bearer token, or a
/// session cookie. Unauthenticated requests get 401 (API) or the login page; state-changing
/// requests that rely on the cookie must carry the session's CSRF token.
struct AuthMiddleware: RouterMiddleware {
    typealias Context = FerryContext
    let state: ServerState

    /// Whether the request carries the proxy's secret, once (the peer's address is checked apart).
    static func fromTheProxy(_ request: Request, _ settings: ServeSettings) -> Bool {
        guard let secret = settings.proxySecret else { return false }
        let header = HTTPField.Name(ServeSettings.proxySecretHeader)!
        guard request.headers[values: header].count == 1, let presented = request.headers[header] else { return false }
        return Secret.equal(presented, secret)
    }

    /// Whether the peer is one of `proxy_addresses`, both in one form (`ServeSettings.canonicalAddress`).
    static func fromProxyAddress(_ context: FerryContext, _ settings: ServeSettings) -> Bool {
        guard let peer = context.remoteAddress.flatMap(ServeSettings.canonicalAddress) else { return false }
        return settings.proxyAddresses.contains { ServeSettings.canonicalAddress($0) == peer }
    }

    static let publicPaths: Set<String> = ["/healthz", "/metrics", "/login", "/api/openapi.yaml", "/favicon.ico"]

    func handle(_ request: Request, context: FerryContext, next: (Request, FerryContext) async throws -> Response) async throws -> Response {
        // The API answers every error in its envelope ({"error": {code, message}}), those of the
        // router and the body reader too: a client switches on the code, whatever failed.
        do {
            return try await authenticated(request, context: context, next: next)
        } catch let error as any HTTPResponseError where request.uri.path.hasPrefix("/api/") {
            let path = request.uri.path
            switch error.status {
            case .notFound:
                return APIError(.notFound, "route.not_found", "no API route \(request.method.rawValue) \(path); the routes are in /api/openapi.yaml").response()
            case .contentTooLarge:
                return APIError(.contentTooLarge, "request.too_large", "the request body is too large for \(path)").response()
            case .methodNotAllowed:
                return APIError(.methodNotAllowed, "route.method", "\(path) does not take \(request.method.rawValue); the routes are in /api/openapi.yaml").response()
            default:
                throw error
            }
        }
    }

    private func authenticated(_ request: Request, context: FerryContext, next: (Request, FerryContext) async throws -> Response) async throws -> Response {
        var request = request
        var context = context
        let path = request.uri.path
        var newSession: SessionStore.Session?
        let settings = state.settings

        // The header is checked when the settings are read; one that is no header name is no
        // proxy login at all (never another header's).
        if settings.authMode == .proxy, let proxyHeader = HTTPField.Name(settings.proxyHeader), Self.fromProxyAddress(context, settings),
           let user = request.headers[proxyHeader], !user.isEmpty {
            guard Self.fromTheProxy(request, settings) else {
                return APIError(.unauthorized, "auth.failed", "\(settings.proxyHeader) came without the proxy's \(ServeSettings.proxySecretHeader)").response()
            }
            guard Self.plausibleUser(user), request.headers[values: proxyHeader].count == 1 else {
                return APIError(.unauthorized, "auth.failed", "the proxy sent an unusable user name").response()
            }
            if let id = request.cookie(ServerState.cookie), let session = state.sessions.session(id), session.user == user {
                context.session = session
            } else {
                let session = state.sessions.create(user: user)
                context.session = session
                newSession = session
            }
            context.principal = state.principal(user)
        } else if settings.authMode == .token, let token = state.token,
                  let authorization = request.headers[.authorization], authorization.hasPrefix("Bearer ") {
            // The right token is never limited (API clients holding it are not logging in: a login
            // lock-out must not stop them); wrong ones are limited per address (a configured token
            // may be as short as 16 characters), apart from logins (`bearerLimiter`).
            guard Secret.equal(String(authorization.dropFirst(7)), token) else {
                let address = Login.clientAddress(request, context, settings)
                if case .limited(let wait) = state.bearerLimiter.admit(address) {
                    return APIError(.tooManyRequests, "auth.rate_limited", "too many wrong bearer tokens from \(address); try again in \(wait) s").response()
                        .with(header: .retryAfter, String(wait))
                }
                return APIError(.unauthorized, "auth.failed", "the bearer token is not this server's token").response()
            }
            context.principal = state.principal(state.serverUser)
            context.viaBearer = true
        } else if let id = request.cookie(ServerState.cookie), let session = state.sessions.session(id) {
            // A password login's account is looked at again now and then: one removed, expired or
            // locked since loses its sessions (a user database that cannot answer ends none).
            if settings.authMode == .pam, state.sessions.accountCheckDue(id, every: state.accountCheckInterval) {
                let user = session.user, lockedAtLogin = session.lockedAtLogin
                let answer = try? await Blocking.run { Login.accountEnded(user, lockedAtLogin: lockedAtLogin) }
                if let why = answer {
                    state.sessions.remove(id)
                    state.logger.notice("session ended: account no longer usable", metadata: ["user": "\(user)", "why": "\(why)"])
                    if path.hasPrefix("/api/") {
                        return APIError(.unauthorized, "auth.required", "your account may no longer be used (\(why)); log in again").response()
                    }
                    return Reply.redirect("/login")
                }
            }
            context.session = session
            context.principal = state.principal(session.user)
        }

        let isPublic = Self.publicPaths.contains(path) || path.hasPrefix("/static/")
        if context.principal == nil && !isPublic {
            if path.hasPrefix("/api/") {
                return APIError(.unauthorized, "auth.required", "log in first: \(settings.authMode == .token ? "open the URL with the token that ferry serve printed, or send Authorization: Bearer <token>" : "sign in at /login")").response()
            }
            return Reply.redirect("/login")
        }

        if ![.get, .head, .options].contains(request.method), !context.viaBearer, let session = context.session, path != "/login" {
            var presented = request.headers[HTTPField.Name("X-CSRF-Token")!]
            if presented == nil, request.headers[.contentType]?.hasPrefix("application/x-www-form-urlencoded") == true {
                let body = try await request.collectBody(upTo: 1 << 16)
                presented = FormData.parse(String(buffer: body))["csrf_token"] ?? nil
            }
            guard let presented, Secret.equal(presented, session.csrfToken) else {
                return APIError(.forbidden, "csrf.invalid", "this request needs the session's CSRF token (X-CSRF-Token header); reload the page and try again").response()
            }
        }

        var response = try await next(request, context)
        if let newSession { response.headers[values: .setCookie].append(state.cookie(for: newSession, request: request)) }
        return response
    }

    static func plausibleUser(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 256 && !name.contains(where: { $0 == "/" || $0 == ":" || $0.isNewline || $0 == "\0" })
    }
}

/// Counts requests and their durations by route for `/metrics`, and logs each one.
struct MetricsMiddleware: RouterMiddleware {
    typealias Context = FerryContext
    let state: ServerState

    func handle(_ request: Request, context: FerryContext, next: (Request, FerryContext) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        let status: Int
        let response: Response
        do {
            response = try await next(request, context)
            status = Int(response.status.code)
        } catch let error as HTTPError {
            state.metrics.request(method: request.method.rawValue, route: context.endpointPath ?? "unmatched", status: Int(error.status.code),
                                  duration: ContinuousClock.now - start)
            throw error
        } catch {
            state.metrics.request(method: request.method.rawValue, route: context.endpointPath ?? "unmatched", status: 500, duration: ContinuousClock.now - start)
            throw error
        }
        state.metrics.request(method: request.method.rawValue, route: context.endpointPath ?? "unmatched", status: status, duration: ContinuousClock.now - start)
        return response
    }
}
