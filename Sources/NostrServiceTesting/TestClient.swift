public import NostrCore
public import NostrCrypto
public import NostrService

/// A requester for tests: makes encrypted (or plain) request events for a service and reads its replies.
public struct TestClient: Sendable {
    public let key: SecretKey
    public var publicKey: PublicKey { key.publicKey }

    public init(key: SecretKey = .generate()) {
        self.key = key
    }

    /// A signed request of `kind` to `service` with `content` encrypted in `encryption`, `p`-tagging the
    /// service (after `tags`).
    public func request(
        kind: Kind, content: String, to service: PublicKey, encryption: PayloadEncryption = .nip44,
        tags: [Tag] = [], createdAt: Timestamp? = nil
    ) throws -> Event {
        let payload: String
        switch encryption {
        case .plaintext: payload = content
        case .nip44: payload = try NIP44.encrypt(content, conversationKey: ConversationKey(secretKey: key, publicKey: service))
        case .nip04: payload = try NIP04.encrypt(content, secretKey: key, publicKey: service)
        }
        return EventTemplate(kind: kind, content: payload, tags: tags + [["p", service.hex]], createdAt: createdAt).sign(with: key)
    }

    /// The plain content of a reply from `reply.pubkey`: NIP-04 when it has `?iv=`, else NIP-44.
    public func read(_ reply: Event) throws -> String {
        if NIP04.isNIP04Payload(reply.content) {
            return try NIP04.decrypt(reply.content, secretKey: key, publicKey: reply.pubkey)
        }
        return try NIP44.decrypt(reply.content, conversationKey: ConversationKey(secretKey: key, publicKey: reply.pubkey))
    }
}
