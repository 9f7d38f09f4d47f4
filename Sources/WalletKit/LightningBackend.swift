public import NostrCore
public import NostrCrypto

/// Where the money is: wallet-bridge's built-in ledger, or a Lightning node behind an API (LNbits).
///
/// Budgets and exactly-once live above this, in the ``WalletStore`` (a payment is reserved there before a
/// backend sees it); a backend makes invoices, pays, reports balances and tells what settled.
public protocol LightningBackend: Sendable {
    /// What `get_info` reports about the node.
    func nodeInfo() async throws -> NodeInfo

    /// The optional NIP-47 methods this backend can do (`pay_keysend`, the hold-invoice trio).
    var optionalMethods: Set<String> { get }

    /// Whether balances are the store's ledger accounts (which reservations then debit).
    var usesLedgerAccounts: Bool { get }

    /// A connection's spendable balance in msat.
    func balance(of connection: WalletConnection) async throws -> Int64

    /// Makes an invoice for `connection` and records it in the store (pending).
    func makeInvoice(_ request: InvoiceRequest, for connection: WalletConnection, now: Timestamp) async throws -> WalletTransaction

    /// The fee reserve a payment of `amountMsat` to `invoice` needs (held against budget and balance).
    func feeReserve(for invoice: BOLT11Invoice, amountMsat: Int64) -> Int64

    /// Pays `invoice` for `connection`: reserves in the store, pays, and settles or fails the reservation.
    /// Returns once the payment resolves, or by `deadline` with the payment still pending (never failed
    /// because it is slow); ``run(events:)`` resolves it later.
    func pay(
        _ invoice: BOLT11Invoice, amountMsat: Int64, metadata: String?, for connection: WalletConnection,
        deadline: ContinuousClock.Instant
    ) async throws -> PaymentOutcome

    /// Background work until cancelled: watching invoices and payments in flight; reports what settles.
    func run(events: @escaping @Sendable (WalletEvent) async -> Void) async throws
}

/// The node, for `get_info`. What a backend cannot tell is nil, and left out of the answer rather than made up.
public struct NodeInfo: Sendable, Hashable {
    public var alias: String
    public var color: String
    /// Compressed public key, hex.
    public var pubkey: String?
    public var network: BOLT11Invoice.Network?
    public var blockHeight: Int64?
    public var blockHash: String?

    public init(
        alias: String, color: String, pubkey: String?, network: BOLT11Invoice.Network?, blockHeight: Int64?, blockHash: String?
    ) {
        self.alias = alias
        self.color = color
        self.pubkey = pubkey
        self.network = network
        self.blockHeight = blockHeight
        self.blockHash = blockHash
    }
}

/// `make_invoice`'s parameters.
public struct InvoiceRequest: Sendable, Hashable {
    public var amountMsat: Int64
    public var description: String?
    public var descriptionHash: Bytes32?
    public var expiry: Int64
    public var metadata: String?

    public init(amountMsat: Int64, description: String?, descriptionHash: Bytes32?, expiry: Int64, metadata: String?) {
        self.amountMsat = amountMsat
        self.description = description
        self.descriptionHash = descriptionHash
        self.expiry = expiry
        self.metadata = metadata
    }
}

/// How a payment came out.
public enum PaymentOutcome: Sendable, Hashable {
    /// Paid: the settled payment (preimage, fee).
    case paid(WalletTransaction)
    /// Still in flight at the deadline: reserved, not failed.
    case pending(WalletTransaction)
    /// Refused before anything was paid (budget, balance, duplicate, connection).
    case refused(ReservationResult)
    /// It failed; the reservation was released.
    case failed(reason: String)
}

/// Something that happened to a connection's money, for notifications.
public enum WalletEvent: Sendable, Hashable {
    case received(WalletTransaction)
    case sent(WalletTransaction)
}
