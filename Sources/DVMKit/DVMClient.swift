public import NostrCore
public import NostrCrypto
public import NostrRelay
public import NostrService
public import WalletKit

/// The customer's side of NIP-90: builds job requests (plain or encrypted), publishes them, and follows their
/// feedback to the result. Used by `switchboard dvm`, the tests and the benchmark.
public struct DVMClient: Sendable {
    public let secret: SecretKey
    /// A running pool on the relays the requests go to.
    public let pool: RelayPool

    public init(secret: SecretKey, pool: RelayPool) {
        self.secret = secret
        self.pool = pool
    }

    /// A signed job request. With `encryption` other than plain text, the inputs, parameters and `output` go
    /// encrypted in the content to `provider` (required then), next to `p` and `encrypted` tags.
    public func request(
        kind: Kind, inputs: [JobInput], parameters: [JobParameter] = [], output: String? = nil, provider: PublicKey? = nil,
        encryption: PayloadEncryption = .plaintext, relays: [RelayURL] = [], bid: Int64? = nil, createdAt: Timestamp? = nil
    ) throws -> Event {
        var hidden: [Tag] = inputs.map(\.tag) + parameters.map { Tag(["param", $0.name] + $0.values) }
        if let output { hidden.append(["output", output]) }
        var tags: [Tag] = []
        if let provider { tags.append(["p", provider.hex]) }
        if !relays.isEmpty { tags.append(Tag(["relays"] + relays.map(\.string))) }
        if let bid { tags.append(["bid", "\(bid)"]) }
        var content = ""
        switch encryption {
        case .plaintext:
            tags += hidden
        case .nip44, .nip04:
            guard let provider else { throw JobError("an encrypted request needs the provider's key") }
            var writer = JSONWriter()
            writer.tags(hidden)
            content = encryption == .nip44
                ? try NIP44.encrypt(writer.text, conversationKey: ConversationKey(secretKey: secret, publicKey: provider))
                : try NIP04.encrypt(writer.text, secretKey: secret, publicKey: provider)
            tags.append(["encrypted"])
        }
        return EventTemplate(kind: kind, content: content, tags: tags, createdAt: createdAt).sign(with: secret)
    }

    /// Asks the providers to cancel `request` (NIP-90 § Cancellation): publishes a NIP-09 deletion request
    /// naming it (`e`) and its kind (`k`, which providers such as dvm-host subscribe by), to `relays` (default:
    /// all of the pool's).
    @discardableResult
    public func cancel(_ request: Event, reason: String = "", to relays: [RelayURL]? = nil) async -> [RelayURL: PublishResult] {
        let tags: [Tag] = [["e", request.id.hex], ["k", "\(request.kind.rawValue)"]]
        return await pool.publish(EventTemplate(kind: .deletion, content: reason, tags: tags).sign(with: secret), to: relays)
    }

    /// A feedback event, decrypted.
    public struct Feedback: Sendable {
        public let event: Event
        public let status: String
        public let info: String?
        public let amountMsat: Int64?
        public let bolt11: String?
        public let content: String
    }

    /// A result event, its content decrypted.
    public struct Result: Sendable {
        public let event: Event
        public let content: String
    }

