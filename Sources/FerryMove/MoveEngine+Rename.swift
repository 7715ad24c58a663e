import FerryCopy
import FerryJobs
import FerrySystem

/// Renames: the commit of the `rename` strategy, and a move that is one rename done without a task.
extension MoveEngine {
    /// Renames each source still present into the destination without replacing anything, then
    /// makes the renames durable: every directory a rename touched is fsynced once, after all of
    /// them (a rename within one directory needs that directory's one fsync). A rename that fails
    /// after others succeeded still has those made durable before the error is reported.
    static func rename(_ sources: [CopySource], into destination: FileDescriptor) throws {
        var touched: [(id: FileID, directory: FileDescriptor)] = [(try destination.status().fileID, destination)]
        func syncTouched() throws {
            for (_, directory) in touched { try directory.sync() }
        }
        do {
            for source in sources where (try? source.directory.status(source.name)) != nil {
                let directory = try source.directory.status().fileID
                do {
                    try FerrySystem.rename(from: source.directory, source.name, to: destination, source.destinationName, flags: .noReplace)
                } catch {
                    if error.code == .exists {
                        throw Refusal(code: "destination.exists", message: "\(source.destinationName.displayString) exists already; nothing was replaced")
                    }
                    if error.code == .crossDevice {
                        throw Refusal(code: "strategy.rename.exdev", message: "the kernel refused the rename (EXDEV); retry to copy instead")
                    }
                    if error.code == .permissionDenied || error.code == .notPermitted {
                        // A rename is all or nothing: refused, it changed nothing, and retrying will not help.
                        throw Refusal(code: "permission.denied", message: "the kernel refused to rename \(source.name.displayString) (\(error.errnoName)): you may not move it")
                    }
                    throw error
                }
                if !touched.contains(where: { $0.id == directory }) { touched.append((directory, source.directory)) }
            }
        } catch {
            try? syncTouched()
            throw error
        }
        try syncTouched()
    }

    // MARK: a move that is one rename

    /// Moves by `renameat2(RENAME_NOREPLACE)` alone, without recording a task, when the pre-flight
    /// check finds that a rename will do it and no task holds a lock on any of its paths. A rename
    /// is atomic and durable once its directories are fsynced, so a crash leaves each source either
    /// where it was or published — there is nothing for a task record to recover, and writing one
    /// (a task, a claim, phases, history: several database commits) would cost far more than the
    /// rename itself. Returns the published paths, or nil when the request needs a task: any other
    /// verdict (a copy, a relink, a refusal, which the task records and reports), a path locked by a
    /// task (which the task path waits for or refuses), or a rename the kernel refuses with EXDEV
    /// before anything moved.
    ///
    /// A task that locks one of these paths after the check finds the source gone or the name
    /// taken when it gets there, and fails cleanly: renames never lose data.
    ///
    /// `transfer`: the request's paths, opened. `heldLocks` reads the locks tasks hold now; it is
    /// called only when a rename will do.
    public static func renameWithoutTask(_ transfer: Transfer, options: TaskOptions, planner: Planner,
                                         heldLocks: () async throws -> [PathLock]) async throws -> [ByteString]? {
        guard try await Blocking.run({ try renameWillDo(transfer, options: options, planner: planner) }) else { return nil }
        // A lock table that cannot be read sends the request down the task path, which says why.
        guard let held = try? await heldLocks(), !conflicts(transfer, held) else { return nil }
        return try await Blocking.run { try publishWithoutTask(transfer) }
    }

    /// `renameWithoutTask` on the calling thread, for a process that has nothing else to do (the
    /// `ferry` front end, which must not start a concurrency runtime to rename one file).
    public static func renameWithoutTaskNow(_ transfer: Transfer, options: TaskOptions, planner: Planner,
                                            heldLocks: () throws -> [PathLock]) throws -> [ByteString]? {
        guard try renameWillDo(transfer, options: options, planner: planner) else { return nil }
        guard let held = try? heldLocks(), !conflicts(transfer, held) else { return nil }
        return try publishWithoutTask(transfer)
    }

    /// The planner's verdict, without measuring the tree: a move that needs a task (a copy, a
    /// relink, a refusal) measures it once, in the task.
    static func renameWillDo(_ transfer: Transfer, options: TaskOptions, planner: Planner) throws -> Bool {
        guard options.strategy == nil || options.strategy == Strategy.rename.rawValue else { return false }
        guard case .chosen(.rename, _, _, _) = try planner.choose(kind: .move, transfer: transfer, options: options) else { return false }
        return true
    }

    static func conflicts(_ transfer: Transfer, _ held: [PathLock]) -> Bool {
        guard let wanted = try? locks(for: transfer, taskID: "") else { return true }
        return held.contains { lock in wanted.contains { $0.conflicts(with: lock) } }
    }

    static func publishWithoutTask(_ transfer: Transfer) throws -> [ByteString]? {
        do {
            try Self.rename(transfer.sources, into: transfer.destination)
        } catch {
            // The sources renamed before the one that failed are published, and stay so.
            let moved = zip(transfer.sources, transfer.finalPaths).filter { (try? $0.0.directory.status($0.0.name)) == nil }.map(\.1)
            if moved.isEmpty, let refusal = error as? Refusal, refusal.code == "strategy.rename.exdev" {
                // Refused before anything moved (the first rename): the task path copies instead.
                return nil
            }
            if !moved.isEmpty { throw PartlyRenamed(moved: moved, cause: error) }
            throw error
        }
        return transfer.finalPaths
    }

    /// A task-less move of several sources that failed after renaming some of them.
    struct PartlyRenamed: Error, CustomStringConvertible {
        var moved: [ByteString]
        var cause: any Error
        var description: String { "\(cause)" }
    }

    /// What `ferry move` says after a task-less rename.
    public static let renamedMessage = "renamed (same filesystem and project: nothing to copy)"

    /// How a task-less rename that failed is reported: a refusal (exit 3) or a failure (exit 1),
    /// with a stable code and a message, the sources that were renamed before it failed (their
    /// new paths), and the line that says so: "nothing was moved" when none were.
    public static func renameProblem(_ error: any Error) -> (refused: Bool, code: String, message: String, moved: [ByteString], outcome: String) {
        if let partly = error as? PartlyRenamed {
            let problem = renameProblem(partly.cause)
            let names = partly.moved.map(\.displayString).joined(separator: ", ")
            return (problem.refused, problem.code, problem.message, partly.moved, "moved before that: \(names); nothing else was moved")
        }
        if let refusal = error as? Refusal { return (true, refusal.code, refusal.message, [], "nothing was moved") }
        let failure = MoveEngine.failure(for: error)
        return (false, failure.code, failure.message, [], "nothing was moved")
    }
}
