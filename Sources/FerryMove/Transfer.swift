import FerryCopy
import FerrySystem
import Foundation

/// A request's paths, opened: each source's directory and name, the destination directory, and the
/// final names — `mv`/`cp` semantics (DEST an existing directory, or a new name for one source).
/// Owns its descriptors.
public final class Transfer: @unchecked Sendable {
    public let sources: [CopySource]
    /// Absolute source paths (as given, made absolute) and their directories' devices.
    public let sourcePaths: [ByteString]
    public let destination: FileDescriptor
    public let destinationPath: ByteString
    private let opened: [FileDescriptor]

    public struct UsageError: Error, CustomStringConvertible, Sendable {
        public var message: String
        public var description: String { message }
    }

    /// Resolves `paths` (sources then destination). With `roots`, every path must lie beneath one of
    /// them and is opened with `openat2(RESOLVE_BENEATH)` from that root, so no `..` or symlink leads
    /// outside; without, paths are opened as the caller's shell would.
    public init(sources sourceArguments: [ByteString], destination last: ByteString, roots: [ByteString]? = nil) throws {
        guard !sourceArguments.isEmpty else { throw UsageError(message: "give at least one source and a destination") }
        var opened: [FileDescriptor] = []
        var success = false
        defer { if !success { opened.forEach { $0.closeQuietly() } } }
        let opener = DirectoryOpener(roots: roots)
        defer { opener.close() }

        let destination: FileDescriptor
        var renameTo: ByteString?
        let absoluteLast = Self.absolute(last)
        let existing: FileDescriptor?
        do {
            existing = try opener.openDirectory(absoluteLast)
        } catch let error as SystemError where error.code != .notFound && error.code != .notDirectory {
            // There, but not to be opened (no permission, a symlink loop): not a new name either.
            throw UsageError(message: "the destination \(last.displayString) cannot be opened: \(error.reason)")
        } catch {
            existing = nil
        }
        if let directory = existing {
            destination = directory
            destinationPath = absoluteLast
        } else {
            guard sourceArguments.count == 1 else {
                throw UsageError(message: "\(last.displayString) is not a directory (several sources need an existing directory)")
            }
            let (parent, name) = BytePath.split(absoluteLast)
            guard BytePath.isPlainName(name) else { throw UsageError(message: "\(last.displayString) is not a usable destination name") }
            do {
                destination = try opener.openDirectory(parent)
            } catch {
                throw UsageError(message: "the destination's directory \(parent.displayString) cannot be opened: \(error)")
            }
            destinationPath = parent
            renameTo = name
        }
        opened.append(destination)

        var sources: [CopySource] = []
        var paths: [ByteString] = []
        var parents: [(path: ByteString, fd: FileDescriptor)] = []  // not a dictionary: see `Environment`
        for argument in sourceArguments {
            // As typed: `.` or `sub/..` would otherwise name the directory they lead to.
            guard BytePath.isPlainName(BytePath.split(argument).name) else {
                throw UsageError(message: "\(argument.displayString): name a file or directory by its own name (not ., .. or /)")
            }
            let path = Self.absolute(argument)
            let (parent, name) = BytePath.split(path)
            guard BytePath.isPlainName(name) else { throw UsageError(message: "\(argument.displayString): name a file or directory (not ., .. or /)") }
            let parentFD: FileDescriptor
            if let known = parents.first(where: { $0.path == parent }) {
                parentFD = known.fd
            } else {
                parentFD = try opener.openDirectory(parent)
                opened.append(parentFD)
                parents.append((parent, parentFD))
            }
            let status: FileStatus
            do {
                status = try parentFD.status(name)  // lstat: a symlink moves as a symlink
            } catch var error {
                error.path = argument.displayString  // the source as it was named, not its last component
                throw error
            }
            if argument.last == UInt8(ascii: "/"), status.kind != .directory {
                // `name/` names a directory (`mv` answers ENOTDIR). For a symlink `cp -a` would go
                // where it leads; Ferry neither moves the link for it nor follows it unasked.
                let what = status.kind == .symlink ? "a symlink: name the directory it leads to, or \(BytePath.split(argument).name.displayString) without the slash for the link itself"
                                                   : "not a directory"
                throw UsageError(message: "\(argument.displayString): a trailing slash names a directory, and this is \(what)")
            }
            if status.kind == .directory {
                try Self.refuseIntoItself(parentFD, name, destination: destination, path: argument)
            }
            let finalName = renameTo ?? name
            if renameTo != nil, last.last == UInt8(ascii: "/"), status.kind != .directory {
                // `newname/` names a directory: a file is not renamed to it (nor by `mv`).
                throw UsageError(message: "\(last.displayString) is not a directory: a trailing slash names one, "
                                 + "and \(argument.displayString) is not a directory to be given that name")
            }
            if let there = try? destination.status(finalName), there.fileID == status.fileID {
                throw UsageError(message: "\(argument.displayString) and \(BytePath.join(destinationPath, finalName).displayString) are the same file")
            }
            if sources.contains(where: { $0.destinationName == finalName }) {
                throw UsageError(message: "two sources would both be named \(finalName.displayString) in the destination")
            }
            sources.append(CopySource(directory: parentFD, name: name, destinationName: finalName))
            paths.append(path)
        }
        self.sources = sources
        self.sourcePaths = paths
        self.destination = destination
        self.opened = opened
        success = true
    }