    /// Publishes `request` and returns its result; every feedback goes to `onFeedback` first (pay a
    /// `payment-required` there, after ``invoice(in:from:maximumMsat:now:)``). An `error` feedback throws
    /// ``JobError`` with its reason. A request `p`-tagged to a provider takes feedback and results from that
    /// provider only: anyone can publish an event that `e`-tags a public request.
    public func run(
        _ request: Event, timeout: Duration = .seconds(60), onFeedback: @Sendable (Feedback) async throws -> Void = { _ in }
    ) async throws -> Result {
        let provider = request.tagValues("p").first.flatMap { try? PublicKey(hex: $0) }
        let filter = Filter(
            authors: provider.map { [$0] }, kinds: [NIP90.feedbackKind, NIP90.resultKind(of: request.kind)], tags: ["e": [request.id.hex]])
        return try await pool.withSubscription([filter]) { subscription in
            let results = await pool.publish(request)
            guard results.values.contains(where: \.isAccepted) else {
                throw JobError("no relay accepted the request: \(results.map { "\($0.key): \($0.value)" }.sorted().joined(separator: "; "))")
            }
            let timer = Deadlines.shared.schedule(at: .now + timeout) { subscription.stop() }
            defer { Deadlines.shared.cancel(timer) }
            for await item in subscription {
                guard case .event(let event, _) = item, provider.map({ event.pubkey == $0 }) ?? true,
                    event.tags.contains(where: { $0.name == "e" && $0.value == request.id.hex })
                else { continue }
                if event.kind == NIP90.feedbackKind {
                    let feedback = try decode(feedback: event)
                    try await onFeedback(feedback)
                    if feedback.status == "error" { throw JobError(feedback.info ?? "the job failed") }
                } else {
                    return Result(event: event, content: try decrypt(event))
                }
            }
            throw JobError("no result within \(timeout)")
        }
    }

    /// The invoice of a `payment-required` feedback, checked before it is paid: the feedback is by `provider`
    /// (the one the request went to), its BOLT11 invoice is readable, unexpired, for exactly the feedback's
    /// `amount`, and that amount is at most `maximumMsat` (the customer's bid).
    public func invoice(in feedback: Feedback, from provider: PublicKey, maximumMsat: Int64, now: Timestamp = .now) throws -> BOLT11Invoice {
        guard feedback.event.pubkey == provider else {
            throw JobError("the invoice is from \(feedback.event.pubkey.hex), not from the provider the job went to")
        }
        guard feedback.status == "payment-required", let bolt11 = feedback.bolt11 else { throw JobError("the feedback carries no invoice") }
        let invoice: BOLT11Invoice
        do {
            invoice = try BOLT11Invoice(bolt11)
        } catch {
            throw JobError("the invoice is unreadable: \(error)")
        }
        guard let amount = invoice.amountMsat else { throw JobError("the invoice names no amount") }
        guard amount == feedback.amountMsat else {
            throw JobError("the invoice is for \(amount) msat, the feedback asks \(feedback.amountMsat.map(String.init) ?? "no amount")")
        }
        guard amount <= maximumMsat else { throw JobError("the invoice is for \(amount) msat, more than the \(maximumMsat) msat allowed") }
        guard invoice.expiresAt > now else { throw JobError("the invoice has expired") }
        return invoice
    }

    /// Reads a feedback event (decrypting its hidden tags when it is encrypted).
    public func decode(feedback event: Event) throws -> Feedback {
        var tags = event.tags
        var content = event.content
        if event.tags.contains(where: { $0.name == "encrypted" }) {
            tags += try JobRequest.hiddenTags(try decrypt(event))
            content = tags.first { $0.name == "content" }?.value ?? ""
        }
        let status = tags.first { $0.name == "status" }
        let amount = tags.first { $0.name == "amount" }
        return Feedback(
            event: event, status: status?.value ?? "", info: status.flatMap { $0.fields.count > 2 ? $0.fields[2] : nil },
            amountMsat: amount?.value.flatMap { Int64($0) }, bolt11: amount.flatMap { $0.fields.count > 2 ? $0.fields[2] : nil },
            content: content)
    }

    /// The content of a result or feedback, decrypted when it carries the `encrypted` tag.
    public func decrypt(_ event: Event) throws -> String {
        guard event.tags.contains(where: { $0.name == "encrypted" }) else { return event.content }
        return NIP04.isNIP04Payload(event.content)
            ? try NIP04.decrypt(event.content, secretKey: secret, publicKey: event.pubkey)
            : try NIP44.decrypt(event.content, conversationKey: ConversationKey(secretKey: secret, publicKey: event.pubkey))
    }
}
