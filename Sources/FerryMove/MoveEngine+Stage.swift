import FerryCopy
import FerryJobs
import FerrySystem
import Foundation

/// The stage and verify phases' work on the filesystem: copying (or relinking) into the staging
/// directory, removing a staging not to be trusted, verifying and flushing what is staged.
extension MoveEngine {
    /// Stage: copy into `.ferry-staging-<task>` beside the destination; a staging directory left by
    /// an earlier attempt is continued, not started over.
    /// Returns what the copy could not preserve (nil for a relink).
    func stage(_ task: TaskRecord, _ plan: TaskPlan, _ context: RunContext) throws -> CopyNotes? {
        let sources = try self.sources(task, plan)
        defer { sources.forEach { $0.directory.closeQuietly() } }
        let destination = try DirectoryOpener(roots: settings.roots).openDirectoryClosingRoots(plan.destinationDirectory.bytes)
        defer { destination.closeQuietly() }
        let engine = copyEngine(task, context, layouts: try layoutCloner(destination, plan.destinationDirectory, sources: sources))
        let id = String(plan.stagingName.description.dropFirst(StagingArea.prefix.count))
        let existing = try engine.openStaging(in: destination, id: id, relink: plan.strategy == Strategy.relink.rawValue)
        let staging = try existing ?? engine.createStaging(in: destination, id: id, relink: plan.strategy == Strategy.relink.rawValue)
        defer { staging.directory.closeQuietly() }
        var totals = TreeMeasurement()
        totals.bytes = plan.bytes
        totals.entries = plan.entries
        if plan.strategy == Strategy.relink.rawValue {
            try engine.relink(sources, into: staging, totals: totals)
            return nil
        }
        let staged: (bytes: UInt64, entries: UInt64, notes: CopyNotes)
        do {
            staged = try engine.stage(sources, into: staging, totals: totals, resume: existing != nil, discardOnFailure: false)
        } catch {
            // A passing fault is retried from what is staged, and a stopping worker's task is
            // resumed from it by the next: what this attempt wrote is flushed first, for the
            // same reason as below, so that a file the kernel failed to write back is not
            // trusted by the next attempt (which copies everything again if this fails).
            if Self.isTransient(error) || shutdown.isCancelled { try Self.flush(staging, engine) }
            throw error
        }
        // Flushed through a descriptor opened before the writes: `syncfs` reports a write-back
        // error only to descriptors opened before it happened, so the flush of the next phase,
        // on a descriptor of its own, could miss one that happened during the copy.
        try Self.flush(staging, engine)
        return staged.notes
    }

    /// Removes what a copy staged before, whole, or throws.
    func discardStaged(_ task: TaskRecord, _ plan: TaskPlan, _ context: RunContext) throws {
        let destination = try DirectoryOpener(roots: settings.roots).openDirectoryClosingRoots(plan.destinationDirectory.bytes)
        defer { destination.closeQuietly() }
        let id = String(plan.stagingName.description.dropFirst(StagingArea.prefix.count))
        let engine = copyEngine(task, context)
        guard let stale = try engine.openStaging(in: destination, id: id, relink: false) else { return }
        try engine.remove(stale)
        // What the removed files still had to write back, and their removal, is flushed now: an
        // error in that (FUSE reports the removal of a file whose times it had not yet sent as
        // ESTALE) is about them, and not to fail the new copy's flush.
        try? destination.syncFilesystem()
    }

    func verifyAndFlush(_ task: TaskRecord, _ plan: TaskPlan, _ context: RunContext) throws {
        let sources = try self.sources(task, plan)
        defer { sources.forEach { $0.directory.closeQuietly() } }
        let destination = try DirectoryOpener(roots: settings.roots).openDirectoryClosingRoots(plan.destinationDirectory.bytes)
        defer { destination.closeQuietly() }
        let engine = copyEngine(task, context)
        let id = String(plan.stagingName.description.dropFirst(StagingArea.prefix.count))
        guard let staging = try engine.openStaging(in: destination, id: id, relink: plan.strategy == Strategy.relink.rawValue) else {
            if plan.strategy == Strategy.copy.rawValue { throw StagingUntrusted(reason: .gone(stagingName: plan.stagingName.description)) }
            throw Refusal(code: "staging.missing", message: "the staging directory \(plan.stagingName) is gone, and with it what was relinked into it")
        }
        defer { staging.directory.closeQuietly() }
        if plan.strategy == Strategy.relink.rawValue {
            try verifyRelinked(sources, staging: staging, plan: plan, engine: engine)
        } else {
            var totals = TreeMeasurement()
            totals.bytes = plan.bytes
            totals.entries = plan.entries
            try engine.verify(sources, in: staging, totals: totals)
        }
        try Self.flush(staging, engine)
    }

    /// Flushes what is staged; a failure is `StagingUntrusted` (unless `untrusting` is false, once
    /// something is published), which makes the next attempt copy again instead of trusting what
    /// it finds.
    static func flush(_ staging: StagingArea, _ engine: CopyEngine, untrusting: Bool = true) throws {
        let failure: CopyError
        do { try engine.flush(staging); return } catch { failure = error }
        if untrusting, case .system(let path, let error) = failure { throw StagingUntrusted(reason: .flushFailed(path: path, error)) }
        throw failure
    }

    /// A relinked tree is the source's own inodes under new names: it must hold exactly what the
    /// plan measured, every directory in it finished, and the source must be left a skeleton of
    /// directories (anything else there was written during the move).
    func verifyRelinked(_ sources: [CopySource], staging: StagingArea, plan: TaskPlan, engine: CopyEngine) throws {
        let staged = sources.map { CopySource(directory: staging.directory, name: $0.destinationName) }
            .filter { (try? staging.directory.status($0.name)) != nil }
        // Checks, not the pre-flight measurement: not shown as a measuring phase.
        let measured = try engine.measure(staged, reporting: false)
        let skeleton = try engine.measure(sources.filter { (try? $0.directory.status($0.name)) != nil }, reporting: false)
        let leftover = skeleton.entries - skeleton.directories
        if leftover > 0 {
            throw CopyError.sourceChanged(path: sources.first.map { PathDisplay.string($0.name) } ?? "", detail: "\(leftover) entries appeared in the source while it was being relinked")
        }
        // A staged directory never finished (its source directory was removed between attempts)
        // still has the staging's mode and Ferry's origin on it: not something to publish.
        let unfinished = try engine.unfinishedRelinkedDirectories(staged)
        if let first = unfinished.first {
            throw CopyError.sourceChanged(path: first, detail: "\(unfinished.count) of its directories were removed from the source while it was being relinked")
        }
        if measured.entries != plan.entries || measured.bytes != plan.bytes {
            throw CopyError.verificationFailed(differences: [CopyError.Difference(
                path: plan.stagingName.description,
                what: "\(measured.entries) entries and \(measured.bytes) bytes relinked; the plan measured \(plan.entries) and \(plan.bytes)")])
        }
    }
}
