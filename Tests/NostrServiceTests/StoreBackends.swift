import Foundation
import Logging
import NostrCrypto
import NostrService
import NostrServicePostgres
import PostgresNIO
import Testing

/// The two stores every journal test runs against.
enum StoreBackend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite, postgres
    var testDescription: String { rawValue }
}

/// The throw-away cluster `make test` starts (Scripts/with-postgres.sh); PostgreSQL tests fail without it.
func postgresURL() throws -> String {
    try #require(
        ProcessInfo.processInfo.environment["SWITCHBOARD_TEST_POSTGRES"],
        "SWITCHBOARD_TEST_POSTGRES is not set: run the tests with `make test` or through Scripts/with-postgres.sh")
}

/// `count` store instances on one fresh database of `backend` (a new SQLite file, or a new PostgreSQL database
/// created for the test), like replicas sharing it; all closed and the database deleted when `body` ends.
func withStores<R: Sendable>(
    _ backend: StoreBackend, count: Int = 1, _ body: ([any ServiceStore]) async throws -> R
) async throws -> R {
    switch backend {
    case .sqlite:
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("service.sqlite").path
        return try await body((0..<count).map { _ in try SQLiteServiceStore(path: path) })
    case .postgres:
        return try await withPostgresDatabase { configuration in
            let stores = (0..<count).map { _ in PostgresServiceStore(configuration: configuration, logger: quiet) }
            return try await withThrowingTaskGroup(of: Void.self) { group in
                for store in stores { group.addTask { await store.run() } }
                defer { group.cancelAll() }
                return try await body(stores)
            }
        }
    }
}

/// A new, empty database on the test cluster, dropped when `body` ends.
func withPostgresDatabase<R: Sendable>(_ body: (PostgresClient.Configuration) async throws -> R) async throws -> R {
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
            try? await admin.query(PostgresQuery(unsafeSQL: "DROP DATABASE \(name) WITH (FORCE)"))
            throw error
        }
    }
}
