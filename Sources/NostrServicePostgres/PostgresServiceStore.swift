import Foundation
public import Logging
public import NostrCore
public import NostrCrypto
public import NostrService
public import PostgresNIO
public import ServiceLifecycle

/// A ``ServiceStore`` in PostgreSQL (postgres-nio): for several replicas of one service sharing its journal.
///
/// Two runtimes on the same key, on different machines, never both run one request: a claim is one
/// `INSERT … ON CONFLICT DO NOTHING`, which PostgreSQL makes atomic across connections.
///
/// The store owns a `PostgresClient`, which must be running: add the store to the `ServiceGroup` before the
/// runtime (it is a `Service`), or call ``run()`` in a task of your own. Its tables (`switchboard_journal`,
/// `switchboard_checkpoints`, `switchboard_kv`) are created on first use, under an advisory lock so replicas
/// starting together do not race.
public final class PostgresServiceStore: ServiceStore, Service {
    public let client: PostgresClient
    private let logger: Logger
    private let schema: PostgresMigrations

    public init(configuration: PostgresClient.Configuration, logger: Logger) {
        self.client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        self.logger = logger
        self.schema = PostgresMigrations(
            client: client, logger: logger, table: "switchboard_migrations", lock: Self.migrationLock, migrations: Self.migrations)
    }

    /// Connects to `url`: `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=disable|prefer|require]`.
    public convenience init(url: String, logger: Logger) throws {
        self.init(configuration: try Self.configuration(url: url), logger: logger)
    }

    /// Keeps the connections; returns when cancelled or on graceful shutdown.
    public func run() async {
        await cancelWhenGracefulShutdown { await self.client.run() }
    }

    /// The client configuration a `postgres://` URL describes.
    public static func configuration(url: String) throws -> PostgresClient.Configuration {
        guard let components = URLComponents(string: url), ["postgres", "postgresql"].contains(components.scheme),
            let host = components.host, !host.isEmpty
        else { throw ServiceError(.badRequest, "not a postgres:// URL with a host") }
        let database = String(components.path.drop(while: { $0 == "/" }))
        var tls = PostgresClient.Configuration.TLS.prefer(.makeClientConfiguration())
        switch components.queryItems?.first(where: { $0.name == "sslmode" })?.value {
        case nil, "prefer": break
        case "disable": tls = .disable
        case "require": tls = .require(.makeClientConfiguration())
        case let other?: throw ServiceError(.badRequest, "sslmode \(other) is not one of disable, prefer, require")
        }
        return PostgresClient.Configuration(
            host: host, port: components.port ?? 5432, username: components.user ?? "postgres",
            password: components.password, database: database.isEmpty ? nil : database, tls: tls)
    }

    // MARK: Schema

    private func prepared() async throws {
        try await schema.prepared()
    }

    /// An arbitrary constant naming this store's migration lock (`pg_advisory_xact_lock`).
    private static let migrationLock: Int64 = 0x5357_4244_0001

    /// Version n is `migrations[n - 1]`; only ever append.
    private static let migrations: [[String]] = [
        [
            """
            CREATE TABLE switchboard_journal (
                id BYTEA PRIMARY KEY,
                service BYTEA NOT NULL,
                sender BYTEA NOT NULL,
                kind INTEGER NOT NULL,
                created_at BIGINT NOT NULL,
                owner TEXT NOT NULL,
                claimed_at BIGINT NOT NULL,
                finished_at BIGINT,
                outcome TEXT,
                replies TEXT,
                delivery TEXT
            )
            """,
            "CREATE INDEX switchboard_journal_created ON switchboard_journal (created_at)",
            "CREATE TABLE switchboard_checkpoints (service BYTEA PRIMARY KEY, created_at BIGINT NOT NULL)",
            """
            CREATE TABLE switchboard_kv (
                namespace TEXT NOT NULL,
                key TEXT NOT NULL,
                value BYTEA NOT NULL,
                PRIMARY KEY (namespace, key)
            )
            """,
        ],
        [
            """
            CREATE TABLE switchboard_log (
                seq BIGSERIAL PRIMARY KEY,
                namespace TEXT NOT NULL,
                at BIGINT NOT NULL,
                entry BYTEA NOT NULL
            )
            """,
            "CREATE INDEX switchboard_log_namespace ON switchboard_log (namespace, seq)",
            "CREATE INDEX switchboard_log_at ON switchboard_log (namespace, at)",
        ],
        // Each claim records its holder's lease (NULL for claims made before: judged by the caller's lease).
        ["ALTER TABLE switchboard_journal ADD COLUMN lease BIGINT"],
    ]

