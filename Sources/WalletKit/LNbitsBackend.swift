import AsyncHTTPClient
import Foundation
public import Logging
public import NostrCore
import NostrCrypto
import NIOCore
import NIOHTTP1
import Synchronization

/// An LNbits wallet (its REST API, with the wallet's admin key) as the backend: invoices are LNbits
/// invoices, payments go out through LNbits, and the balance is the LNbits wallet's (shared by every
/// connection; budgets are per connection, in the store).
///
/// A payment is reserved in the store before LNbits sees it. When LNbits cannot say how a payment ended
/// (a timeout, a dropped connection, a server error), the payment stays pending and is looked up again
/// until LNbits knows; only an answer that says the payment failed releases the reservation. LNbits having no
/// record of a payment releases it only once the reservation is ``Configuration/unrecordedGrace`` old: LNbits
/// pays one payment of a wallet at a time and records each only when its turn comes, so a payment another
/// request (or replica) has just handed to LNbits may still be waiting in that queue. Incoming
/// payments are found by polling LNbits' payment list (and, less often, each unpaid invoice).
public final class LNbitsBackend: LightningBackend {
    public struct Configuration: Sendable {
        /// How often recent payments are polled for invoices that were paid.
        public var pollInterval: Duration = .seconds(1)
        /// How often each unpaid invoice and each payment in flight is looked up on its own.
        public var lookupInterval: Duration = .seconds(15)
        /// The time one API call may take.
        public var requestTimeout: Duration = .seconds(30)
        /// How old a reservation must be before LNbits not knowing the payment means it never went out.
        public var unrecordedGrace: Duration = .seconds(600)
        /// How long after its expiry an unpaid invoice is still watched: one paid just before it expired, while
        /// LNbits or this service was unreachable, is still found and settled.
        public var expiredInvoiceWatch: Int64 = 86_400

        public init() {}
    }

    let base: String
    private let adminKey: String
    private let store: any WalletStore
    private let configuration: Configuration
    private let logger: Logger
    private let http: HTTPClient
    private let events = AsyncStream<WalletEvent>.makeStream()
    private let payee = Mutex<(pubkey: String, network: BOLT11Invoice.Network)?>(nil)

    /// - Parameters:
    ///   - url: the LNbits server (`http://127.0.0.1:5000`).
    ///   - adminKey: the wallet's admin key (it pays; keep it out of argv).
    public init(url: String, adminKey: String, store: any WalletStore, configuration: Configuration = Configuration(), logger: Logger) throws {
        guard let parsed = URL(string: url), ["http", "https"].contains(parsed.scheme ?? ""), parsed.host != nil else {
            throw NIP47Error(.internal, "the LNbits URL must be http:// or https:// with a host")
        }
        guard !adminKey.isEmpty else { throw NIP47Error(.internal, "the LNbits admin key is empty") }
        self.base = url.hasSuffix("/") ? String(url.dropLast()) : url
        self.adminKey = adminKey
        self.store = store
        self.configuration = configuration
        self.logger = logger
        self.http = HTTPClient.shared
    }

    public var optionalMethods: Set<String> { [] }
    public var usesLedgerAccounts: Bool { false }

    /// LNbits does not describe the node to a wallet key: the pubkey and network are those of the invoices
    /// it has made (this process's, else the wallet's latest incoming payment), left out before there is one;
    /// block height and hash are not known.
    public func nodeInfo() async throws -> NodeInfo {
        var known = payee.withLock { $0 }
        if known == nil, let found = try? await payeeOfRecentInvoices() {
            payee.withLock { $0 = found }
            known = found
        }
        return NodeInfo(alias: "LNbits", color: "#673ab7", pubkey: known?.pubkey, network: known?.network, blockHeight: nil, blockHash: nil)
    }

    /// The payee and network of the wallet's latest incoming payment with an invoice (one LNbits made).
    private func payeeOfRecentInvoices() async throws -> (pubkey: String, network: BOLT11Invoice.Network)? {
        let response = try await call(.GET, "/api/v1/payments?limit=20&sortby=time&direction=desc")
        guard response.status == .ok, case .array(let payments) = response.json["_"] ?? .null else { return nil }
        for case .object(let payment) in payments where (payment["amount"]?.int64 ?? 0) > 0 {
            if let text = payment["bolt11"]?.string, let invoice = try? BOLT11Invoice(text) {
                return (Hex.encode(invoice.payee), invoice.network)
            }
        }
        return nil
    }

