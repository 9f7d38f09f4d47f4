import Foundation
import NostrServicePostgres
public import PostgresNIO
import NostrCrypto

/// The throw-away cluster `make test` starts (Scripts/with-postgres.sh): its URL, from
/// `SWITCHBOARD_TEST_POSTGRES`. PostgreSQL tests fail (they are not skipped) without it.
public func postgresURL() throws -> String {
    guard let url = ProcessInfo.processInfo.environment["SWITCHBOARD_TEST_POSTGRES"] else {
        throw TestKitError("SWITCHBOARD_TEST_POSTGRES is not set: run the tests with `make test` or through Scripts/with-postgres.sh")
    }
    return url
}

/// A new, empty database on the test cluster, dropped when `body` ends.
public func withPostgresDatabase<R: Sendable>(_ body: (PostgresClient.Configuration) async throws -> R) async throws -> R {
    let administration = try PostgresServiceStore.configuration(url: try postgresURL())
    let admin = PostgresClient(configuration: administration)
    let name = "switchboard_test_" + Hex.encode(SecureMemory.randomBytes(6))
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await admin.run() }
        defer { group.cancelAll() }
        try await admin.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"))
        var configuration = administration
        configuration.database = name
        do {
            let result = try await body(configuration)
            try await admin.query(PostgresQuery(unsafeSQL: "DROP DATABASE \(name) WITH (FORCE)"))
            return result
        } catch {
            _ = try? await admin.query(PostgresQuery(unsafeSQL: "DROP DATABASE \(name) WITH (FORCE)"))
            throw error
        }
    }
}
