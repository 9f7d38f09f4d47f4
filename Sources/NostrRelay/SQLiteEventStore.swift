import Foundation
package import GRDB
public import NostrCore
import NostrCrypto

/// An ``EventStore`` in an SQLite file (through GRDB), for a relay whose events outlive the process.
///
/// Events are kept as their JSON text with the columns filters select on beside it. Indexes serve the
/// filter shapes services use: ids, author(+kind), kind, tag value (single-letter tags only, as NIP-01 queries
/// only those) and `created_at` for newest-first scans. The database runs in WAL mode, so queries do not wait
/// for writes. The schema is versioned; opening an older file migrates it.
public final class SQLiteEventStore: EventStore {
    private let pool: DatabasePool

    /// Opens (creating if needed) the database at `path`.
    public init(path: String) throws {
        pool = try openMigratedDatabase(path: path, label: "switchboard.events", migrator: Self.migrator)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE events (
                    seq INTEGER PRIMARY KEY,
                    id BLOB NOT NULL UNIQUE,
                    pubkey BLOB NOT NULL,
                    kind INTEGER NOT NULL,
                    created_at INTEGER NOT NULL,
                    expiration INTEGER,
                    address TEXT UNIQUE,
                    json TEXT NOT NULL
                );
                CREATE INDEX events_author_kind ON events(pubkey, kind, created_at);
                CREATE INDEX events_kind ON events(kind, created_at);
                CREATE INDEX events_created ON events(created_at);
                CREATE INDEX events_expiration ON events(expiration) WHERE expiration IS NOT NULL;
                CREATE TABLE tags (
                    event INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
                    name TEXT NOT NULL,
                    value TEXT NOT NULL,
                    created_at INTEGER NOT NULL
                );
                CREATE INDEX tags_value ON tags(name, value, created_at);
                CREATE INDEX tags_event ON tags(event);
                -- NIP-09: ids deleted by an author (only that author's deletion counts).
                CREATE TABLE deleted_ids (
                    id BLOB NOT NULL,
                    pubkey BLOB NOT NULL,
                    PRIMARY KEY (id, pubkey)
                ) WITHOUT ROWID;
                -- NIP-09 `a` deletions: versions of the address up to `until` are deleted.
                CREATE TABLE deleted_addresses (
                    address TEXT PRIMARY KEY,
                    until INTEGER NOT NULL
                ) WITHOUT ROWID;
                """)
        }
        return migrator
    }

    public func save(_ event: Event, now: Timestamp) async throws -> StoreOutcome {
        if event.isExpired(at: now) { return .expired }
        if event.kind.isEphemeral { return .ephemeral }
        return try await pool.write { db in
            let id = Data(event.id.bytes32.bytes)
            let pubkey = Data(event.pubkey.bytes32.bytes)
            if try Bool.fetchOne(db, sql: "SELECT 1 FROM events WHERE id = ?", arguments: [id]) == true {
                return .duplicate
            }
            if try Bool.fetchOne(
                db, sql: "SELECT 1 FROM deleted_ids WHERE id = ? AND pubkey = ?", arguments: [id, pubkey]) == true
            {
                return .deleted
            }
            let address = event.replacementAddress
            if let address {
                if let until = try Int64.fetchOne(
                    db, sql: "SELECT until FROM deleted_addresses WHERE address = ?", arguments: [address]),
                    event.createdAt <= until
                {
                    return .deleted
                }
                if let row = try Row.fetchOne(
                    db, sql: "SELECT seq, id, created_at FROM events WHERE address = ?", arguments: [address])
                {
                    let currentCreatedAt: Int64 = row["created_at"]
                    let currentID: Data = row["id"]
                    let newer = event.createdAt != currentCreatedAt
                        ? event.createdAt > currentCreatedAt
                        : id.lexicographicallyPrecedes(currentID)
                    guard newer else { return .superseded }
                    try db.execute(sql: "DELETE FROM events WHERE seq = ?", arguments: [row["seq"] as Int64])
                }
            }
            if event.kind == .deletion { try Self.applyDeletion(event, db) }
            try db.execute(
                sql: """
                    INSERT INTO events (id, pubkey, kind, created_at, expiration, address, json)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [id, pubkey, Int64(event.kind.rawValue), event.createdAt, event.expiration, address, event.json])
            let seq = db.lastInsertedRowID
            for tag in event.tags where tag.fields.count >= 2 && tag.fields[0].utf8.count == 1 {
                try db.execute(
                    sql: "INSERT INTO tags (event, name, value, created_at) VALUES (?, ?, ?, ?)",
                    arguments: [seq, tag.fields[0], tag.fields[1], event.createdAt])
            }
            return .stored
        }
    }

    private static func applyDeletion(_ deletion: Event, _ db: Database) throws {
        let author = Data(deletion.pubkey.bytes32.bytes)
        for tag in deletion.tags where tag.fields.count >= 2 {
            switch tag.fields[0] {
            case "e":
                guard let target = try? EventID(hex: tag.fields[1]) else { continue }
                let targetID = Data(target.bytes32.bytes)
                // Only the author may delete; deleting a deletion has no effect (NIP-09).
                try db.execute(
                    sql: "DELETE FROM events WHERE id = ? AND pubkey = ? AND kind != ?",
                    arguments: [targetID, author, Int64(Kind.deletion.rawValue)])
                try db.execute(
                    sql: "INSERT OR IGNORE INTO deleted_ids (id, pubkey) VALUES (?, ?)", arguments: [targetID, author])
            case "a":
                let address = tag.fields[1]
                let parts = address.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
                guard parts.count >= 2, parts[1] == deletion.pubkey.hex else { continue }
                let key = parts.count == 2 ? address + ":" : address
                try db.execute(
                    sql: """
                        INSERT INTO deleted_addresses (address, until) VALUES (?, ?)
                        ON CONFLICT(address) DO UPDATE SET until = max(until, excluded.until)
                        """,
                    arguments: [key, deletion.createdAt])
                try db.execute(
                    sql: "DELETE FROM events WHERE address = ? AND created_at <= ?",
                    arguments: [key, deletion.createdAt])
            default:
                continue
            }
        }
    }

    public func query(_ filters: [Filter], now: Timestamp) async throws -> [Event] {
        let events = try await pool.read { db in
            var seen = Set<Data>()
            var rows = [(Data, String)]()
            for filter in filters {
                guard let condition = Self.condition(for: filter, now: now) else { continue }
                var sql = "SELECT id, json FROM events WHERE \(condition.sql) ORDER BY created_at DESC, id ASC"
                var arguments = condition.arguments
                if let limit = filter.limit {
                    sql += " LIMIT ?"
                    arguments += [Int64(limit)]
                }
                for row in try Row.fetchAll(db, sql: sql, arguments: arguments) {
                    let id: Data = row[0]
                    if seen.insert(id).inserted { rows.append((id, row[1])) }
                }
            }
            return rows
        }
        var result = [Event]()
        result.reserveCapacity(events.count)
        // Stored events were verified on the way in; decoding them again only restores the value.
        for (_, json) in events { result.append(try Event(json: json)) }
        result.sort(by: Event.queryOrder)
        return result
    }

    public func count(_ filters: [Filter], now: Timestamp) async throws -> Int {
        let conditions = filters.compactMap { Self.condition(for: $0, now: now) }
        guard !conditions.isEmpty else { return 0 }
        let sql = "SELECT COUNT(*) FROM events WHERE " + conditions.map { "(\($0.sql))" }.joined(separator: " OR ")
        let arguments = conditions.reduce(into: StatementArguments()) { $0 += $1.arguments }
        return try await pool.read { db in try Int.fetchOne(db, sql: sql, arguments: arguments) ?? 0 }
    }

    /// The WHERE clause for one filter (without its limit); `nil` when the filter can match nothing.
    static func condition(for filter: Filter, now: Timestamp) -> (sql: String, arguments: StatementArguments)? {
        var clauses = ["(expiration IS NULL OR expiration > ?)"]
        var arguments: StatementArguments = [now]
        func list<T>(_ column: String, _ values: some Collection<T>, _ encode: (T) -> any DatabaseValueConvertible) {
            clauses.append("\(column) IN (\(Array(repeating: "?", count: values.count).joined(separator: ",")))")
            for value in values { arguments += [encode(value)] }
        }
        if let ids = filter.ids {
            if ids.isEmpty { return nil }
            list("id", ids) { Data($0.bytes32.bytes) }
        }
        if let authors = filter.authors {
            if authors.isEmpty { return nil }
            list("pubkey", authors) { Data($0.bytes32.bytes) }
        }
        if let kinds = filter.kinds {
            if kinds.isEmpty { return nil }
            list("kind", kinds) { Int64($0.rawValue) }
        }
        if let since = filter.since {
            clauses.append("created_at >= ?")
            arguments += [since]
        }
        if let until = filter.until {
            clauses.append("created_at <= ?")
            arguments += [until]
        }
        for (name, values) in filter.tags.sorted(by: { $0.key < $1.key }) {
            if values.isEmpty { return nil }
            let placeholders = Array(repeating: "?", count: values.count).joined(separator: ",")
            clauses.append("seq IN (SELECT event FROM tags WHERE name = ? AND value IN (\(placeholders)))")
            arguments += [name]
            for value in values { arguments += [value] }
        }
        return (clauses.joined(separator: " AND "), arguments)
    }
}

/// Opens (creating if needed) an SQLite database in WAL mode through GRDB, waiting up to 5 s for another
/// writer's lock, and brings its schema up to date with `migrator`. Shared by the package's SQLite stores.
package func openMigratedDatabase(path: String, label: String, migrator: DatabaseMigrator) throws -> DatabasePool {
    var configuration = Configuration()
    configuration.label = label
    configuration.busyMode = .timeout(5)
    let pool = try DatabasePool(path: path, configuration: configuration)
    try migrator.migrate(pool)
    return pool
}
