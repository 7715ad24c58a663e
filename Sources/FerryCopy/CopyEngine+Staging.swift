import FerrySystem
import Glibc

/// The staging directory's life beside the copy: removed whole or emptied, found again by a
/// later attempt (only if it bears Ferry's mark for that task), and kept from inheriting what the
/// destination would give it.
extension CopyEngine {
    /// Removes a staging directory and everything in it.
    public func discard(_ staging: StagingArea) {
        try? remove(staging)
    }

    /// Removes a staging directory and everything in it, and closes it; throws if any of it is left.
    public func remove(_ staging: StagingArea) throws(CopyError) {
        defer { staging.directory.closeQuietly() }
        var failure: CopyError?
        do { try removeContents(of: staging.directory) } catch { failure = error }
        // The name is removed only while it is still this directory: another run may have put a
        // new staging directory of the same task there meanwhile (a retry while a janitor emptied
        // this one), which an rmdir by name would take from under it.
        guard let named = try? staging.parent.status(staging.name), let emptied = try? staging.directory.status(),
              named.fileID == emptied.fileID else {
            if let failure { throw failure }
            return
        }
        do {
            try staging.parent.removeEntry(staging.name, isDirectory: true)
        } catch {
            throw failure ?? .system(path: PathDisplay.string(staging.name), error)
        }
    }

    /// Removes every entry inside `directory` (not the directory itself), never following symlinks.
    public func removeContents(of directory: FileDescriptor) throws(CopyError) {
        let fresh: FileDescriptor
        do { fresh = try directory.openAt(Array(".".utf8), [.directory]) } catch { throw .system(path: ".", error) }
        defer { fresh.closeQuietly() }
        var names: [WalkEntry] = []
        let stream = DirectoryStream(fresh)
        do {
            while let entry = try stream.next() { names.append(WalkEntry(name: entry.name, peerName: entry.name, kind: entry.kind)) }
        } catch { throw .system(path: ".", error) }
        try runWalk(root: directory, peer: nil, entries: names, visitor: RemoveVisitor(meter: nil), cancellation: CancellationFlag())
    }

    /// Removes `name` in `directory` and, if it is a directory, everything in it.
    static func removeTree(in directory: FileDescriptor, _ name: ByteString) throws {
        let walk = WalkCoordinator(visitor: RemoveVisitor(meter: nil), cancellation: CancellationFlag())
        do {
            try walk.run(root: directory, peer: nil, entries: [WalkEntry(name: name, peerName: name, kind: .unknown)], threads: 1)
        } catch { throw CopyError.from(error) }
    }

    /// Opens an existing staging directory left by an earlier attempt; nil if there is none.
    public func openStaging(in destination: FileDescriptor, id: String, relink: Bool) throws(CopyError) -> StagingArea? {
        let name = Array((StagingArea.prefix + id).utf8)
        let fd: FileDescriptor
        do {
            fd = try destination.openAt(name, [.directory, .noFollow])
        } catch {
            if error.code == .notFound { return nil }
            throw .system(path: PathDisplay.string(name), error)
        }
        // Another directory renamed into its place (all it takes is write access to the parent)
        // must not be resumed into, published or removed, least of all by a privileged task.
        switch StagingArea.marking(of: fd, in: destination, id: id) {
        case .copies where !relink, .relinked where relink, .unsupported:
            Self.inheritNothing(fd)
            return StagingArea(parent: destination, name: name, directory: fd)
        case .unmarked where Self.refusesMarks(in: destination, id: id):
            // A filesystem that answers "no such attribute" but keeps none either (some FUSE
            // filesystems): Ferry could not mark it when it made it.
            return StagingArea(parent: destination, name: name, directory: fd)
        default:
            fd.closeQuietly()
            throw .foreignStaging(path: PathDisplay.string(name))
        }
    }

    /// A staging directory made where a default ACL is set inherits it, and so would every entry
    /// made in it: a copy would get entries its source did not have (granting someone access the
    /// source did not), a copied directory a default that its later files inherit. The copies get
    /// their sources' ACLs, or none, as `cp -a` and `rsync -A` do; the staging's own access ACL
    /// is never published. (No ACLs on the filesystem: nothing to remove.)
    static func inheritNothing(_ staging: FileDescriptor) {
        try? ExtendedAttributes.remove(staging, ExtendedAttributes.defaultACL)
    }

    /// The name of `refusesMarks`'s directory, which is there for an instant, unless the process
    /// dies in that instant (then the janitor removes it, empty, once it is old).
    public static let probePrefix = ".ferry-probe-"

    /// Whether the filesystem of `destination` refuses Ferry's mark, tried on a directory of
    /// Ferry's own made for the purpose (and removed); false if that cannot be told. The probe
    /// carries an attribute of its own, never the mark, under a name of this call's: a directory
    /// someone swaps in for it gains nothing a janitor or a rollback would act on.
    static func refusesMarks(in destination: FileDescriptor, id: String) -> Bool {
        let probe = Array("\(probePrefix)\(id)-\(String(UInt64.random(in: .min ... .max), radix: 16))".utf8)
        do { try destination.makeDirectory(probe, permissions: 0o700) } catch { return false }
        defer { try? destination.removeEntry(probe, isDirectory: true) }
        guard let fd = try? destination.openAt(probe, [.directory, .noFollow]) else { return false }
        defer { fd.closeQuietly() }
        guard let status = try? fd.status(), status.uid == geteuid(), status.linkCount == 2 else { return false }
        do {
            try ExtendedAttributes.set(fd, Array("user.ferry.probe".utf8), Array("1".utf8))
            return false
        } catch {
            return error.code == .notSupported
        }
    }
}
