import FerryConfig
import FerryCopy
import FerryJobs
import FerryMove
import FerrySystem
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Mustache
import NIOCore
import ServiceLifecycle

/// Everything the handlers share.
public final class ServerState: Sendable {
    static let cookie = "ferry_session"

    public let configuration: FerryConfiguration
    public let settings: ServeSettings
    public let store: any TaskStore
    public let sessions = SessionStore()
    public let limiter = LoginRateLimiter()
    /// Wrong bearer tokens, counted apart: a script still sending the token of the server's last
    /// start must not keep the person at that machine from logging in with the new one.
    public let bearerLimiter = LoginRateLimiter()
    /// How often a password login's account is checked again while its session is used.
    let accountCheckInterval: Duration
    /// Password checks under way at once (each holds a thread for PAM's delay after a failure).
    let passwordChecks = CheckGate(limit: 8)
    /// Token mode: the login token.
    public let token: String?
    /// The account the server runs as: the user of token mode.
    public let serverUser: String
    public let agent: AgentClient
    public let feed = ChangeFeed()
    let streams: StreamSlots
    public let metrics = ServerMetrics()
    public let templates: MustacheLibrary
    public let logger: Logger
    let janitorEngine: MoveEngine

    init(configuration: FerryConfiguration, store: any TaskStore, executable: String, templates: MustacheLibrary, logger: Logger) {
        self.configuration = configuration
        self.settings = configuration.serve
        self.accountCheckInterval = .milliseconds(Int64(configuration.serve.accountCheckSeconds * 1000))
        self.streams = StreamSlots(perUser: configuration.serve.streamsPerUser)
        self.store = store
        self.token = configuration.serve.authMode == .token ? (configuration.serve.token ?? Secret.make(bytes: 24)) : nil
        self.serverUser = UserIdentity.current.name
        self.agent = AgentClient(executable: executable, configuration: configuration)
        self.templates = templates
        self.logger = logger
        self.janitorEngine = MoveEngine(store: store, settings: .init(worker: WorkerName.make("janitor"),
                                                                     roots: configuration.roots.map { Array($0.path.utf8) }))
    }

    func principal(_ user: String) -> Principal {
        Principal(user: user, isAdmin: settings.admins.contains(user))
    }

    func cookie(for session: SessionStore.Session, request: Request) -> String {
        "\(Self.cookie)=\(session.id); \(cookieAttributes(request))"
    }

    /// The session cookie's attributes; `Secure` as configured, else when the request came
    /// through a TLS proxy (`X-Forwarded-Proto: https`).
    func cookieAttributes(_ request: Request) -> String {
        let secure = settings.secureCookie ?? (request.headers[HTTPField.Name("X-Forwarded-Proto")!] == "https")
        return "Path=/; HttpOnly; SameSite=Strict" + (secure ? "; Secure" : "")
    }

    func rootsRequest(_ operation: AgentRequest.Operation) -> AgentRequest {
        AgentRequest(operation: operation, configuration: configuration)
    }
}

/// `ferry serve`: the HTTP server, the task runners and the janitor in one service group with one
/// graceful shutdown.
public enum FerryServer {
    public struct Options: Sendable {
        public var configuration: FerryConfiguration
        public var store: any TaskStore
        /// The `ferry` executable, for agents and task runners.
        public var executable: String
        public var workers: Int
        public var logger: Logger
        /// Called once listening, with the address actually bound and the login URL in token mode.
        public var onListening: @Sendable (_ url: String, _ loginURL: String?) -> Void
        public init(configuration: FerryConfiguration, store: any TaskStore, executable: String, workers: Int, logger: Logger,
                    onListening: @escaping @Sendable (String, String?) -> Void) {
            self.configuration = configuration
            self.store = store
            self.executable = executable
            self.workers = workers
            self.logger = logger
            self.onListening = onListening
        }
    }

