import FerrySystem
import Foundation
import Synchronization

/// The task channel between a runner (`RemoteTaskStore`) and the server (`TaskStoreRelay`): one
/// JSON object per line each way, requests matched to answers by id.

// MARK: the wire

struct ChannelHeader: Decodable { var id: UInt64 }

struct ChannelRequest: Codable {
    var id: UInt64
    var op: String
    var args: ChannelArguments
}

/// Every call's arguments, all optional: each op reads the ones it has.
struct ChannelArguments: Codable {
    var id: String?
    var worker: String?
    var leaseSeconds: Double?
    var status: TaskStatus?
    var plan: TaskPlan?
    var progress: TaskProgress?
    var message: String?
    var failure: TaskFailure?
    var retryAfterSeconds: Double?
    var locks: [PathLock]?
    var holder: String?
}

/// What the relay answers with.
enum ChannelValue: Encodable {
    case nothing
    case bool(Bool)
    case task(TaskRecord?)
    case events([TaskEvent])

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .nothing: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .task(let value): try container.encode(value)
        case .events(let value): try container.encode(value)
        }
    }
}

struct ChannelReply<Result> {
    var id: UInt64
    var result: Result?
    var error: ChannelError?
    init(id: UInt64, result: Result? = nil, error: ChannelError? = nil) {
        self.id = id
        self.result = result
        self.error = error
    }
    enum CodingKeys: String, CodingKey { case id, result, error }
}

extension ChannelReply: Decodable where Result: Decodable {
    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(UInt64.self, forKey: .id)
        result = try c.decodeIfPresent(Result.self, forKey: .result)
        error = try c.decodeIfPresent(ChannelError.self, forKey: .error)
    }
}

extension ChannelReply: Encodable where Result: Encodable {
    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        if let error { try c.encode(error, forKey: .error) } else { try c.encode(result, forKey: .result) }
    }
}

/// A `TaskStoreError` on the wire: its case as `kind`, its text as `message`.
struct ChannelError: Codable {
    var kind: String
    var message: String
    var by: String?
    var path: String?

    init(_ error: TaskStoreError) {
        switch error {
        case .notFound(let id): (kind, message) = ("notFound", id)
        case .leaseLost(let id): (kind, message) = ("leaseLost", id)
        case .locked(let other, let path): (kind, message, by, self.path) = ("locked", error.description, other, path)
        case .invalidTransition(let text): (kind, message) = ("invalidTransition", text)
        case .database(let text): (kind, message) = ("database", text)
        }
    }

    var storeError: TaskStoreError {
        switch kind {
        case "notFound": .notFound(message)
        case "leaseLost": .leaseLost(message)
        case "locked": .locked(by: by ?? "", path: path ?? "")
        case "invalidTransition": .invalidTransition(message)
        default: .database(message)
        }
    }
}

enum ChannelCoding {
    static var encoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .secondsSince1970
        return encoder
    }
    static var decoder: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .secondsSince1970
        return decoder
    }
}

// MARK: the pipes

/// The client's calls waiting for an answer, by request id.
final class PendingCalls: Sendable {
    private struct State {
        var nextID: UInt64 = 0
        var waiting: [UInt64: CheckedContinuation<Data, any Error>] = [:]
        var closed = false
    }
    private let state = Mutex(State())
    static let closedError = TaskStoreError.database("the server closed the task channel")

    /// The new call's id, or nil (and the call failed) when the channel is closed.
    func register(_ continuation: CheckedContinuation<Data, any Error>) -> UInt64? {
        let id: UInt64? = state.withLock { state in
            guard !state.closed else { return nil }
            state.nextID += 1
            state.waiting[state.nextID] = continuation
            return state.nextID
        }
        if id == nil { continuation.resume(throwing: Self.closedError) }
        return id
    }

    func answer(_ line: Data) {
        guard let header = try? ChannelCoding.decoder.decode(ChannelHeader.self, from: line) else { return }
        state.withLock { $0.waiting.removeValue(forKey: header.id) }?.resume(returning: line)
    }

    func fail(_ id: UInt64, _ error: any Error) {
        state.withLock { $0.waiting.removeValue(forKey: id) }?.resume(throwing: error)
    }

    /// Fails every waiting call, and every later one.
    func close() {
        let waiting = state.withLock { state in
            state.closed = true
            defer { state.waiting = [:] }
            return state.waiting
        }
        for continuation in waiting.values { continuation.resume(throwing: Self.closedError) }
    }
}

/// Lines read from a descriptor on a thread of their own: a blocking `read` must not hold one of
/// the few threads of Swift's cooperative pool.
enum LineReader {
    /// A longer line ends the channel.
    static let maximumLine = 16 << 20

    static func start(_ fd: Int32, label: String, onLine: @escaping @Sendable (Data) -> Void, onEnd: @escaping @Sendable () -> Void) {
        let thread = Thread {
            var pending: [UInt8] = []
            var scanned = 0
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { break }
                pending += buffer[0..<count]
                var start = 0
                while let newline = pending[scanned...].firstIndex(of: 0x0A) {
                    if newline > start { onLine(Data(pending[start..<newline])) }
                    start = newline + 1
                    scanned = start
                }
                pending.removeFirst(start)
                scanned = pending.count
                if pending.count > maximumLine { break }
            }
            onEnd()
        }
        thread.name = label
        thread.start()
    }
}

/// Lines written in order on a serial queue; after the first failed write (the reader is gone:
/// EPIPE) the rest are dropped.
final class LineWriter: Sendable {
    let queue: DispatchQueue
    private let fd: Int32
    private let broken = Atomic<Bool>(false)

    init(_ fd: Int32, label: String) {
        self.fd = fd
        queue = DispatchQueue(label: label)
    }

    func send(_ line: Data, completion: (@Sendable (Bool) -> Void)? = nil) {
        queue.async { [self] in
            var ok = !broken.load(ordering: .relaxed)
            if ok {
                ok = writeAll(line + [0x0A])
                if !ok { broken.store(true, ordering: .relaxed) }
            }
            completion?(ok)
        }
    }

    /// `write` until done; a vanished reader is an EPIPE, not the end of the process.
    private func writeAll(_ data: Data) -> Bool {
        data.withUnsafeBytes { Console.write($0, to: fd) }
    }
}
