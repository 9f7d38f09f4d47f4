package import Logging
package import PostgresNIO
import Synchronization

/// A store's schema in PostgreSQL: versioned migrations applied once, the first time the store is used, in
/// one transaction under an advisory lock, so replicas starting together do not race. Version n is
/// `migrations[n - 1]`; its row in `table` records that it was applied. Only ever append migrations.
package final class PostgresMigrations: Sendable {
    private let client: PostgresClient
    private let logger: Logger
    private let table: String
    private let lock: Int64
    private let migrations: [[String]]
    private let applying = Mutex<Task<Void, any Error>?>(nil)

    package init(client: PostgresClient, logger: Logger, table: String, lock: Int64, migrations: [[String]]) {
        self.client = client
        self.logger = logger
        self.table = table
        self.lock = lock
        self.migrations = migrations
    }

    /// Returns once the schema is current; a failure is retried by the next call.
    package func prepared() async throws {
        let task = applying.withLock { current in
            if let current { return current }
            let task = Task { try await self.migrate() }
            current = task
            return task
        }
        do {
            try await task.value
        } catch {
            applying.withLock { if $0 == task { $0 = nil } }
            throw error
        }
    }

    private func migrate() async throws {
        try await client.withTransaction(logger: logger) { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(\(lock))", logger: logger)
            try await connection.query(PostgresQuery(unsafeSQL: "CREATE TABLE IF NOT EXISTS \(table) (version INTEGER PRIMARY KEY)"), logger: logger)
            var applied = 0
            for try await version in try await connection.query(
                PostgresQuery(unsafeSQL: "SELECT coalesce(max(version), 0) FROM \(table)"), logger: logger
            ).decode(Int.self) {
                applied = version
            }
            for (index, statements) in migrations.enumerated() where index + 1 > applied {
                for statement in statements {
                    try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                try await connection.query(PostgresQuery(unsafeSQL: "INSERT INTO \(table) (version) VALUES (\(index + 1))"), logger: logger)
            }
        }
    }
}
