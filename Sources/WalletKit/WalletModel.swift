import Foundation
public import NostrCore
public import NostrCrypto
public import NostrRelay

/// One app's access to the wallet: its own wallet key (derived from the master key by ``walletIndex``), the
/// client key from its URI's secret (the secret itself is never kept), what it may do and spend.
public struct WalletConnection: Sendable, Hashable {
    /// Short random id (hex), shown by `wallet-bridge connections`.
    public var id: String
    /// The operator's label; unique among live connections.
    public var name: String
    public var walletIndex: Int64
    public var walletKey: PublicKey
    public var clientKey: PublicKey
    /// The NIP-47 methods granted.
    public var methods: Set<String>
    public var budget: Budget?
    public var expiresAt: Timestamp?
    /// The relays in its URI.
    public var relays: [RelayURL]
    public var createdAt: Timestamp
    public var revokedAt: Timestamp?
    /// Its ledger account (used by the ledger backend only).
    public var balanceMsat: Int64

    public init(
        id: String, name: String, walletIndex: Int64, walletKey: PublicKey, clientKey: PublicKey, methods: Set<String>,
        budget: Budget?, expiresAt: Timestamp?, relays: [RelayURL], createdAt: Timestamp, revokedAt: Timestamp? = nil,
        balanceMsat: Int64 = 0
    ) {
        self.id = id
        self.name = name
        self.walletIndex = walletIndex
        self.walletKey = walletKey
        self.clientKey = clientKey
        self.methods = methods
        self.budget = budget
        self.expiresAt = expiresAt
        self.relays = relays
        self.createdAt = createdAt
        self.revokedAt = revokedAt
        self.balanceMsat = balanceMsat
    }

    /// Whether it was granted `notifications` (payment_received and payment_sent events, and their mention in
    /// its info event and `get_info`).
    public var receivesNotifications: Bool { methods.contains("notifications") }

    /// Neither revoked nor expired at `now`.
    public func isLive(at now: Timestamp) -> Bool {
        revokedAt == nil && (expiresAt.map { now < $0 } ?? true)
    }

    /// How long an ended connection's relays are still served: its requests there are answered
    /// `UNAUTHORIZED`, and each announcement round re-sends the deletion request of its info event there.
    public static let endedServiceWindow: Int64 = 7 * 86_400

    /// Whether the bridge serves this connection's relays: while it is live, and for a week after it ended.
    public func isServed(at now: Timestamp) -> Bool {
        guard let ended = revokedAt ?? expiresAt.flatMap({ $0 <= now ? $0 : nil }) else { return true }
        return now - ended < Self.endedServiceWindow
    }
}

/// A spending limit per period.
public struct Budget: Sendable, Hashable {
    public var msat: Int64
    public var period: BudgetPeriod

    public init(msat: Int64, period: BudgetPeriod) {
        self.msat = msat
        self.period = period
    }
}

/// How often a budget renews. Periods are calendar-aligned in UTC: a day starts at 00:00, a week on Monday,
/// a month on the 1st, a year on 1 January.
public enum BudgetPeriod: String, Sendable, CaseIterable {
    case daily, weekly, monthly, yearly, never

    private static let calendar: Calendar = {
        var calendar = Calendar(identifier: .iso8601)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? calendar.timeZone
        calendar.firstWeekday = 2
        return calendar
    }()

    private var component: Calendar.Component? {
        switch self {
        case .daily: .day
        case .weekly: .weekOfYear
        case .monthly: .month
        case .yearly: .year
        case .never: nil
        }
    }

    /// When the period containing `time` began (0 for ``never``).
    public func start(containing time: Timestamp) -> Timestamp {
        guard let component else { return 0 }
        let date = Date(timeIntervalSince1970: TimeInterval(time))
        guard let interval = Self.calendar.dateInterval(of: component, for: date) else { return 0 }
        return Timestamp(interval.start.timeIntervalSince1970)
    }

    /// When the period containing `time` ends and the budget renews (nil for ``never``).
    public func renewal(after time: Timestamp) -> Timestamp? {
        guard let component else { return nil }
        let date = Date(timeIntervalSince1970: TimeInterval(time))
        guard let interval = Self.calendar.dateInterval(of: component, for: date) else { return nil }
        return Timestamp(interval.end.timeIntervalSince1970)
    }
}

/// An invoice (incoming) or a payment (outgoing) of one connection.
public struct WalletTransaction: Sendable, Hashable {
    public enum Direction: String, Sendable {
        case incoming, outgoing
    }

    public enum State: String, Sendable {
        case pending, settled, expired, failed, accepted
    }

    /// The store's sequence number.
    public var sequence: Int64
    public var connection: String
    public var direction: Direction
    /// As stored; ``state(at:)`` also tells an unpaid invoice past its expiry.
    public var state: State
    public var paymentHash: Bytes32
    public var invoice: String?
    public var description: String?
    public var descriptionHash: String?
    public var preimage: String?
    public var amountMsat: Int64
    /// Held against the budget (and the ledger balance) while a payment is in flight.
    public var feeReserveMsat: Int64
    public var feesPaidMsat: Int64
    public var createdAt: Timestamp
    public var expiresAt: Timestamp?
    public var settledAt: Timestamp?
    /// The request's `metadata`, as JSON text (at most 4096 characters, else dropped).
    public var metadata: String?
    /// The backend's reference (an LNbits checking id).
    public var backendReference: String?

