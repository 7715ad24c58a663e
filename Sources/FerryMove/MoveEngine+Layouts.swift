import FerryCopy
import FerryJobs
import FerryStorage
import FerrySystem

/// Lustre layouts for what a task stages: the destination backend's, given to the copy engine.
extension MoveEngine {
    /// What gives files made in `directory` their sources' layouts: nil where the filesystem
    /// (its backend) has none. Directories' default layouts too when every source is on the
    /// same filesystem (see `LayoutCloner.directoryLayouts`).
    func layoutCloner(_ directory: FileDescriptor, _ path: StoredPath, sources: [CopySource]) throws -> (any LayoutCloner)? {
        let backend = try planner.storage(directory, path.bytes)
        guard !backend.layoutAttributeNames.isEmpty else { return nil }
        let here = try directory.status()
        let same = try sources.allSatisfy { source in
            let there = try source.directory.status()
            return (there.deviceMajor, there.deviceMinor) == (here.deviceMajor, here.deviceMinor)
        }
        return BackendLayoutCloner(backend: backend, directoryLayouts: same)
    }
}

/// A destination backend's layouts (Lustre striping) as the copy engine's `LayoutCloner`.
struct BackendLayoutCloner: LayoutCloner {
    let backend: any StorageBackend
    let directoryLayouts: Bool
    var layoutAttributeNames: Set<ByteString> { backend.layoutAttributeNames }
    var createFlags: OpenFlags { backend.layoutCreateFlags }
    func cloneLayout(from source: FileDescriptor, to destination: FileDescriptor) throws {
        try backend.cloneLayout(from: source, to: destination)
    }
}
