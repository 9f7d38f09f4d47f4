public import Logging
public import NostrCore
public import NostrCrypto
public import NostrRelay
public import PostgresNIO
import NostrServicePostgres
public import WalletKit

/// The ``WalletStore`` in PostgreSQL, for several wallet-bridge replicas sharing one database.
///
/// Every operation that moves money is one transaction that first locks the connection rows it touches
/// (`SELECT … FOR UPDATE`, in id order, so two payments in opposite directions cannot deadlock). A burst of
/// payments spread over replicas is therefore serialised per connection exactly as in one process, and the
/// partial unique index on (connection, payment hash) for pending or settled payments makes a second payment
/// of one hash impossible even if a bug skipped the check. Tables (`wallet_…`) are created on first use under
/// an advisory lock. The `PostgresClient` must be running (``PostgresServiceStore`` runs it when they share
/// one).
public final class PostgresWalletStore: WalletStore {
    let client: PostgresClient
    let logger: Logger
    private let schema: PostgresMigrations

    public init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
        self.schema = PostgresMigrations(client: client, logger: logger, table: "wallet_migrations", lock: Self.migrationLock, migrations: Self.migrations)
    }

    // MARK: Schema

    private func prepared() async throws {
        try await schema.prepared()
    }

    private static let migrationLock: Int64 = 0x5357_4244_0047

    /// Version n is `migrations[n - 1]`; only ever append.
    private static let migrations: [[String]] = [
        [
            """
            CREATE TABLE wallet_connections (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                wallet_index BIGINT NOT NULL UNIQUE,
                wallet_key BYTEA NOT NULL UNIQUE,
                client_key BYTEA NOT NULL,
                methods TEXT NOT NULL,
                budget_msat BIGINT,
                budget_period TEXT,
                expires_at BIGINT,
                relays TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                revoked_at BIGINT,
                balance_msat BIGINT NOT NULL DEFAULT 0
            )
            """,
            "CREATE UNIQUE INDEX wallet_connections_live_name ON wallet_connections (name) WHERE revoked_at IS NULL",
            """
            CREATE TABLE wallet_transactions (
                seq BIGSERIAL PRIMARY KEY,
                connection TEXT NOT NULL REFERENCES wallet_connections (id),
                direction TEXT NOT NULL,
                state TEXT NOT NULL,
                payment_hash BYTEA NOT NULL,
                invoice TEXT,
                description TEXT,
                description_hash TEXT,
                preimage TEXT,
                amount_msat BIGINT NOT NULL,
                fee_reserve_msat BIGINT NOT NULL DEFAULT 0,
                fees_paid_msat BIGINT NOT NULL DEFAULT 0,
                created_at BIGINT NOT NULL,
                expires_at BIGINT,
                settled_at BIGINT,
                metadata TEXT,
                backend_reference TEXT
            )
            """,
            "CREATE INDEX wallet_transactions_connection ON wallet_transactions (connection, created_at)",
            "CREATE INDEX wallet_transactions_hash ON wallet_transactions (payment_hash)",
            """
            CREATE UNIQUE INDEX wallet_transactions_one_payment ON wallet_transactions (connection, payment_hash)
                WHERE direction = 'outgoing' AND state IN ('pending', 'settled')
            """,
            "CREATE UNIQUE INDEX wallet_transactions_one_invoice ON wallet_transactions (payment_hash) WHERE direction = 'incoming'",
            "CREATE TABLE wallet_meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
            "INSERT INTO wallet_meta (key, value) VALUES ('connections_version', 0)",
        ]
    ]

    /// Runs `body` in a transaction; its own errors come out as they were thrown (not wrapped).
    private func transaction<R: Sendable>(_ body: (PostgresConnection) async throws -> R) async throws -> R {
        do {
            return try await client.withTransaction(logger: logger) { connection in try await body(connection) }
        } catch let error as PostgresTransactionError {
            if let inner = error.closureError { throw inner }
            throw error
        }
    }

    // MARK: Connections

    public func addConnection(
        name: String, clientKey: PublicKey, methods: Set<String>, budget: Budget?, expiresAt: Timestamp?,
        relays: [RelayURL], now: Timestamp, walletKey: @Sendable (Int64) throws -> PublicKey
    ) async throws -> WalletConnection {
        try await prepared()
        return try await transaction { db in
            // One connection created at a time, so indexes are handed out without gaps or clashes.
            try await db.query("SELECT value FROM wallet_meta WHERE key = 'connections_version' FOR UPDATE", logger: logger)
            let taken = try await db.query(
                "SELECT 1 FROM wallet_connections WHERE name = \(name) AND revoked_at IS NULL", logger: logger
            ).collect()
            guard taken.isEmpty else { throw WalletStoreError.nameTaken(name) }
            var index: Int64 = 0
            for try await next in try await db.query(
                "SELECT coalesce(max(wallet_index) + 1, 0) FROM wallet_connections", logger: logger
            ).decode(Int64.self) {
                index = next
            }
            let connection = WalletConnection(
                id: Hex.encode(SecureMemory.randomBytes(6)), name: name, walletIndex: index, walletKey: try walletKey(index),
                clientKey: clientKey, methods: methods, budget: budget, expiresAt: expiresAt, relays: relays, createdAt: now)
            try await db.query(
                """
                INSERT INTO wallet_connections (id, name, wallet_index, wallet_key, client_key, methods, budget_msat, budget_period,
                    expires_at, relays, created_at)
                VALUES (\(connection.id), \(name), \(index), \(Self.bytes(connection.walletKey.bytes32)), \(Self.bytes(clientKey.bytes32)),
                    \(StoredFields.methods(methods)), \(budget?.msat), \(budget?.period.rawValue), \(expiresAt),
                    \(StoredFields.relays(relays)), \(now))
                """, logger: logger)
            try await db.query("UPDATE wallet_meta SET value = value + 1 WHERE key = 'connections_version'", logger: logger)
            return connection
        }
    }

    public func connections() async throws -> [WalletConnection] {
        try await prepared()
        return try await Self.connections(client.query("SELECT * FROM wallet_connections ORDER BY wallet_index", logger: logger))
    }

    public func connection(idOrName: String) async throws -> WalletConnection? {
        try await prepared()
        return try await client.withConnection { db in try await Self.connection(db, idOrName: idOrName, logger: self.logger) }
    }

    private static func connection(_ db: PostgresConnection, idOrName: String, lock: Bool = false, logger: Logger) async throws -> WalletConnection? {
        let forUpdate = lock ? " FOR UPDATE" : ""
        if let byID = try await connections(
            db.query("SELECT * FROM wallet_connections WHERE id = \(idOrName)\(unescaped: forUpdate)", logger: logger)
        ).first {
            return byID
        }
        return try await connections(
            db.query("SELECT * FROM wallet_connections WHERE name = \(idOrName) AND revoked_at IS NULL\(unescaped: forUpdate)", logger: logger)
        ).first
    }

    public func connection(walletKey: PublicKey) async throws -> WalletConnection? {
        try await prepared()
        return try await Self.connections(
            client.query("SELECT * FROM wallet_connections WHERE wallet_key = \(Self.bytes(walletKey.bytes32))", logger: logger)
        ).first
    }

    public func revoke(idOrName: String, now: Timestamp) async throws -> WalletConnection? {
        try await prepared()
        return try await transaction { db in
            guard var connection = try await Self.connection(db, idOrName: idOrName, lock: true, logger: logger), connection.revokedAt == nil
            else { return nil }
            try await db.query("UPDATE wallet_connections SET revoked_at = \(now) WHERE id = \(connection.id)", logger: logger)
            try await db.query("UPDATE wallet_meta SET value = value + 1 WHERE key = 'connections_version'", logger: logger)
            connection.revokedAt = now
            return connection
        }
    }

    public func connectionsVersion() async throws -> Int64 {
        try await prepared()
        for try await value in try await client.query(
            "SELECT value FROM wallet_meta WHERE key = 'connections_version'", logger: logger
        ).decode(Int64.self) {
            return value
        }
        return 0
    }

    public func credit(connection: String, msat: Int64) async throws -> Int64 {
        try await prepared()
        for try await balance in try await client.query(
            "UPDATE wallet_connections SET balance_msat = balance_msat + \(msat) WHERE id = \(connection) RETURNING balance_msat",
            logger: logger
        ).decode(Int64.self) {
            return balance
        }
        throw WalletStoreError.unknownConnection(connection)
    }

    // MARK: Invoices

    public func addInvoice(_ invoice: WalletTransaction) async throws -> WalletTransaction {
        try await prepared()
        return try await client.withConnection { db in try await Self.insert(invoice, db, logger: self.logger) }
    }

    public func settleInvoice(paymentHash: Bytes32, preimage: String?, creditsLedger: Bool, now: Timestamp) async throws -> WalletTransaction? {
        try await prepared()
        return try await transaction { db in
            try await Self.settleInvoice(db, paymentHash: paymentHash, preimage: preimage, creditsLedger: creditsLedger, now: now, logger: logger)
        }
    }

    private static func settleInvoice(
        _ db: PostgresConnection, paymentHash: Bytes32, preimage: String?, creditsLedger: Bool, now: Timestamp, logger: Logger
    ) async throws -> WalletTransaction? {
        guard let invoice = try await transactions(db.query(
            """
            UPDATE wallet_transactions SET state = 'settled', settled_at = \(now), preimage = coalesce(\(preimage), preimage)
            WHERE payment_hash = \(bytes(paymentHash)) AND direction = 'incoming' AND state IN ('pending', 'accepted')
            RETURNING *
            """, logger: logger)).first
        else { return nil }
        if creditsLedger {
            try await db.query(
                "UPDATE wallet_connections SET balance_msat = balance_msat + \(invoice.amountMsat) WHERE id = \(invoice.connection)",
                logger: logger)
        }
        return invoice
    }

    // MARK: Payments

    public func reserve(_ reservation: PaymentReservation, now: Timestamp) async throws -> ReservationResult {
        try await prepared()
        return try await transaction { db in
            try await Self.lock(db, [reservation.connection], logger: logger)
            return try await Self.reserve(db, reservation, now: now, logger: logger)
        }
    }

    /// Locks connection rows in id order (so no two transactions wait on each other in a cycle).
    private static func lock(_ db: PostgresConnection, _ ids: Set<String>, logger: Logger) async throws {
        for id in ids.sorted() {
            try await db.query("SELECT 1 FROM wallet_connections WHERE id = \(id) FOR UPDATE", logger: logger)
        }
    }

    private static func reserve(_ db: PostgresConnection, _ reservation: PaymentReservation, now: Timestamp, logger: Logger) async throws -> ReservationResult {
        guard let connection = try await connections(
            db.query("SELECT * FROM wallet_connections WHERE id = \(reservation.connection)", logger: logger)
        ).first, connection.isLive(at: now)
        else { return .notLive }
        let hash = bytes(reservation.invoice.paymentHash)
        if let existing = try await transactions(db.query(
            """
            SELECT * FROM wallet_transactions
            WHERE connection = \(connection.id) AND payment_hash = \(hash) AND direction = 'outgoing' AND state IN ('pending', 'settled')
            """, logger: logger)).first
        {
            return .alreadyPaid(existing)
        }
        let (charge, overflow) = reservation.amountMsat.addingReportingOverflow(reservation.feeReserveMsat)
        guard !overflow, reservation.amountMsat > 0, reservation.feeReserveMsat >= 0 else {
            throw NIP47Error(.other, "the amount is out of range")
        }
        if let budget = connection.budget {
            let used = try await spent(db, connection: connection.id, since: budget.period.start(containing: now), logger: logger)
            let (total, overflow) = used.addingReportingOverflow(charge)
            if overflow || total > budget.msat { return .quotaExceeded(used: used, budget: budget.msat) }
        }
        if reservation.debitsLedger {
            guard connection.balanceMsat >= charge else { return .insufficientBalance(balance: connection.balanceMsat) }
            try await db.query(
                "UPDATE wallet_connections SET balance_msat = balance_msat - \(charge) WHERE id = \(connection.id)", logger: logger)
        }
        let invoice = reservation.invoice
        let payment = WalletTransaction(
            connection: connection.id, direction: .outgoing, state: .pending, paymentHash: invoice.paymentHash,
            invoice: invoice.string, description: invoice.description, descriptionHash: invoice.descriptionHash?.hex,
            amountMsat: reservation.amountMsat, feeReserveMsat: reservation.feeReserveMsat, createdAt: now,
            expiresAt: invoice.expiresAt, metadata: reservation.metadata)
        return .reserved(try await insert(payment, db, logger: logger))
    }

    public func settlePayment(sequence: Int64, preimage: String, feesPaidMsat: Int64, creditsLedger: Bool, now: Timestamp) async throws -> WalletTransaction? {
        try await prepared()
        return try await transaction { db in
            try await Self.settlePayment(db, sequence: sequence, preimage: preimage, feesPaidMsat: feesPaidMsat, creditsLedger: creditsLedger, now: now, logger: logger)
        }
    }

    private static func settlePayment(
        _ db: PostgresConnection, sequence: Int64, preimage: String, feesPaidMsat: Int64, creditsLedger: Bool, now: Timestamp, logger: Logger
    ) async throws -> WalletTransaction? {
        guard let payment = try await transactions(db.query(
            """
            UPDATE wallet_transactions SET state = 'settled', settled_at = \(now), preimage = \(preimage), fees_paid_msat = \(feesPaidMsat)
            WHERE seq = \(sequence) AND state = 'pending' RETURNING *
            """, logger: logger)).first
        else { return nil }
        if creditsLedger {
            try await db.query(
                "UPDATE wallet_connections SET balance_msat = balance_msat + \(payment.feeReserveMsat - feesPaidMsat) WHERE id = \(payment.connection)",
                logger: logger)
        }
        return payment
    }

    public func failPayment(sequence: Int64, creditsLedger: Bool, now: Timestamp) async throws -> WalletTransaction? {
        try await prepared()
        return try await transaction { db in
            try await Self.failPayment(db, sequence: sequence, creditsLedger: creditsLedger, logger: logger)
        }
    }

    private static func failPayment(_ db: PostgresConnection, sequence: Int64, creditsLedger: Bool, logger: Logger) async throws -> WalletTransaction? {
        guard let payment = try await transactions(db.query(
            "UPDATE wallet_transactions SET state = 'failed' WHERE seq = \(sequence) AND state = 'pending' RETURNING *", logger: logger)).first
        else { return nil }
        if creditsLedger {
            try await db.query(
                "UPDATE wallet_connections SET balance_msat = balance_msat + \(payment.amountMsat + payment.feeReserveMsat) WHERE id = \(payment.connection)",
                logger: logger)
        }
        return payment
    }

    public func payInternally(_ reservation: PaymentReservation, now: Timestamp) async throws -> InternalPaymentResult {
        try await prepared()
        return try await transaction { db in
            let hash = Self.bytes(reservation.invoice.paymentHash)
            let payee = try await Self.transactions(db.query(
                "SELECT * FROM wallet_transactions WHERE payment_hash = \(hash) AND direction = 'incoming'", logger: logger)).first
            try await Self.lock(db, Set([reservation.connection] + (payee.map { [$0.connection] } ?? [])), logger: logger)
            let outcome = try await Self.reserve(db, reservation, now: now, logger: logger)
            guard case .reserved(let payment) = outcome else { return .refused(outcome) }
            // Read again under the locks: another payer may have settled it meanwhile.
            let target = try await Self.transactions(db.query(
                "SELECT * FROM wallet_transactions WHERE payment_hash = \(hash) AND direction = 'incoming' FOR UPDATE", logger: logger)).first
            let reason = reservation.ledgerRefusal(paying: target, now: now)
            guard let target, reason == nil, let preimage = target.preimage else {
                let failed = try await Self.failPayment(db, sequence: payment.sequence, creditsLedger: true, logger: logger) ?? payment
                return .failed(payment: failed, reason: reason ?? "the invoice cannot be settled")
            }
            guard let invoice = try await Self.settleInvoice(
                db, paymentHash: target.paymentHash, preimage: nil, creditsLedger: true, now: now, logger: logger),
                let paid = try await Self.settlePayment(
                    db, sequence: payment.sequence, preimage: preimage, feesPaidMsat: 0, creditsLedger: true, now: now, logger: logger)
            else { throw WalletStoreError.inconsistent("the reserved payment or its invoice changed inside one transaction") }
            return .paid(payment: paid, invoice: invoice)
        }
    }

    // MARK: Reading

    public func transaction(connection: String, paymentHash: Bytes32) async throws -> WalletTransaction? {
        try await prepared()
        return try await Self.transactions(client.query(
            """
            SELECT * FROM wallet_transactions WHERE connection = \(connection) AND payment_hash = \(Self.bytes(paymentHash))
            ORDER BY direction = 'incoming', seq DESC LIMIT 1
            """, logger: logger)).first
    }

    public func transactions(connection: String, query: TransactionQuery, now: Timestamp) async throws -> [WalletTransaction] {
        try await prepared()
        let direction = query.direction?.rawValue
        return try await Self.transactions(client.query(
            """
            SELECT * FROM wallet_transactions
            WHERE connection = \(connection) AND created_at >= \(query.from ?? 0) AND created_at <= \(query.until ?? now)
                AND (\(direction)::TEXT IS NULL OR direction = \(direction))
                AND (\(query.unpaid) OR state = 'settled')
            ORDER BY created_at DESC, seq DESC LIMIT \(query.limit) OFFSET \(query.offset)
            """, logger: logger))
    }

    public func spent(connection: String, since: Timestamp) async throws -> Int64 {
        try await prepared()
        return try await client.withConnection { db in try await Self.spent(db, connection: connection, since: since, logger: self.logger) }
    }

    private static func spent(_ db: PostgresConnection, connection: String, since: Timestamp, logger: Logger) async throws -> Int64 {
        for try await total in try await db.query(
            """
            SELECT coalesce(sum(amount_msat + CASE state WHEN 'settled' THEN fees_paid_msat ELSE fee_reserve_msat END), 0)::BIGINT
            FROM wallet_transactions
            WHERE connection = \(connection) AND direction = 'outgoing' AND state IN ('pending', 'settled') AND created_at >= \(since)
            """, logger: logger
        ).decode(Int64.self) {
            return total
        }
        return 0
    }

    public func unpaidInvoiceCount(connection: String, since: Timestamp, now: Timestamp) async throws -> Int {
        try await prepared()
        for try await count in try await client.query(
            """
            SELECT count(*)::BIGINT FROM wallet_transactions
            WHERE connection = \(connection) AND created_at >= \(since) AND direction = 'incoming' AND state = 'pending'
            AND (expires_at IS NULL OR expires_at > \(now))
            """, logger: logger
        ).decode(Int64.self) {
            return Int(count)
        }
        return 0
    }

    public func pendingPayments() async throws -> [WalletTransaction] {
        try await prepared()
        return try await Self.transactions(client.query(
            "SELECT * FROM wallet_transactions WHERE direction = 'outgoing' AND state = 'pending' ORDER BY seq", logger: logger))
    }

    public func pendingInvoices(now: Timestamp) async throws -> [WalletTransaction] {
        try await prepared()
        return try await Self.transactions(client.query(
            """
            SELECT * FROM wallet_transactions
            WHERE direction = 'incoming' AND state = 'pending' AND (expires_at IS NULL OR expires_at > \(now)) ORDER BY seq
            """, logger: logger))
    }

    // MARK: Rows

    private static func insert(_ transaction: WalletTransaction, _ db: PostgresConnection, logger: Logger) async throws -> WalletTransaction {
        guard let stored = try await transactions(db.query(
            """
            INSERT INTO wallet_transactions (connection, direction, state, payment_hash, invoice, description, description_hash, preimage,
                amount_msat, fee_reserve_msat, fees_paid_msat, created_at, expires_at, settled_at, metadata, backend_reference)
            VALUES (\(transaction.connection), \(transaction.direction.rawValue), \(transaction.state.rawValue), \(bytes(transaction.paymentHash)),
                \(transaction.invoice), \(transaction.description), \(transaction.descriptionHash), \(transaction.preimage),
                \(transaction.amountMsat), \(transaction.feeReserveMsat), \(transaction.feesPaidMsat), \(transaction.createdAt),
                \(transaction.expiresAt), \(transaction.settledAt), \(transaction.metadata), \(transaction.backendReference))
            RETURNING *
            """, logger: logger)).first
        else { throw WalletStoreError.inconsistent("an insert returned no row") }
        return stored
    }

    private static func bytes(_ value: Bytes32) -> ByteBuffer { ByteBuffer(bytes: value.bytes) }

    private static func bytes32(_ buffer: ByteBuffer) throws -> Bytes32 {
        guard let value = Bytes32(buffer.readableBytesView) else { throw WalletStoreError.inconsistent("a key or hash is not 32 bytes") }
        return value
    }

    private static func connections(_ rows: PostgresRowSequence) async throws -> [WalletConnection] {
        var result: [WalletConnection] = []
        for try await row in rows {
            let columns = row.makeRandomAccess()
            let budgetMsat = try columns["budget_msat"].decode(Int64?.self)
            let budgetPeriod = try columns["budget_period"].decode(String?.self).flatMap(BudgetPeriod.init(rawValue:))
            result.append(WalletConnection(
                id: try columns["id"].decode(String.self), name: try columns["name"].decode(String.self),
                walletIndex: try columns["wallet_index"].decode(Int64.self),
                walletKey: PublicKey(try bytes32(try columns["wallet_key"].decode(ByteBuffer.self))),
                clientKey: PublicKey(try bytes32(try columns["client_key"].decode(ByteBuffer.self))),
                methods: StoredFields.methods(try columns["methods"].decode(String.self)),
                budget: budgetMsat.flatMap { msat in budgetPeriod.map { Budget(msat: msat, period: $0) } },
                expiresAt: try columns["expires_at"].decode(Int64?.self),
                relays: StoredFields.relays(try columns["relays"].decode(String.self)),
                createdAt: try columns["created_at"].decode(Int64.self), revokedAt: try columns["revoked_at"].decode(Int64?.self),
                balanceMsat: try columns["balance_msat"].decode(Int64.self)))
        }
        return result
    }

    private static func transactions(_ rows: PostgresRowSequence) async throws -> [WalletTransaction] {
        var result: [WalletTransaction] = []
        for try await row in rows {
            let columns = row.makeRandomAccess()
            guard let direction = WalletTransaction.Direction(rawValue: try columns["direction"].decode(String.self)),
                let state = WalletTransaction.State(rawValue: try columns["state"].decode(String.self))
            else { throw WalletStoreError.inconsistent("a transaction row is malformed") }
            result.append(WalletTransaction(
                sequence: try columns["seq"].decode(Int64.self), connection: try columns["connection"].decode(String.self),
                direction: direction, state: state, paymentHash: try bytes32(try columns["payment_hash"].decode(ByteBuffer.self)),
                invoice: try columns["invoice"].decode(String?.self), description: try columns["description"].decode(String?.self),
                descriptionHash: try columns["description_hash"].decode(String?.self), preimage: try columns["preimage"].decode(String?.self),
                amountMsat: try columns["amount_msat"].decode(Int64.self), feeReserveMsat: try columns["fee_reserve_msat"].decode(Int64.self),
                feesPaidMsat: try columns["fees_paid_msat"].decode(Int64.self), createdAt: try columns["created_at"].decode(Int64.self),
                expiresAt: try columns["expires_at"].decode(Int64?.self), settledAt: try columns["settled_at"].decode(Int64?.self),
                metadata: try columns["metadata"].decode(String?.self), backendReference: try columns["backend_reference"].decode(String?.self)))
        }
        return result
    }
}