    // MARK: ServiceStore

    public func claim(_ entry: JournalEntry, owner: String, now: Timestamp, lease: Int64) async throws -> ClaimResult {
        try await prepared()
        let id = ByteBuffer(bytes: entry.id.bytes32.bytes)
        // The insert and the read are two statements: a row released (deleted) by its holder between them is
        // claimed anew rather than taken for a finished request.
        for _ in 0..<3 {
            let inserted = try await client.query(
                """
                INSERT INTO switchboard_journal (id, service, sender, kind, created_at, owner, claimed_at, lease)
                VALUES (\(id), \(ByteBuffer(bytes: entry.service.bytes32.bytes)), \(ByteBuffer(bytes: entry.sender.bytes32.bytes)),
                        \(Int32(entry.kind.rawValue)), \(entry.createdAt), \(owner), \(now), \(lease))
                ON CONFLICT (id) DO NOTHING RETURNING 1
                """, logger: logger
            ).collect()
            if !inserted.isEmpty { return .claimed }
            let rows = try await client.query(
                "SELECT owner, claimed_at, lease, finished_at, replies FROM switchboard_journal WHERE id = \(id)", logger: logger)
            for try await (holder, claimedAt, recorded, finishedAt, replies) in rows.decode((String, Int64, Int64?, Int64?, String?).self) {
                if finishedAt != nil { return .finished(replies: try replies.map(StoredReplies.decode) ?? []) }
                return .unfinished(owner: holder, claimedAt: claimedAt, lease: recorded ?? lease, now: now)
            }
        }
        throw ServiceError(.unavailable, "the claim of \(entry.id.hex) kept changing under it")
    }

    public func renew(_ ids: [EventID], owner: String, now: Timestamp) async throws {
        guard !ids.isEmpty else { return }
        try await prepared()
        try await client.query(
            """
            UPDATE switchboard_journal SET claimed_at = \(now)
            WHERE id = ANY(\(ids.map { ByteBuffer(bytes: $0.bytes32.bytes) })) AND owner = \(owner) AND finished_at IS NULL
            """, logger: logger)
    }

    public func reclaim(_ id: EventID, owner: String, now: Timestamp, lease: Int64) async throws -> Bool {
        try await prepared()
        let rows = try await client.query(
            """
            UPDATE switchboard_journal SET owner = \(owner), claimed_at = \(now), lease = \(lease)
            WHERE id = \(ByteBuffer(bytes: id.bytes32.bytes)) AND finished_at IS NULL AND claimed_at + coalesce(lease, \(lease)) < \(now)
            RETURNING 1
            """, logger: logger
        ).collect()
        return rows.count == 1
    }

    public func release(_ id: EventID, owner: String) async throws {
        try await prepared()
        try await client.query(
            """
            DELETE FROM switchboard_journal
            WHERE id = \(ByteBuffer(bytes: id.bytes32.bytes)) AND owner = \(owner) AND finished_at IS NULL
            """, logger: logger)
    }

    public func finish(_ id: EventID, owner: String, outcome: String, replies: [Event], now: Timestamp) async throws {
        try await prepared()
        try await client.query(
            """
            UPDATE switchboard_journal SET finished_at = \(now), outcome = \(outcome), replies = \(StoredReplies.encode(replies))
            WHERE id = \(ByteBuffer(bytes: id.bytes32.bytes)) AND owner = \(owner)
            """, logger: logger)
    }

    public func recordDelivery(_ id: EventID, _ delivery: String) async throws {
        try await prepared()
        try await client.query(
            "UPDATE switchboard_journal SET delivery = \(delivery) WHERE id = \(ByteBuffer(bytes: id.bytes32.bytes))",
            logger: logger)
    }

    public func checkpoint(for service: PublicKey) async throws -> Timestamp? {
        try await prepared()
        let rows = try await client.query(
            "SELECT created_at FROM switchboard_checkpoints WHERE service = \(ByteBuffer(bytes: service.bytes32.bytes))",
            logger: logger)
        for try await createdAt in rows.decode(Int64.self) { return createdAt }
        return nil
    }

    public func advanceCheckpoint(for service: PublicKey, to createdAt: Timestamp) async throws {
        try await prepared()
        try await client.query(
            """
            INSERT INTO switchboard_checkpoints (service, created_at) VALUES (\(ByteBuffer(bytes: service.bytes32.bytes)), \(createdAt))
            ON CONFLICT (service) DO UPDATE
            SET created_at = greatest(switchboard_checkpoints.created_at, excluded.created_at)
            """, logger: logger)
    }

