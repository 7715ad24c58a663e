import FerryCopy
import FerryJobs
import FerrySystem
import Foundation

/// What is staged is not to be trusted, and nothing of it has been published: the next attempt
/// copies everything again instead of resuming.
struct StagingUntrusted: Error, CustomStringConvertible {
    enum Reason: Sendable {
        /// Flushing it failed: a staged file may have lost data the kernel could not write back.
        case flushFailed(path: String, SystemError)
        /// The staging directory is gone (removed by hand, or by a janitor that took the task for
        /// a dead one).
        case gone(stagingName: String)
    }
    var reason: Reason
    var description: String {
        switch reason {
        case .flushFailed(let path, let error): "flushing the staged copy to disk failed: \(CopyError.system(path: path, error))"
        case .gone(let name): "the staging directory \(name) was removed before its copy was published"
        }
    }
    var systemCode: SystemError.Code? {
        if case .flushFailed(_, let error) = reason { return error.code }
        return nil
    }
}

/// The commit phase: publish what is staged, then remove the source, entry by entry; and the
/// commit of the `rename` strategy. Each step can be run again by recovery.
extension MoveEngine {
    /// Whether a failed flush now sends the task back to copying: a copy with every final name
    /// still in staging. (A function of its own: written in `publishAndCheck`, this crashes the
    /// 6.3 compiler's SIL ownership check.)
    private static func untrustingFlush(_ plan: TaskPlan, _ staging: StagingArea) -> Bool {
        plan.strategy == Strategy.copy.rawValue && plan.finalNames.allSatisfy { (try? staging.directory.status($0.bytes)) != nil }
    }

    /// What is neither staged nor published was never published: the staging directory went before
    /// it was (removed by hand, or by a janitor that took the task for a dead one). If none of it
    /// was, a copy is made again (`StagingUntrusted`); otherwise the task says what is missing.
    private static func checkPublished(_ plan: TaskPlan, in destination: FileDescriptor) throws {
        var missing: [StoredPath] = []
        for final in plan.finalNames {
            do { _ = try destination.status(final.bytes) } catch {
                guard error.code == .notFound else { throw error }
                missing.append(final)
            }
        }
        guard let first = missing.first else { return }
        if missing.count == plan.finalNames.count && !plan.deletingSource && plan.strategy == Strategy.copy.rawValue {
            throw StagingUntrusted(reason: .gone(stagingName: plan.stagingName.description))
        }
        throw Refusal(code: "staging.missing", message: "\(first) is neither in the staging directory nor in \(plan.destinationDirectory): "
            + "the staging directory was removed before it was published; "
            + (plan.deletingSource ? "the source was being deleted — check what is left of it"
                                   : "nothing was deleted from the source, which still holds everything — remove what of it was published in "
                                     + "\(plan.destinationDirectory), then retry the task"))
    }

    /// Commit, idempotent so that recovery can run it again: publish each staged item that is still
    /// in staging (never replacing), fsync the destination; for a move, verify the published copy
    /// against the source once more. Returns whether source entries remain to be deleted.
    func publishAndCheck(_ task: TaskRecord, _ plan: TaskPlan) throws -> Bool {
        let destination = try DirectoryOpener(roots: settings.roots).openDirectoryClosingRoots(plan.destinationDirectory.bytes)
        defer { destination.closeQuietly() }
        let engine = copyEngine(task, RunContext(task: task, worker: runName(task)))  // not cancellable any more
        let id = String(plan.stagingName.description.dropFirst(StagingArea.prefix.count))
        if let staging = try engine.openStaging(in: destination, id: id, relink: plan.strategy == Strategy.relink.rawValue) {
            defer { staging.directory.closeQuietly() }
            // A failed flush before the first publish sends the task back to copying; after it,
            // what is published was flushed before it was, and the rest is retried from here.
            let untrusting = Self.untrustingFlush(plan, staging)
            try Self.flush(staging, engine, untrusting: untrusting)
            for final in plan.finalNames {
                guard (try? staging.directory.status(final.bytes)) != nil else { continue }  // published before a crash
                do {
                    try CopyEngine.publishOne(from: staging, final.bytes)
                } catch {
                    if error.code == .exists {
                        throw Refusal(code: "destination.exists", message: "\(final) appeared in the destination while the copy was being made; nothing was replaced — remove it and retry")
                    }
                    throw error
                }
            }
            try destination.sync()
            try? destination.removeEntry(plan.stagingName.bytes, isDirectory: true)
        }
        try Self.checkPublished(plan, in: destination)
        guard task.kind == .move else { return false }
        if plan.strategy == Strategy.relink.rawValue {
            // The source is a skeleton of empty directories: remove those, never anything else.
            let skeleton = try remainingSources(task, plan)
            defer { skeleton.forEach { $0.directory.closeQuietly() } }
            let survivors = try engine.removeEmptySkeleton(skeleton)
            for source in skeleton { try source.directory.sync() }
            if !survivors.isEmpty {
                throw Refusal(code: "source.changed", message: "\(survivors.count) entries were written into the source while it was moved (\(survivors.prefix(3).joined(separator: ", "))); they were left in place")
            }
            return false
        }
        let present = try remainingSources(task, plan)
        defer { present.forEach { $0.directory.closeQuietly() } }
        guard !present.isEmpty else { return false }
        // Once the deletion has begun, what is left of the source is checked entry by entry as it
        // goes (`deleteSources`). Before, the published copy must still match the whole source:
        // a source changed since it was copied is not deleted at all.
        guard !plan.deletingSource else { return true }
        let published = StagingArea(parent: destination, name: [], directory: destination)
        Self.restoreReadOnlyModes(present, publishedIn: destination)
        do {
            try engine.verify(present, in: published)
        } catch .sourceChanged(let path, let detail) {
            throw Refusal(code: "source.changed", message: "\(path) changed after it was copied (\(detail)); the copy was published in "
                + "\(plan.destinationDirectory) and nothing was deleted from the source: compare the two, then remove the source by hand")
        } catch .verificationFailed(let differences) {
            throw Refusal(code: "source.changed", message: "the published copy no longer matches the source (\(CopyError.verificationFailed(differences: differences))); "
                + "nothing was deleted from the source: compare the two in \(plan.destinationDirectory), then remove the source by hand")
        }
        return true
    }

