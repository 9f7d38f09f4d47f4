public import CoreMetrics
import Logging
public import NostrCore
import NostrCrypto
import NostrRelay
public import NostrService
import Synchronization

/// The NIP-47 wallet service as a runtime handler: kind 23194 requests to a connection's wallet key,
/// answered by that key (kind 23195) in the request's scheme.
///
/// The runtime runs each request event at most once (its journal), however many relays deliver it; the
/// store refuses a second payment of a hash the connection has pending or settled, and reserves amount plus
/// fee reserve against the budget (and the ledger balance) in one transaction before the backend pays.
public struct WalletService: RequestHandler {
    public struct Configuration: Sendable {
        /// How long `pay_invoice` waits for a payment in flight before answering that it is still pending
        /// (an `OTHER` error that says so; never `PAYMENT_FAILED`).
        public var paymentWait: Duration = .seconds(60)
        /// Expiry of invoices made without one (seconds).
        public var defaultInvoiceExpiry: Int64 = 86_400
        /// The longest expiry accepted (seconds).
        public var maximumInvoiceExpiry: Int64 = 30 * 86_400
        /// Invoices one connection may have unpaid and unexpired at once; `make_invoice` beyond is refused
        /// (`RATE_LIMITED`). Each is stored, and with LNbits looked up until it resolves.
        public var maximumUnpaidInvoices = 100
        /// The most transactions one `list_transactions` answer holds.
        public var maximumListLimit = 50
        /// The most bytes of transactions (as JSON) one `list_transactions` answer holds: fewer transactions
        /// than asked for come back when theirs is larger, so that the encrypted response event stays under the
        /// 64 KiB NIP-47 asks relays to accept (40,000 bytes of JSON pad and encode to about 55 KiB).
        public var maximumListBytes = 40_000

        /// Where the wallet's metrics go (the global swift-metrics factory by default).
        public var metricsFactory: any MetricsFactory = MetricsSystem.factory

        public init() {}
    }

    let store: any WalletStore
    let backend: any LightningBackend
    let configuration: Configuration
    /// When each ended connection's info event was withdrawn in this process (see ``announcements(_:)``).
    private let withdrawals = Withdrawals()
    /// make_invoice, one at a time per connection.
    private let invoicing = KeyedSerializer()

    public init(store: any WalletStore, backend: any LightningBackend, configuration: Configuration = Configuration()) {
        self.store = store
        self.backend = backend
        self.configuration = configuration
        self.metrics = WalletMetrics(factory: configuration.metricsFactory)
    }

    let metrics: WalletMetrics

    public var kinds: Set<Kind> { [NIP47.requestKind] }

    /// Long enough for a payment to resolve, with room to answer.
    public var timeout: Duration { configuration.paymentWait + .seconds(15) }

    /// The methods this service offers, in NIP-47's order.
    public var supportedMethods: [String] {
        NIP47.coreMethods + NIP47.optionalMethods.filter(backend.optionalMethods.contains)
    }

    // MARK: Requests

    public func handle(_ request: ServiceRequest, context: RequestContext) async throws -> [ServiceReply] {
        do {
            let message = try NIP47.Request(json: request.content)
            try checkEncryptionTag(request)
            let connection = try await connection(for: request)
            guard supportedMethods.contains(message.method) else {
                throw NIP47Error(.notImplemented, "\(message.method) is not implemented")
            }
            guard NIP47.alwaysGranted.contains(message.method) || connection.methods.contains(message.method) else {
                throw NIP47Error(.restricted, "this connection may not use \(message.method)")
            }
            let result = try await respond(to: message, connection: connection, context: context)
            return [request.reply(kind: NIP47.responseKind, content: NIP47.response(message.method, result: result))]
        } catch let error as NIP47Error {
            throw ServiceError(ServiceError.Code(error.code.rawValue), error.message)
        }
    }

