import FerrySystem
import Foundation

public enum TaskKind: String, Codable, Sendable, CaseIterable { case move, copy }

/// Where a task is. The running states are also the phase a resumed task continues from: every
/// transition is committed before the phase's work starts.
public enum TaskStatus: String, Codable, Sendable, CaseIterable {
    case pending, validating, locked, copying, verifying, committing
    case completed, failed, cancelled
    case rolledBack = "rolled_back"

    public var isTerminal: Bool { [.completed, .failed, .cancelled, .rolledBack].contains(self) }
    public static let running: [TaskStatus] = [.pending, .validating, .locked, .copying, .verifying, .committing]
}

/// A path as bytes, stored as base64 so that names that are not UTF-8 survive the database.
public struct StoredPath: Codable, Sendable, Hashable, CustomStringConvertible {
    public var bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public init(_ string: String) { self.bytes = Array(string.utf8) }
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let data = Data(base64Encoded: text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not base64"))
        }
        bytes = Array(data)
    }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(Data(bytes).base64EncodedString())
    }
    /// For people: valid UTF-8 as is, other bytes as `\xNN` (`PathDisplay`).
    public var description: String { PathDisplay.string(bytes) }
}

/// What the requester asked for, beyond sources and destination.
public struct TaskOptions: Codable, Sendable, Equatable {
    public var verify: String = "metadata"
    /// nil: the engine chooses (rename, relink or copy).
    public var strategy: String?
    public var recall: Bool = false
    public var jobs: Int?
    /// Safety margin on free space and inodes, as a fraction (0.05 = 5%).
    public var margin: Double = 0.05
    /// Wait for conflicting path locks instead of failing.
    public var waitForLocks: Bool = false
    /// Check the destination's free bytes and inodes before copying.
    public var spaceCheck: Bool = true
    /// Run with the server's privileges instead of the owner's (admins only, e.g. to keep owners).
    public var privileged: Bool = false
    /// A move goes on when the destination refuses some of the source's extended attributes (or
    /// ACLs), which are then lost with the source; otherwise it fails before anything is deleted.
    public var allowXattrLoss: Bool = false
    public init() {}

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        verify = try c.decodeIfPresent(String.self, forKey: .verify) ?? "metadata"
        strategy = try c.decodeIfPresent(String.self, forKey: .strategy)
        recall = try c.decodeIfPresent(Bool.self, forKey: .recall) ?? false
        jobs = try c.decodeIfPresent(Int.self, forKey: .jobs)
        margin = try c.decodeIfPresent(Double.self, forKey: .margin) ?? 0.05
        waitForLocks = try c.decodeIfPresent(Bool.self, forKey: .waitForLocks) ?? false
        spaceCheck = try c.decodeIfPresent(Bool.self, forKey: .spaceCheck) ?? true
        privileged = try c.decodeIfPresent(Bool.self, forKey: .privileged) ?? false
        allowXattrLoss = try c.decodeIfPresent(Bool.self, forKey: .allowXattrLoss) ?? false
    }
}

/// What the validate phase decided, persisted so that any worker can carry on from it.
public struct TaskPlan: Codable, Sendable, Equatable {
    public var strategy: String
    public var bytes: UInt64
    public var allocatedBytes: UInt64
    public var entries: UInt64
    public var inodes: UInt64
    /// `.ferry-staging-<task>` in the destination directory.
    public var stagingName: StoredPath
    /// Final names in the destination directory, one per source.
    public var finalNames: [StoredPath]
    /// The destination directory (resolved).
    public var destinationDirectory: StoredPath
    public var warnings: [String] = []
    /// Set (and committed) before the first source entry is deleted: from then on the source may be
    /// partial, and recovery checks that what is left is contained in the published copy.
    public var deletingSource: Bool = false
    /// The machine and boot (`bootIdentity`) that has been writing the staging directory. Files
    /// staged and not yet flushed are only trusted by the same boot: after a restart, or on
    /// another machine, what looks complete may never have reached the disk. `untrusted` after
    /// an I/O error while staging (the kernel may have dropped data of a file that looks
    /// complete) or a staging directory that went: trusted by no one, copied again.
    public var stagedOn: String?
    public static let untrusted = "untrusted"
    /// Set when the task failed while committing (a lasting fault, or passing ones at every try):
    /// part of it may be published, the rest staged. A user's `retry` then resumes the commit,
    /// its path locks taken again, instead of starting over, and the janitor keeps its staging
    /// directory, which holds what is not yet published. Cleared when the commit resumes.
    public var stoppedCommitting: Bool?
    public init(strategy: String, bytes: UInt64, allocatedBytes: UInt64, entries: UInt64, inodes: UInt64,
                stagingName: StoredPath, finalNames: [StoredPath], destinationDirectory: StoredPath) {
        self.strategy = strategy
        self.bytes = bytes
        self.allocatedBytes = allocatedBytes
        self.entries = entries
        self.inodes = inodes
        self.stagingName = stagingName
        self.finalNames = finalNames
        self.destinationDirectory = destinationDirectory
    }
}