    /// A read-only directory is given owner write for its publishing rename (`CopyEngine.
    /// renameNoReplace`), and its mode back right after; a run that ended between the two left it
    /// writable. Put back here, before the copy is verified against the source, which would take
    /// the difference for a changed source: only owner write, only where the source lacks it.
    static func restoreReadOnlyModes(_ sources: [CopySource], publishedIn destination: FileDescriptor) {
        for source in sources {
            guard let original = try? source.directory.status(source.name), original.kind == .directory, original.permissions & 0o200 == 0,
                  let copy = try? destination.status(source.destinationName), copy.kind == .directory,
                  copy.permissions == original.permissions | 0o200, copy.uid == geteuid() else { continue }
            try? destination.changeDirectoryMode(source.destinationName, permissions: original.permissions)
        }
    }

    /// Deletes the source entries whose published copy holds the same, and makes each deletion
    /// durable. Whatever was written into the source after it was verified stays, and the task
    /// says where.
    func deleteSources(_ task: TaskRecord, _ plan: TaskPlan) throws {
        let engine = CopyEngine(options: CopyOptions(jobs: task.options.jobs ?? settings.jobs))
        let destination = try DirectoryOpener(roots: settings.roots).openDirectoryClosingRoots(plan.destinationDirectory.bytes)
        defer { destination.closeQuietly() }
        let present = try remainingSources(task, plan)
        defer { present.forEach { $0.directory.closeQuietly() } }
        // All in one walk: a file with names under two sources is one inode, whose first name's
        // removal its other's check must know of (`VerifiedRemoveVisitor`).
        let left = try engine.removeMoved(present, publishedIn: destination)
        for source in present { try source.directory.sync() }
        let (count, survivors) = (left.count, left.first)
        if count > 0 {
            throw Refusal(code: "source.changed", message: "\(count) entries were written into the source after it was verified "
                + "(\(survivors.prefix(3).joined(separator: ", "))\(count > 3 ? ", …" : "")): they were left in place, everything else was moved "
                + "to \(plan.destinationDirectory)")
        }
    }

    /// The sources that still exist (all of them, until a deletion has begun).
    func remainingSources(_ task: TaskRecord, _ plan: TaskPlan) throws -> [CopySource] {
        try sources(task, plan).filter { source in
            if (try? source.directory.status(source.name)) != nil { return true }
            source.directory.closeQuietly()
            return false
        }
    }

    func commitRename(_ task: TaskRecord) throws {
        guard let plan = task.plan else { return }
        let destination = try DirectoryOpener(roots: settings.roots).openDirectoryClosingRoots(plan.destinationDirectory.bytes)
        defer { destination.closeQuietly() }
        // A source whose directory is gone was renamed before a crash, or was lost: the
        // destination says which. Any other failure to open them (permission, a stale handle)
        // says nothing of where they are, and is thrown as it is.
        let sources = try self.sources(task, plan, skippingGoneDirectories: true)
        defer { sources.forEach { $0.directory.closeQuietly() } }
        try Self.rename(sources, into: destination)
        let missing = plan.finalNames.filter { (try? destination.status($0.bytes)) == nil }
        if !missing.isEmpty {
            throw Refusal(code: "source.missing", message: "\(missing.map(\.description).joined(separator: ", ")) is neither at its source "
                + "nor in \(plan.destinationDirectory): it was moved or removed by something else, and nothing was renamed for it")
        }
    }
}