    public static func run(_ options: Options) async throws {
        let settings = options.configuration.serve
        guard let (host, port) = settings.hostAndPort else {
            throw APIError(.badRequest, "config.invalid", "listen = \"\(settings.listen)\" is not HOST:PORT")
        }
        guard !options.configuration.roots.isEmpty else {
            throw APIError(.badRequest, "config.invalid", "no [[roots]] configured: name the directories users may browse")
        }
        if settings.authMode != .token && geteuid() != 0 {
            options.logger.warning("not running as root: only \(UserIdentity.current.name) can be served, whatever the \(settings.authMode.rawValue) login says")
        }
        let templates = try await Web.templates()
        let state = ServerState(configuration: options.configuration, store: options.store, executable: options.executable,
                                templates: templates, logger: options.logger)
        let router = Router(context: FerryContext.self)
        router.add(middleware: MetricsMiddleware(state: state))
        router.add(middleware: AuthMiddleware(state: state))
        Routes.add(to: router, state: state)
        Pages.add(to: router, state: state)

        var services: [any Service] = []
        if options.workers > 0 {
            services.append(TaskRunner(store: options.store, executable: options.executable, configuration: options.configuration,
                                       concurrency: options.workers, worker: WorkerName.make("serve"),
                                       lease: .milliseconds(Int64(settings.leaseSeconds * 1000)), feed: state.feed, metrics: state.metrics,
                                       logger: options.logger))
            services.append(JanitorService(engine: state.janitorEngine, roots: state.configuration.roots.map(\.path),
                                           interval: .seconds(600), logger: options.logger))
        }
        let token = state.token
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "ferry"),
            onServerRunning: { channel in
                let bound = channel.localAddress?.port ?? port
                let shown = host.contains(":") ? "[\(host)]" : host
                let url = "http://\(shown):\(bound)"
                options.onListening(url, token.map { "\(url)/login?token=\($0)" })
            },
            logger: options.logger)
        // A hangup (the terminal the server was started from closed) stops it as SIGTERM does:
        // tasks handed back, the demo's filesystem unmounted. Started under nohup, it stays.
        // Stopped in the reverse order: the streams end first, then the runner hands its tasks
        // back, and the HTTP server stops last. A shutdown that takes longer than `shutdown_seconds`
        // (a task process stuck on a hung mount) is escalated to cancellation: whatever a killed
        // task process left is resumed by the next server once its lease runs out.
        services.append(StreamCloser(feed: state.feed))
        var configuration = ServiceGroupConfiguration(
            services: [.init(service: app)] + services.map { .init(service: $0) },
            gracefulShutdownSignals: [.sigterm, .sigint] + (InterruptWatcher.hangupIgnored ? [] : [.sighup]), logger: options.logger)
        configuration.maximumGracefulShutdownDuration = .milliseconds(Int64(settings.shutdownSeconds * 1000))
        try await ServiceGroup(configuration: configuration).run()
    }
}

/// Removes orphaned staging directories and puts the store's lock markers right now and then
/// (tasks whose worker died are recovered by the task runners' claims, as their owners).
public struct JanitorService: Service {
    let engine: MoveEngine
    let roots: [ByteString]
    let interval: Duration
    let logger: Logger

    /// `engine` is the janitor's own (the server's rights: it only removes what no live task owns).
    public init(engine: MoveEngine, roots: [String], interval: Duration, logger: Logger) {
        self.engine = engine
        self.roots = roots.map { Array($0.utf8) }
        self.interval = interval
        self.logger = logger
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            await Janitor(engine: engine).repeating(every: interval, directories: roots) { outcome in
                Self.log(outcome, to: logger)
            }
        }
    }

    /// One periodic pass in the log: what it removed and repaired, or why it failed.
    public static func log(_ outcome: Result<Janitor.Report, any Error>, to logger: Logger) {
        switch outcome {
        case .success(let report):
            for path in report.removed { logger.info("janitor removed a staging directory no live task owns", metadata: ["path": "\(path)"]) }
            for change in report.repaired { logger.warning("janitor: \(change)") }
        case .failure(let error):
            logger.error("janitor pass failed; the next one is due in one interval", metadata: ["error": "\(error)"])
        }
    }
}

/// The templates and static files shipped with the server.
enum Web {
    static var directory: String { Bundle.module.resourcePath.map { $0 + "/Web" } ?? "Web" }

    static func templates() async throws -> MustacheLibrary {
        try await ByteHTMLEscaping.library(directory: directory + "/templates")
    }

    static func file(_ name: String) -> Data? {
        guard !name.contains("/"), !name.hasPrefix(".") else { return nil }
        return FileManager.default.contents(atPath: directory + "/static/" + name)
    }

    static var openAPI: Data? { FileManager.default.contents(atPath: directory + "/openapi.yaml") }
}