public struct TaskProgress: Codable, Sendable, Equatable {
    public var bytesDone: UInt64 = 0
    public var bytesTotal: UInt64 = 0
    public var entriesDone: UInt64 = 0
    public var entriesTotal: UInt64 = 0
    public var bytesPerSecond: Double = 0
    public init() {}
    public init(bytesDone: UInt64, bytesTotal: UInt64, entriesDone: UInt64, entriesTotal: UInt64, bytesPerSecond: Double) {
        self.bytesDone = bytesDone
        self.bytesTotal = bytesTotal
        self.entriesDone = entriesDone
        self.entriesTotal = entriesTotal
        self.bytesPerSecond = bytesPerSecond
    }

    /// Seconds until the bytes are done at the recorded rate, when it can be told (a rate too
    /// small for a finite answer cannot: JSON has no infinity).
    public var secondsRemaining: Double? {
        guard bytesPerSecond > 0, bytesPerSecond.isFinite, bytesTotal > bytesDone else { return nil }
        let seconds = Double(bytesTotal - bytesDone) / bytesPerSecond
        return seconds.isFinite ? seconds : nil
    }
}

/// Why a task failed: a stable code for programs, a message for people.
public struct TaskFailure: Codable, Sendable, Equatable, Error {
    public var code: String
    public var message: String
    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }

    /// A task whose process kept ending unexpectedly (crashed, killed, or hung until it was
    /// killed), and that is rolled back rather than resumed again: the cancel that rolls it back
    /// keeps this failure instead of "cancelled by request".
    public static let crashedCode = "runner.crashed"
}

public struct NewTask: Sendable {
    public var kind: TaskKind
    public var sources: [StoredPath]
    public var destination: StoredPath
    public var options: TaskOptions
    public var owner: String
    public init(kind: TaskKind, sources: [StoredPath], destination: StoredPath, options: TaskOptions = TaskOptions(), owner: String) {
        self.kind = kind
        self.sources = sources
        self.destination = destination
        self.options = options
        self.owner = owner
    }
}

public struct TaskRecord: Codable, Sendable, Equatable {
    public var id: String
    public var kind: TaskKind
    public var sources: [StoredPath]
    public var destination: StoredPath
    public var options: TaskOptions
    public var owner: String
    public var status: TaskStatus
    public var plan: TaskPlan?
    public var progress: TaskProgress
    public var failure: TaskFailure?
    /// Claims so far, not counting the looks of a task waiting for another's locks (`TaskStore.wait`).
    public var attempts: Int
    public var cancelRequested: Bool
    public var leaseOwner: String?
    public var leaseExpiresAt: Date?
    public var notBefore: Date?
    public var createdAt: Date
    public var updatedAt: Date
    public var finishedAt: Date?
    /// Set on a record a claim returns when the claim took the task from another worker whose
    /// lease had expired (a worker that died, or stalled for a whole lease, without handing the
    /// task back): that worker's name. Never stored; nil on every other record.
    public var takenOverFrom: String?

    /// For the stores, which build records from their rows.
    package init(id: String, kind: TaskKind, sources: [StoredPath], destination: StoredPath, options: TaskOptions, owner: String,
                 status: TaskStatus, plan: TaskPlan?, progress: TaskProgress, failure: TaskFailure?, attempts: Int,
                 cancelRequested: Bool, leaseOwner: String?, leaseExpiresAt: Date?, notBefore: Date?,
                 createdAt: Date, updatedAt: Date, finishedAt: Date?) {
        self.id = id
        self.kind = kind
        self.sources = sources
        self.destination = destination
        self.options = options
        self.owner = owner
        self.status = status
        self.plan = plan
        self.progress = progress
        self.failure = failure
        self.attempts = attempts
        self.cancelRequested = cancelRequested
        self.leaseOwner = leaseOwner
        self.leaseExpiresAt = leaseExpiresAt
        self.notBefore = notBefore
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.finishedAt = finishedAt
    }

    /// Unfinished, and held by a worker whose lease ran out before `now`: that worker died, or
    /// hangs, without handing the task back. The task stays as it is, its paths locked, until a
    /// worker or the janitor claims it and resumes it (or rolls it back, if cancelled).
    public func isStalled(at now: Date = Date()) -> Bool {
        !status.isTerminal && leaseOwner != nil && (leaseExpiresAt.map { $0 < now } ?? false)
    }

