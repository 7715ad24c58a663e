import FerryCopy
import FerryJobs
import FerrySystem
import Foundation

/// Cleans up after crashes: removes `.ferry-staging-*` directories whose task finished, failed, was
/// cancelled, or is unknown to the database and older than a grace period; and finishes or rolls
/// back tasks whose worker died (their lease expired) by running them here. It runs privileged
/// on directories users can change, so it opens them through no symlink at all.
public struct Janitor: Sendable {
    public struct Report: Sendable, Equatable {
        public var removed: [String] = []
        public var kept: [String] = []
        public var recovered: [String] = []
        /// What the task store put right beside its tables (`TaskStore.repair`), a sentence each.
        public var repaired: [String] = []
        /// Directories with a staging name that do not carry the mark Ferry gives the staging
        /// directories it makes (`StagingArea.markerAttribute`): left in place, whatever their
        /// task's state, since a name is all anyone with write access to the parent needs.
        public var unmarked: [String] = []
    }

    public let engine: MoveEngine
    public var grace: Duration

    public init(engine: MoveEngine, grace: Duration = .seconds(3600)) {
        self.engine = engine
        self.grace = grace
    }

    /// `directories`: where to look for staging directories besides the destinations the database
    /// knows (each directory itself and its immediate subdirectories are searched).
    public func run(directories: [ByteString] = [], dryRun: Bool = false, recover: Bool = true) async throws -> Report {
        var report = Report()
        // 1. Tasks whose worker died: resume them (or roll them back) now.
        if !dryRun && recover {
            let records = await Worker(engine: engine, concurrency: 2).run(once: true)
            report.recovered = records.map(\.id)
        }
        // 2. What the store keeps beside its tables (the SQLite store's lock markers).
        if !dryRun { report.repaired = try await engine.store.repair() }
        // 3. Staging directories no live task owns.
        var searched = Set<ByteString>()
        var places = directories
        // Every task's destination, page by page (a busy site has more than one page of history);
        // each also as its symlinks resolve (`/home` a link to `/gpfs/home`), since it is opened
        // below through no symlink. Resolving follows links users may have made, but the mark,
        // the privacy of the directory and its task's state still decide what is removed there.
        var page = TaskFilter(limit: 1_000)
        var destinations: [ByteString] = [], seen = Set<ByteString>()
        while true {
            let tasks = try await engine.store.list(page)
            for task in tasks {
                if let plan = task.plan, seen.insert(plan.destinationDirectory.bytes).inserted { destinations.append(plan.destinationDirectory.bytes) }
            }
            guard tasks.count == page.limit else { break }
            page.offset += page.limit
        }
        // Resolving reads the filesystem (a hung mount blocks it): off the cooperative pool.
        let known = destinations
        places += try await Blocking.run {
            known.flatMap { path in [path] + (BytePath.resolved(path).flatMap { $0 == path ? nil : [$0] } ?? []) }
        }
        var candidates: [(directory: ByteString, name: ByteString)] = []
        for place in places where searched.insert(place).inserted {
            candidates += Self.entries(named: StagingArea.prefix, in: place, depth: directories.contains(place) ? 1 : 0)
        }
        let cutoff = Date().addingTimeInterval(-Double(grace.components.seconds))
        for (directory, name) in candidates {
            let id = String(decoding: name.dropFirst(StagingArea.prefix.count), as: UTF8.self)
            let path = PathDisplay.string(BytePath.join(directory, name))
            // Only what Ferry made for this id is ever removed, whatever the task's state.
            let marking = (try? FileDescriptor.openDirectoryWithoutSymlinks(directory)).flatMap { fd -> StagingArea.Marking? in
                defer { fd.closeQuietly() }
                guard let staging = try? fd.openAt(name, [.directory, .noFollow]) else { return nil }
                defer { staging.closeQuietly() }
                return StagingArea.marking(of: staging, in: fd, id: id)
            }
            guard let marking else { continue }  // gone meanwhile, or not a directory
            guard marking == .copies || marking == .relinked else { report.unmarked.append(path); continue }
            let task = try await engine.store.task(id)
            let removable: Bool
            if task == nil && marking == .relinked {
                // A relink's files, of a task this database does not know (another database's,
                // or one that was lost): their only names are in there, so they stay.
                report.kept.append(path)
                continue
            } else if let task, marking == .relinked {
                // A relink's staging holds the only copy of what it moved: only empty directories
                // go. Known by the directory's own mark, not by the task's plan: a retry clears the
                // plan, and a replanned task may say "copy" over what a relink left there.
                if task.status.isTerminal && task.plan?.stoppedCommitting != true && !dryRun,
                   try await Self.unchanged(task, in: engine.store) {
                    try await Blocking.run {
                        let fd = try FileDescriptor.openDirectoryWithoutSymlinks(directory)
                        defer { fd.closeQuietly() }
                        let staging = try fd.openAt(name, [.directory, .noFollow])
                        defer { staging.closeQuietly() }
                        guard StagingArea.marking(of: staging, in: fd, id: id) == marking else { return }  // replaced since
                        _ = try CopyEngine(options: CopyOptions(jobs: 1)).removeEmptySkeleton([CopySource(directory: fd, name: name)])
                    }
                }
                let gone = (try? FileDescriptor.openDirectoryWithoutSymlinks(directory)).map { fd -> Bool in
                    defer { fd.closeQuietly() }
                    return (try? fd.status(name)) == nil
                } ?? false
                if gone { report.removed.append(path) } else { report.kept.append(path) }
                continue
            } else if let task {
                // A commit that stopped keeps what it has not yet published, for its retry.
                removable = task.status.isTerminal && task.plan?.stoppedCommitting != true
            } else {
                // Another database's task, or a lost one: gone once unchanged for the grace period
                // (a running task's heartbeat stamps its staging directory, `touchStaging`).
                let modified = (try? FileDescriptor.openDirectoryWithoutSymlinks(directory)).flatMap { fd -> Date? in
                    defer { fd.closeQuietly() }
                    return (try? fd.status(name)).map { Date(timeIntervalSince1970: Double($0.modificationTime.seconds)) }
                }
                removable = modified.map { $0 < cutoff } ?? false
            }
            guard removable else { report.kept.append(path); continue }
            if !dryRun {
                // Read again just before: a retry since the first read has a run that may be
                // staging into this very directory now.
                if let task, !(try await Self.unchanged(task, in: engine.store)) { report.kept.append(path); continue }
                let removed = try await Blocking.run { () -> Bool? in
                    let fd = try FileDescriptor.openDirectoryWithoutSymlinks(directory)
                    defer { fd.closeQuietly() }
                    let staging = try fd.openAt(name, [.directory, .noFollow])
                    // Its mark checked again, on the descriptor it is removed through: a directory
                    // renamed into its name since it was looked at (by anyone who may write
                    // there, with the mark copied onto one of theirs) is not Ferry's to remove.
                    guard StagingArea.marking(of: staging, in: fd, id: id) == marking else {
                        staging.closeQuietly()
                        return nil
                    }
                    do { try CopyEngine(options: CopyOptions(jobs: 2)).remove(StagingArea(parent: fd, name: name, directory: staging)) } catch {
                        return false
                    }
                    return (try? fd.status(name)) == nil
                }
                guard let removed else { report.unmarked.append(path); continue }
                guard removed else { report.kept.append(path); continue }  // not all of it could be removed, or it is another now
                if let task { try? await engine.store.record(task.id, message: "janitor removed its staging directory \(path)") }
            }
            report.removed.append(path)
        }
        // 4. A probe directory (`CopyEngine.refusesMarks`) that a process dying at that instant
        // left: removed with `rmdir` alone, which fails on any directory that is not empty, once
        // unchanged for the grace period.
        for place in searched {
            for (directory, name) in Self.entries(named: CopyEngine.probePrefix, in: place, depth: directories.contains(place) ? 1 : 0) {
                guard let fd = try? FileDescriptor.openDirectoryWithoutSymlinks(directory) else { continue }
                defer { fd.closeQuietly() }
                guard let status = try? fd.status(name), status.kind == .directory,
                      Date(timeIntervalSince1970: Double(status.modificationTime.seconds)) < cutoff else { continue }
                let path = PathDisplay.string(BytePath.join(directory, name))
                if dryRun {
                    let empty = (try? fd.openAt(name, [.directory, .noFollow])).map { probe -> Bool in
                        defer { probe.closeQuietly() }
                        do { return try DirectoryStream(probe).next() == nil } catch { return false }
                    } ?? false
                    if empty { report.removed.append(path) } else { report.kept.append(path) }
                } else if (try? fd.removeEntry(name, isDirectory: true)) != nil {
                    report.removed.append(path)
                } else {
                    report.kept.append(path)
                }
            }
        }
        return report
    }

