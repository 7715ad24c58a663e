import FerryJobs
import FerryMove
import FerrySystem
import Foundation

/// A task as the API and the pages show it: the record plus what people want to read off it
/// (percent, ETA, a one-line summary).
public struct TaskView: Codable, Sendable {
    public struct ProgressView: Codable, Sendable {
        public var bytesDone: UInt64
        public var bytesTotal: UInt64
        public var entriesDone: UInt64
        public var entriesTotal: UInt64
        public var bytesPerSecond: Double
        public var percent: Double
        @Nullable public var etaSeconds: Double?
    }
    public struct ErrorView: Codable, Sendable { public var code: String; public var message: String }
    public struct EventView: Codable, Sendable { public var at: String; public var status: String; public var message: String }

    public var id: String
    public var kind: String
    public var status: String
    public var owner: String
    public var sources: [String]
    public var destination: String
    @Nullable public var strategy: String?
    public var attempts: Int
    public var cancelRequested: Bool
    /// Runs with the server's privileges rather than its owner's (an administrator's request).
    public var privileged: Bool
    public var progress: ProgressView
    @Nullable public var error: ErrorView?
    public var createdAt: String
    public var updatedAt: String
    @Nullable public var finishedAt: String?
    public var terminal: Bool
    public var summary: String
    /// Why a task part way through moves no further now, for people: its worker stopped without
    /// handing it back, or no worker holds it (handed back to wait or to be retried). Its rate and
    /// time left are then not shown: they would be the last run's, frozen.
    @Nullable public var note: String?
    public var events: [EventView]?

    public init(_ task: TaskRecord, events: [TaskEvent]? = nil) {
        let p = Self.progress(task)
        let percent: Double
        if p.bytesTotal > 0 {
            percent = min(100, Double(p.bytesDone) * 100 / Double(p.bytesTotal))
        } else if p.entriesTotal > 0 {
            percent = min(100, Double(p.entriesDone) * 100 / Double(p.entriesTotal))
        } else {
            percent = task.status == .completed ? 100 : 0
        }
        let note = task.stallDescription() ?? task.waitingDescription()
        // A rate and a time left only for work under way and counted as it goes (measuring,
        // staging): a later phase's are its own checks', beside a bar already full.
        let live = note == nil && task.leaseOwner != nil && [.validating, .copying].contains(task.status)
        let eta = live ? p.secondsRemaining : nil
        id = task.id
        kind = task.kind.rawValue
        status = task.status.rawValue
        owner = task.owner
        sources = task.sources.map { PathText.encode($0.bytes) }
        destination = PathText.encode(task.destination.bytes)
        strategy = task.plan?.strategy
        attempts = task.attempts
        cancelRequested = task.cancelRequested
        privileged = task.options.privileged
        progress = ProgressView(bytesDone: p.bytesDone, bytesTotal: p.bytesTotal, entriesDone: p.entriesDone, entriesTotal: p.entriesTotal,
                                bytesPerSecond: live ? p.bytesPerSecond : 0, percent: (percent * 10).rounded(.down) / 10, etaSeconds: eta)
        error = task.failure.map { ErrorView(code: $0.code, message: $0.message) }
        createdAt = Self.iso(task.createdAt)
        updatedAt = Self.iso(task.updatedAt)
        finishedAt = task.finishedAt.map(Self.iso)
        terminal = task.status.isTerminal
        summary = Self.summary(task)
        self.note = note
        self.events = events?.map { EventView(at: Self.iso($0.at), status: $0.status.rawValue, message: $0.message) }
    }

    /// What the progress bar shows: the staging (copy or relink) of the data. Once that is done
    /// (verifying, committing, completed) the engine's counters describe the later phases' own
    /// work, so the bar stays full at the plan's figures instead of starting again.
    static func progress(_ task: TaskRecord) -> TaskProgress {
        guard let plan = task.plan, [.verifying, .committing, .completed].contains(task.status) else { return task.progress }
        return TaskProgress(bytesDone: plan.bytes, bytesTotal: plan.bytes, entriesDone: plan.entries, entriesTotal: plan.entries,
                            bytesPerSecond: task.progress.bytesPerSecond)
    }

    static func iso(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    static func summary(_ task: TaskRecord) -> String {
        let p = task.progress
        let verb = task.kind == .move ? "Moving" : "Copying"
        switch task.status {
        case .pending: return task.cancelRequested ? "Cancelling" : "Waiting for a worker"
        case .validating:
            guard task.isBeingMeasured else { return "Checking paths, space and quota" }
            return "Measuring the source: \(Format.bytes(p.bytesDone)) in \(Format.count(p.entriesDone)) entries so far"
        case .locked: return "Locked; about to stage"
        case .copying:
            let p = task.progress
            if task.plan?.strategy == "relink" { return "Relinking \(Format.count(p.entriesDone)) of \(Format.count(p.entriesTotal)) entries" }
            return "\(verb) \(Format.bytes(p.bytesDone)) of \(Format.bytes(p.bytesTotal))"
        case .verifying: return "Verifying the copy against the source"
        case .committing: return task.kind == .move ? "Publishing and removing the source" : "Publishing"
        case .completed:
            let size = task.plan.map { " (\(Format.bytes($0.bytes)), \(Format.count($0.entries)) entries)" } ?? ""
            return "Done\(size)"
        case .failed: return "Failed: \(task.failure?.message ?? "unknown error")"
        case .cancelled: return "Cancelled"
        case .rolledBack: return "Rolled back: \(task.failure?.message ?? "the source is unchanged")"
        }
    }
}
