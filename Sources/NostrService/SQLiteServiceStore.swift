import Foundation
import GRDB
public import NostrCore
public import NostrCrypto
import NostrRelay

/// A ``ServiceStore`` in an SQLite file (GRDB, WAL mode): the default, for one service process.
///
/// Claims are single write transactions, so they are atomic between tasks and between processes that open the
/// same file. Replicas on several machines need a shared database (a PostgreSQL store is planned).
public final class SQLiteServiceStore: ServiceStore {
    private let pool: DatabasePool

    /// Opens (creating and migrating if needed) the database at `path`.
    public init(path: String) throws {
        pool = try openMigratedDatabase(path: path, label: "switchboard.service", migrator: Self.migrator)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE journal (
                    id BLOB PRIMARY KEY,
                    service BLOB NOT NULL,
                    sender BLOB NOT NULL,
                    kind INTEGER NOT NULL,
                    created_at INTEGER NOT NULL,
                    owner TEXT NOT NULL,
                    claimed_at INTEGER NOT NULL,
                    finished_at INTEGER,
                    outcome TEXT,
                    replies TEXT,
                    delivery TEXT
                ) WITHOUT ROWID;
                CREATE INDEX journal_created ON journal(created_at);
                CREATE TABLE checkpoints (
                    service BLOB PRIMARY KEY,
                    created_at INTEGER NOT NULL
                ) WITHOUT ROWID;
                CREATE TABLE kv (
                    namespace TEXT NOT NULL,
                    key TEXT NOT NULL,
                    value BLOB NOT NULL,
                    PRIMARY KEY (namespace, key)
                ) WITHOUT ROWID;
                """)
        }
        return migrator
    }

    public func claim(_ entry: JournalEntry, owner: String, now: Timestamp, lease: Int64) async throws -> ClaimResult {
        try await pool.write { db in
            try db.execute(
                sql: """
                    INSERT INTO journal (id, service, sender, kind, created_at, owner, claimed_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING
                    """,
                arguments: [
                    Data(entry.id.bytes32.bytes), Data(entry.service.bytes32.bytes), Data(entry.sender.bytes32.bytes),
                    Int(entry.kind.rawValue), entry.createdAt, owner, now,
                ])
            if db.changesCount == 1 { return .claimed }
            guard let row = try Row.fetchOne(
                db, sql: "SELECT claimed_at, finished_at, replies FROM journal WHERE id = ?",
                arguments: [Data(entry.id.bytes32.bytes)])
            else { return .inProgress }
            return try Self.result(claimedAt: row["claimed_at"], finishedAt: row["finished_at"], replies: row["replies"], now: now, lease: lease)
        }
    }

    static func result(claimedAt: Int64, finishedAt: Int64?, replies: String?, now: Timestamp, lease: Int64) throws -> ClaimResult {
        if finishedAt != nil { return .finished(replies: try replies.map(StoredReplies.decode) ?? []) }
        return claimedAt + lease < now ? .interrupted : .inProgress
    }

    public func reclaim(_ id: EventID, owner: String, now: Timestamp, lease: Int64) async throws -> Bool {
        try await pool.write { db in
            try db.execute(
                sql: "UPDATE journal SET owner = ?, claimed_at = ? WHERE id = ? AND finished_at IS NULL AND claimed_at + ? < ?",
                arguments: [owner, now, Data(id.bytes32.bytes), lease, now])
            return db.changesCount == 1
        }
    }

    public func finish(_ id: EventID, outcome: String, replies: [Event], now: Timestamp) async throws {
        try await pool.write { db in
            try db.execute(
                sql: "UPDATE journal SET finished_at = ?, outcome = ?, replies = ? WHERE id = ?",
                arguments: [now, outcome, StoredReplies.encode(replies), Data(id.bytes32.bytes)])
        }
    }

    public func recordDelivery(_ id: EventID, _ delivery: String) async throws {
        try await pool.write { db in
            try db.execute(sql: "UPDATE journal SET delivery = ? WHERE id = ?", arguments: [delivery, Data(id.bytes32.bytes)])
        }
    }

    public func checkpoint(for service: PublicKey) async throws -> Timestamp? {
        try await pool.read { db in
            try Int64.fetchOne(db, sql: "SELECT created_at FROM checkpoints WHERE service = ?", arguments: [Data(service.bytes32.bytes)])
        }
    }

    public func advanceCheckpoint(for service: PublicKey, to createdAt: Timestamp) async throws {
        try await pool.write { db in
            try db.execute(
                sql: """
                    INSERT INTO checkpoints (service, created_at) VALUES (?, ?)
                    ON CONFLICT (service) DO UPDATE SET created_at = max(created_at, excluded.created_at)
                    """,
                arguments: [Data(service.bytes32.bytes), createdAt])
        }
    }

    public func pruneJournal(before createdAt: Timestamp) async throws -> Int {
        try await pool.write { db in
            try db.execute(sql: "DELETE FROM journal WHERE created_at < ? AND finished_at IS NOT NULL", arguments: [createdAt])
            return db.changesCount
        }
    }

    public func value(_ key: String, in namespace: String) async throws -> [UInt8]? {
        try await pool.read { db in
            try Data.fetchOne(db, sql: "SELECT value FROM kv WHERE namespace = ? AND key = ?", arguments: [namespace, key])
                .map { Array($0) }
        }
    }

    public func setValue(_ value: [UInt8]?, forKey key: String, in namespace: String) async throws {
        try await pool.write { db in
            if let value {
                try db.execute(
                    sql: """
                        INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?)
                        ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value
                        """,
                    arguments: [namespace, key, Data(value)])
            } else {
                try db.execute(sql: "DELETE FROM kv WHERE namespace = ? AND key = ?", arguments: [namespace, key])
            }
        }
    }

    public func values(in namespace: String) async throws -> [String: [UInt8]] {
        try await pool.read { db in
            var values: [String: [UInt8]] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT key, value FROM kv WHERE namespace = ?", arguments: [namespace]) {
                let data: Data = row["value"]
                values[row["key"]] = Array(data)
            }
            return values
        }
    }
}
