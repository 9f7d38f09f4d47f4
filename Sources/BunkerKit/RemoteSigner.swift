public import CoreMetrics
import Foundation
import Logging
public import NostrCore
import NostrCrypto
public import NostrRelay
public import NostrService

/// The NIP-46 remote signer as a runtime handler: kind 24133 requests to any of the bunker's remote-signer
/// keys, answered in the request's scheme (NIP-44, or NIP-04 for `?iv=` payloads) by that same key.
///
/// Every request gets a response with a result or an `error` — unknown methods, bad parameters, denials and
/// failures included. Duplicates (the same request on several relays, replays) are answered from the runtime's
/// journal, so nothing is signed twice.
public struct RemoteSigner: RequestHandler {
    let identities: [PublicKey: BunkerIdentity]
    let state: BunkerState
    let relays: @Sendable () -> [RelayURL]
    let approvals: Approvals?
    /// Kinds a blanket `sign_event` grant does not cover.
    let sensitiveKinds: Set<Kind>
    /// How far into the future an event to sign may be dated (seconds; nil: any date).
    let maximumFutureSkew: Int64?
    /// Serializes `connect`s, so a secret can be spent only once even when two clients race for it.
    private let connecting = AsyncSemaphore(1)
    private let metrics: MetricInstruments

    /// - Parameters:
    ///   - identities: The user keys served, each under its remote-signer key.
    ///   - relays: The bunker's current relays (what `switch_relays` answers with when a client's differ).
    ///   - approvals: Where requests outside a client's grant are put to the operator (an `auth_url`
    ///     challenge); without it they are refused as `unauthorized`.
    ///   - sensitiveKinds: Kinds a blanket `sign_event` grant does not cover (``NIP46/sensitiveKinds`` by
    ///     default): they need `sign_event:<kind>`.
    ///   - maximumFutureSkew: How far into the future (seconds) an event to sign may be dated; nil: any date. A
    ///     replaceable event dated years ahead would win over every later version the user publishes (a relay
    ///     list or a mute list pinned for good), so the default is 15 minutes.
    ///   - metricsFactory: Where `switchboard_bunker_requests_total{method,decision}` goes.
    public init(
        identities: [BunkerIdentity], state: BunkerState, approvals: Approvals? = nil,
        sensitiveKinds: Set<Kind> = NIP46.sensitiveKinds, maximumFutureSkew: Int64? = 900,
        metricsFactory: any MetricsFactory = MetricsSystem.factory, relays: @escaping @Sendable () -> [RelayURL]
    ) {
        self.metrics = MetricInstruments(factory: metricsFactory)
        self.maximumFutureSkew = maximumFutureSkew
        self.identities = Dictionary(identities.map { ($0.signer.publicKey, $0) }, uniquingKeysWith: { first, _ in first })
        self.state = state
        self.approvals = approvals
        self.sensitiveKinds = sensitiveKinds
        self.relays = relays
    }

    public var kinds: Set<Kind> { [NIP46.kind] }

    /// Long enough for the operator to settle an auth challenge.
    public var timeout: Duration { (approvals?.timeout ?? .zero) + .seconds(30) }

    public func handle(_ request: ServiceRequest, context: RequestContext) async throws -> [ServiceReply] {
        let started = ContinuousClock.now
        var answer: Answer
        var method = "?"
        do {
            let message = try NIP46.Request(json: request.content)
            method = message.method
            answer = await respond(to: message, from: request.sender, signer: request.recipient, logger: context.logger) { permission, detail in
                await self.challenge(permission, detail: detail, message: message, request: request, context: context)
            }
        } catch {
            answer = Answer(NIP46.Response(id: NIP46.Request.id(in: request.content) ?? "", error: "bad request: \(error)"), "error")
        }
        let record = AuditRecord(
            time: Int64(Date().timeIntervalSince1970), signer: request.recipient.hex, client: request.sender.hex,
            method: String(method.prefix(64)), kind: answer.kind.map(\.rawValue), decision: answer.decision,
            latency: Self.milliseconds(ContinuousClock.now - started))
        // Labels stay bounded: methods outside NIP-46's are counted as `other`.
        let known = NIP46.sessionMethods.contains(method) || NIP46.grantableMethods.contains(method)
        metrics.counter("switchboard_bunker_requests_total", [("method", known ? method : "other"), ("decision", answer.decision)]).increment()
        do {
            try await state.audit(record)
        } catch {
            context.logger.error("could not write the audit log", metadata: ["error": "\(error)"])
        }
        return [reply(answer.response, to: request)]
    }

    /// A response and how it was decided, for the audit log: `ok`, `approved-once`, `approved-always`,
    /// `unauthorized`, `denied`, `expired`, `cancelled` or `error`.
    struct Answer {
        var response: NIP46.Response
        var decision: String
        var kind: Kind?