    public func errorReply(to request: ServiceRequest, error: ServiceError) -> ServiceReply? {
        let method = NIP47.Request.method(in: request.content) ?? ""
        let wire: NIP47Error
        if error.code == .badRequest, request.content.isEmpty, let unsupported = Self.unsupportedEncryption(of: request.event) {
            // Not decrypted, and the tag names a scheme this service does not speak: that is the error to give.
            wire = unsupported
        } else if let code = NIP47.ErrorCode(rawValue: error.code.rawValue) {
            wire = NIP47Error(code, error.message)
        } else {
            switch error.code {
            case .rateLimited, .tooManyRequests: wire = NIP47Error(.rateLimited, error.message)
            case .unsupportedEncryption: wire = NIP47Error(.unsupportedEncryption, error.message)
            case .unauthorized: wire = NIP47Error(.unauthorized, error.message)
            case .internal: wire = NIP47Error(.internal, error.message)
            case .interrupted:
                wire = NIP47Error(.other, "the service stopped while handling this request; it is not run again (lookup_invoice tells whether a payment went out)")
            case .timeout where method.hasPrefix("pay_"):
                wire = NIP47Error(.other, "the payment is still in flight, not failed; lookup_invoice tells when it resolves")
            default: wire = NIP47Error(.other, error.message)
            }
        }
        return request.reply(kind: NIP47.responseKind, content: NIP47.errorResponse(method, wire))
    }

    /// The request's `encryption` tag names the scheme (absent means nip04); the reply uses the scheme the
    /// content actually came in, which the runtime detected.
    private func checkEncryptionTag(_ request: ServiceRequest) throws {
        if let unsupported = Self.unsupportedEncryption(of: request.event) { throw unsupported }
    }

    /// The error for a request whose `encryption` tag names no scheme this service speaks; nil when it names
    /// one, or has none (NIP-04 then).
    static func unsupportedEncryption(of event: Event) -> NIP47Error? {
        guard let tag = event.tagValues("encryption").first else { return nil }
        let schemes = tag.split(separator: " ").map(String.init)
        guard schemes.contains(where: { $0 == "nip44_v2" || $0 == "nip04" }) else {
            return NIP47Error(.unsupportedEncryption, "supported encryption: nip44_v2 nip04")
        }
        return nil
    }

    private func connection(for request: ServiceRequest) async throws -> WalletConnection {
        guard let connection = try await store.connection(walletKey: request.recipient), connection.clientKey == request.sender else {
            throw NIP47Error(.unauthorized, "no wallet is connected for this key")
        }
        if connection.revokedAt != nil { throw NIP47Error(.unauthorized, "this connection was revoked") }
        if let expiresAt = connection.expiresAt, expiresAt <= .now { throw NIP47Error(.unauthorized, "this connection has expired") }
        return connection
    }

