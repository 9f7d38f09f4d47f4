import Foundation
import GRDB
public import NostrCore
public import NostrCrypto
public import NostrRelay

/// The ``WalletStore`` in an SQLite file (GRDB, WAL mode), for one wallet-bridge process and the CLI beside
/// it. Each operation is one write transaction, so concurrent payments are serialised. The per-request reads
/// (a connection, a transaction, what a connection spent) are batched onto one reader connection
/// (`BatchedReads`); listings read through GRDB's pool.
public final class SQLiteWalletStore: WalletStore {
    private let pool: DatabasePool
    private let reads: BatchedReads

    public init(path: String) throws {
        pool = try openMigratedDatabase(path: path, label: "switchboard.wallet", migrator: Self.migrator)
        reads = BatchedReads(pool)
        // Money moves here: a commit reaches the disk before the call returns.
        try pool.writeWithoutTransaction { try $0.execute(sql: "PRAGMA synchronous = FULL") }
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE connections (
                    id TEXT PRIMARY KEY,
                    name TEXT NOT NULL,
                    wallet_index INTEGER NOT NULL UNIQUE,
                    wallet_key BLOB NOT NULL UNIQUE,
                    client_key BLOB NOT NULL,
                    methods TEXT NOT NULL,
                    budget_msat INTEGER,
                    budget_period TEXT,
                    expires_at INTEGER,
                    relays TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    revoked_at INTEGER,
                    balance_msat INTEGER NOT NULL DEFAULT 0
                );
                CREATE UNIQUE INDEX connections_live_name ON connections(name) WHERE revoked_at IS NULL;
                CREATE TABLE transactions (
                    seq INTEGER PRIMARY KEY,
                    connection TEXT NOT NULL REFERENCES connections(id),
                    direction TEXT NOT NULL,
                    state TEXT NOT NULL,
                    payment_hash BLOB NOT NULL,
                    invoice TEXT,
                    description TEXT,
                    description_hash TEXT,
                    preimage TEXT,
                    amount_msat INTEGER NOT NULL,
                    fee_reserve_msat INTEGER NOT NULL DEFAULT 0,
                    fees_paid_msat INTEGER NOT NULL DEFAULT 0,
                    created_at INTEGER NOT NULL,
                    expires_at INTEGER,
                    settled_at INTEGER,
                    metadata TEXT,
                    backend_reference TEXT
                );
                CREATE INDEX transactions_connection ON transactions(connection, created_at);
                CREATE INDEX transactions_hash ON transactions(payment_hash);
                CREATE UNIQUE INDEX transactions_one_payment ON transactions(connection, payment_hash)
                    WHERE direction = 'outgoing' AND state IN ('pending', 'settled');
                CREATE UNIQUE INDEX transactions_one_invoice ON transactions(payment_hash) WHERE direction = 'incoming';
                CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
                INSERT INTO meta (key, value) VALUES ('connections_version', 0);
                """)
        }
        return migrator
    }

    // MARK: Connections

    public func addConnection(
        name: String, clientKey: PublicKey, methods: Set<String>, budget: Budget?, expiresAt: Timestamp?,
        relays: [RelayURL], now: Timestamp, walletKey: @Sendable (Int64) throws -> PublicKey
    ) async throws -> WalletConnection {
        try await pool.write { db in
            if try Row.fetchOne(db, sql: "SELECT 1 FROM connections WHERE name = ? AND revoked_at IS NULL", arguments: [name]) != nil {
                throw WalletStoreError.nameTaken(name)
            }
            let index = try Int64.fetchOne(db, sql: "SELECT COALESCE(MAX(wallet_index) + 1, 0) FROM connections") ?? 0
            let connection = WalletConnection(
                id: Hex.encode(SecureMemory.randomBytes(6)), name: name, walletIndex: index, walletKey: try walletKey(index),
                clientKey: clientKey, methods: methods, budget: budget, expiresAt: expiresAt, relays: relays, createdAt: now)
            try db.execute(
                sql: """
                    INSERT INTO connections (id, name, wallet_index, wallet_key, client_key, methods, budget_msat, budget_period,
                        expires_at, relays, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    connection.id, name, index, Data(connection.walletKey.bytes32.bytes), Data(clientKey.bytes32.bytes),
                    StoredFields.methods(methods), budget?.msat, budget?.period.rawValue, expiresAt,
                    StoredFields.relays(relays), now,
                ])
            try db.execute(sql: "UPDATE meta SET value = value + 1 WHERE key = 'connections_version'")
            return connection
        }
    }

    public func connections() async throws -> [WalletConnection] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM connections ORDER BY wallet_index").map(Self.connection)
        }
    }

    public func connection(idOrName: String) async throws -> WalletConnection? {
        try await reads.read { db in try Self.connection(db, idOrName: idOrName) }
    }

    private static func connection(_ db: Database, idOrName: String) throws -> WalletConnection? {
        let row = try Row.fetchOne(db, sql: "SELECT * FROM connections WHERE id = ?", arguments: [idOrName])
            ?? Row.fetchOne(db, sql: "SELECT * FROM connections WHERE name = ? AND revoked_at IS NULL", arguments: [idOrName])
        return try row.map(connection)
    }

    public func connection(walletKey: PublicKey) async throws -> WalletConnection? {
        try await reads.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM connections WHERE wallet_key = ?", arguments: [Data(walletKey.bytes32.bytes)])
                .map(Self.connection)
        }
    }

    public func revoke(idOrName: String, now: Timestamp) async throws -> WalletConnection? {
        try await pool.write { db in
            guard var connection = try Self.connection(db, idOrName: idOrName), connection.revokedAt == nil else { return nil }
            try db.execute(sql: "UPDATE connections SET revoked_at = ? WHERE id = ?", arguments: [now, connection.id])
            try db.execute(sql: "UPDATE meta SET value = value + 1 WHERE key = 'connections_version'")
            connection.revokedAt = now
            return connection
        }
    }

    public func connectionsVersion() async throws -> Int64 {
        try await reads.read { db in
            try Int64.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'connections_version'") ?? 0
        }
    }

    public func credit(connection: String, msat: Int64) async throws -> Int64 {
        try await pool.write { db in
            try db.execute(sql: "UPDATE connections SET balance_msat = balance_msat + ? WHERE id = ?", arguments: [msat, connection])
            guard db.changesCount == 1 else { throw WalletStoreError.unknownConnection(connection) }
            return try Int64.fetchOne(db, sql: "SELECT balance_msat FROM connections WHERE id = ?", arguments: [connection]) ?? 0
        }
    }

    // MARK: Invoices

    public func addInvoice(_ invoice: WalletTransaction) async throws -> WalletTransaction {
        try await pool.write { db in try Self.insert(invoice, db) }
    }

    public func settleInvoice(paymentHash: Bytes32, preimage: String?, creditsLedger: Bool, now: Timestamp) async throws -> WalletTransaction? {
        try await pool.write { db in try Self.settleInvoice(db, paymentHash: paymentHash, preimage: preimage, creditsLedger: creditsLedger, now: now) }
    }

    private static func settleInvoice(
        _ db: Database, paymentHash: Bytes32, preimage: String?, creditsLedger: Bool, now: Timestamp
    ) throws -> WalletTransaction? {
        guard let row = try Row.fetchOne(
            db, sql: "SELECT * FROM transactions WHERE payment_hash = ? AND direction = 'incoming' AND state IN ('pending', 'accepted')",
            arguments: [Data(paymentHash.bytes)])
        else { return nil }
        var invoice = try transaction(row)
        invoice.state = .settled
        invoice.settledAt = now
        if let preimage { invoice.preimage = preimage }
        try db.execute(
            sql: "UPDATE transactions SET state = 'settled', settled_at = ?, preimage = ? WHERE seq = ?",
            arguments: [now, invoice.preimage, invoice.sequence])
        if creditsLedger {
            try db.execute(
                sql: "UPDATE connections SET balance_msat = balance_msat + ? WHERE id = ?", arguments: [invoice.amountMsat, invoice.connection])
        }
        return invoice
    }

    // MARK: Payments

    public func reserve(_ reservation: PaymentReservation, now: Timestamp) async throws -> ReservationResult {
        try await pool.write { db in try Self.reserve(db, reservation, now: now) }
    }

    private static func reserve(_ db: Database, _ reservation: PaymentReservation, now: Timestamp) throws -> ReservationResult {
        guard let row = try Row.fetchOne(db, sql: "SELECT * FROM connections WHERE id = ?", arguments: [reservation.connection])
        else { return .notLive }
        let connection = try connection(row)
        guard connection.isLive(at: now) else { return .notLive }
        let hash = Data(reservation.invoice.paymentHash.bytes)
        if let existing = try Row.fetchOne(
            db, sql: "SELECT * FROM transactions WHERE connection = ? AND payment_hash = ? AND direction = 'outgoing' AND state IN ('pending', 'settled')",
            arguments: [connection.id, hash])
        {
            return .alreadyPaid(try transaction(existing))
        }
        let (charge, overflow) = reservation.amountMsat.addingReportingOverflow(reservation.feeReserveMsat)
        guard !overflow, reservation.amountMsat > 0, reservation.feeReserveMsat >= 0 else {
            throw NIP47Error(.other, "the amount is out of range")
        }
        if let budget = connection.budget {
            let used = try spent(db, connection: connection.id, since: budget.period.start(containing: now))
            let (total, overflow) = used.addingReportingOverflow(charge)
            if overflow || total > budget.msat { return .quotaExceeded(used: used, budget: budget.msat) }
        }
        if reservation.debitsLedger {
            guard connection.balanceMsat >= charge else { return .insufficientBalance(balance: connection.balanceMsat) }
            try db.execute(sql: "UPDATE connections SET balance_msat = balance_msat - ? WHERE id = ?", arguments: [charge, connection.id])
        }
        let invoice = reservation.invoice
        let payment = WalletTransaction(
            connection: connection.id, direction: .outgoing, state: .pending, paymentHash: invoice.paymentHash,
            invoice: invoice.string, description: invoice.description, descriptionHash: invoice.descriptionHash?.hex,
            amountMsat: reservation.amountMsat, feeReserveMsat: reservation.feeReserveMsat, createdAt: now,
            expiresAt: invoice.expiresAt, metadata: reservation.metadata)
        return .reserved(try insert(payment, db))
    }

    public func settlePayment(sequence: Int64, preimage: String, feesPaidMsat: Int64, creditsLedger: Bool, now: Timestamp) async throws -> WalletTransaction? {
        try await pool.write { db in
            try Self.settlePayment(db, sequence: sequence, preimage: preimage, feesPaidMsat: feesPaidMsat, creditsLedger: creditsLedger, now: now)
        }
    }

    private static func settlePayment(
        _ db: Database, sequence: Int64, preimage: String, feesPaidMsat: Int64, creditsLedger: Bool, now: Timestamp
    ) throws -> WalletTransaction? {
        guard let row = try Row.fetchOne(db, sql: "SELECT * FROM transactions WHERE seq = ? AND state = 'pending'", arguments: [sequence])
        else { return nil }
        var payment = try transaction(row)
        payment.state = .settled
        payment.settledAt = now
        payment.preimage = preimage
        payment.feesPaidMsat = feesPaidMsat
        try db.execute(
            sql: "UPDATE transactions SET state = 'settled', settled_at = ?, preimage = ?, fees_paid_msat = ? WHERE seq = ?",
            arguments: [now, preimage, feesPaidMsat, sequence])
        if creditsLedger {
            // The fee reserve was debited with the amount; what the fee did not use goes back.
            try db.execute(
                sql: "UPDATE connections SET balance_msat = balance_msat + ? WHERE id = ?",
                arguments: [payment.feeReserveMsat - feesPaidMsat, payment.connection])
        }
        return payment
    }

    public func failPayment(sequence: Int64, creditsLedger: Bool, now: Timestamp) async throws -> WalletTransaction? {
        try await pool.write { db in try Self.failPayment(db, sequence: sequence, creditsLedger: creditsLedger) }
    }

    private static func failPayment(_ db: Database, sequence: Int64, creditsLedger: Bool) throws -> WalletTransaction? {
        guard let row = try Row.fetchOne(db, sql: "SELECT * FROM transactions WHERE seq = ? AND state = 'pending'", arguments: [sequence])
        else { return nil }
        var payment = try transaction(row)
        payment.state = .failed
        try db.execute(sql: "UPDATE transactions SET state = 'failed' WHERE seq = ?", arguments: [sequence])
        if creditsLedger {
            try db.execute(
                sql: "UPDATE connections SET balance_msat = balance_msat + ? WHERE id = ?",
                arguments: [payment.amountMsat + payment.feeReserveMsat, payment.connection])
        }
        return payment
    }

    public func payInternally(_ reservation: PaymentReservation, now: Timestamp) async throws -> InternalPaymentResult {
        try await pool.write { db in
            let outcome = try Self.reserve(db, reservation, now: now)
            guard case .reserved(let payment) = outcome else { return .refused(outcome) }
            let target = try Row.fetchOne(
                db, sql: "SELECT * FROM transactions WHERE payment_hash = ? AND direction = 'incoming'",
                arguments: [Data(reservation.invoice.paymentHash.bytes)]
            ).map(Self.transaction)
            let reason = reservation.ledgerRefusal(paying: target, now: now)
            guard let target, reason == nil, let preimage = target.preimage else {
                let failed = try Self.failPayment(db, sequence: payment.sequence, creditsLedger: true) ?? payment
                return .failed(payment: failed, reason: reason ?? "the invoice cannot be settled")
            }
            guard let invoice = try Self.settleInvoice(db, paymentHash: target.paymentHash, preimage: nil, creditsLedger: true, now: now),
                let paid = try Self.settlePayment(db, sequence: payment.sequence, preimage: preimage, feesPaidMsat: 0, creditsLedger: true, now: now)
            else { throw WalletStoreError.inconsistent("the reserved payment or its invoice changed inside one transaction") }
            return .paid(payment: paid, invoice: invoice)
        }
    }

    // MARK: Reading

    public func transaction(connection: String, paymentHash: Bytes32) async throws -> WalletTransaction? {
        try await reads.read { db in
            try Row.fetchOne(
                db, sql: "SELECT * FROM transactions WHERE connection = ? AND payment_hash = ? ORDER BY direction = 'incoming', seq DESC LIMIT 1",
                arguments: [connection, Data(paymentHash.bytes)]
            ).map(Self.transaction)
        }
    }

    public func transactions(connection: String, query: TransactionQuery, now: Timestamp) async throws -> [WalletTransaction] {
        try await reads.read { db in
            var sql = "SELECT * FROM transactions WHERE connection = ? AND created_at >= ? AND created_at <= ?"
            var arguments: StatementArguments = [connection, query.from ?? 0, query.until ?? now]
            if let direction = query.direction {
                sql += " AND direction = ?"
                _ = arguments.append(contentsOf: [direction.rawValue])
            }
            if !query.unpaid { sql += " AND state = 'settled'" }
            sql += " ORDER BY created_at DESC, seq DESC LIMIT ? OFFSET ?"
            _ = arguments.append(contentsOf: [query.limit, query.offset])
            return try Row.fetchAll(db, sql: sql, arguments: arguments).map(Self.transaction)
        }
    }

    public func spent(connection: String, since: Timestamp) async throws -> Int64 {
        try await reads.read { db in try Self.spent(db, connection: connection, since: since) }
    }

    public func unpaidInvoiceCount(connection: String, since: Timestamp, now: Timestamp) async throws -> Int {
        try await reads.read { db in
            try Int.fetchOne(
                db,
                sql: """
                    SELECT COUNT(*) FROM transactions WHERE connection = ? AND created_at >= ? AND direction = 'incoming'
                    AND state = 'pending' AND (expires_at IS NULL OR expires_at > ?)
                    """,
                arguments: [connection, since, now]) ?? 0
        }
    }

    private static func spent(_ db: Database, connection: String, since: Timestamp) throws -> Int64 {
        try Int64.fetchOne(
            db,
            sql: """
                SELECT COALESCE(SUM(amount_msat + CASE state WHEN 'settled' THEN fees_paid_msat ELSE fee_reserve_msat END), 0)
                FROM transactions WHERE connection = ? AND direction = 'outgoing' AND state IN ('pending', 'settled') AND created_at >= ?
                """,
            arguments: [connection, since]) ?? 0
    }

    public func pendingPayments() async throws -> [WalletTransaction] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM transactions WHERE direction = 'outgoing' AND state = 'pending' ORDER BY seq")
                .map(Self.transaction)
        }
    }

    public func pendingInvoices(now: Timestamp) async throws -> [WalletTransaction] {
        try await pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM transactions WHERE direction = 'incoming' AND state = 'pending' AND (expires_at IS NULL OR expires_at > ?) ORDER BY seq",
                arguments: [now]
            ).map(Self.transaction)
        }
    }

    // MARK: Rows

    private static func insert(_ transaction: WalletTransaction, _ db: Database) throws -> WalletTransaction {
        try db.execute(
            sql: """
                INSERT INTO transactions (connection, direction, state, payment_hash, invoice, description, description_hash, preimage,
                    amount_msat, fee_reserve_msat, fees_paid_msat, created_at, expires_at, settled_at, metadata, backend_reference)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
            arguments: [
                transaction.connection, transaction.direction.rawValue, transaction.state.rawValue, Data(transaction.paymentHash.bytes),
                transaction.invoice, transaction.description, transaction.descriptionHash, transaction.preimage,
                transaction.amountMsat, transaction.feeReserveMsat, transaction.feesPaidMsat, transaction.createdAt,
                transaction.expiresAt, transaction.settledAt, transaction.metadata, transaction.backendReference,
            ])
        var stored = transaction
        stored.sequence = db.lastInsertedRowID
        return stored
    }

    private static func connection(_ row: Row) throws -> WalletConnection {
        guard let walletKey = Bytes32(row["wallet_key"] as Data), let clientKey = Bytes32(row["client_key"] as Data) else {
            throw WalletStoreError.inconsistent("a connection's keys are not 32 bytes")
        }
        let budget: Budget? = (row["budget_msat"] as Int64?).flatMap { msat in
            (row["budget_period"] as String?).flatMap(BudgetPeriod.init(rawValue:)).map { Budget(msat: msat, period: $0) }
        }
        return WalletConnection(
            id: row["id"], name: row["name"], walletIndex: row["wallet_index"], walletKey: PublicKey(walletKey),
            clientKey: PublicKey(clientKey), methods: StoredFields.methods(row["methods"]), budget: budget,
            expiresAt: row["expires_at"], relays: StoredFields.relays(row["relays"]), createdAt: row["created_at"],
            revokedAt: row["revoked_at"], balanceMsat: row["balance_msat"])
    }

    private static func transaction(_ row: Row) throws -> WalletTransaction {
        guard let hash = Bytes32(row["payment_hash"] as Data),
            let direction = WalletTransaction.Direction(rawValue: row["direction"]),
            let state = WalletTransaction.State(rawValue: row["state"])
        else { throw WalletStoreError.inconsistent("a transaction row is malformed") }
        return WalletTransaction(
            sequence: row["seq"], connection: row["connection"], direction: direction, state: state, paymentHash: hash,
            invoice: row["invoice"], description: row["description"], descriptionHash: row["description_hash"],
            preimage: row["preimage"], amountMsat: row["amount_msat"], feeReserveMsat: row["fee_reserve_msat"],
            feesPaidMsat: row["fees_paid_msat"], createdAt: row["created_at"], expiresAt: row["expires_at"],
            settledAt: row["settled_at"], metadata: row["metadata"], backendReference: row["backend_reference"])
    }
}

/// Why the wallet store refused an operation.
public enum WalletStoreError: Error, Hashable, Sendable, CustomStringConvertible {
    case nameTaken(String)
    case unknownConnection(String)
    case inconsistent(String)

    public var description: String {
        switch self {
        case .nameTaken(let name): "a live connection is already named '\(name)'"
        case .unknownConnection(let id): "no connection '\(id)'"
        case .inconsistent(let detail): "the wallet store is inconsistent: \(detail)"
        }
    }
}

/// How list-valued fields are kept in a column (both stores).
package enum StoredFields {
    package static func methods(_ methods: Set<String>) -> String { methods.sorted().joined(separator: " ") }
    package static func methods(_ text: String) -> Set<String> { Set(text.split(separator: " ").map(String.init)) }
    package static func relays(_ relays: [RelayURL]) -> String { relays.map(\.string).joined(separator: " ") }
    package static func relays(_ text: String) -> [RelayURL] { text.split(separator: " ").compactMap { try? RelayURL(String($0)) } }
}
