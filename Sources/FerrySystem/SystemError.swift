import Glibc
import SystemPackage

/// A failed system call, with the errno, the call's name and the path it was about.
///
/// Code switches on ``code``; people read ``description``, which names the call, the path and the
/// errno, e.g. `renameat2 "a" → "b": Invalid cross-device link (EXDEV)`.
public struct SystemError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The errno values Ferry's callers act on, and `other` for the rest.
    public enum Code: Sendable, Hashable {
        case crossDevice          // EXDEV
        case noSpace              // ENOSPC
        case quotaExceeded        // EDQUOT
        case tooManyLinks         // EMLINK
        case exists               // EEXIST
        case notFound             // ENOENT
        case symlinkLoop          // ELOOP (also: a symlink where O_NOFOLLOW forbids one)
        case permissionDenied     // EACCES
        case notPermitted         // EPERM
        case notDirectory         // ENOTDIR
        case isDirectory          // EISDIR
        case notEmpty             // ENOTEMPTY
        case nameTooLong          // ENAMETOOLONG
        case readOnlyFilesystem   // EROFS
        case io                   // EIO
        case notSupported         // EOPNOTSUPP / ENOTSUP / ENOTTY / ENOSYS
        case invalidArgument      // EINVAL
        case busy                 // EBUSY / ETXTBSY
        case tooManyOpenFiles     // EMFILE / ENFILE
        case badFileDescriptor    // EBADF
        case staleFileHandle      // ESTALE (a network filesystem's file replaced or gone under a handle)
        case noData               // ENODATA (missing xattr)
        case rangeTooSmall        // ERANGE (xattr buffer)
        case escapesRoot          // EXDEV from openat2 RESOLVE_BENEATH is reported as this, see PathResolution
        case symlinkRefused       // ELOOP where the resolution follows no symlink (RESOLVE_NO_SYMLINKS, O_NOFOLLOW), see PathResolution
        case xattrRefused         // a copy that must keep every extended attribute could not set one (refined, see MetadataApplier)
        case other

        init(_ errno: CInt) {
            switch errno {
            case EXDEV: self = .crossDevice
            case ENOSPC: self = .noSpace
            case EDQUOT: self = .quotaExceeded
            case EMLINK: self = .tooManyLinks
            case EEXIST: self = .exists
            case ENOENT: self = .notFound
            case ELOOP: self = .symlinkLoop
            case EACCES: self = .permissionDenied
            case EPERM: self = .notPermitted
            case ENOTDIR: self = .notDirectory
            case EISDIR: self = .isDirectory
            case ENOTEMPTY: self = .notEmpty
            case ENAMETOOLONG: self = .nameTooLong
            case EROFS: self = .readOnlyFilesystem
            case EIO: self = .io
            case EOPNOTSUPP, ENOTTY, ENOSYS: self = .notSupported
            case EINVAL: self = .invalidArgument
            case EBUSY, ETXTBSY: self = .busy
            case EMFILE, ENFILE: self = .tooManyOpenFiles
            case EBADF: self = .badFileDescriptor
            case ESTALE: self = .staleFileHandle
            case ENODATA: self = .noData
            case ERANGE: self = .rangeTooSmall
            default: self = .other
            }
        }
    }

    public var errno: Errno
    /// The C function that failed, e.g. `renameat2`.
    public var syscall: String
    /// The path (or paths) the call was about, for people; names are shown with invalid UTF-8 escaped.
    public var path: String?
    /// Set when Ferry refines the errno's meaning (an EXDEV from RESOLVE_BENEATH is an escape attempt).
    public var refinedCode: Code?

    public init(errno: Errno, syscall: String, path: String? = nil, refinedCode: Code? = nil) {
        self.errno = errno
        self.syscall = syscall
        self.path = path
        self.refinedCode = refinedCode
    }

    public init(errno raw: CInt, syscall: String, path: String? = nil) {
        self.init(errno: Errno(rawValue: raw), syscall: syscall, path: path)
    }

    public var code: Code { refinedCode ?? Code(errno.rawValue) }

    /// The errno's symbolic name, e.g. `EXDEV`.
    public var errnoName: String { SystemError.name(of: errno.rawValue) }

    public var description: String {
        let subject = path.map { " \($0)" } ?? ""
        return "\(syscall)\(subject): \(reason)"
    }

    /// What went wrong, without the call or the path: `No such file or directory (ENOENT)`.
    public var reason: String {
        if refinedCode == .escapesRoot { return "the path leads outside the allowed root (refused)" }
        if refinedCode == .symlinkRefused { return "the path leads through a symlink, which is followed nowhere here (refused): name the real path" }
        return "\(String(cString: strerror(errno.rawValue))) (\(errnoName))"
    }

    static func name(of errno: CInt) -> String {
        switch errno {
        case EPERM: "EPERM"
        case ENOENT: "ENOENT"
        case EINTR: "EINTR"
        case EIO: "EIO"
        case EBADF: "EBADF"
        case EAGAIN: "EAGAIN"
        case ENOMEM: "ENOMEM"
        case EACCES: "EACCES"
        case EBUSY: "EBUSY"
        case EEXIST: "EEXIST"
        case EXDEV: "EXDEV"
        case ENOTDIR: "ENOTDIR"
        case EISDIR: "EISDIR"
        case EINVAL: "EINVAL"
        case ENFILE: "ENFILE"
        case EMFILE: "EMFILE"
        case ENOTTY: "ENOTTY"
        case ETXTBSY: "ETXTBSY"
        case EFBIG: "EFBIG"
        case ENOSPC: "ENOSPC"
        case EROFS: "EROFS"
        case EMLINK: "EMLINK"
        case ERANGE: "ERANGE"
        case ENAMETOOLONG: "ENAMETOOLONG"
        case ENOSYS: "ENOSYS"
        case ENOTEMPTY: "ENOTEMPTY"
        case ELOOP: "ELOOP"
        case ENODATA: "ENODATA"
        case EOPNOTSUPP: "EOPNOTSUPP"
        case EDQUOT: "EDQUOT"
        case ESRCH: "ESRCH"
        case ESTALE: "ESTALE"
        default: "errno \(errno)"
        }
    }
}

/// Runs a call that returns -1 and sets errno on failure, retrying `EINTR` in this one place.
@inline(__always)
func syscallRetrying<Result: FixedWidthInteger & SignedInteger>(
    _ name: String, path: @autoclosure () -> String? = nil, _ body: () -> Result
) throws(SystemError) -> Result {
    while true {
        let result = body()
        if result >= 0 { return result }
        let code = Glibc.errno
        if code == EINTR { continue }
        throw SystemError(errno: code, syscall: name, path: path())
    }
}