    /// The janitor of a long-running worker or server: a pass every `interval` (the first after
    /// one interval), without recovering tasks (claiming does that), until cancelled. `onPass`
    /// hears each pass's report or error.
    public func repeating(every interval: Duration, directories: [ByteString] = [],
                          onPass: @Sendable (Result<Report, any Error>) -> Void = { _ in }) async {
        while !Task.isCancelled {
            do { try await Task.sleep(for: interval) } catch { return }
            if Task.isCancelled { return }
            do {
                onPass(.success(try await run(directories: directories, recover: false)))
            } catch {
                onPass(.failure(error))
            }
        }
    }

    /// Whether the task is still as it was read (status, attempts, last change), so that what was
    /// decided from that read still holds.
    static func unchanged(_ task: TaskRecord, in store: any TaskStore) async throws -> Bool {
        guard let now = try await store.task(task.id) else { return false }
        return now.status == task.status && now.attempts == task.attempts && now.updatedAt == task.updatedAt
    }

    /// Entries named `prefix…` in `directory`, and in its subdirectories down to `depth`.
    static func entries(named text: String, in directory: ByteString, depth: Int) -> [(ByteString, ByteString)] {
        guard let fd = try? FileDescriptor.openDirectoryWithoutSymlinks(directory) else { return [] }
        defer { fd.closeQuietly() }
        let stream = DirectoryStream(fd)
        var found: [(ByteString, ByteString)] = []
        var subdirectories: [ByteString] = []
        let prefix = Array(text.utf8)
        while let entry = try? stream.next() {
            if entry.name.starts(with: prefix) {
                found.append((directory, entry.name))
            } else if depth > 0, entry.kind == .directory {
                subdirectories.append(BytePath.join(directory, entry.name))
            }
        }
        for sub in subdirectories { found += entries(named: text, in: sub, depth: depth - 1) }
        return found
    }
}
