public import NostrCore
public import NostrCrypto
public import NostrRelay

/// Where wallet-bridge keeps connections, ledger accounts, invoices and payments.
///
/// Every operation that moves money is one transaction, so a burst of concurrent payments (from one process
/// or from replicas sharing PostgreSQL) can never overspend a budget or a balance, and a payment hash that is
/// pending or settled for a connection is never paid again by it. ``SQLiteWalletStore`` is the default;
/// `PostgresWalletStore` serves replicas.
public protocol WalletStore: Sendable {
    /// Creates a connection under the next free wallet index; `walletKey` derives the index's public key.
    /// Fails if a live connection already has `name`.
    func addConnection(
        name: String, clientKey: PublicKey, methods: Set<String>, budget: Budget?, expiresAt: Timestamp?,
        relays: [RelayURL], now: Timestamp, walletKey: @Sendable (Int64) throws -> PublicKey
    ) async throws -> WalletConnection

    /// Every connection, revoked ones included, oldest first.
    func connections() async throws -> [WalletConnection]

    /// The live or revoked connection with this id, or else the live one with this name.
    func connection(idOrName: String) async throws -> WalletConnection?

    /// The connection whose wallet key is `walletKey`.
    func connection(walletKey: PublicKey) async throws -> WalletConnection?

    /// Revokes a connection; nil when there is no live connection by that id or name.
    func revoke(idOrName: String, now: Timestamp) async throws -> WalletConnection?

    /// A number that changes whenever connections are added or revoked (the daemon polls it).
    func connectionsVersion() async throws -> Int64

    /// Adds `msat` to a connection's ledger account; returns the new balance.
    func credit(connection: String, msat: Int64) async throws -> Int64

    /// Records a new invoice (incoming, pending).
    func addInvoice(_ invoice: WalletTransaction) async throws -> WalletTransaction

    /// Marks the pending invoice of `paymentHash` settled (crediting its ledger account when `creditsLedger`);
    /// nil when there is no such pending invoice (already settled, or unknown).
    func settleInvoice(paymentHash: Bytes32, preimage: String?, creditsLedger: Bool, now: Timestamp) async throws -> WalletTransaction?

    /// Reserves a payment: checks the connection is live, that it has no pending or settled payment of the
    /// hash, that the budget covers amount plus fee reserve, and (for the ledger) the balance; then records it
    /// pending, all in one transaction.
    func reserve(_ reservation: PaymentReservation, now: Timestamp) async throws -> ReservationResult

    /// Settles a pending payment with its real fee; the unused fee reserve goes back.
    func settlePayment(sequence: Int64, preimage: String, feesPaidMsat: Int64, creditsLedger: Bool, now: Timestamp) async throws -> WalletTransaction?

    /// Fails a pending payment; the reservation (and any ledger debit) goes back.
    func failPayment(sequence: Int64, creditsLedger: Bool, now: Timestamp) async throws -> WalletTransaction?

    /// Pays one of the ledger's own invoices in a single transaction: reserves the payer's side, settles the
    /// payee's invoice and the payment (with the preimage the invoice was made with), and moves the amount
    /// between the two ledger accounts.
    func payInternally(_ reservation: PaymentReservation, now: Timestamp) async throws -> InternalPaymentResult

    /// The newest transaction of `connection` with `paymentHash` (a payment before an invoice of the same hash).
    func transaction(connection: String, paymentHash: Bytes32) async throws -> WalletTransaction?

    /// A connection's transactions, newest first.
    func transactions(connection: String, query: TransactionQuery, now: Timestamp) async throws -> [WalletTransaction]

    /// What a connection has spent (settled, and reserved while pending) since `since`.
    func spent(connection: String, since: Timestamp) async throws -> Int64

    /// A connection's invoices made since `since` that are neither paid nor expired at `now`.
    func unpaidInvoiceCount(connection: String, since: Timestamp, now: Timestamp) async throws -> Int

    /// Payments still pending (in flight), across connections: the daemon resolves them after a restart.
    func pendingPayments() async throws -> [WalletTransaction]

    /// Unpaid invoices not yet expired at `now`, across connections: a backend watches them (passing a `now` in
    /// the past to keep watching those that expired since).
    func pendingInvoices(now: Timestamp) async throws -> [WalletTransaction]
}