    private func respond(to message: NIP47.Request, connection: WalletConnection, context: RequestContext) async throws -> JSONValue {
        let params = Params(message.params)
        let now = Timestamp.now
        switch message.method {
        case "get_info":
            let info = try await backend.nodeInfo()
            let granted = supportedMethods.filter { NIP47.alwaysGranted.contains($0) || connection.methods.contains($0) }
            var result: [String: JSONValue] = [
                "alias": .string(info.alias), "color": .string(info.color),
                "methods": .array(granted.map(JSONValue.string)),
                "notifications": .array(connection.receivesNotifications ? NIP47.notificationTypes.map(JSONValue.string) : []),
            ]
            if let pubkey = info.pubkey { result["pubkey"] = .string(pubkey) }
            if let network = info.network { result["network"] = .string(network.name) }
            if let height = info.blockHeight { result["block_height"] = .int(height) }
            if let hash = info.blockHash { result["block_hash"] = .string(hash) }
            return .object(result)
        case "get_balance":
            return .object(["balance": .int(try await backend.balance(of: connection))])
        case "get_budget":
            guard let budget = connection.budget else { return .object([:]) }
            var result: [String: JSONValue] = [
                "used_budget": .int(try await store.spent(connection: connection.id, since: budget.period.start(containing: now))),
                "total_budget": .int(budget.msat), "renewal_period": .string(budget.period.rawValue),
            ]
            if let renewal = budget.period.renewal(after: now) { result["renews_at"] = .int(renewal) }
            return .object(result)
        case "make_invoice":
            let amount = try params.amount("amount")
            let description = try params.string("description")
            if let description, description.utf8.count > 639 { throw NIP47Error(.other, "the description is longer than 639 bytes") }
            let descriptionHash = try params.string("description_hash").map { text in
                guard let hash = Bytes32(hex: text) else { throw NIP47Error(.other, "description_hash must be 32 bytes of hex") }
                return hash
            }
            let expiry = try params.positiveInteger("expiry") ?? configuration.defaultInvoiceExpiry
            guard expiry <= configuration.maximumInvoiceExpiry else {
                throw NIP47Error(.other, "expiry may be at most \(configuration.maximumInvoiceExpiry) seconds")
            }
            guard let amount else { throw NIP47Error(.other, "make_invoice needs a positive \"amount\" in msat") }
            let request = InvoiceRequest(
                amountMsat: amount, description: description, descriptionHash: descriptionHash, expiry: expiry, metadata: params.metadata)
            // One make_invoice per connection at a time in this process: concurrent requests cannot all pass the
            // count before any invoice is recorded. (Replicas on one PostgreSQL can still each make one.)
            let (store, backend, configuration) = (self.store, self.backend, self.configuration)
            let invoice = try await invoicing.run(connection.id) {
                let unpaid = try await store.unpaidInvoiceCount(connection: connection.id, since: now - configuration.maximumInvoiceExpiry, now: now)
                guard unpaid < configuration.maximumUnpaidInvoices else {
                    throw NIP47Error(
                        .rateLimited,
                        "this connection has \(unpaid) unpaid invoices (at most \(configuration.maximumUnpaidInvoices)); wait until some are paid or expire")
                }
                return try await backend.makeInvoice(request, for: connection, now: now)
            }
            metrics.invoiceMade()
            return NIP47.transactionJSON(invoice, now: now)
        case "lookup_invoice":
            let hash: Bytes32
            if let text = try params.string("payment_hash") {
                guard let parsed = Bytes32(hex: text) else { throw NIP47Error(.other, "payment_hash must be 32 bytes of hex") }
                hash = parsed
            } else if let text = try params.string("invoice") {
                hash = try decode(text).paymentHash
            } else {
                throw NIP47Error(.other, "lookup_invoice needs \"payment_hash\" or \"invoice\"")
            }
            guard let transaction = try await store.transaction(connection: connection.id, paymentHash: hash) else {
                throw NIP47Error(.notFound, "no invoice or payment with this hash")
            }
            return NIP47.transactionJSON(transaction, now: now)
        case "list_transactions":
            let direction: WalletTransaction.Direction? = try params.string("type").map { text in
                guard let direction = WalletTransaction.Direction(rawValue: text) else {
                    throw NIP47Error(.other, "type must be \"incoming\" or \"outgoing\"")
                }
                return direction
            }
            let query = TransactionQuery(
                from: try params.integer("from"), until: try params.integer("until"),
                limit: Int(min(max(try params.integer("limit") ?? Int64(configuration.maximumListLimit), 0), Int64(configuration.maximumListLimit))),
                offset: Int(min(max(try params.integer("offset") ?? 0, 0), 1_000_000)),
                unpaid: try params.bool("unpaid") ?? false, direction: direction)
            let transactions = try await store.transactions(connection: connection.id, query: query, now: now)
            var listed: [JSONValue] = []
            var size = 0
            for transaction in transactions {
                let object = NIP47.transactionJSON(transaction, now: now)
                var writer = JSONWriter()
                writer.value(object)
                size += writer.bytes.count + 1
                if size > configuration.maximumListBytes && !listed.isEmpty { break }
                listed.append(object)
            }
            return .object(["transactions": .array(listed)])
        case "pay_invoice":
            guard let text = try params.string("invoice") else { throw NIP47Error(.other, "pay_invoice needs \"invoice\"") }
            let invoice = try decode(text)
            let requested = try params.amount("amount")
            let amount: Int64
            switch (invoice.amountMsat, requested) {
            case (let fixed?, nil): amount = fixed
            case (let fixed?, let asked?):
                guard fixed == asked else { throw NIP47Error(.other, "amount \(asked) differs from the invoice's \(fixed) msat") }
                amount = fixed
            case (nil, let asked?): amount = asked
            case (nil, nil): throw NIP47Error(.other, "the invoice names no amount; give \"amount\" in msat")
            }
            // A retry by a client that lost the first answer gets that answer, even once the invoice has expired;
            // one still in flight is never called failed (the user would pay again elsewhere).
            if let earlier = try await store.transaction(connection: connection.id, paymentHash: invoice.paymentHash),
                earlier.direction == .outgoing
            {
                switch earlier.state {
                case .settled:
                    metrics.payment("already_paid")
                    return Self.paid(earlier)
                case .pending, .accepted:
                    metrics.payment("in_flight")
                    throw Self.error(for: .alreadyPaid(earlier))
                case .expired, .failed:
                    break
                }
            }
            guard invoice.expiresAt > now else {
                metrics.payment("expired_invoice")
                throw NIP47Error(.paymentFailed, "the invoice has expired")
            }
            let deadline = min(context.deadline - .seconds(10), ContinuousClock.now + configuration.paymentWait)
            // The network may take its time: the wait holds none of the runtime's handling slots (the sender's
            // own concurrency limit still counts it), so slow payments cannot stop the bridge reading requests.
            let backend = self.backend
            let outcome = try await context.withoutHandlingSlot {
                try await backend.pay(invoice, amountMsat: amount, metadata: params.metadata, for: connection, deadline: deadline)
            }
            switch outcome {
            case .paid(let payment):
                metrics.payment("paid")
                metrics.paid(amountMsat: payment.amountMsat, feesMsat: payment.feesPaidMsat)
                return Self.paid(payment)
            case .pending:
                metrics.payment("pending")
                throw NIP47Error(.other, "the payment is still in flight, not failed; lookup_invoice tells when it resolves")
            case .failed(let reason):
                metrics.payment("failed")
                throw NIP47Error(.paymentFailed, reason)
            case .refused(.alreadyPaid(let payment)) where payment.state == .settled:
                // A retry by a client that lost the first answer (a new request, so not in the journal): it gets
                // that answer again, the preimage proving the payment, and nothing is paid twice.
                metrics.payment("already_paid")
                return Self.paid(payment)
            case .refused(let refusal):
                metrics.payment(Self.outcome(of: refusal))
                throw Self.error(for: refusal)
            }
        default:
            throw NIP47Error(.notImplemented, "\(message.method) is not implemented by this backend")
        }
    }

