import FerryJobs
import PostgresNIO

/// `PostgresTLS` (libpq's `sslmode` and `sslrootcert`) as PostgresNIO's settings, the same for the
/// store's first connection and for its pool.
struct PostgresEncryption {
    let mode: PostgresTLS.Mode
    /// Nil: no encryption.
    let configuration: TLSConfiguration?

    /// `prefer` falls back to an unencrypted connection where the server offers no TLS; the
    /// others refuse to.
    var insists: Bool { mode != .prefer && mode != .allow }

    func connection() throws -> PostgresConnection.Configuration.TLS {
        guard let configuration else { return .disable }
        let context: NIOSSLContext
        do { context = try NIOSSLContext(configuration: configuration) } catch {
            throw TaskStoreError.database("cannot set up TLS for PostgreSQL: \(error)")
        }
        return insists ? .require(context) : .prefer(context)
    }

    func client() -> PostgresClient.Configuration.TLS {
        guard let configuration else { return .disable }
        return insists ? .require(configuration) : .prefer(configuration)
    }
}

extension PostgresTaskStore {
    static func encryption(_ tls: PostgresTLS) throws -> PostgresEncryption {
        guard tls.mode != .disable else { return PostgresEncryption(mode: .disable, configuration: nil) }
        var configuration = TLSConfiguration.makeClientConfiguration()
        var mode = tls.mode
        // As libpq does: `require` with a root certificate given checks the server's against it.
        if mode == .require, tls.rootCertificate != nil { mode = .verifyCA }
        switch mode {
        case .verifyCA, .verifyFull:
            guard let root = tls.rootCertificate else {
                throw TaskStoreError.database("sslmode=\(mode.rawValue) needs sslrootcert=/path/to/root.crt")
            }
            do { configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(root)) } catch {
                throw TaskStoreError.database("cannot read sslrootcert \(root): \(error)")
            }
            configuration.certificateVerification = mode == .verifyFull ? .fullVerification : .noHostnameVerification
        default:
            // Encrypted, the server not authenticated (libpq's `prefer` and `require`).
            configuration.certificateVerification = .none
        }
        return PostgresEncryption(mode: mode, configuration: configuration)
    }
}
