import FerryJobs
@testable import FerryJobsPostgres
import FerryTestSupport
import Foundation
import Testing

/// `sslmode` and `sslrootcert` in a database URL, as libpq reads them.
@Suite struct DatabaseURLTLSTests {
    @Test func sslSettingsAreReadAndCheckedFromTheURL() throws {
        guard case .postgres(_, _, _, _, _, let plain) = try DatabaseURL("postgres://u@db/ferry") else { Issue.record("not postgres"); return }
        #expect(plain == PostgresTLS(mode: .prefer), "libpq's default")
        guard case .postgres(_, _, _, _, _, let full) = try DatabaseURL("postgres://u@db/ferry?sslmode=verify-full&sslrootcert=/etc/ssl/pg-root.crt") else {
            Issue.record("not postgres"); return
        }
        #expect(full == PostgresTLS(mode: .verifyFull, rootCertificate: "/etc/ssl/pg-root.crt"))
        #expect(throws: TaskStoreError.self) { try DatabaseURL("postgres://u@db/ferry?sslmode=always") }
        #expect(throws: TaskStoreError.self) { try DatabaseURL("postgres://u@db/ferry?sslmode=verify-ca") }  // no root certificate
        #expect(throws: TaskStoreError.self) { try DatabaseURL("postgres://u@db/ferry?sslcert=/x") }  // not read: said so
    }
}

/// A cluster of its own with TLS on, where the role `tls_only` may connect only encrypted: the
/// store connects as asked, and checks the server's certificate when asked.
@Suite("PostgreSQL over TLS", .serialized,
       .enabled(if: PostgresCluster.available && FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl")))
struct PostgresTLSTests {
    /// The body gets the cluster, the CA that signed the server's certificate (for localhost and
    /// 127.0.0.1), and another CA.
    func withTLSCluster(_ body: (PostgresCluster, String, String) async throws -> Void) async throws {
        let cluster = try PostgresCluster()
        defer { cluster.stop() }
        let certificates = try TemporaryDirectory.make(prefix: "ferry-tls")
        defer { try? FileManager.default.removeItem(atPath: certificates) }
        let data = cluster.directory + "/data"
        func selfSigned(_ name: String, subject: String) throws {
            try Shell.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject,
                           "-keyout", "\(certificates)/\(name).key", "-out", "\(certificates)/\(name).crt"])
        }
        try selfSigned("ca", subject: "/CN=Ferry test CA")
        try selfSigned("other", subject: "/CN=Another CA")
        try Shell.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                       "-keyout", data + "/server.key", "-out", certificates + "/server.csr"])
        try "subjectAltName=DNS:localhost,IP:127.0.0.1\n".write(toFile: certificates + "/ext", atomically: true, encoding: .utf8)
        try Shell.run(["openssl", "x509", "-req", "-in", certificates + "/server.csr", "-CA", certificates + "/ca.crt",
                       "-CAkey", certificates + "/ca.key", "-CAcreateserial", "-days", "2", "-extfile", certificates + "/ext",
                       "-out", data + "/server.crt"])
        try Shell.run(["chown", "postgres:postgres", data + "/server.key", data + "/server.crt"])
        try Shell.run(["chmod", "600", data + "/server.key"])
        let hba = data + "/pg_hba.conf"
        let rules = try String(contentsOfFile: hba, encoding: .utf8)
        try ("hostnossl all tls_only 0.0.0.0/0 reject\nhostnossl all tls_only ::/0 reject\n" + rules)
            .write(toFile: hba, atomically: false, encoding: .utf8)
        try cluster.psql(cluster.database, "CREATE ROLE tls_only LOGIN SUPERUSER")
        try cluster.psql(cluster.database, "ALTER SYSTEM SET ssl = on")
        try cluster.psql(cluster.database, "SELECT pg_reload_conf()")
        try await Task.sleep(for: .milliseconds(500))
        try await body(cluster, certificates + "/ca.crt", certificates + "/other.crt")
    }

    @Test func connectionsAreEncryptedAndCertificatesChecked() async throws {
        try await withTLSCluster { cluster, ca, other in
            func open(_ query: String, host: String = "127.0.0.1") async throws -> PostgresTaskStore {
                let url = try DatabaseURL("postgres://tls_only@\(host):\(cluster.port)/\(cluster.database)\(query)")
                guard case .postgres(let host, let port, let user, let password, let database, let tls) = url else { throw TaskStoreError.database("not postgres") }
                return try await PostgresTaskStore(host: host, port: port, user: user, password: password, database: database, tls: tls)
            }
            // Encrypted, as asked: the role may connect no other way.
            let store = try await open("?sslmode=require")
            let task = try await store.create(NewTask(kind: .move, sources: [StoredPath("/p/a")], destination: StoredPath("/p/b"), owner: "u"))
            #expect(try await store.claim(worker: "w", limit: 1, lease: .seconds(30)).map(\.id) == [task.id], "the pool's connections too")
            await store.shutdown()
            await #expect(throws: TaskStoreError.self) { _ = try await open("?sslmode=disable") }
            await (try await open("")).shutdown()  // the default, prefer, encrypts where it can
            // The server's certificate, checked against the CA that signed it, by name and by address.
            await (try await open("?sslmode=verify-full&sslrootcert=\(ca)", host: "localhost")).shutdown()
            await (try await open("?sslmode=verify-ca&sslrootcert=\(ca)")).shutdown()
            // Against a CA that signed nothing of the server's: refused.
            await #expect(throws: TaskStoreError.self) { _ = try await open("?sslmode=verify-ca&sslrootcert=\(other)") }
            await #expect(throws: TaskStoreError.self) { _ = try await open("?sslmode=require&sslrootcert=\(other)") }
        }
    }
}