    public func pruneJournal(before createdAt: Timestamp) async throws -> Int {
        try await prepared()
        let rows = try await client.query(
            "DELETE FROM switchboard_journal WHERE created_at < \(createdAt) AND finished_at IS NOT NULL RETURNING 1",
            logger: logger
        ).collect()
        return rows.count
    }

    public func value(_ key: String, in namespace: String) async throws -> [UInt8]? {
        try await prepared()
        let rows = try await client.query(
            "SELECT value FROM switchboard_kv WHERE namespace = \(namespace) AND key = \(key)", logger: logger)
        for try await value in rows.decode(ByteBuffer.self) { return Array(value.readableBytesView) }
        return nil
    }

    public func setValue(_ value: [UInt8]?, forKey key: String, in namespace: String) async throws {
        try await prepared()
        // Under the key's lock, so that it never lands inside an updateValue's read and write.
        try await client.withTransaction(logger: logger) { db in
            try await Self.lock(key, in: namespace, db, logger: self.logger)
            try await Self.write(value, forKey: key, in: namespace, db, logger: self.logger)
        }
    }

    /// Stores `value` for `key`, or deletes it for nil.
    private static func write(_ value: [UInt8]?, forKey key: String, in namespace: String, _ db: PostgresConnection, logger: Logger) async throws {
        if let value {
            try await db.query(
                """
                INSERT INTO switchboard_kv (namespace, key, value) VALUES (\(namespace), \(key), \(ByteBuffer(bytes: value)))
                ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value
                """, logger: logger)
        } else {
            try await db.query("DELETE FROM switchboard_kv WHERE namespace = \(namespace) AND key = \(key)", logger: logger)
        }
    }

    /// Takes the transaction-scoped advisory lock of one key-value key (it also covers a key with no row yet; a
    /// hash collision only serialises two keys more than needed).
    private static func lock(_ key: String, in namespace: String, _ db: PostgresConnection, logger: Logger) async throws {
        try await db.query("SELECT pg_advisory_xact_lock(hashtextextended(\(key), hashtextextended(\(namespace), 0)))", logger: logger)
    }

    public func updateValue(
        forKey key: String, in namespace: String, _ change: @escaping @Sendable ([UInt8]?) throws -> [UInt8]?
    ) async throws -> [UInt8]? {
        try await prepared()
        return try await client.withTransaction(logger: logger) { db in
            try await Self.lock(key, in: namespace, db, logger: self.logger)
            var current: [UInt8]?
            let rows = try await db.query(
                "SELECT value FROM switchboard_kv WHERE namespace = \(namespace) AND key = \(key)", logger: self.logger)
            for try await value in rows.decode(ByteBuffer.self) { current = Array(value.readableBytesView) }
            let new = try change(current)
            if new != nil || current != nil { try await Self.write(new, forKey: key, in: namespace, db, logger: self.logger) }
            return new
        }
    }

    public func values(in namespace: String) async throws -> [String: [UInt8]] {
        try await prepared()
        var values: [String: [UInt8]] = [:]
        let rows = try await client.query(
            "SELECT key, value FROM switchboard_kv WHERE namespace = \(namespace)", logger: logger)
        for try await (key, value) in rows.decode((String, ByteBuffer).self) {
            values[key] = Array(value.readableBytesView)
        }
        return values
    }

    public func appendLog(_ entry: [UInt8], at time: Timestamp, in namespace: String) async throws {
        try await prepared()
        try await client.query(
            "INSERT INTO switchboard_log (namespace, at, entry) VALUES (\(namespace), \(time), \(ByteBuffer(bytes: entry)))",
            logger: logger)
    }

    public func log(in namespace: String, limit: Int, before: Int64?) async throws -> [LogEntry] {
        try await prepared()
        var entries: [LogEntry] = []
        let rows = try await client.query(
            """
            SELECT seq, at, entry FROM switchboard_log WHERE namespace = \(namespace) AND seq < \(before ?? Int64.max)
            ORDER BY seq DESC LIMIT \(max(0, limit))
            """, logger: logger)
        for try await (sequence, time, entry) in rows.decode((Int64, Int64, ByteBuffer).self) {
            entries.append(LogEntry(sequence: sequence, time: time, entry: Array(entry.readableBytesView)))
        }
        return entries
    }

    public func pruneLog(in namespace: String, before time: Timestamp) async throws -> Int {
        try await prepared()
        let rows = try await client.query(
            "DELETE FROM switchboard_log WHERE namespace = \(namespace) AND at < \(time) RETURNING 1", logger: logger
        ).collect()
        return rows.count
    }
}
