import FerryConfig
import FerryMove
import FerrySystem
import Foundation
import Hummingbird
import HTTPTypes
import NIOCore
import Synchronization

/// `/login` and `/logout`. Token mode: the printed token, by link (`/login?token=…`, as Jupyter
/// does) or typed into the form. PAM mode: username and password. Proxy mode: the proxy has
/// logged people in already. Failures are counted per client address and rate-limited.
enum Login {
    struct Credentials: Decodable { var token: String?; var username: String?; var password: String? }

    static func add(to router: Router<FerryContext>, state: ServerState) {
        router.get("/login") { request, context in
            let token = (try? request.query("token")) ?? nil
            if let token {
                return await attempt(Credentials(token: token), request: request, context: context, state: state, json: false)
            }
            if context.principal != nil { return Reply.redirect("/browse") }
            return Pages.login(state: state, error: nil)
        }

        router.post("/login") { request, context in
            var request = request
            let isJSON = request.headers[.contentType]?.hasPrefix("application/json") == true
            // A login posted from another site (a form there submitting to this server) would log
            // the browser into the poster's account: refused. Browsers say where a request comes
            // from (Fetch Metadata); a client that does not say (a script) is not a browser.
            if let site = request.headers[HTTPField.Name("Sec-Fetch-Site")!], site != "same-origin", site != "none" {
                let error = APIError(.forbidden, "auth.cross_site", "a login sent from another site (\(site)) is refused; log in on Ferry's own page")
                return isJSON ? error.response() : Pages.login(state: state, error: error.message, status: error.httpStatus)
            }
            let body = (try? await request.collectBody(upTo: 1 << 16)).map { Data($0.readableBytesView) } ?? Data()
            let credentials: Credentials
            if isJSON {
                guard let decoded = try? JSONDecoder().decode(Credentials.self, from: body) else {
                    return APIError(.badRequest, "request.invalid", "send {\"token\": …} or {\"username\": …, \"password\": …}").response()
                }
                credentials = decoded
            } else {
                let fields = FormData.parse(String(decoding: body, as: UTF8.self))
                credentials = Credentials(token: fields["token"] ?? nil, username: fields["username"] ?? nil, password: fields["password"] ?? nil)
            }
            return await attempt(credentials, request: request, context: context, state: state, json: isJSON)
        }

        router.post("/logout") { request, context in
            if let session = context.session { state.sessions.remove(session.id) }
            return Reply.redirect("/login", headers: [.setCookie: "\(ServerState.cookie)=; \(state.cookieAttributes(request)); Max-Age=0"])
        }
    }

    /// Who is logging in, for the rate limit and the log: the peer, or, when the request comes
    /// from the site's TLS proxy (one of `proxy_addresses`, with its secret), the client it names
    /// last in `X-Forwarded-For` — else everyone would share the proxy's count, and five wrong
    /// passwords from anyone would lock everyone out.
    static func clientAddress(_ request: Request, _ context: FerryContext, _ settings: ServeSettings) -> String {
        let peer = context.remoteAddress ?? "unknown"
        guard AuthMiddleware.fromProxyAddress(context, settings), AuthMiddleware.fromTheProxy(request, settings), let forwarded = request.headers[values: HTTPField.Name("X-Forwarded-For")!].last,
              let client = forwarded.split(separator: ",").last?.trimmingCharacters(in: .whitespaces), !client.isEmpty else { return peer }
        return client
    }

    /// Why a password login's account may no longer be used, nil if it may (or if that cannot
    /// be told now): gone from the user database, expired, or its password locked since the login.
    static func accountEnded(_ user: String, lockedAtLogin: Bool) -> String? {
        switch Result(catching: { try UserIdentity.lookup(name: user) }) {
        case .success(nil): return "the account no longer exists"
        case .success, .failure: break
        }
        guard let shadow = PAM.shadowState(of: user) else { return nil }
        if shadow.expired { return "the account has expired" }
        if shadow.locked && !lockedAtLogin { return "the account's password has been locked" }
        return nil
    }

