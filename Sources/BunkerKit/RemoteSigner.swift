import Foundation
public import Logging
public import NostrCore
public import NostrCrypto
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
    /// Serializes `connect`s, so a secret can be spent only once even when two clients race for it.
    private let connecting = AsyncSemaphore(1)

    /// - Parameters:
    ///   - identities: The user keys served, each under its remote-signer key.
    ///   - relays: The bunker's current relays (what `switch_relays` answers with when a client's differ).
    public init(identities: [BunkerIdentity], state: BunkerState, relays: @escaping @Sendable () -> [RelayURL]) {
        self.identities = Dictionary(identities.map { ($0.signer.publicKey, $0) }, uniquingKeysWith: { first, _ in first })
        self.state = state
        self.relays = relays
    }

    public var kinds: Set<Kind> { [NIP46.kind] }

    public func handle(_ request: ServiceRequest, context: RequestContext) async throws -> [ServiceReply] {
        let response: NIP46.Response
        do {
            let message = try NIP46.Request(json: request.content)
            response = await respond(to: message, from: request.sender, signer: request.recipient, logger: context.logger)
        } catch {
            response = NIP46.Response(id: NIP46.Request.id(in: request.content) ?? "", error: "bad request: \(error)")
        }
        return [reply(response, to: request)]
    }

    public func errorReply(to request: ServiceRequest, error: ServiceError) -> ServiceReply? {
        let id = NIP46.Request.id(in: request.content) ?? ""
        return reply(NIP46.Response(id: id, error: "\(error.code.rawValue): \(error.message)"), to: request)
    }

    func reply(_ response: NIP46.Response, to request: ServiceRequest) -> ServiceReply {
        request.reply(kind: NIP46.kind, content: response.json, referencingRequest: false)
    }

    func respond(to message: NIP46.Request, from client: PublicKey, signer: PublicKey, logger: Logger) async -> NIP46.Response {
        func failure(_ text: String) -> NIP46.Response { NIP46.Response(id: message.id, error: text) }
        guard let identity = identities[signer] else { return failure("unauthorized: this bunker does not serve \(signer.hex)") }
        do {
            if message.method == "connect" {
                return try await connect(message, client: client, identity: identity)
            }
            guard var session = try await state.session(signer: signer, client: client) else {
                return failure("unauthorized: not connected; send connect with the secret from a bunker:// URI")
            }
            let now = Int64(Date().timeIntervalSince1970)
            if now - session.lastUsed >= 60 {
                session.lastUsed = now
                try await state.save(session)
            }
            return try await call(message, session: session, identity: identity)
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
        guard let named = message.params.first, (try? PublicKey(hex: named)) == signer else {
            return NIP46.Response(id: message.id, error: "bad request: connect's first parameter must be this remote signer's pubkey \(signer.hex)")
        }
        let secret = message.params.count > 1 && !message.params[1].isEmpty ? message.params[1] : nil
        let requested = message.params.count > 2 ? Permissions(requested: message.params[2]) : Permissions(entries: [])
        let metadata = message.params.count > 3 ? ClientMetadata(json: message.params[3]) : ClientMetadata()

        await connecting.acquire()
        defer { connecting.release() }
        if var session = try await state.session(signer: signer, client: client) {
            // Already connected (a client re-sending connect): nothing is spent again.
            session.requested = requested.entries.isEmpty ? session.requested : requested
            try await state.save(session)
            return NIP46.Response(id: message.id, result: "ack")
        }
        guard let secret else {
            return NIP46.Response(id: message.id, error: "unauthorized: connect needs the secret from a bunker:// URI")
        }
        guard let record = try await state.secret(secret), record.signer == signer.hex else {
            return NIP46.Response(id: message.id, error: "unauthorized: unknown secret")
        }
        guard record.usedBy == nil else {
            return NIP46.Response(id: message.id, error: "unauthorized: this secret has already been used; ask the operator for a new bunker:// URI")
        }
        let now = Int64(Date().timeIntervalSince1970)
        try await state.save(ClientSession(
            signer: signer.hex, client: client.hex, permissions: record.permissions, requested: requested,
            name: metadata.name, url: metadata.url, label: record.label, relays: relays().map(\.string),
            createdAt: now, lastUsed: now))
        try await state.markSpent(secret, record: record, by: client)
        return NIP46.Response(id: message.id, result: "ack")
    }

    private func call(_ message: NIP46.Request, session: ClientSession, identity: BunkerIdentity) async throws -> NIP46.Response {
        let id = message.id
        let params = message.params
        func ok(_ result: String) -> NIP46.Response { NIP46.Response(id: id, result: result) }
        func unauthorized(_ permission: String) -> NIP46.Response {
            NIP46.Response(id: id, error: "unauthorized: \(permission) is not granted to this client")
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
            if let missing = session.permissions.missing("sign_event", kind: template.kind) { return unauthorized(missing) }
            return ok(template.sign(with: identity.user).json)
        case "nip04_encrypt", "nip04_decrypt", "nip44_encrypt", "nip44_decrypt":
            if let missing = session.permissions.missing(message.method) { return unauthorized(missing) }
            try parameters(2)
            let peer = try PublicKey(validatingHex: params[0])
            switch message.method {
            case "nip04_encrypt": return ok(try NIP04.encrypt(params[1], secretKey: identity.user, publicKey: peer))
            case "nip04_decrypt": return ok(try NIP04.decrypt(params[1], secretKey: identity.user, publicKey: peer))
            case "nip44_encrypt":
                return ok(try NIP44.encrypt(params[1], conversationKey: ConversationKey(secretKey: identity.user, publicKey: peer)))
            default:
                return ok(try NIP44.decrypt(params[1], conversationKey: ConversationKey(secretKey: identity.user, publicKey: peer)))
            }
        case "switch_relays":
            let current = relays().map(\.string)
            guard Set(current) != Set(session.relays) else { return ok("null") }
            var moved = session
            moved.relays = current
            try await state.save(moved)
            var writer = JSONWriter()
            writer.stringArray(current)
            return ok(writer.text)
        case "logout":
            try await state.remove(signer: session.signer, client: session.client)
            return ok("ack")
        default:
            return NIP46.Response(id: id, error: "unsupported method \"\(message.method)\"")
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
