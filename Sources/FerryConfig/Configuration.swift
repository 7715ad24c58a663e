import FerryStorage
import FerrySystem
import Foundation

/// Ferry's configuration file (TOML). Today: the `lfs` program and the directories Ferry works in,
/// each with an optional display name and filesystem backend override:
///
///     lfs = "/usr/bin/lfs"
///     database = "postgres://ferry@db.example/ferry"
///
///     [[roots]]
///     path = "/lustre/projects"
///     name = "Projects"
///     backend = "lustre"      # auto | lustre | xfs | ext4 | posix
///     strategy = "relink"     # rename | relink | copy (default: the cheapest that works)
public struct FerryConfiguration: Equatable, Sendable {
    public struct Root: Equatable, Sendable {
        public var path: String
        public var name: String?
        public var backend: BackendChoice
        /// How moves into this root are made when the request does not say: "rename", "relink" or
        /// "copy" (nil: the cheapest the filesystem allows). "relink" suits Lustre 2.15+.
        public var strategy: String?
        public init(path: String, name: String? = nil, backend: BackendChoice = .auto, strategy: String? = nil) {
            self.path = path
            self.name = name
            self.backend = backend
            self.strategy = strategy
        }
    }

    public var lfsPath: String?
    public var roots: [Root]
    /// The task database URL (`FERRY_DATABASE_URL` and `--database` take precedence).
    public var database: String?
    /// `ferry serve`: listening address, authentication, engine settings.
    public var serve = ServeSettings()

    public init(lfsPath: String? = nil, roots: [Root] = [], database: String? = nil) {
        self.lfsPath = lfsPath
        self.roots = roots
        self.database = database
    }

    public struct Error: Swift.Error, CustomStringConvertible, Sendable {
        public var file: String
        public var message: String
        public var description: String { "\(file): \(message)" }
    }

    /// Reads and checks a configuration file. Unknown keys are errors (a typo must not be ignored).
    public static func load(file: String) throws(Error) -> FerryConfiguration {
        let text: String
        do { text = try String(contentsOfFile: file, encoding: .utf8) } catch {
            throw Error(file: file, message: "cannot be read: \(error.localizedDescription)")
        }
        do { return try parse(text) } catch let error as TOMLError {
            throw Error(file: file, message: error.description)
        } catch let error as Error {
            throw Error(file: file, message: error.message)
        } catch {
            throw Error(file: file, message: "\(error)")
        }
    }

    public static func parse(_ text: String) throws -> FerryConfiguration {
        let document = try TOMLParser.parse(text)
        var configuration = FerryConfiguration()
        for (key, value) in document.sorted(by: { $0.key < $1.key }) {  // one order: the same mistake reported each run
            switch key {
            case "lfs":
                guard let path = value.string, !path.isEmpty else { throw Error(file: "", message: "lfs must be the path of the lfs program (a non-empty string)") }
                configuration.lfsPath = path
            case "database":
                guard let url = value.string else { throw Error(file: "", message: "database must be a URL string: sqlite:///path or postgres://user@host/db") }
                configuration.database = url
            case "roots":
                guard let items = value.array else { throw Error(file: "", message: "roots must be an array of [[roots]] tables") }
                for item in items {
                    guard let table = item.table else { throw Error(file: "", message: "each root must be a [[roots]] table") }
                    configuration.roots.append(try root(table))
                }
                try checkDistinct(configuration.roots, origin: "")
            case _ where ServeSettings.keys.contains(key):
                try configuration.serve.read(key: key, value: value)
            default:
                throw Error(file: "", message: "unknown setting \(key)")
            }
        }
        return configuration
    }