        init(_ response: NIP46.Response, _ decision: String, kind: Kind? = nil) {
            self.response = response
            self.decision = decision
            self.kind = kind
        }
    }

    /// How a request outside the grant was settled: nil when refused outright (no challenge possible).
    typealias Challenge = @Sendable (_ permission: String, _ detail: String?) async -> Approvals.Decision??

    /// Puts a request outside the grant to the operator, showing `detail` (the event to sign, the peer to encrypt
    /// for): sends the `auth_url` response, waits for the decision (`.some(nil)` when none came in time), and
    /// grants the permission for good on "approve always". An approval for a session that ended meanwhile
    /// (revoked, logged out) counts for nothing.
    private func challenge(
        _ permission: String, detail shown: String?, message: NIP46.Request, request: ServiceRequest, context: RequestContext
    ) async -> Approvals.Decision?? {
        guard let approvals else { return nil }
        // Stopping: no operator will decide now (answered as cut off, to be sent again).
        guard !approvals.isStopped else { return .some(nil) }
        let session = try? await state.session(signer: request.recipient, client: request.sender)
        let user = identities[request.recipient].map { NIP19Entity.npub($0.user.publicKey).bech32 } ?? ""
        guard let (id, url) = approvals.open(
            client: request.sender.hex, clientName: session?.label ?? session?.name, user: user, method: message.method,
            permission: permission, event: shown)
        else { return nil }
        // Also in the store, for `bunker approvals` / `approve` / `deny` on the server.
        let now = Int64(Date().timeIntervalSince1970)
        do {
            try await state.recordApproval(PendingApproval(
                id: id, client: request.sender.hex, clientName: session?.label ?? session?.name, user: user, method: message.method,
                permission: permission, event: shown, createdAt: now, expiresAt: now + approvals.timeout.components.seconds))
        } catch {
            context.logger.error("could not record an approval for the CLI", metadata: ["error": "\(error)"])
        }
        // The operator learns that a decision waits, not only the client's user. The page's URL is not logged: with
        // access to the listener it is enough to decide, and logs travel further than the listener does.
        context.logger.notice("approval needed; the client was sent the page's link (or: bunker approvals)", metadata: [
            "client": "\(session?.label ?? session?.name ?? request.sender.hex)", "method": "\(message.method)",
            "permission": "\(permission)", "timeout": "\(approvals.timeout.components.seconds)s",
        ])
        await context.send(reply(NIP46.Response(id: message.id, result: "auth_url", error: url), to: request))
        // Waiting on a person: the runtime's handling slot is free for other clients' requests meanwhile.
        let decision = await context.withoutHandlingSlot { await approvals.decision(id) }
        try? await state.removeApproval(id)
        if decision == .once || decision == .always {
            guard let current = try? await state.session(signer: request.recipient, client: request.sender),
                current.expiresAt.map({ Int64(Date().timeIntervalSince1970) < $0 }) ?? true
            else { return nil }
        }
        if decision == .always {
            do {
                try await state.updateSession(signer: request.recipient.hex, client: request.sender.hex) { $0.permissions.grant(permission) }
            } catch {
                context.logger.error("could not record a granted permission", metadata: ["error": "\(error)"])
            }
            // The same client's other requests waiting for this permission have it now.
            approvals.approveOthers(client: request.sender.hex, user: user, permission: permission)
        }
        return .some(decision)
    }