    public func balance(of connection: WalletConnection) async throws -> Int64 {
        let wallet = try await call(.GET, "/api/v1/wallet")
        guard wallet.status == .ok, let balance = wallet.json["balance"]?.int64 else {
            throw NIP47Error(.internal, "LNbits did not report the balance (HTTP \(wallet.status.code))")
        }
        return balance
    }

    public func makeInvoice(_ request: InvoiceRequest, for connection: WalletConnection, now: Timestamp) async throws -> WalletTransaction {
        guard request.amountMsat % 1000 == 0 else { throw NIP47Error(.other, "LNbits invoices are in whole sats: the amount must be a multiple of 1000 msat") }
        var body: [String: JSONValue] = [
            "out": .bool(false), "amount": .int(request.amountMsat / 1000), "memo": .string(request.description ?? ""),
            "expiry": .int(request.expiry),
        ]
        if let hash = request.descriptionHash { body["description_hash"] = .string(hash.hex) }
        let response = try await call(.POST, "/api/v1/payments", body: .object(body))
        guard response.status == .created || response.status == .ok, let text = response.json["bolt11"]?.string ?? response.json["payment_request"]?.string
        else { throw NIP47Error(.internal, "LNbits did not make the invoice: \(response.detail)") }
        let invoice = try BOLT11Invoice(text)
        payee.withLock { $0 = (Hex.encode(invoice.payee), invoice.network) }
        return try await store.addInvoice(WalletTransaction(
            connection: connection.id, direction: .incoming, state: .pending, paymentHash: invoice.paymentHash, invoice: invoice.string,
            description: request.description, descriptionHash: request.descriptionHash?.hex, amountMsat: request.amountMsat,
            createdAt: now, expiresAt: invoice.expiresAt, metadata: request.metadata,
            backendReference: response.json["checking_id"]?.string))
    }

    /// LNbits' default reserve for payments leaving the node: 1 %, at least 2 sat (the floor of
    /// ``reserve(for:amountMsat:)``).
    public func feeReserve(for invoice: BOLT11Invoice, amountMsat: Int64) -> Int64 {
        max(2_000, amountMsat / 100)
    }

    /// What paying `invoice` is reserved for besides its amount: LNbits' own figure for it
    /// (`/api/v1/payments/fee-reserve`: the routing-fee limit it gives its funding source plus any service fee
    /// the operator set), so that the fee a payment is charged stays within what the budget counted; never
    /// less than ``feeReserve(for:amountMsat:)``, which is used alone when LNbits cannot say.
    func reserve(for invoice: BOLT11Invoice, amountMsat: Int64) async -> Int64 {
        let floor = feeReserve(for: invoice, amountMsat: amountMsat)
        guard let response = try? await call(.GET, "/api/v1/payments/fee-reserve?invoice=\(invoice.string)"), response.status == .ok,
            let reserve = response.json["fee_reserve"]?.int64, (0...NIP47.maximumAmountMsat).contains(reserve)
        else {
            logger.warning("LNbits did not say what to reserve for fees; reserving 1 % (at least 2 sat)")
            return floor
        }
        return max(floor, reserve)
    }

    public func pay(
        _ invoice: BOLT11Invoice, amountMsat: Int64, metadata: String?, for connection: WalletConnection,
        deadline: ContinuousClock.Instant
    ) async throws -> PaymentOutcome {
        if let fixed = invoice.amountMsat, fixed != amountMsat { return .failed(reason: "the amount does not match the invoice") }
        guard invoice.amountMsat != nil else { return .failed(reason: "LNbits pays only invoices that name an amount") }
        let reservation = PaymentReservation(
            connection: connection.id, invoice: invoice, amountMsat: amountMsat,
            feeReserveMsat: await reserve(for: invoice, amountMsat: amountMsat), metadata: metadata, debitsLedger: false)
        let reserved = try await store.reserve(reservation, now: .now)
        guard case .reserved(let payment) = reserved else { return .refused(reserved) }

        let response: Response
        do {
            response = try await call(.POST, "/api/v1/payments", body: .object(["out": .bool(true), "bolt11": .string(invoice.string)]))
        } catch {
            // The request may or may not have reached LNbits: the payment stays pending until a lookup knows.
            logger.warning("LNbits did not answer a payment; it stays pending until a lookup settles it", metadata: ["error": "\(error)"])
            return try await waitForResolution(payment, until: deadline)
        }
        switch response.status {
        case .ok, .created:
            if response.json["status"]?.string == "success" { return await settleOrLeavePending(payment, response.json) }
            return try await waitForResolution(payment, until: deadline)
        case .badRequest, .unauthorized, .forbidden, .notFound, .unprocessableEntity:
            // Refused before anything was paid.
            _ = try await store.failPayment(sequence: payment.sequence, creditsLedger: false, now: .now)
            return .failed(reason: "LNbits refused the payment: \(response.detail)")
        default:
            if response.json["status"]?.string == "failed" {
                _ = try await store.failPayment(sequence: payment.sequence, creditsLedger: false, now: .now)
                // LNbits' own check of the wallet's balance (HTTP 520, "Insufficient balance.", or "You must
                // reserve at least (N sat) to cover potential routing fees."): NIP-47 has a code for it, which
                // covers a fee reserve too.
                let detail = response.detail.lowercased()
                if detail.hasPrefix("insufficient balance") || detail.contains("reserve at least") {
                    return .refused(.insufficientBalance(balance: (try? await balance(of: connection)) ?? 0))
                }
                return .failed(reason: response.detail)
            }
            return try await waitForResolution(payment, until: deadline)
        }
    }