    deinit { opened.forEach { $0.closeQuietly() } }

    /// The final absolute paths, one per source.
    public var finalPaths: [ByteString] { sources.map { BytePath.join(destinationPath, $0.destinationName) } }


    /// Absolute and free of `.`/`..` components (the opener refuses whatever escapes a root). A
    /// `..` is taken as the kernel takes it: after a symlink, it leads to the parent of where the
    /// symlink leads, not back to where the text was (`link/../data` names the data beside the
    /// link's target, as `mv` and the shell's programs see it). So a path with one is resolved on
    /// the filesystem, its directory named as the kernel has it; one that cannot be (not there
    /// yet) is normalized by its text.
    public static func absolute(_ path: ByteString) -> ByteString {
        var full = path
        if full.first != UInt8(ascii: "/") {
            full = currentDirectory() + [UInt8(ascii: "/")] + path
        }
        if full.split(separator: UInt8(ascii: "/")).contains(where: { $0.elementsEqual("..".utf8) }) {
            let (parent, name) = BytePath.split(full)
            let directory = BytePath.isPlainName(name) ? parent : full
            if let fd = try? FileDescriptor.openDirectory(directory) {
                defer { fd.closeQuietly() }
                if let resolved = fd.resolvedPath() { return BytePath.isPlainName(name) ? BytePath.join(resolved, name) : resolved }
            }
        }
        return BytePath.lexicallyNormalized(full)
    }

    static func currentDirectory() -> ByteString {
        guard let cwd = getcwd(nil, 0) else { return Array(FileManager.default.currentDirectoryPath.utf8) }
        defer { free(cwd) }
        return Array(UnsafeRawBufferPointer(start: cwd, count: strlen(cwd)))
    }

    /// A directory copied or moved into itself would never end: refuse if the destination is the
    /// source or lies beneath it, walking up from the destination by `..` to the root.
    static func refuseIntoItself(_ parent: FileDescriptor, _ name: ByteString, destination: FileDescriptor, path: ByteString) throws {
        let source = try parent.status(name).fileID
        var current = try destination.openAt(Array(".".utf8), [.directory])
        defer { current.closeQuietly() }
        for _ in 0..<4096 {
            let here = try current.status().fileID
            if here == source { throw UsageError(message: "cannot move or copy \(path.displayString) into itself") }
            let up = try current.openAt(Array("..".utf8), [.directory])
            let upID: FileID
            do { upID = try up.status().fileID } catch { up.closeQuietly(); throw error }
            if upID == here { up.closeQuietly(); return }
            current.closeQuietly()
            current = up
        }
    }
}

/// Opens directories by absolute path: beneath the allowed roots when there are any.
struct DirectoryOpener {
    let roots: [(path: ByteString, fd: FileDescriptor)]?

    init(roots: [ByteString]?) {
        self.roots = roots?.compactMap { root in (try? FileDescriptor.openDirectory(root)).map { (root, $0) } }
    }

    func close() { roots?.forEach { $0.fd.closeQuietly() } }

    func openDirectory(_ absolute: ByteString) throws -> FileDescriptor {
        guard let roots else { return try FileDescriptor.openDirectory(absolute) }
        let slash = UInt8(ascii: "/")
        let candidates = roots.filter { root in
            absolute == root.path || root.path == [slash] || (absolute.starts(with: root.path) && absolute.count > root.path.count && absolute[root.path.count] == slash)
        }
        guard let root = candidates.max(by: { $0.path.count < $1.path.count }) else {
            throw SystemError(errno: Errno(rawValue: EXDEV), syscall: "resolve", path: absolute.displayString, refinedCode: .escapesRoot)
        }
        let relative = Array(absolute.dropFirst(root.path.count).drop(while: { $0 == slash }))
        return try PathResolver.open(beneath: root.fd, relative, [.directory], symlinks: .forThisProcess)
    }
}

extension DirectoryOpener {
    /// Opens one directory and closes the opener's root descriptors.
    func openDirectoryClosingRoots(_ absolute: ByteString) throws -> FileDescriptor {
        defer { close() }
        return try openDirectory(absolute)
    }
}
