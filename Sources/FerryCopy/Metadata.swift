import FerrySystem
import SystemPackage

/// Applies a source's metadata to its copy, in the order that keeps each step from undoing another:
/// owner first (chown clears setuid/setgid and capabilities), then mode, then extended attributes
/// (ACLs included, which agree with the mode's group bits), and times last (nothing after them
/// touches mtime).
struct MetadataApplier: Sendable {
    let preserveOwnership: Bool
    let privileged: Bool
    /// Never copied (a caller's own bookkeeping; a `LayoutCloner`'s attributes, set before the data).
    let skippedAttributes: Set<ByteString>
    /// Copied on directories all the same (`LayoutCloner.directoryLayouts`); a refusal is noted.
    var directoryLayoutAttributes: Set<ByteString> = []
    /// An attribute the destination refuses fails the copy (`.xattrRefused`) instead of a note.
    var requireXattrs = false
    let notes: CopyNotes

    /// A regular file or directory the engine holds open on both sides.
    func apply(from source: FileDescriptor, to destination: FileDescriptor, status: FileStatus, path: @autoclosure () -> String) throws(SystemError) {
        if preserveOwnership {
            try destination.changeOwner(uid: status.uid, gid: status.gid)
        } else if !privileged {
            try keepGroup(status, path()) { () throws(SystemError) in try destination.changeOwner(uid: .max, gid: status.gid) }
        }
        // Attributes before the mode: the kernel lets a user set `user.*` attributes only on an
        // inode they may write, which a read-only mode (0444, 0555) would take away even from its
        // owner. The mode then comes after (it keeps an ACL's entries, and sets its mask as the
        // source's mode has it; unlike chown it clears no capability).
        let names: [ByteString]
        do {
            names = try ExtendedAttributes.names(source)
        } catch where error.code == .notSupported {
            names = []  // a source filesystem without xattrs has none to copy
        }
        for name in names where shouldCopy(name, of: status.kind) {
            guard let value = try ExtendedAttributes.value(source, name) else { continue }
            do {
                try ExtendedAttributes.set(destination, name, value)
            } catch where tolerable(error) || isDirectoryLayout(name, status.kind) {
                try refused(name, error, path(), kind: status.kind)
            }
        }
        try destination.changeMode(permissions: status.permissions)
        try destination.setTimes(access: status.accessTime, modification: status.modificationTime)
    }

    /// An entry that cannot be opened for this (symlink, fifo, socket, device), named in directories.
    func apply(
        in sourceDirectory: FileDescriptor, _ sourceName: ByteString,
        to destinationDirectory: FileDescriptor, _ destinationName: ByteString,
        status: FileStatus, path: @autoclosure () -> String
    ) throws(SystemError) {
        if preserveOwnership {
            try destinationDirectory.changeOwner(destinationName, uid: status.uid, gid: status.gid)
        } else if !privileged {
            try keepGroup(status, path()) { () throws(SystemError) in
                try destinationDirectory.changeOwner(destinationName, uid: .max, gid: status.gid)
            }
        }
        let names: [ByteString]
        do {
            names = try ExtendedAttributes.names(in: sourceDirectory, symlink: sourceName)
        } catch where tolerable(error) {
            names = []
        }
        for name in names where shouldCopy(name, of: status.kind) {
            guard let value = try ExtendedAttributes.value(in: sourceDirectory, symlink: sourceName, name) else { continue }
            do {
                try ExtendedAttributes.set(in: destinationDirectory, symlink: destinationName, name, value)
            } catch where tolerable(error) || isDirectoryLayout(name, status.kind) {
                try refused(name, error, path(), kind: status.kind)
            }
        }
        if status.kind != .symlink {  // after the attributes, as above
            try destinationDirectory.changeMode(destinationName, permissions: status.permissions)
        }
        try destinationDirectory.setTimes(destinationName, access: status.accessTime, modification: status.modificationTime)
    }

