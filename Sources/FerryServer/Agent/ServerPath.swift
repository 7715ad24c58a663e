import FerrySystem

/// A path from a request, checked before anything touches the filesystem: absolute, no NUL, no
/// `.` or `..` component, names of at most 255 bytes, at most 4095 bytes in all, and beneath one
/// of the allowed roots. Paths are `PathText` both ways (a name that is not UTF-8 is sent and
/// taken back losslessly). Resolution itself (symlinks) happens beneath the root's descriptor,
/// in the agent, as the requesting user.
public struct ServerPath: Sendable, Equatable {
    /// As `PathText`, in its normal form.
    public var path: String
    /// The deepest allowed root containing the path.
    public var root: String
    /// The path below the root ("" for the root itself), as `PathText`.
    public var relative: String

    /// The path's bytes, as the kernel gets them.
    public var bytes: ByteString { PathText.decode(path) }
    public var relativeBytes: ByteString { PathText.decode(relative) }
    /// For messages: other bytes than UTF-8 as `\xNN`.
    public var display: String { PathDisplay.string(bytes) }
    /// The last name's bytes (empty for "/").
    public var nameBytes: ByteString { Array(bytes.split(separator: UInt8(ascii: "/")).last ?? []) }

    public static func check(_ raw: String?, roots: [String]) throws(APIError) -> ServerPath {
        guard let raw, !raw.isEmpty else { throw APIError(.badRequest, "path.invalid", "a path is required") }
        let bytes = PathText.decode(raw)
        if bytes.contains(0) { throw APIError(.badRequest, "path.invalid", "the path contains a NUL byte") }
        guard raw.hasPrefix("/") else { throw APIError(.badRequest, "path.invalid", "paths must be absolute (start with /)") }
        guard bytes.count < 4096 else { throw APIError(.badRequest, "path.invalid", "the path is longer than 4095 bytes") }
        // Bytes, as the kernel reads the path: a String splits and compares by characters, and a
        // character may hold a "/" (a prepended mark joins it: "l\u{600}/.." is no ".." to it)
        // or equal different bytes (é precomposed or not).
        let slash = UInt8(ascii: "/"), dot = UInt8(ascii: ".")
        let components = bytes.split(separator: slash, omittingEmptySubsequences: true)
        for component in components {
            if component.elementsEqual([dot]) || component.elementsEqual([dot, dot]) {
                throw APIError(.badRequest, "path.invalid", "paths may not contain . or .. components")
            }
            if component.count > 255 { throw APIError(.badRequest, "path.invalid", "a name in the path is longer than 255 bytes") }
        }
        let normal = [slash] + Array(components.joined(separator: [slash]))
        func contains(_ root: String) -> Bool {
            let root = Array(root.utf8)
            return root == [slash] || normal == root || normal.starts(with: root + [slash])
        }
        guard let root = roots.filter(contains).max(by: { $0.utf8.count < $1.utf8.count }) else {
            throw APIError(.badRequest, "path.outside_roots", "\(PathDisplay.string(normal)) is not inside any of the directories this server shares")
        }
        let below = root == "/" ? normal.dropFirst() : normal.dropFirst(root.utf8.count).drop(while: { $0 == slash })
        return ServerPath(path: PathText.encode(normal), root: root, relative: PathText.encode(below))
    }

    /// The parent directory's path (`PathText`), nil at a root.
    public var parent: String? {
        guard !relative.isEmpty else { return nil }
        let bytes = self.bytes
        let cut = bytes.lastIndex(of: UInt8(ascii: "/"))!
        return cut == 0 ? "/" : PathText.encode(bytes[..<cut])
    }
}

extension TransferRequest {
    /// The request with each path checked and in its normal form (`ServerPath.path`): what the
    /// pre-flight judges is what the task stores and the engine plans, byte for byte.
    public func normalized(roots: [String]) throws(APIError) -> TransferRequest {
        var normal = self
        normal.sources = try sources.map { source throws(APIError) in try ServerPath.check(source, roots: roots).path }
        normal.destination = try ServerPath.check(destination, roots: roots).path
        return normal
    }
}

/// An API failure: an HTTP status, a stable code programs switch on, and a sentence for people.
public struct APIError: Error, Sendable, Equatable, Codable {
    public enum Status: Int, Sendable, Codable {
        case badRequest = 400, unauthorized = 401, forbidden = 403, notFound = 404, methodNotAllowed = 405, conflict = 409,
             contentTooLarge = 413, unprocessable = 422, tooManyRequests = 429, internalError = 500, unavailable = 503,
             gatewayTimeout = 504
    }
    public var status: Status
    public var code: String
    public var message: String
    public init(_ status: Status, _ code: String, _ message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    /// What a failed system call means to the person who asked.
    public init(_ error: SystemError, path: String) {
        switch error.code {
        case .notFound: self.init(.notFound, "path.not_found", "\(path) does not exist")
        case .permissionDenied, .notPermitted: self.init(.forbidden, "permission.denied", "you may not read \(path) (\(error.errnoName))")
        case .notDirectory: self.init(.badRequest, "path.not_directory", "\(path) is not a directory")
        case .symlinkLoop: self.init(.badRequest, "path.symlink_loop", "\(path) goes through a symlink loop or too many symlinks")
        case .symlinkRefused:
            self.init(.badRequest, "path.symlink", "\(path) leads through a symlink, which Ferry acting as root follows nowhere beneath "
                      + "the shared directories (its owner could point it at anyone's tree); name the real path")
        case .escapesRoot: self.init(.badRequest, "path.outside_roots", "\(path) leads outside the shared directories (through .. or a symlink)")
        case .nameTooLong: self.init(.badRequest, "path.invalid", "\(path) has a name that is too long")
        default: self.init(.internalError, "internal", "\(path): \(error)")
        }
    }
}
