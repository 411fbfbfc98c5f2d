import Foundation
import Testing
import TestSupport
import UsersFixtures

/// TLS to both services, kept working: a PostgreSQL cluster of the test's own that accepts
/// only TLS connections, and a MongoDB-wire server with TLS, each with a certificate the
/// test makes with openssl.
@Suite(.serialized) struct TLSTests {
    /// A self-signed certificate for 127.0.0.1 and its key, written as `name.crt`/`name.key` in `directory`.
    static func certificate(_ name: String, in directory: String) throws {
        let command = "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 "
            + "-keyout \(directory)/\(name).key -out \(directory)/\(name).crt 2>/dev/null"
        #expect(try shell(command) == 0, "openssl makes a certificate")
    }

    @Test func postgresOverTLSLoadsWithTheRightRootCertificateAndRefusesTheWrongOne() throws {
        let sandbox = try Sandbox()
        try sandbox.seed(users: 100)
        let directory = sandbox.stateDirectory + "-tls"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let cluster = ["ETL_PG_DIR": directory + "/pg", "ETL_PG_PORT": "55497"]
        defer {
            try? Services.services(environment: cluster, ["stop", "postgres"])
            try? FileManager.default.removeItem(atPath: directory)
        }
        _ = try shell("chmod 755 \(directory)")
        try Services.services(environment: cluster, ["start", "postgres"])
        try Self.certificate("server", in: directory)
        try Self.certificate("other", in: directory)
        // TLS on, and only TLS accepted from the network.
        let data = directory + "/pg/data"
        #expect(try shell("""
            cp \(directory)/server.crt \(directory)/server.key \(data)/ && chmod 600 \(data)/server.key \
            && { [ "$(id -u)" -ne 0 ] || chown postgres: \(data)/server.crt \(data)/server.key; } \
            && printf "ssl = on\\n" >> \(data)/postgresql.conf \
            && sed -i 's/^host /hostssl /' \(data)/pg_hba.conf
            """) == 0)
        try Services.services(environment: cluster, ["restart", "postgres"])

        let base = "postgresql://etl:etl@127.0.0.1:55497/etl"
        func start(_ query: String, schema: String) throws -> JobResult {
            try sandbox.run(["start", "--postgres-url", base + query, "--mongodb-url", Services.mongoURL, "--database", sandbox.mongoDatabase,
                             "--state-dir", sandbox.stateDirectory + "-" + schema, "--target-schema", schema])
        }
        defer { for schema in ["verified", "required", "wrong", "plain"] { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-" + schema) } }

        let verified = "?sslmode=verify-full&sslrootcert=\(directory)/server.crt"
        let loaded = try start(verified, schema: "verified")
        #expect(loaded.status == 0, "\(loaded)")
        let verify = try sandbox.run(["verify", "--postgres-url", base + verified, "--mongodb-url", Services.mongoURL,
                                      "--state-dir", sandbox.stateDirectory + "-verified"])
        #expect(verify.status == 0, "every row over TLS: \(verify)\nstdout:\n\(verify.stdout)")
        // Issue #40: a verify over TLS printed OK, then died of SIGABRT at exit (a thread's
        // OpenSSL state torn down while exit ran OpenSSL's cleanup). Again and again, each
        // thread's end shifted by 0-2 ms into that window, and no thread left at exit.
        for round in 0..<12 {
            let again = try sandbox.run(["verify", "--postgres-url", base + verified, "--mongodb-url", Services.mongoURL,
                                         "--state-dir", sandbox.stateDirectory + "-verified"],
                                        environment: ["ETL_THREAD_END_DELAY_MS": String(round % 3), "ETL_THREADS_AT_EXIT": "report"])
            #expect(again.status == 0 && !again.signaled, "verify over TLS, round \(round): \(again)")
            let status = try sandbox.run(["status", "--postgres-url", base + verified, "--state-dir", sandbox.stateDirectory + "-verified"],
                                         environment: ["ETL_THREAD_END_DELAY_MS": String(round % 3), "ETL_THREADS_AT_EXIT": "report"])
            #expect(status.status == 0 && !status.signaled, "status over TLS, round \(round): \(status)")
        }

        let required = try start("?sslmode=require", schema: "required")
        #expect(required.status == 0, "\(required.stderr)")

        for (query, schema, reason) in [("?sslmode=verify-full&sslrootcert=\(directory)/other.crt", "wrong", "certificate verify failed"),
                                        ("?sslmode=disable", "plain", "no encryption")] {
            let refused = try start(query, schema: schema)
            #expect(refused.status == 69 && !refused.signaled, "\(schema): \(refused.stderr)")
            #expect(refused.stderr.split(separator: "\n").count == 1 && refused.stderr.contains(reason), "\(schema): \(refused.stderr)")
            #expect(!refused.stderr.contains(":etl@") && refused.stderr.contains("etl:***@"), "the password is masked: \(refused.stderr)")
            #expect(!FileManager.default.fileExists(atPath: sandbox.stateDirectory + "-" + schema + "/pipelines.json"), "no job recorded")
        }
    }

    @Test func mongoOverTLSLoadsWithItsCertificate() throws {
        let sandbox = try Sandbox()
        let directory = sandbox.stateDirectory + "-mtls"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Self.certificate("server", in: directory)
        let server = try PrivateMongo(flags: ["--tls-cert-file", directory + "/server.crt", "--tls-key-file", directory + "/server.key"])
        let url = server.url + "/?tls=true&tlsCAFile=\(directory)/server.crt"
        let seeded = try sandbox.run(["seed", "--users", "60", "--mongodb-url", url, "--database", "app"])
        #expect(seeded.status == 0, "\(seeded.stderr)")
        let loaded = try sandbox.run(["start", "--mongodb-url", url, "--postgres-url", sandbox.postgresURL, "--database", "app",
                                      "--state-dir", sandbox.stateDirectory])
        #expect(loaded.status == 0, "\(loaded.stderr)")
        #expect(try sandbox.counts()["users"] == 60)
        let plain = try sandbox.run(["start", "--mongodb-url", server.url + "/?serverSelectionTimeoutMS=2000", "--postgres-url", sandbox.postgresURL,
                                     "--database", "app", "--state-dir", sandbox.stateDirectory + "-plain", "--target-schema", "plain"])
        defer { try? FileManager.default.removeItem(atPath: sandbox.stateDirectory + "-plain") }
        #expect(plain.status == 69 && plain.stderr.split(separator: "\n").count == 1, "without TLS: one line, 69: \(plain.stderr)")
    }
}
