import FerryCopy
import FerrySystem
import SystemPackage

/// `cp`-style arguments resolved to open directories: each source's parent and name, and the
/// destination directory with the final name of each source.
struct CopyPlan {
    struct UsageError: Error { var message: String }

    var sources: [CopySource]
    let destination: FileDescriptor
    let destinationPath: ByteString
    private var opened: [FileDescriptor]

    init(arguments: [ByteString]) throws {
        guard let last = arguments.last, arguments.count >= 2 else { throw UsageError(message: "give at least one source and a destination") }
        let sourcePaths = arguments.dropLast()
        var opened: [FileDescriptor] = []
        var success = false
        defer { if !success { opened.forEach { $0.closeQuietly() } } }

        // DEST an existing directory (a symlink to one counts, as with cp): sources go inside it.
        let destination: FileDescriptor
        var renameTo: ByteString?
        if let directory = try? FileDescriptor.openDirectory(last) {
            destination = directory
            destinationPath = last
        } else {
            guard sourcePaths.count == 1 else {
                throw UsageError(message: "\(last.displayString) is not a directory (several sources need an existing directory)")
            }
            let (parent, name) = BytePath.split(last)
            guard Self.isPlainName(name) else { throw UsageError(message: "\(last.displayString) is not a usable destination name") }
            do {
                destination = try FileDescriptor.openDirectory(parent)
            } catch {
                throw UsageError(message: "the destination's directory \(parent.displayString) cannot be opened: \(error)")
            }
            destinationPath = parent
            renameTo = name
        }
        opened.append(destination)

        var sources: [CopySource] = []
        var parents: [ByteString: FileDescriptor] = [:]
        for path in sourcePaths {
            let (parent, name) = BytePath.split(path)
            guard Self.isPlainName(name) else {
                throw UsageError(message: "\(path.displayString): name a file or directory (not ., .. or /)")
            }
            let parentFD: FileDescriptor
            if let known = parents[parent] {
                parentFD = known
            } else {
                parentFD = try FileDescriptor.openDirectory(parent)
                opened.append(parentFD)
                parents[parent] = parentFD
            }
            let status = try parentFD.status(name)  // lstat: a symlink is copied as a symlink
            if status.kind == .directory {
                try Self.refuseCopyIntoItself(parentFD, name, destination: destination, path: path)
            }
            let finalName = renameTo ?? name
            if sources.contains(where: { $0.destinationName == finalName }) {
                throw UsageError(message: "two sources would both be named \(finalName.displayString) in the destination")
            }
            sources.append(CopySource(directory: parentFD, name: name, destinationName: finalName))
        }
        self.sources = sources
        self.destination = destination
        self.opened = opened
        success = true
    }

    func close() { opened.forEach { $0.closeQuietly() } }

    static func isPlainName(_ name: ByteString) -> Bool {
        !name.isEmpty && name != Array(".".utf8) && name != Array("..".utf8) && !name.contains(UInt8(ascii: "/"))
    }

    /// A directory copied into itself would never end: refuse if the destination is the source or
    /// lies beneath it, walking up from the destination by `..` to the root.
    static func refuseCopyIntoItself(_ parent: FileDescriptor, _ name: ByteString, destination: FileDescriptor, path: ByteString) throws {
        let source = try parent.status(name).fileID
        var current = try destination.openAt(Array(".".utf8), [.directory])
        defer { current.closeQuietly() }
        for _ in 0..<4096 {
            let here = try current.status().fileID
            if here == source { throw UsageError(message: "cannot copy \(path.displayString) into itself") }
            let up = try current.openAt(Array("..".utf8), [.directory])
            let upID: FileID
            do { upID = try up.status().fileID } catch { up.closeQuietly(); throw error }
            if upID == here {
                up.closeQuietly()
                return  // reached the root
            }
            current.closeQuietly()
            current = up
        }
    }
}
