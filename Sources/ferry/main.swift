// `ferry`: a small, statically linked front end to `ferry-engine`, the program that has every
// command. It does one thing itself: `ferry move SRC... DEST` with no options when a rename does
// it (same filesystem and project) and no task holds a lock on its paths — the move `mv` makes,
// made durable, at close to `mv`'s cost. That answer comes from the same code the engine uses
// (`Transfer`, `Planner.choose`, the lock table, `MoveEngine.renameWithoutTaskNow`).
//
// Everything else — any other command, any option, a move that needs a task, anything this
// program cannot decide — is handed over with exec: same arguments, process id, descriptors and
// environment, so the engine sees exactly what `ferry` was given. Nothing is decided twice: the
// front end either renamed, or changed nothing before it handed over.
//
// Why a second program: the engine links the web server, PostgreSQL, PAM and the copy engine
// (180 MB), and starting it costs 6–7 ms before it reads its arguments; `mv` takes 1.3 ms.
// This one is linked statically (no loader, no relocations) and starts in under 1 ms. It has a
// synchronous main on purpose: an async main ends in `pthread_exit`, whose unwinder sorts every
// frame description of a static binary first (50 ms).
import FerryConfig
import FerryJobs
import FerryMove
import FerrySystem
import Foundation

/// The paths of `ferry move PATH... PATH` when it has no options (a `--` ends options), else nil.
func plainMove(_ arguments: [String]) -> [String]? {
    guard arguments.count >= 4, arguments[1] == "move" else { return nil }
    var paths: [String] = []
    var optionsEnded = false
    for argument in arguments.dropFirst(2) {
        if !optionsEnded && argument == "--" { optionsEnded = true; continue }
        if !optionsEnded && argument.hasPrefix("-") { return nil }
        paths.append(argument)
    }
    return paths.count >= 2 ? paths : nil
}

/// Renames `paths` (sources, then the destination) when one durable rename does the whole move, and
/// exits. Returns, having changed nothing, when the engine should take the request.
func renameIfThatIsAll(_ paths: [String]) {
    guard let configuration = try? FerryConfiguration.locate(explicit: nil).map({ try FerryConfiguration.load(file: $0) }) ?? FerryConfiguration(),
          case .sqlite(let path)? = try? DatabaseURL.choose(explicit: nil, configured: configuration.database),
          // Named (variable or configuration), the file is used as it is, never another (as the engine does).
          let database = try? DatabaseURL.usableSQLitePath(path, explicit: !(Environment.process["FERRY_DATABASE_URL"] ?? "").isEmpty
                                                                    || configuration.database != nil)
    else { return }
    let bytes = paths.map { ProcessArguments.pathBytes($0) }
    guard let transfer = try? Transfer(sources: Array(bytes.dropLast()), destination: bytes[bytes.count - 1]) else { return }
    var planner = Planner { fd, path in try configuration.storageBackend(for: fd, path: path) }
    planner.configuredStrategy = { path in configuration.root(containing: String(decoding: path, as: UTF8.self), resolvingSymlinks: true)?.strategy }
    let published: [ByteString]?
    do {
        published = try MoveEngine.renameWithoutTaskNow(transfer, options: TaskOptions(), planner: planner) {
            try SQLiteTaskStore.heldLocks(atPath: database)  // unreadable: handed over (nil), and the engine says why
        }
    } catch {
        let problem = MoveEngine.renameProblem(error)
        Console.standardError("ferry move: \(problem.message)\n\(problem.outcome)\n")
        exit(problem.refused ? 3 : 1)
    }
    guard published != nil else { return }
    Console.standardError(MoveEngine.renamedMessage + "\n")
    exit(0)
}

/// Replaces this process with the engine: `FERRY_ENGINE`, else `ferry-engine` beside this program,
/// given this process's own argument vector (its bytes, whatever their encoding).
func handOver() -> Never {
    let engine: String
    if let configured = Environment.process["FERRY_ENGINE"], !configured.isEmpty {
        engine = configured
    } else {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &buffer, Int(PATH_MAX))
        let me = length > 0 ? buffer[..<length].map { UInt8(bitPattern: $0) } : ProcessArguments.bytes.first ?? []
        engine = String(decoding: BytePath.join(BytePath.split(me).parent, Array("ferry-engine".utf8)), as: UTF8.self)
    }
    execv(engine, CommandLine.unsafeArgv)
    let reason = String(cString: strerror(errno))
    Console.standardError("ferry: cannot start the Ferry engine \(engine) (\(reason)); install ferry-engine beside ferry, or set FERRY_ENGINE to its path\n")
    exit(1)
}

// As text that gives back the bytes of each path (`ProcessArguments`): a name need not be UTF-8.
if let paths = plainMove(ProcessArguments.text) { renameIfThatIsAll(paths) }
handOver()
