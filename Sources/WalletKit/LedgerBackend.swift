public import NostrCore
public import NostrCrypto

/// The built-in ledger: not a Lightning node. Each connection has an account in the store; invoices are
/// real BOLT11 invoices (regtest prefix `lnbcrt`) signed by the ledger's node key, and paying one of them
/// moves msat between two accounts at once, in one store transaction. Invoices it did not make cannot be
/// routed: paying them fails with `PAYMENT_FAILED`. Accounts are funded with `wallet-bridge ledger credit`.
/// For development, tests and demos, and for communities that keep an internal ledger.
public final class LedgerBackend: LightningBackend {
    private let store: any WalletStore
    private let nodeKey: SecretKey
    private let events = AsyncStream<WalletEvent>.makeStream()

    /// - Parameter nodeKey: signs the ledger's invoices (wallet-bridge derives it from its master key).
    public init(store: any WalletStore, nodeKey: SecretKey) {
        self.store = store
        self.nodeKey = nodeKey
    }

    public var optionalMethods: Set<String> { [] }
    public var usesLedgerAccounts: Bool { true }

    /// The node key's compressed public key, which every ledger invoice recovers to.
    public var nodePublicKey: [UInt8] { nodeKey.compressedPublicKey }

    public func nodeInfo() async throws -> NodeInfo {
        NodeInfo(
            alias: "switchboard ledger", color: "#3b82f6", pubkey: Hex.encode(nodePublicKey), network: .regtest,
            blockHeight: 0, blockHash: String(repeating: "0", count: 64))
    }

    public func balance(of connection: WalletConnection) async throws -> Int64 {
        try await store.connection(idOrName: connection.id)?.balanceMsat ?? 0
    }

    public func makeInvoice(_ request: InvoiceRequest, for connection: WalletConnection, now: Timestamp) async throws -> WalletTransaction {
        let preimage = SecureMemory.randomBytes(32)
        let paymentHash = SHA256.hash(preimage)
        guard let secret = Bytes32(SecureMemory.randomBytes(32)) else { throw WalletStoreError.inconsistent("random bytes") }
        let invoice = try BOLT11Invoice.make(
            network: .regtest, amountMsat: request.amountMsat, paymentHash: paymentHash, paymentSecret: secret,
            description: request.descriptionHash == nil ? (request.description ?? "") : nil,
            descriptionHash: request.descriptionHash, expiry: request.expiry, timestamp: now, nodeKey: nodeKey)
        return try await store.addInvoice(WalletTransaction(
            connection: connection.id, direction: .incoming, state: .pending, paymentHash: paymentHash,
            invoice: invoice.string, description: request.description, descriptionHash: request.descriptionHash?.hex,
            preimage: Hex.encode(preimage), amountMsat: request.amountMsat, createdAt: now, expiresAt: invoice.expiresAt,
            metadata: request.metadata))
    }

    /// The ledger charges no fees.
    public func feeReserve(for invoice: BOLT11Invoice, amountMsat: Int64) -> Int64 { 0 }

    public func pay(
        _ invoice: BOLT11Invoice, amountMsat: Int64, metadata: String?, for connection: WalletConnection,
        deadline: ContinuousClock.Instant
    ) async throws -> PaymentOutcome {
        // Only invoices this ledger signed can be its own.
        guard invoice.payee == nodePublicKey else { return .failed(reason: "no route: the ledger can only pay its own invoices") }
        let reservation = PaymentReservation(
            connection: connection.id, invoice: invoice, amountMsat: amountMsat, feeReserveMsat: 0, metadata: metadata,
            debitsLedger: true)
        switch try await store.payInternally(reservation, now: .now) {
        case .paid(let payment, let received):
            events.continuation.yield(.sent(payment))
            events.continuation.yield(.received(received))
            return .paid(payment)
        case .refused(let outcome):
            return .refused(outcome)
        case .failed(_, let reason):
            return .failed(reason: reason)
        }
    }

    public func run(events handle: @escaping @Sendable (WalletEvent) async -> Void) async throws {
        for await event in events.stream {
            if Task.isCancelled { break }
            await handle(event)
        }
    }
}