    static func milliseconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    }

    /// An event template as the approval page shows it: each tag and the content as JSON, so that quotes,
    /// line breaks and control characters in them show escaped and cannot mimic the page's own lines.
    static func display(_ template: EventTemplate) -> String {
        func json(_ write: (inout JSONWriter) -> Void) -> String {
            var writer = JSONWriter()
            write(&writer)
            return writer.text
        }
        let tags = template.tags.map { tag in "  " + json { $0.stringArray(tag.fields) } }
        let date = template.createdAt.map { "\($0)" } ?? "(now)"
        return "kind \(template.kind.rawValue)\ncreated_at \(date)\ntags:\n\(tags.isEmpty ? "  (none)" : tags.joined(separator: "\n"))\ncontent:\n  \(json { $0.string(template.content) })"
    }

    public func errorReply(to request: ServiceRequest, error: ServiceError) -> ServiceReply? {
        let id = NIP46.Request.id(in: request.content) ?? ""
        return reply(NIP46.Response(id: id, error: "\(error.code.rawValue): \(error.message)"), to: request)
    }

    func reply(_ response: NIP46.Response, to request: ServiceRequest) -> ServiceReply {
        request.reply(kind: NIP46.kind, content: response.json, referencingRequest: false)
    }

    func respond(
        to message: NIP46.Request, from client: PublicKey, signer: PublicKey, logger: Logger, challenge: Challenge
    ) async -> Answer {
        func failure(_ text: String, _ decision: String = "error") -> Answer { Answer(NIP46.Response(id: message.id, error: text), decision) }
        guard let identity = identities[signer] else { return failure("unauthorized: this bunker does not serve \(signer.hex)", "unauthorized") }
        do {
            if message.method == "connect" {
                let response = try await connect(message, client: client, identity: identity)
                return Answer(response, response.error == nil ? "ok" : "unauthorized")
            }
            guard let session = try await state.session(signer: signer, client: client) else {
                return failure("unauthorized: not connected; send connect with the secret from a bunker:// URI", "unauthorized")
            }
            let now = Int64(Date().timeIntervalSince1970)
            if let expiresAt = session.expiresAt, now >= expiresAt {
                return failure("unauthorized: this session has expired; connect again with a new bunker:// URI", "unauthorized")
            }
            if now - session.lastUsed >= 60 {
                try await state.updateSession(signer: session.signer, client: session.client) { $0.lastUsed = max($0.lastUsed, now) }
            }
            return try await call(message, session: session, identity: identity, challenge: challenge)
        } catch let error as BunkerError {
            return failure("bad request: \(error)")
        } catch let error as NostrError {
            return failure("bad request: \(error.message)")
        } catch let error as CryptoError {
            return failure("bad request: \(error)")
        } catch {
            logger.error("NIP-46 request failed", metadata: ["method": "\(message.method)", "error": "\(error)"])
            return failure("internal error")
        }
    }

    private func connect(_ message: NIP46.Request, client: PublicKey, identity: BunkerIdentity) async throws -> NIP46.Response {
        let signer = identity.signer.publicKey
        // The spec's first parameter is the remote signer's pubkey. Older NDK (≤ 3.0.3) sends the user's pubkey,
        // or "" when it does not know it yet: both name this identity too (the request is addressed to it).
        guard let named = message.params.first,
            named.isEmpty || [signer, identity.user.publicKey].contains(try? PublicKey(hex: named))
        else {
            return NIP46.Response(id: message.id, error: "bad request: connect's first parameter must be this remote signer's pubkey \(signer.hex)")
        }
        let secret = message.params.count > 1 && !message.params[1].isEmpty ? message.params[1] : nil
        let requested = message.params.count > 2 ? Permissions(requested: message.params[2]) : Permissions(entries: [])
        let metadata = message.params.count > 3 ? ClientMetadata(json: message.params[3]) : ClientMetadata()

        await connecting.acquire()
        defer { connecting.release() }
        let now = Int64(Date().timeIntervalSince1970)
        let current = try await state.session(signer: signer, client: client).flatMap { session in
            session.expiresAt.map { now < $0 } ?? true ? session : nil
        }
        guard let secret else {
            // A connected client re-sending connect without a secret: nothing to spend; what it asks for is noted.
            if current != nil, try await state.updateSession(signer: signer.hex, client: client.hex, { session in
                if !requested.entries.isEmpty { session.requested = requested }
            }) != nil {
                return NIP46.Response(id: message.id, result: "ack")
            }
            return NIP46.Response(id: message.id, error: "unauthorized: connect needs the secret from a bunker:// URI")
        }
        // A secret is spent, once, whoever sends it: a connected client with a new URI gets the session that URI
        // was minted for, and the URI cannot be used later by anyone else.
        switch try await state.spend(secret, signer: signer, by: client, now: now) {
        case .unknown:
            return NIP46.Response(id: message.id, error: "unauthorized: unknown secret")
        case .expired:
            return NIP46.Response(id: message.id, error: "unauthorized: this secret has expired; ask the operator for a new bunker:// URI")
        case .alreadySpent(let byThisClient):
            // The same client re-sending its connect (a retry, a reload) while its session lasts.
            if byThisClient, current != nil, try await state.updateSession(signer: signer.hex, client: client.hex, { session in
                if !requested.entries.isEmpty { session.requested = requested }
            }) != nil {
                return NIP46.Response(id: message.id, result: "ack")
            }
            return NIP46.Response(id: message.id, error: "unauthorized: this secret has already been used; ask the operator for a new bunker:// URI")
        case .spent(let record):
            do {
                try await state.save(ClientSession(
                    signer: signer.hex, client: client.hex, permissions: record.permissions, requested: requested,
                    name: metadata.name ?? current?.name, url: metadata.url ?? current?.url, label: record.label ?? current?.label,
                    relays: relays().map(\.string), clientRelays: current?.clientRelays, createdAt: now, lastUsed: now,
                    expiresAt: record.sessionLifetime.map { now + $0 }))
            } catch {
                try? await state.unspend(secret, by: client)
                throw error
            }
            return NIP46.Response(id: message.id, result: "ack")
        }
    }

    private func call(
        _ message: NIP46.Request, session: ClientSession, identity: BunkerIdentity, challenge: Challenge
    ) async throws -> Answer {
        let id = message.id
        let params = message.params
        var approval = "ok"
        var kind: Kind?
        func ok(_ result: String) -> Answer { Answer(NIP46.Response(id: id, result: result), approval, kind: kind) }
        /// Nil when `permission` may be used now (granted, or approved by the operator); else the refusal.
        /// `detail` is only made for a challenge.
        func authorize(_ permission: String?, detail: @autoclosure () -> String?) async -> Answer? {
            guard let permission else { return nil }
            func refuse(_ text: String, _ decision: String) -> Answer { Answer(NIP46.Response(id: id, error: text), decision, kind: kind) }
            switch await challenge(permission, detail()) {
            case .none: return refuse("unauthorized: \(permission) is not granted to this client", "unauthorized")
            case .some(.none):
                // Shutdown ended the wait: nothing was decided or signed, so the client may ask again.
                if Task.isCancelled || approvals?.isStopped == true {
                    return refuse("unavailable: the bunker stopped before the operator decided; send the request again", "cancelled")
                }
                return refuse("unauthorized: \(permission) was not approved in time", "expired")
            case .some(.deny): return refuse("unauthorized: the operator denied \(permission)", "denied")
            case .some(.once):
                approval = "approved-once"
                return nil
            case .some(.always):
                approval = "approved-always"
                return nil
            }
        }
        func parameters(_ count: Int) throws {
            guard params.count >= count else { throw BunkerError("\(message.method) takes \(count) parameter\(count == 1 ? "" : "s")") }
        }
        switch message.method {
        case "ping":
            return ok("pong")
        case "get_public_key":
            return ok(identity.user.publicKey.hex)
        case "sign_event":
            try parameters(1)
            let template = try EventTemplate(json: params[0])
            kind = template.kind
            if let maximumFutureSkew, let createdAt = template.createdAt, createdAt > Timestamp.now + maximumFutureSkew {
                return Answer(NIP46.Response(
                    id: id, error: "bad request: created_at is \(createdAt - Timestamp.now) s in the future; at most \(maximumFutureSkew) s is signed"),
                    "error", kind: kind)
            }
            if let refusal = await authorize(session.permissions.missing("sign_event", kind: template.kind, sensitiveKinds: sensitiveKinds), detail: Self.display(template)) { return refusal }
            return ok(template.sign(with: identity.user).json)
        case "nip04_encrypt", "nip04_decrypt", "nip44_encrypt", "nip44_decrypt":
            try parameters(2)
            let peer = try PublicKey(validatingHex: params[0])
            if let refusal = await authorize(session.permissions.missing(message.method), detail: "peer \(NIP19Entity.npub(peer).bech32)") {
                return refusal
            }
            switch message.method {
            case "nip04_encrypt": return ok(try NIP04.encrypt(params[1], secretKey: identity.user, publicKey: peer))
            case "nip04_decrypt":
                // A result is never empty (clients read an empty one as no answer); NIP-44 cannot carry one at all.
                let plaintext = try NIP04.decrypt(params[1], secretKey: identity.user, publicKey: peer)
                guard !plaintext.isEmpty else { throw BunkerError("the message decrypts to nothing (an empty plaintext)") }
                return ok(plaintext)
            case "nip44_encrypt":
                return ok(try NIP44.encrypt(params[1], conversationKey: ConversationKey(secretKey: identity.user, publicKey: peer)))
            default:
                return ok(try NIP44.decrypt(params[1], conversationKey: ConversationKey(secretKey: identity.user, publicKey: peer)))
            }
        case "switch_relays":
            let current = relays().map(\.string)
            guard Set(current) != Set(session.relays) else { return ok("null") }
            try await state.updateSession(signer: session.signer, client: session.client) { $0.relays = current }
            var writer = JSONWriter()
            writer.stringArray(current)
            return ok(writer.text)
        case "logout":
            try await state.remove(signer: session.signer, client: session.client)
            return ok("ack")
        default:
            return Answer(NIP46.Response(id: id, error: "unsupported method \"\(message.method)\""), "error")
        }
    }
}

/// `connect`'s optional 4th parameter: the client's own description, a display hint only.
struct ClientMetadata {
    var name: String?
    var url: String?

    init() {}

    init(json: String) {
        guard case .object(let object) = try? JSON.parse(json) else { return }
        name = object["name"]?.string.map { String($0.prefix(100)) }
        url = object["url"]?.string.map { String($0.prefix(200)) }
    }
}
