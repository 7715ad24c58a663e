import Foundation
import Glibc

/// A throwaway PostgreSQL 15 cluster for tests: `initdb` into a temporary directory owned by the
/// `postgres` user, started on a free loopback port with trust authentication and its socket in
/// that directory (so it never touches a system cluster), with a database `ferry_test`. `stop()`
/// (also run by deinit) kills it at once and removes the directory.
public final class PostgresCluster: @unchecked Sendable {
    public static let binaries = "/usr/lib/postgresql/15/bin"
    public static let user = "postgres"

    public let directory: String
    public let host = "127.0.0.1"
    public private(set) var port: Int = 0
    public let database = "ferry_test"
    private var dataDirectory: String { directory + "/data" }
    private let lock = NSLock()
    private var running = false
    private var removed = false

    /// Whether a cluster can be made here: the server binaries are installed, a `postgres` user
    /// exists and we are root (to run them as that user).
    public static var available: Bool {
        let files = FileManager.default
        let haveBinaries = ["initdb", "pg_ctl", "postgres", "createdb", "dropdb", "psql"].allSatisfy { files.isExecutableFile(atPath: binaries + "/" + $0) }
        let haveRunuser = files.isExecutableFile(atPath: "/usr/sbin/runuser") || files.isExecutableFile(atPath: "/sbin/runuser")
        return geteuid() == 0 && getpwnam(user) != nil && haveBinaries && haveRunuser
    }

    public init() throws {
        Self.reapAbandoned()
        directory = try TemporaryDirectory.make(prefix: "ferry-pg")
        do {
            try String(getpid()).write(toFile: directory + "/owner.pid", atomically: true, encoding: .utf8)
            try Shell.run(["chown", "\(Self.user):\(Self.user)", directory])
            try Self.asPostgres(["initdb", "-D", dataDirectory, "-U", Self.user, "--auth=trust", "-N", "--locale=C", "-E", "UTF8"])
            // A free port can be taken by someone else between our probe and the server's bind: retry.
            var lastError: (any Error)?
            for _ in 0..<5 {
                port = try Self.freePort()
                do {
                    try start()
                    running = true
                    lastError = nil
                    break
                } catch {
                    lastError = error
                }
            }
            if let lastError { throw lastError }
            try createDatabase(database)
        } catch {
            stop()
            throw error
        }
    }

    /// `pg_ctl start`, not through `Shell`: the server it leaves running would inherit the
    /// descriptors Foundation's `Process` watches for the end of its child, and `Shell.run` would
    /// wait for the server to exit. So it is spawned here with nothing but /dev/null and a log
    /// file, every other descriptor closed before `pg_ctl` runs.
    private func start() throws {
        let output = directory + "/pg_ctl.out"
        let pgctl = [Self.binaries + "/pg_ctl", "-D", dataDirectory, "-l", directory + "/server.log", "-w", "-t", "60",
                     "-o", "-p \(port) -k \(directory) -c listen_addresses=\(host) -c fsync=off", "start"]
        let closeAndRun = #"for fd in /proc/self/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; exec "$@""#
        let status = try Self.spawnAndWait(["/bin/bash", "-c", closeAndRun, "ferry-pg-start", "runuser", "-u", Self.user, "--"] + pgctl,
                                           output: output)
        guard status == 0 else {
            let said = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            let log = (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8)) ?? ""
            throw ShellError(command: pgctl.joined(separator: " "), status: status, output: said + log)
        }
    }

    /// posix_spawn with standard input from /dev/null and standard output and error to `output`;
    /// waits for the child and returns its exit status.
    private static func spawnAndWait(_ arguments: [String], output: String) throws -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid = pid_t()
        let spawned = posix_spawn(&pid, arguments[0], &actions, nil, argv, environ)
        guard spawned == 0 else { throw ShellError(command: arguments.joined(separator: " "), status: spawned, output: String(cString: strerror(spawned))) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 {
            guard errno == EINTR else { throw ShellError(command: "waitpid", status: errno, output: String(cString: strerror(errno))) }
        }
        return status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    }

    public func createDatabase(_ name: String) throws {
        try Shell.run([Self.binaries + "/createdb", "-h", host, "-p", String(port), "-U", Self.user, name])
    }

    /// Drops the database, closing any connection still open to it.
    public func dropDatabase(_ name: String) throws {
        try Shell.run([Self.binaries + "/dropdb", "--force", "--if-exists", "-h", host, "-p", String(port), "-U", Self.user, name])
    }

    /// Runs SQL with psql as the superuser and returns its unaligned, tuples-only output.
    @discardableResult
    public func psql(_ database: String, _ sql: String) throws -> String {
        try Shell.run([Self.binaries + "/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", String(port),
                       "-U", Self.user, "-d", database, "-c", sql])
    }

    /// Stops the server (immediate mode: nothing to keep) and removes its directory. Safe to call twice.
    public func stop() {
        lock.lock()
        defer { lock.unlock() }
        if running || FileManager.default.fileExists(atPath: dataDirectory + "/postmaster.pid") {
            _ = try? Self.asPostgres(["pg_ctl", "-D", dataDirectory, "-m", "immediate", "-w", "stop"])
            running = false
        }
        if !removed {
            try? FileManager.default.removeItem(atPath: directory)
            removed = true
        }
    }

    deinit { stop() }

    /// Stops and removes the clusters of test processes that died without stopping them (killed
    /// by a timeout, say): those whose `owner.pid` names a process that no longer exists.
    public static func reapAbandoned() {
        let base = NSTemporaryDirectory().hasSuffix("/") ? String(NSTemporaryDirectory().dropLast()) : NSTemporaryDirectory()
        let names = (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []
        for name in names where name.hasPrefix("ferry-pg-") {
            let directory = base + "/" + name
            guard let text = try? String(contentsOfFile: directory + "/owner.pid", encoding: .utf8),
                  let owner = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { continue }
            if kill(owner, 0) == 0 || errno == EPERM { continue }
            if FileManager.default.fileExists(atPath: directory + "/data/postmaster.pid") {
                _ = try? asPostgres(["pg_ctl", "-D", directory + "/data", "-m", "immediate", "-w", "stop"])
            }
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    @discardableResult
    private static func asPostgres(_ arguments: [String]) throws -> String {
        var arguments = arguments
        arguments[0] = binaries + "/" + arguments[0]
        return try Shell.run(["runuser", "-u", user, "--"] + arguments)
    }

    /// A port the kernel just handed out on loopback (bound to port 0, then closed).
    private static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ShellError(command: "socket", status: errno, output: String(cString: strerror(errno))) }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic -> Bool in
                bind(fd, generic, length) == 0 && getsockname(fd, generic, &length) == 0
            }
        }
        guard bound else { throw ShellError(command: "bind", status: errno, output: String(cString: strerror(errno))) }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