    private func decode(_ text: String) throws -> BOLT11Invoice {
        do {
            return try BOLT11Invoice(text)
        } catch let error as BOLT11Error {
            throw NIP47Error(.other, error.description)
        } catch {
            throw NIP47Error(.other, "invalid invoice: \(error)")
        }
    }

    /// `pay_invoice`'s result for a settled payment.
    static func paid(_ payment: WalletTransaction) -> JSONValue {
        .object(["preimage": .string(payment.preimage ?? ""), "fees_paid": .int(payment.feesPaidMsat)])
    }

    static func outcome(of refusal: ReservationResult) -> String {
        switch refusal {
        case .quotaExceeded: "quota_exceeded"
        case .insufficientBalance: "insufficient_balance"
        case .alreadyPaid: "already_paid"
        case .notLive: "not_live"
        case .reserved: "internal"
        }
    }

    static func error(for refusal: ReservationResult) -> NIP47Error {
        switch refusal {
        case .quotaExceeded(let used, let budget):
            NIP47Error(.quotaExceeded, "the budget would be exceeded (\(used) of \(budget) msat used this period, fee reserve included)")
        case .insufficientBalance(let balance):
            NIP47Error(.insufficientBalance, "the balance (\(balance) msat) does not cover amount and fee reserve")
        case .alreadyPaid(let payment) where payment.state == .settled:
            NIP47Error(.other, "this connection already paid this invoice; it is not paid twice")
        case .alreadyPaid:
            NIP47Error(.other, "this connection is already paying this invoice; lookup_invoice tells when it resolves")
        case .notLive:
            NIP47Error(.unauthorized, "this connection is revoked or expired")
        case .reserved:
            NIP47Error(.internal, "internal error")
        }
    }