    static func root(_ table: [String: TOMLValue]) throws -> Root {
        guard let written = table["path"]?.string else {
            throw Error(file: "", message: "each root needs an absolute path = \"/…\"")
        }
        let path = try normalRoot(written, origin: "")
        var root = Root(path: path)
        for (key, value) in table.sorted(by: { $0.key < $1.key }) {
            switch key {
            case "path": break
            case "name":
                guard let name = value.string else { throw Error(file: "", message: "root \(path): name must be a string") }
                root.name = name
            case "backend":
                guard let word = value.string, let backend = BackendChoice(rawValue: word) else {
                    throw Error(file: "", message: "root \(path): backend must be one of \(BackendChoice.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                root.backend = backend
            case "strategy":
                guard let word = value.string, ["rename", "relink", "copy"].contains(word) else {
                    throw Error(file: "", message: "root \(path): strategy must be rename, relink or copy")
                }
                root.strategy = word
            default:
                throw Error(file: "", message: "root \(path): unknown setting \(key)")
            }
        }
        return root
    }

    /// A root's path as the server compares it: absolute, repeated and trailing slashes dropped.
    /// A `.` or `..` component is refused rather than resolved: requests may not contain them, so
    /// a root spelled with one would match none (and the command line would still match it).
    static func normalRoot(_ written: String, origin: String) throws(Error) -> String {
        guard written.hasPrefix("/") else {
            throw Error(file: origin, message: "root \(written) is not an absolute path (it must start with /)")
        }
        let components = written.split(separator: "/", omittingEmptySubsequences: true)
        if components.contains(where: { $0 == "." || $0 == ".." }) {
            throw Error(file: origin, message: "root \(written) contains a . or .. component; write the directory's path without them")
        }
        if written.utf8.contains(0) { throw Error(file: origin, message: "root \(written) contains a NUL character") }
        return "/" + components.joined(separator: "/")
    }

    /// Two roots naming one directory: the deeper-root rule could keep only one of their names,
    /// backends and strategies, and which silently; refused instead.
    static func checkDistinct(_ roots: [Root], origin: String) throws(Error) {
        var seen = Set<[UInt8]>()
        for root in roots where !seen.insert(Array(root.path.utf8)).inserted {
            throw Error(file: origin, message: "root \(root.path) is configured twice; keep one [[roots]] table for it")
        }
    }

    /// The backend configured for `path` (absolute): that of the deepest root containing it,
    /// either spelled as given or with symlinks resolved (this reads the filesystem).
    public func backend(for path: String) -> BackendChoice {
        root(containing: path, resolvingSymlinks: true)?.backend ?? .auto
    }

    /// The storage backend for an open path: `choice` (a command's `--backend`), else that of the
    /// deepest configured root containing the path with its symlinks resolved; the `lfs` program is
    /// `lfs`, else `FERRY_LFS`, else the configured one.
    public func storageBackend(for fd: FileDescriptor, path: ByteString, choice: BackendChoice? = nil, lfs: String? = nil,
                               environment: Environment = .process) throws(StorageError) -> any StorageBackend {
        let configured: BackendChoice
        if choice != nil || roots.isEmpty {
            configured = .auto  // nothing to match the path against
        } else {
            configured = backend(for: String(decoding: path, as: UTF8.self))
        }
        return try Storage.backend(for: fd, choice: choice ?? configured, lfsPath: lfsProgram(lfs, environment: environment))
    }

    /// The `lfs` program: a command's `--lfs`, else `FERRY_LFS`, else the configured one; an empty
    /// value is an unset one (an `Environment=FERRY_LFS=` line must not hide the configured path).
    public func lfsProgram(_ explicit: String? = nil, environment: Environment = .process) -> String? {
        [explicit, environment["FERRY_LFS"], lfsPath].lazy.compactMap { $0 }.first { !$0.isEmpty }
    }

    /// The deepest root containing `path`, by the spelling of the root that matched. With
    /// `resolvingSymlinks`, the path and each root are taken as written and with their symlinks
    /// resolved, so that a root configured as `/projects`, a symlink to `/lustre/projects`, is
    /// found for either spelling of a path beneath it (the backend override and the strategy ask
    /// with whichever they hold). That reads the filesystem, which a hung mount can block: the
    /// server, which must not, compares the strings alone. Not an access check: paths are kept
    /// beneath the roots by `ServerPath` and the resolver.
    public func root(containing path: String, resolvingSymlinks: Bool = false) -> Root? {
        let paths = resolvingSymlinks ? Self.spellings(path) : [path]
        var deepest: (root: Root, depth: Int)?
        for root in roots {
            for top in resolvingSymlinks ? Self.spellings(root.path) : [root.path]
            where paths.contains(where: { $0 == top || top == "/" || $0.hasPrefix(top + "/") }) && top.count > (deepest?.depth ?? -1) {
                deepest = (root, top.count)
            }
        }
        return deepest?.root
    }

    static func spellings(_ path: String) -> Set<String> {
        [path, URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().path]
    }

    /// `--config`, else `FERRY_CONFIG`, else `$XDG_CONFIG_HOME/ferry/ferry.toml` or
    /// `/etc/ferry/ferry.toml` when they exist; none at all is an empty configuration.
    public static func locate(explicit: String?, environment: Environment = .process) -> String? {
        if let explicit { return explicit }
        if let configured = environment["FERRY_CONFIG"], !configured.isEmpty { return configured }
        // An empty variable is an unset one (XDG Base Directory specification).
        let home = environment["XDG_CONFIG_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? environment["HOME"].map { $0 + "/.config" }
        for candidate in [home.map { $0 + "/ferry/ferry.toml" }, "/etc/ferry/ferry.toml"].compactMap({ $0 }) where access(candidate, F_OK) == 0 {
            return candidate
        }
        return nil
    }
}