    /// Looks the payment up until it resolves or `deadline` passes (then it is still pending).
    private func waitForResolution(_ payment: WalletTransaction, until deadline: ContinuousClock.Instant) async throws -> PaymentOutcome {
        while ContinuousClock.now < deadline {
            switch try await resolve(payment) {
            case .paid(let settled): return .paid(settled)
            case .failed(let reason): return .failed(reason: reason)
            case .pending, .refused: break
            }
            try await Task.sleep(for: .milliseconds(500))
        }
        return .pending(payment)
    }

    /// One lookup of a payment in flight; settles or fails it in the store when LNbits knows.
    private func resolve(_ payment: WalletTransaction) async throws -> PaymentOutcome {
        let response: Response
        do {
            response = try await call(.GET, "/api/v1/payments/\(payment.paymentHash.hex)")
        } catch {
            return .pending(payment)
        }
        if response.status == .notFound {
            // LNbits has not recorded it: queued behind the wallet's other payments, or never received. Only the
            // second is final, and only time tells them apart.
            guard Self.neverRecorded(payment, now: .now, grace: configuration.unrecordedGrace) else { return .pending(payment) }
            let failed = try await store.failPayment(sequence: payment.sequence, creditsLedger: false, now: .now)
            if failed != nil { logger.notice("a payment LNbits never recorded was released", metadata: ["payment_hash": "\(payment.paymentHash.hex)"]) }
            return .failed(reason: "LNbits has no record of the payment")
        }
        guard response.status == .ok else { return .pending(payment) }
        let status = response.json["details"]?.object?["status"]?.string ?? response.json["status"]?.string
        if response.json["paid"] == .bool(true) || status == "success" {
            var details = response.json["details"]?.object ?? [:]
            details["preimage"] = response.json["preimage"] ?? details["preimage"]
            return await settleOrLeavePending(payment, details)
        }
        if status == "failed" {
            _ = try await store.failPayment(sequence: payment.sequence, creditsLedger: false, now: .now)
            return .failed(reason: "the payment failed")
        }
        return .pending(payment)
    }

    /// Whether LNbits having no record of `payment` at `now` means it never reached LNbits.
    static func neverRecorded(_ payment: WalletTransaction, now: Timestamp, grace: Duration) -> Bool {
        now - payment.createdAt >= grace.components.seconds
    }

    /// Settles a payment LNbits reports as successful; if the store cannot record it, the payment stays pending
    /// (it went out: an error would tell the client it failed) and the next lookup settles it.
    private func settleOrLeavePending(_ payment: WalletTransaction, _ details: [String: JSONValue]) async -> PaymentOutcome {
        do {
            return .paid(try await settle(payment, details))
        } catch {
            logger.error("LNbits paid, but the payment could not be recorded; it stays pending until a lookup settles it", metadata: ["error": "\(error)"])
            return .pending(payment)
        }
    }

    /// Settles a payment LNbits reports as successful (fee from its `fee`, negative for payments out), and the
    /// invoice it paid if it is one of ours (LNbits settles its own invoices internally).
    private func settle(_ payment: WalletTransaction, _ details: [String: JSONValue]) async throws -> WalletTransaction {
        let fee = abs(details["fee"]?.int64 ?? 0)
        let preimage = details["preimage"]?.string ?? ""
        guard let settled = try await store.settlePayment(
            sequence: payment.sequence, preimage: preimage, feesPaidMsat: fee, creditsLedger: false, now: .now)
        else {
            // Settled meanwhile by the watcher.
            return try await store.transaction(connection: payment.connection, paymentHash: payment.paymentHash) ?? payment
        }
        events.continuation.yield(.sent(settled))
        if let received = try await store.settleInvoice(paymentHash: payment.paymentHash, preimage: preimage, creditsLedger: false, now: .now) {
            events.continuation.yield(.received(received))
        }
        return settled
    }