    // MARK: Announcements and notifications

    /// The info event (kind 13194) for each connection's wallet key: methods it may use, both encryption
    /// schemes, and the notification types. For a connection that has ended (revoked or expired) in the last
    /// week, a NIP-09 deletion request of its info event instead, so that clients stop finding it: by address
    /// (`a`), and by id (`e`) for relays that only delete by id — the id this process announced, or, for one
    /// announced by an earlier run or another replica, the ids the relays hold. The deletion is made by the
    /// first round that sends it, dated later than every info event this process announced, and later rounds
    /// send that same event again, which relays keep once.
    public func announcements(_ context: AnnouncementContext) async throws -> [EventTemplate] {
        guard let connection = try await store.connection(walletKey: context.key) else { return [] }
        guard connection.isLive(at: context.now) else {
            guard connection.isServed(at: context.now) else { return [] }
            if let made = withdrawals.deletion(of: context.key) { return [made] }
            // Announced by an earlier run (or another replica): the relays say which info events to name.
            var named = withdrawals.announced(by: context.key).map { [$0] } ?? []
            if named.isEmpty {
                let published = try? await context.pool.fetch([Filter(authors: [context.key], kinds: [NIP47.infoKind])], timeout: .seconds(3))
                named = published?.map { Withdrawals.Announced(id: $0.id, createdAt: $0.createdAt) } ?? []
            }
            return [withdrawals.deletion(of: context.key, naming: named, now: context.now)]
        }
        let methods = supportedMethods.filter { NIP47.alwaysGranted.contains($0) || connection.methods.contains($0) }
        var tags: [Tag] = [["encryption", "nip44_v2 nip04"]]
        if connection.receivesNotifications { tags.append(["notifications", NIP47.notificationTypes.joined(separator: " ")]) }
        let info = EventTemplate(
            kind: NIP47.infoKind, content: (methods + (connection.receivesNotifications ? ["notifications"] : [])).joined(separator: " "),
            tags: tags, createdAt: context.now)
        let id = Event.computeID(pubkey: context.key, createdAt: context.now, kind: info.kind, tags: info.tags, content: info.content)
        withdrawals.announced(Withdrawals.Announced(id: id, createdAt: context.now), by: context.key)
        return [info]
    }

    /// The notification for `event` to its connection's client, as NIP-44 (kind 23197) and NIP-04 (23196)
    /// events; nil when the connection is gone or was not granted `notifications`.
    public func notifications(for event: WalletEvent) async throws -> (connection: WalletConnection, replies: [ServiceReply])? {
        let (type, transaction) = switch event {
        case .received(let transaction): ("payment_received", transaction)
        case .sent(let transaction): ("payment_sent", transaction)
        }
        guard let connection = try await store.connection(idOrName: transaction.connection), connection.isLive(at: .now),
            connection.receivesNotifications
        else { return nil }
        let content = NIP47.notification(type, NIP47.transactionJSON(transaction, now: .now))
        let tags: [Tag] = [["p", connection.clientKey.hex]]
        return (connection, [
            ServiceReply(kind: NIP47.notificationKind, content: content, tags: tags, encryption: .nip44, recipient: connection.clientKey),
            ServiceReply(kind: NIP47.legacyNotificationKind, content: content, tags: tags, encryption: .nip04, recipient: connection.clientKey),
        ])
    }
}

