import Foundation
import Logging
import NostrCrypto
import NostrService
import NostrServicePostgres
import NostrServiceTesting
import PostgresNIO
import Testing

/// The two stores every journal test runs against.
enum StoreBackend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite, postgres
    var testDescription: String { rawValue }
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
