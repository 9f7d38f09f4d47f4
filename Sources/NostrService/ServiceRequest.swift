public import NostrCore
public import NostrCrypto
public import NostrRelay

/// How a request's content is protected, and so how its reply is.
public enum PayloadEncryption: String, Hashable, Sendable, CaseIterable {
    /// NIP-44 v2.
    case nip44
    /// Legacy NIP-04 (detected by `?iv=` in the content); answered in NIP-04.
    case nip04
    /// Plain text, for public request kinds.
    case plaintext
}

/// A request as a handler sees it: checked, deduplicated, within policy, and decrypted.
public struct ServiceRequest: Sendable {
    /// The request event as it arrived (id and signature verified).
    public let event: Event
    /// The content, decrypted.
    public let content: String
    /// How the content was encrypted; replies use the same scheme.
    public let encryption: PayloadEncryption
    /// Which of the service's keys the request is addressed to (and answered by).
    public let recipient: PublicKey
    /// The relay the request first arrived on.
    public let relay: RelayURL

    /// The requester.
    public var sender: PublicKey { event.pubkey }

    public init(event: Event, content: String, encryption: PayloadEncryption, recipient: PublicKey, relay: RelayURL) {
        self.event = event
        self.content = content
        self.encryption = encryption
        self.recipient = recipient
        self.relay = relay
    }

    /// A reply to this request: `content` is encrypted to the sender with the request's scheme, and the reply
    /// carries `["p", sender]` and, unless `referencingRequest` is false, `["e", request id]`.
    public func reply(kind: Kind, content: String, tags: [Tag] = [], referencingRequest: Bool = true) -> ServiceReply {
        var all = tags
        if !all.contains(where: { $0.name == "p" }) { all.insert(["p", sender.hex], at: 0) }
        if referencingRequest && !all.contains(where: { $0.name == "e" }) { all.insert(["e", event.id.hex], at: 1) }
        return ServiceReply(kind: kind, content: content, tags: all, encryption: encryption)
    }
}

/// An event the service publishes in answer to a request; signed by the key the request addressed.
public struct ServiceReply: Sendable, Hashable {
    public var kind: Kind
    /// Plain text; encrypted to ``recipient`` with ``encryption`` before signing.
    public var content: String
    public var tags: [Tag]
    public var encryption: PayloadEncryption
    /// Whom the content is encrypted to; the requester when nil.
    public var recipient: PublicKey?
    /// Relays to publish to besides the one the request came from and the service's own (a request's
    /// `relays` tag, say).
    public var relays: [RelayURL]

    public init(
        kind: Kind, content: String, tags: [Tag] = [], encryption: PayloadEncryption = .plaintext,
        recipient: PublicKey? = nil, relays: [RelayURL] = []
    ) {
        self.kind = kind
        self.content = content
        self.tags = tags
        self.encryption = encryption
        self.recipient = recipient
        self.relays = relays
    }
}