/// Typed access to a request's `params`, with NIP-47 errors for wrong types.
struct Params {
    let values: [String: JSONValue]

    init(_ values: [String: JSONValue]) { self.values = values }

    func string(_ name: String) throws -> String? {
        switch values[name] {
        case nil, .null?: return nil
        case .string(let text)?: return text
        default: throw NIP47Error(.other, "\"\(name)\" must be a string")
        }
    }

    func integer(_ name: String) throws -> Int64? {
        switch values[name] {
        case nil, .null?: return nil
        case let value?:
            guard let number = value.int64 else { throw NIP47Error(.other, "\"\(name)\" must be an integer") }
            return number
        }
    }

    func positiveInteger(_ name: String) throws -> Int64? {
        guard let number = try integer(name) else { return nil }
        guard number > 0 else { throw NIP47Error(.other, "\"\(name)\" must be positive") }
        return number
    }

    /// An amount in msat: positive, and at most ``NIP47/maximumAmountMsat``.
    func amount(_ name: String) throws -> Int64? {
        guard let amount = try positiveInteger(name) else { return nil }
        guard amount <= NIP47.maximumAmountMsat else { throw NIP47Error(.other, "\"\(name)\" is more than 21 million bitcoin") }
        return amount
    }

    func bool(_ name: String) throws -> Bool? {
        switch values[name] {
        case nil, .null?: return nil
        case .bool(let value)?: return value
        default: throw NIP47Error(.other, "\"\(name)\" must be true or false")
        }
    }

    /// `metadata` as JSON text when it is at most 4096 characters (NIP-47 says to drop it otherwise).
    var metadata: String? {
        guard let value = values["metadata"], value != .null else { return nil }
        var writer = JSONWriter()
        writer.value(value)
        let text = writer.text
        return text.count <= 4096 ? text : nil
    }
}

/// The last info event announced for each wallet key, and the deletion request that withdraws it once its
/// connection has ended (made once, so that every round sends the same event).
final class Withdrawals: Sendable {
    struct Announced: Sendable {
        let id: EventID
        let createdAt: Timestamp
    }

    private struct State {
        var announced: [PublicKey: Announced] = [:]
        var deletions: [PublicKey: EventTemplate] = [:]
    }

    private let state = Mutex(State())

    func announced(_ event: Announced, by key: PublicKey) {
        state.withLock { $0.announced[key] = event }
    }

    func announced(by key: PublicKey) -> Announced? {
        state.withLock { $0.announced[key] }
    }

    /// The deletion already made for `key`, if any.
    func deletion(of key: PublicKey) -> EventTemplate? {
        state.withLock { $0.deletions[key] }
    }

    /// The deletion for `key` naming `events` (made now unless another round made one meanwhile, which wins),
    /// dated after each of them: relays ignore a deletion request older than what it names, and an info event
    /// can be dated a little ahead (rounds in one second move a second on). One that names no event (the
    /// lookup found none, or failed) is not kept, so the next round looks again.
    func deletion(of key: PublicKey, naming events: [Announced], now: Timestamp) -> EventTemplate {
        state.withLock { state in
            if let made = state.deletions[key] { return made }
            let tags: [Tag] = events.map { ["e", $0.id.hex] } + [["a", "\(NIP47.infoKind.rawValue):\(key.hex):"], ["k", "\(NIP47.infoKind.rawValue)"]]
            let createdAt = max(now, (events.map(\.createdAt).max() ?? 0) + 1)
            let made = EventTemplate(kind: .deletion, content: "this wallet connection has ended", tags: tags, createdAt: createdAt)
            if !events.isEmpty { state.deletions[key] = made }
            return made
        }
    }
}