    // MARK: Watching

    public func run(events handle: @escaping @Sendable (WalletEvent) async -> Void) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await event in self.events.stream {
                    if Task.isCancelled { break }
                    await handle(event)
                }
            }
            group.addTask { await self.watch() }
            _ = try await group.next()
            group.cancelAll()
        }
    }

    private func watch() async {
        var lastLookups = ContinuousClock.now - configuration.lookupInterval
        var olderTurn = 0
        while !Task.isCancelled {
            do {
                try await pollRecentPayments()
                if ContinuousClock.now - lastLookups >= configuration.lookupInterval {
                    lastLookups = .now
                    try await lookUpPending(olderTurn: &olderTurn)
                }
            } catch {
                logger.warning("could not poll LNbits", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: configuration.pollInterval)
        }
    }

    /// Settles our unpaid invoices that LNbits' recent payments show as received.
    private func pollRecentPayments() async throws {
        let pending = try await store.pendingInvoices(now: .now - configuration.expiredInvoiceWatch)
        guard !pending.isEmpty else { return }
        let response = try await call(.GET, "/api/v1/payments?limit=100&sortby=time&direction=desc")
        guard response.status == .ok, case .array(let payments) = response.json["_"] ?? .null else { return }
        let unpaid = Set(pending.map(\.paymentHash.hex))
        for case .object(let payment) in payments {
            guard let hash = payment["payment_hash"]?.string, unpaid.contains(hash), payment["status"]?.string == "success",
                (payment["amount"]?.int64 ?? 0) > 0, let paymentHash = Bytes32(hex: hash)
            else { continue }
            if let received = try await store.settleInvoice(
                paymentHash: paymentHash, preimage: payment["preimage"]?.string, creditsLedger: false, now: .now)
            {
                events.continuation.yield(.received(received))
            }
        }
    }

    /// Looks up each payment in flight, and unpaid invoices: a bounded number per round (``lookupBatch(of:turn:)``).
    private func lookUpPending(olderTurn: inout Int) async throws {
        for payment in try await store.pendingPayments() {
            _ = try await resolve(payment)
        }
        let (batch, next) = Self.lookupBatch(of: try await store.pendingInvoices(now: .now - configuration.expiredInvoiceWatch), turn: olderTurn)
        olderTurn = next
        for invoice in batch {
            let response = try await call(.GET, "/api/v1/payments/\(invoice.paymentHash.hex)")
            guard response.status == .ok, response.json["paid"] == .bool(true) else { continue }
            if let received = try await store.settleInvoice(
                paymentHash: invoice.paymentHash, preimage: response.json["preimage"]?.string, creditsLedger: false, now: .now)
            {
                events.continuation.yield(.received(received))
            }
        }
    }

    /// The unpaid invoices (`pending`, oldest first) to look up this round: the newest 100, and 100 of the
    /// older ones in turn from `turn`, so that an invoice paid long after it was made is found however many
    /// newer ones there are (LNbits' recent payments, polled more often, list payments by creation time).
    /// Returns the next round's `turn`.
    static func lookupBatch(of pending: [WalletTransaction], turn: Int, size: Int = 100) -> (batch: [WalletTransaction], turn: Int) {
        let newest = pending.suffix(size)
        let older = Array(pending.dropLast(size))
        guard !older.isEmpty else { return (Array(newest), 0) }
        let start = turn % older.count
        let taken = (0..<min(size, older.count)).map { older[(start + $0) % older.count] }
        return (taken + newest, (start + taken.count) % older.count)
    }

    // MARK: HTTP

    struct Response {
        var status: HTTPResponseStatus
        /// The body's object (an array body is under "_").
        var json: [String: JSONValue]

        var detail: String {
            json["detail"]?.string ?? json["message"]?.string ?? "HTTP \(status.code)"
        }
    }

    private func call(_ method: HTTPMethod, _ path: String, body: JSONValue? = nil) async throws -> Response {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        request.headers.add(name: "X-Api-Key", value: adminKey)
        if let body {
            var writer = JSONWriter()
            writer.value(body)
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: writer.bytes))
        }
        let response = try await http.execute(request, timeout: .seconds(configuration.requestTimeout.components.seconds))
        let bytes = try await response.body.collect(upTo: 4 << 20)
        let text = String(buffer: bytes)
        let json: [String: JSONValue] = switch try? JSON.parse(text) {
        case .object(let object)?: object
        case let array?: ["_": array]
        case nil: [:]
        }
        return Response(status: response.status, json: json)
    }
}
