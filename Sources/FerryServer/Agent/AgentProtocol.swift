import FerryConfig
import FerryJobs
import FerryStorage
import Foundation

/// What the server asks of an agent: one filesystem question, answered as the requesting user by a
/// short-lived `ferry agent request` process running with that user's uid, gid and groups. The
/// request carries everything the agent needs (the agent may not be able to read the server's
/// configuration file), so an agent holds no state.
public struct AgentRequest: Codable, Sendable {
    public enum Operation: String, Codable, Sendable { case list, stat, quota, preflight }
    public struct Root: Codable, Sendable {
        public var path: String
        public var name: String?
        public var backend: BackendChoice
        public var strategy: String?
    }
    public var operation: Operation
    public var roots: [Root]
    public var lfsPath: String?
    /// How long one `lfs` call may take: less than the agent's own deadline, set by the client,
    /// so that an `lfs` that hangs is stopped by the agent, which answers with what it has (a
    /// quota from `statvfs`), instead of being killed with it and left running, orphaned.
    public var lfsTimeoutSeconds: Double?
    public var path: String?
    public var offset: Int?
    public var limit: Int?
    public var sort: ListingSort?
    public var descending: Bool?
    public var transfer: TransferRequest?

    public init(operation: Operation, configuration: FerryConfiguration) {
        self.operation = operation
        self.roots = configuration.roots.map { Root(path: $0.path, name: $0.name, backend: $0.backend, strategy: $0.strategy) }
        self.lfsPath = configuration.lfsPath
    }
}

/// A move or copy as the API receives it.
public struct TransferRequest: Codable, Sendable {
    public struct Options: Codable, Sendable {
        public var verify: String?
        public var strategy: String?
        public var recall: Bool?
        public var waitForLocks: Bool?
        /// A move goes on when the destination refuses some extended attributes (lost with the source).
        public var allowXattrLoss: Bool?
        /// false: no free-space and free-inode check (`--no-space-check`); the copy still stops
        /// cleanly at ENOSPC/EDQUOT.
        public var spaceCheck: Bool?
        /// Admins only: run the task with the server's privileges (owners preserved).
        public var privileged: Bool?
    }
    public var kind: TaskKind
    public var sources: [String]
    public var destination: String
    public var options: Options?
}

public enum ListingSort: String, Codable, Sendable, CaseIterable { case name, size, modified, owner }

/// One directory entry as the API shows it.
public struct FileEntry: Codable, Sendable, Equatable {
    public var name: String
    public var path: String
    public var type: String
    public var size: UInt64
    public var allocated: UInt64
    public var modified: Double
    public var owner: String
    public var uid: UInt32
    public var group: String
    public var gid: UInt32
    public var mode: String
    @Nullable public var symlinkTarget: String?
}

public struct Listing: Codable, Sendable {
    public struct RootRef: Codable, Sendable { public var path: String; @Nullable public var name: String? }
    public var path: String
    @Nullable public var parent: String?
    public var root: RootRef
    public var offset: Int
    public var limit: Int
    public var total: Int
    public var sort: ListingSort
    public var order: String
    public var entries: [FileEntry]
}

public struct ProjectInfo: Codable, Sendable, Equatable {
    public var id: UInt32
    public var inherit: Bool
}

public struct QuotaInfo: Codable, Sendable, Equatable {
    public var source: String
    @Nullable public var bytesUsed: UInt64?
    @Nullable public var bytesSoftLimit: UInt64?
    @Nullable public var bytesHardLimit: UInt64?
    @Nullable public var bytesFree: UInt64?
    @Nullable public var inodesUsed: UInt64?
    @Nullable public var inodesSoftLimit: UInt64?
    @Nullable public var inodesHardLimit: UInt64?
    @Nullable public var inodesFree: UInt64?
    @Nullable public var overLimit: Bool?
    @Nullable public var inaccurate: Bool?
    @Nullable public var note: String?

    init(_ report: QuotaReport) {
        source = report.source.rawValue
        bytesUsed = report.bytesUsed
        bytesSoftLimit = report.bytesSoftLimit
        bytesHardLimit = report.bytesHardLimit
        bytesFree = report.bytesFree
        inodesUsed = report.inodesUsed
        inodesSoftLimit = report.inodesSoftLimit
        inodesHardLimit = report.inodesHardLimit
        inodesFree = report.inodesFree
        overLimit = report.overLimit
        inaccurate = report.inaccurate
        note = report.note
    }
}

public struct StatResult: Codable, Sendable {
    public var entry: FileEntry
    public var filesystem: String
    @Nullable public var project: ProjectInfo?

    public func encode(to encoder: any Encoder) throws {
        try entry.encode(to: encoder)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(filesystem, forKey: .filesystem)
        try container.encode(project, forKey: .project)
    }
    enum CodingKeys: String, CodingKey { case filesystem, project }
    public init(from decoder: any Decoder) throws {
        entry = try FileEntry(from: decoder)
        let container = try decoder.container(keyedBy: CodingKeys.self)
        filesystem = try container.decode(String.self, forKey: .filesystem)
        project = try container.decodeIfPresent(ProjectInfo.self, forKey: .project)
    }
    init(entry: FileEntry, filesystem: String, project: ProjectInfo?) {
        self.entry = entry
        self.filesystem = filesystem
        self.project = project
    }
}

public struct QuotaResult: Codable, Sendable {
    public var path: String
    public var filesystem: String
    @Nullable public var project: ProjectInfo?
    public var quota: QuotaInfo
}

public struct PreflightResult: Codable, Sendable {
    public struct RefusalInfo: Codable, Sendable { public var code: String; public var message: String }
    public var kind: TaskKind
    public var strategy: String
    public var bytes: UInt64
    public var allocatedBytes: UInt64
    public var files: UInt64
    public var directories: UInt64
    public var entries: UInt64
    public var inodes: UInt64
    @Nullable public var filesystem: String?
    @Nullable public var sourceProject: UInt32?
    @Nullable public var destinationProject: UInt32?
    @Nullable public var quota: QuotaInfo?
    public var finalPaths: [String]
    public var warnings: [String]
    @Nullable public var refusal: RefusalInfo?
    public var allowed: Bool
    public var summary: String
}

/// Encoders shared by the agent and the server, so both write the same JSON.
enum WireJSON {
    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()
    static let decoder = JSONDecoder()
}

/// An optional that is written as JSON `null` rather than left out, so that API clients always find
/// every documented key.
@propertyWrapper
public struct Nullable<Value: Codable & Sendable>: Codable, Sendable {
    public var wrappedValue: Value?
    public init(wrappedValue: Value?) { self.wrappedValue = wrappedValue }
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        wrappedValue = container.decodeNil() ? nil : try container.decode(Value.self)
    }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if let wrappedValue { try container.encode(wrappedValue) } else { try container.encodeNil() }
    }
}

extension Nullable: Equatable where Value: Equatable {}

extension KeyedDecodingContainer {
    public func decode<V>(_ type: Nullable<V>.Type, forKey key: Key) throws -> Nullable<V> {
        try decodeIfPresent(type, forKey: key) ?? Nullable(wrappedValue: nil)
    }
}