    /// Unprivileged, the copy is the user's own, and gets the group of where it was made; the
    /// source's group is given back (as `cp -a` does), which its owner may do for any group they
    /// are in. Where it cannot be given, that is a note: the copy keeps the group it got.
    private func keepGroup(_ status: FileStatus, _ path: @autoclosure () -> String, _ change: () throws(SystemError) -> Void) throws(SystemError) {
        do {
            try change()
        } catch where [.notPermitted, .permissionDenied, .invalidArgument, .notSupported, .quotaExceeded].contains(error.code) {
            // Not a member; a group an NFSv4 server cannot map; a filesystem without owners; a
            // group quota that is full.
            notes.add("\(path()): group \(status.gid) not preserved (\(error.errnoName)); the copy has the group it got where it was made")
        }
    }

    /// A directory's default layout, copied within one filesystem: any refusal of it is a note.
    private func isDirectoryLayout(_ name: ByteString, _ kind: FileKind) -> Bool {
        kind == .directory && directoryLayoutAttributes.contains(name)
    }

    /// An attribute the destination refused: noted, or (`requireXattrs`) the copy fails; a
    /// directory's default layout is only ever noted.
    private func refused(_ name: ByteString, _ error: SystemError, _ path: String, kind: FileKind) throws(SystemError) {
        if isDirectoryLayout(name, kind) {
            notes.add("\(path): default layout not preserved (\(error.errnoName)); the directory has the one of where it landed")
            return
        }
        guard requireXattrs else {
            notes.skippedAttribute(path, name, error)
            return
        }
        throw SystemError(errno: error.errno, syscall: error.syscall, path: error.path, refinedCode: .xattrRefused)
    }

    /// What Lustre keeps about an inode itself, listed to root with its attributes: its FID
    /// (`trusted.lma`), the parents of its names (`trusted.link`), its size on the MDT
    /// (`trusted.som`), its HSM state (`trusted.hsm`). Wrong for any other file: Lustre ignores
    /// `lma`, `link` and `hsm` when they are set but would hand `som` (the source's size) to the
    /// MDT, and another filesystem would keep them all as clutter.
    static let lustreInodeAttributes: Set<ByteString> = Set(["trusted.lma", "trusted.link", "trusted.som", "trusted.hsm"].map { Array($0.utf8) })
    /// A Lustre layout, under both names Lustre lists it by: a file's is given before its data by
    /// a `LayoutCloner`, where the destination is Lustre; elsewhere it means nothing (`lustre.*`
    /// would be refused, failing a move of every file). A directory's only within one filesystem
    /// (`directoryLayoutAttributes`): Lustre lists one for every directory, its own default or,
    /// lacking one, the filesystem's, which on another filesystem would pin the source's default
    /// on each copied directory; there a copied directory takes the default of where it lands.
    static let lustreLayoutAttributes: Set<ByteString> = Set(["lustre.lov", "trusted.lov"].map { Array($0.utf8) })

    private func shouldCopy(_ name: ByteString, of kind: FileKind) -> Bool {
        if Self.lustreInodeAttributes.contains(name) { return false }
        if isDirectoryLayout(name, kind) {
            // a directory's default layout, within one filesystem: copied as below
        } else if skippedAttributes.contains(name) || Self.lustreLayoutAttributes.contains(name) {
            return false
        }
        if !privileged {
            // Only root may write these: an unprivileged copy skips them without a note, and a
            // move does not fail for them (README, Known limits). The kernel does not even list
            // `trusted.*` to it.
            if name.starts(with: Array("trusted.".utf8)) || name.starts(with: Array("security.".utf8)) {
                return false
            }
        }
        return true
    }

    /// A destination that cannot hold an attribute (another filesystem, no permission) is noted, not
    /// fatal: the data is intact and the report says which attributes were not preserved.
    private func tolerable(_ error: SystemError) -> Bool {
        switch error.code {
        case .notSupported, .notPermitted, .permissionDenied: true
        default: false
        }
    }
}

/// What a copy could not preserve, told to the user afterwards (bounded: the first few by path).
public final class CopyNotes: Sendable {
    private let storage = Locked<(count: Int, first: [String])>((0, []))
    public init() {}

    func skippedAttribute(_ path: String, _ name: ByteString, _ error: SystemError) {
        add("\(path): extended attribute \(PathDisplay.string(name)) not preserved (\(error.errnoName))")
    }

    func add(_ note: String) {
        storage.withLock {
            $0.count += 1
            if $0.first.count < 20 { $0.first.append(note) }
        }
    }

    public var count: Int { storage.withLock { $0.count } }
    public var first: [String] { storage.withLock { $0.first } }
}
