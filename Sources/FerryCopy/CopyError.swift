import FerrySystem

/// Why a copy, a verification or a publication failed. Every case names the path; code switches on
/// the case (and on `SystemError.code`), people read `description`, which says what to do.
public enum CopyError: Error, Sendable, CustomStringConvertible {
    /// A system call failed while copying `path` (relative to the copied item's parent).
    case system(path: String, SystemError)
    /// The source changed while it was being copied; nothing was published or deleted.
    case sourceChanged(path: String, detail: String)
    /// The copy does not match the source.
    case verificationFailed(differences: [Difference])
    /// The destination name exists already; nothing was replaced.
    case destinationExists(path: String)
    /// An entry of a kind the engine will not copy unprivileged (device nodes).
    case unsupportedEntry(path: String, kind: FileKind)
    /// A directory with the task's staging name lacks Ferry's mark for it: not Ferry's, so
    /// nothing is copied into, published from or removed with it.
    case foreignStaging(path: String)
    /// A relink's rollback could not put these entries back into the source: they stay in the
    /// staging directory, the only copy of them, and the rollback is not done.
    case notPutBack(staging: String, entries: [String])
    /// A filesystem (or a bind mount) is mounted at `path`, inside what is moved or copied: no
    /// walk crosses into it, and nothing in it is copied or removed.
    case mountPoint(path: String)
    case cancelled

    public struct Difference: Sendable, Equatable, CustomStringConvertible {
        public var path: String
        public var what: String
        public init(path: String, what: String) {
            self.path = path
            self.what = what
        }
        public var description: String { "\(path): \(what)" }
    }

    /// The errno-level cause, when there is one: `.noSpace`, `.quotaExceeded`, `.crossDevice`, …
    public var systemCode: SystemError.Code? {
        if case .system(_, let error) = self { return error.code }
        return nil
    }

    public var description: String {
        switch self {
        case .system(let path, let error):
            let advice: String
            switch error.code {
            // XFS answers ENOSPC, not EDQUOT, for a full project quota: either may be the cause.
            case .noSpace: advice = " — the destination is full: its filesystem, or (on XFS) its project's quota; free space there, "
                + "ask for more quota, or choose another destination"
            case .quotaExceeded: advice = " — the destination project's quota is exhausted; ask for more quota or free space in that project"
            case .permissionDenied, .notPermitted: advice = " — you lack permission for this path"
            case .io: advice = " — the storage reported an I/O error; check the device before retrying"
            case .tooManyOpenFiles: advice = " — raise the open-file limit (ulimit -n) or lower --jobs"
            case .xattrRefused: advice = " — the destination cannot keep this extended attribute (or ACL), and the move would lose it with "
                + "the source; nothing was deleted. Choose a destination that keeps it, or allow the loss (ferry move --allow-xattr-loss; "
                + "the API's option allowXattrLoss)"
            default: advice = ""
            }
            return "\(path): \(error)\(advice)"
        case .sourceChanged(let path, let detail):
            return "\(path) changed while it was being copied (\(detail)); nothing was published — run the copy again when the source is quiet"
        case .verificationFailed(let differences):
            let shown = differences.prefix(10).map { "  \($0)" }.joined(separator: "\n")
            let more = differences.count > 10 ? "\n  … and \(differences.count - 10) more" : ""
            return "the copy does not match the source; nothing was published:\n\(shown)\(more)"
        case .destinationExists(let path):
            return "\(path) exists already; Ferry never replaces data — choose another name or remove it first"
        case .unsupportedEntry(let path, let kind):
            return "\(path) is a \(kind), which only root can create; run as root or exclude it"
        case .foreignStaging(let path):
            return "\(path) has this task's staging name but not Ferry's mark for it: it is not the staging directory Ferry made "
                + "(someone put another directory in its place), so it was left untouched — move it away, then retry or cancel the task"
        case .notPutBack(let staging, let entries):
            let shown = entries.prefix(5).joined(separator: ", ")
            return "\(entries.count) relinked entr\(entries.count == 1 ? "y" : "ies") could not be put back into the source and stay in \(staging), "
                + "their only copy (\(shown)\(entries.count > 5 ? ", …" : "")): the rollback is not done; free their names in the source "
                + "(or move them back by hand), and the task's rollback is retried"
        case .mountPoint(let path):
            return "\(path) is a mount point (another filesystem, or a bind mount, is mounted there): Ferry does not cross into "
                + "mounts, as moving the tree would remove what the mount holds from wherever it lives; unmount it first, or move "
                + "what is around it and what it holds as separate tasks"
        case .cancelled:
            return "cancelled; everything the copy had created was removed"
        }
    }

    /// Wraps what a walk threw, keeping Ferry's own errors as they are.
    static func from(_ failure: WalkFailure) -> CopyError {
        if let copy = failure.error as? CopyError { return copy }
        if let system = failure.error as? SystemError { return .system(path: failure.path, system) }
        return .system(path: failure.path, SystemError(errno: 5, syscall: "\(failure.error)"))
    }
}