    public init(
        sequence: Int64 = 0, connection: String, direction: Direction, state: State, paymentHash: Bytes32,
        invoice: String? = nil, description: String? = nil, descriptionHash: String? = nil, preimage: String? = nil,
        amountMsat: Int64, feeReserveMsat: Int64 = 0, feesPaidMsat: Int64 = 0, createdAt: Timestamp,
        expiresAt: Timestamp? = nil, settledAt: Timestamp? = nil, metadata: String? = nil, backendReference: String? = nil
    ) {
        self.sequence = sequence
        self.connection = connection
        self.direction = direction
        self.state = state
        self.paymentHash = paymentHash
        self.invoice = invoice
        self.description = description
        self.descriptionHash = descriptionHash
        self.preimage = preimage
        self.amountMsat = amountMsat
        self.feeReserveMsat = feeReserveMsat
        self.feesPaidMsat = feesPaidMsat
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.settledAt = settledAt
        self.metadata = metadata
        self.backendReference = backendReference
    }

    /// The state as a client should see it at `now`: an unpaid invoice past its expiry is `expired`.
    public func state(at now: Timestamp) -> State {
        if direction == .incoming, state == .pending, let expiresAt, expiresAt <= now { return .expired }
        return state
    }

    /// What it costs the budget: amount plus the fee reserve while pending, plus the real fee once settled.
    public var budgetCharge: Int64 {
        switch state {
        case .pending, .accepted: amountMsat + feeReserveMsat
        case .settled: amountMsat + feesPaidMsat
        case .expired, .failed: 0
        }
    }
}

/// Which transactions `list_transactions` wants.
public struct TransactionQuery: Sendable, Hashable {
    public var from: Timestamp?
    public var until: Timestamp?
    public var limit: Int
    public var offset: Int
    /// Include unpaid invoices (and unsettled payments).
    public var unpaid: Bool
    public var direction: WalletTransaction.Direction?

    public init(
        from: Timestamp? = nil, until: Timestamp? = nil, limit: Int = 20, offset: Int = 0, unpaid: Bool = false,
        direction: WalletTransaction.Direction? = nil
    ) {
        self.from = from
        self.until = until
        self.limit = limit
        self.offset = offset
        self.unpaid = unpaid
        self.direction = direction
    }
}

/// A payment about to be made, as the store reserves it.
public struct PaymentReservation: Sendable, Hashable {
    public var connection: String
    public var invoice: BOLT11Invoice
    public var amountMsat: Int64
    public var feeReserveMsat: Int64
    public var metadata: String?
    /// Whether the connection's ledger balance must cover amount and fee reserve (the ledger backend).
    public var debitsLedger: Bool

    public init(connection: String, invoice: BOLT11Invoice, amountMsat: Int64, feeReserveMsat: Int64, metadata: String?, debitsLedger: Bool) {
        self.connection = connection
        self.invoice = invoice
        self.amountMsat = amountMsat
        self.feeReserveMsat = feeReserveMsat
        self.metadata = metadata
        self.debitsLedger = debitsLedger
    }
}

/// What reserving a payment came to.
public enum ReservationResult: Sendable, Hashable {
    /// Reserved: the pending payment, to settle or fail.
    case reserved(WalletTransaction)
    /// This wallet already has a pending or settled payment of the hash: nothing is paid again.
    case alreadyPaid(WalletTransaction)
    /// The budget for the period cannot cover amount plus fee reserve.
    case quotaExceeded(used: Int64, budget: Int64)
    /// The ledger balance cannot cover amount plus fee reserve.
    case insufficientBalance(balance: Int64)
    /// The connection is unknown, revoked or expired.
    case notLive
}

/// What paying one of the ledger's own invoices came to.
public enum InternalPaymentResult: Sendable, Hashable {
    /// Paid: the payer's settled payment and the payee's settled invoice.
    case paid(payment: WalletTransaction, invoice: WalletTransaction)
    /// Refused before anything moved (budget, balance, duplicate, connection).
    case refused(ReservationResult)
    /// The invoice is not one the ledger can settle (unknown, already paid, expired); recorded as failed.
    case failed(payment: WalletTransaction, reason: String)
}

extension PaymentReservation {
    /// Why the ledger cannot settle `invoice` (its own incoming invoice of the reserved hash, if any) with this
    /// payment; nil when it can. Both stores ask this inside their transaction.
    package func ledgerRefusal(paying invoice: WalletTransaction?, now: Timestamp) -> String? {
        guard let invoice else { return "no route: the ledger can only pay its own invoices" }
        if invoice.state(at: now) == .expired { return "the invoice has expired" }
        if invoice.state != .pending { return "the invoice is already paid" }
        if invoice.amountMsat > 0 && invoice.amountMsat != amountMsat { return "the amount does not match the invoice" }
        if invoice.preimage == nil { return "the invoice cannot be settled" }
        return nil
    }
}