    /// Where `retry` sends the task: back to its commit, with its plan, when it failed while
    /// committing (`TaskPlan.stoppedCommitting`); otherwise to the start, planned anew.
    public var statusOnRetry: TaskStatus {
        status == .failed && plan?.stoppedCommitting == true ? .committing : .pending
    }

    /// A worker holds the task and its progress is counts without totals: the pre-flight
    /// measurement of the source, under way.
    public var isBeingMeasured: Bool {
        status == .validating && leaseOwner != nil && progress.entriesDone > 0 && progress.entriesTotal == 0
    }
}

public struct TaskEvent: Codable, Sendable, Equatable {
    public var taskID: String
    public var at: Date
    public var status: TaskStatus
    public var message: String

    package init(taskID: String, at: Date, status: TaskStatus, message: String) {
        self.taskID = taskID
        self.at = at
        self.status = status
        self.message = message
    }

    /// The event `retry` records: a failed, cancelled or rolled-back task queued again.
    public static let retried = "retried"

    /// How many of `events` since the task was last retried begin with `prefix`: what counts
    /// toward a limit of tries (transient failures, unexpected ends of a task's process) starts
    /// again when a user retries the task.
    public static func count(_ events: [TaskEvent], beginningWith prefix: String) -> Int {
        sinceRetried(events).filter { $0.message.hasPrefix(prefix) }.count
    }

    /// The events after the last `retried`, or all of them.
    public static func sinceRetried(_ events: [TaskEvent]) -> ArraySlice<TaskEvent> {
        events.lastIndex { $0.message == retried }.map { events[($0 + 1)...] } ?? events[...]
    }

    /// The event every claim records: `claimed by W (attempt N)`, and when the claim took the task
    /// from a worker whose lease had expired, ` after the lease of X expired`. (The PostgreSQL
    /// store writes the same words in its claim statements.)
    public static func claimed(by worker: String, attempt: Int, takenOverFrom previous: String?) -> String {
        "claimed by \(worker) (attempt \(attempt))" + (previous.map { takeoverMarker + $0 + " expired" } ?? "")
    }

    static let takeoverMarker = " after the lease of "

    /// A claim that took the task over from a worker whose lease had expired.
    public var isTakeover: Bool { message.hasPrefix("claimed by ") && message.contains(Self.takeoverMarker) }
}

/// A path lock: a task holds `path` (absolute, as bytes) on the filesystem `filesystem` (device id).
public struct PathLock: Codable, Sendable, Equatable, Hashable {
    public var taskID: String
    public var filesystem: String
    public var path: StoredPath
    public init(taskID: String, filesystem: String, path: StoredPath) {
        self.taskID = taskID
        self.filesystem = filesystem
        self.path = path
    }

    /// Same path, ancestor or descendant, on the same filesystem.
    public func conflicts(with other: PathLock) -> Bool {
        guard filesystem == other.filesystem else { return false }
        let a = path.bytes, b = other.path.bytes
        if a == b { return true }
        return Self.isAncestor(a, of: b) || Self.isAncestor(b, of: a)
    }

    static func isAncestor(_ a: [UInt8], of b: [UInt8]) -> Bool {
        if a == [0x2F] { return true }
        return b.count > a.count && b.starts(with: a) && b[a.count] == 0x2F
    }
}

public struct TaskFilter: Sendable {
    public var statuses: [TaskStatus]?
    public var owner: String?
    public var limit: Int
    public var offset: Int
    public init(statuses: [TaskStatus]? = nil, owner: String? = nil, limit: Int = 100, offset: Int = 0) {
        self.statuses = statuses
        self.owner = owner
        self.limit = limit
        self.offset = offset
    }
}

public enum TaskStoreError: Error, Sendable, Equatable, CustomStringConvertible {
    case notFound(String)
    /// The worker no longer holds the task's lease: another worker may have taken it over.
    case leaseLost(String)
    /// A path this task needs is locked by another task.
    case locked(by: String, path: String)
    case invalidTransition(String)
    case database(String)

    public var description: String {
        switch self {
        case .notFound(let id): "no task \(id)"
        case .leaseLost(let id): "task \(id): this worker no longer holds its lease: another worker claimed it after it expired, or it was handed back or ended"
        case .locked(let other, let path): "\(path) is locked by task \(other); wait for it or cancel it"
        case .invalidTransition(let message): message
        case .database(let message): "database: \(message)"
        }
    }
}

/// A new task's id: 16 random hex digits.
package enum Identifier {
    package static func make() -> String {
        var generator = SystemRandomNumberGenerator()
        let value = generator.next() as UInt64
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}
