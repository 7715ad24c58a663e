import ArgumentParser
import FerryConfig
import FerryStorage
import FerrySystem
import Foundation

/// Options shared by the commands that look at filesystems: which configuration file, and the
/// per-invocation overrides of what it says.
struct StorageOptions: ParsableArguments {
    @Option(help: "Configuration file (default: FERRY_CONFIG, ~/.config/ferry/ferry.toml, /etc/ferry/ferry.toml).")
    var config: String?
    @Option(help: "Filesystem backend: auto, lustre, xfs, ext4, posix (default: the configured root's, else auto).")
    var backend: BackendChoice?
    @Option(help: "The lfs program (default: FERRY_LFS, else the configuration's lfs, else lfs in PATH).")
    var lfs: String?

    func loadConfiguration() throws -> FerryConfiguration { try ConfigurationFile.load(config) }

    /// The backend for an open path: `--backend`, else the deepest configured root containing it.
    func backend(for fd: FileDescriptor, path: ByteString, configuration: FerryConfiguration) throws(StorageError) -> any StorageBackend {
        try configuration.storageBackend(for: fd, path: path, choice: backend, lfs: lfs)
    }
}

/// `--config` alone, for the commands that only read the task database (which the file may name).
struct ConfigurationFile: ParsableArguments {
    @Option(help: "Configuration file (default: FERRY_CONFIG, ~/.config/ferry/ferry.toml, /etc/ferry/ferry.toml).")
    var config: String?

    func load() throws -> FerryConfiguration { try Self.load(config) }

    static func load(_ explicit: String?) throws -> FerryConfiguration {
        guard let file = FerryConfiguration.locate(explicit: explicit) else { return FerryConfiguration() }
        do {
            return try FerryConfiguration.load(file: file)
        } catch {
            throw ValidationError("configuration \(error)")
        }
    }
}