    static func attempt(_ credentials: Credentials, request: Request, context: FerryContext, state: ServerState, json: Bool) async -> Response {
        let address = clientAddress(request, context, state.settings)
        func failure(_ error: APIError) -> Response {
            if json { return error.response() }
            return Pages.login(state: state, error: error.message, status: error.httpStatus)
        }
        // Counted as a failure until it succeeds, so parallel attempts cannot all pass the check
        // while a slow password check is under way.
        let ticket: LoginRateLimiter.Ticket
        switch state.limiter.admit(address) {
        case .limited(let wait):
            return failure(APIError(.tooManyRequests, "auth.rate_limited", "too many failed logins from \(address); try again in \(wait) s"))
                .with(header: .retryAfter, String(wait))
        case .admitted(let admitted):
            ticket = admitted
        }
        let user: String
        switch state.settings.authMode {
        case .token:
            guard let expected = state.token, let token = credentials.token, Secret.equal(token, expected) else {
                state.logger.notice("failed token login", metadata: ["address": "\(address)"])
                return failure(APIError(.unauthorized, "auth.failed", "that is not the token ferry serve printed"))
            }
            user = state.serverUser
        case .pam:
            guard let name = credentials.username, let password = credentials.password, AuthMiddleware.plausibleUser(name) else {
                return failure(APIError(.unauthorized, "auth.failed", "give a user name and password"))
            }
            let service = state.settings.pamService
            // Each check holds a thread of its own for as long as PAM takes (seconds, after a
            // wrong password); guesses from many addresses at once must not take them all.
            guard state.passwordChecks.enter() else {
                state.limiter.succeeded(ticket)  // not an attempt: nothing was checked
                return failure(APIError(.unavailable, "auth.busy", "too many password checks are under way; try again in a few seconds"))
                    .with(header: .retryAfter, "3")
            }
            let result = (try? await Blocking.run { PAM.authenticate(service: service, user: name, password: password, remoteHost: address) }) ?? .unavailable("PAM did not answer")
            state.passwordChecks.leave()
            switch result {
            case .success:
                // An account this server cannot act as (no local uid, or a server not running as
                // root) would get a session and nothing it could do with it.
                do { _ = try AgentClient.identity(for: name) } catch { return failure(error) }
                // The account's own name (PAM may accept aliases or other spellings): tasks and
                // the admin list are keyed by it.
                user = (try? UserIdentity.lookup(name: name))??.name ?? name
            case .denied:
                state.logger.notice("failed PAM login", metadata: ["address": "\(address)", "user": "\(name)"])
                return failure(APIError(.unauthorized, "auth.failed", "wrong user name or password"))
            case .unavailable(let why):
                return failure(APIError(.unavailable, "auth.unavailable", "the password check is not available: \(why)"))
            }
        case .proxy:
            return failure(APIError(.unauthorized, "auth.failed", "this server is behind a login proxy; open it through the proxy"))
        }
        state.limiter.succeeded(ticket)
        let locked = state.settings.authMode == .pam ? (PAM.shadowState(of: user)?.locked ?? false) : false
        let session = state.sessions.create(user: user, lockedAtLogin: locked)
        state.logger.info("login", metadata: ["user": "\(user)", "address": "\(address)"])
        let cookie = state.cookie(for: session, request: request)
        if json {
            let body = (try? WireJSON.encoder.encode(SessionInfo(user: user, admin: state.principal(user).isAdmin, csrfToken: session.csrfToken,
                                                                 authMode: state.settings.authMode.rawValue))) ?? Data()
            return Reply.json(body).with(header: .setCookie, cookie)
        }
        return Reply.redirect("/browse", headers: [.setCookie: cookie])
    }
}

extension Response {
    func with(header name: HTTPField.Name, _ value: String) -> Response {
        var response = self
        response.headers[name] = value
        return response
    }
}

/// At most `limit` of something at once; past it, `enter` says no rather than waiting.
final class CheckGate: Sendable {
    private let count = Mutex(0)
    let limit: Int

    init(limit: Int) {
        self.limit = max(1, limit)
    }

    func enter() -> Bool {
        count.withLock { count in
            guard count < limit else { return false }
            count += 1
            return true
        }
    }

    func leave() {
        count.withLock { $0 -= 1 }
    }
}
