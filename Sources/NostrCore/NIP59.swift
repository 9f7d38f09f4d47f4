public import NostrCrypto

/// NIP-59 seals (kind 13) and gift wraps (kind 1059) around an unsigned rumor.
///
/// See [NIP-59](https://github.com/nostr-protocol/nips/blob/master/59.md).
public enum GiftWrap {
    /// How far back `created_at` is randomised on seals and wraps (NIP-59 suggests up to two days).
    public static let timestampJitter: Int64 = 2 * 24 * 3600

    static func randomizedTimestamp(_ now: Timestamp) -> Timestamp {
        var r: UInt64 = 0
        withUnsafeMutableBytes(of: &r) { SecureMemory.fillRandom($0) }
        return now - Int64(r % UInt64(timestampJitter))
    }

    /// Seals `rumor` (authored by `sender`) for `recipient`: NIP-44-encrypted, signed by the sender.
    public static func seal(_ rumor: UnsignedEvent, sender: SecretKey, recipient: PublicKey, now: Timestamp = .now) throws -> Event {
        guard rumor.pubkey == sender.publicKey else {
            throw NostrError(.invalidShape, "the rumor's pubkey must be the sender's")
        }
        let key = try cryptoCall { try ConversationKey(secretKey: sender, publicKey: recipient) }
        let content = try cryptoCall { try NIP44.encrypt(rumor.json, conversationKey: key) }
        return EventTemplate(kind: .seal, content: content, tags: [], createdAt: randomizedTimestamp(now)).sign(with: sender)
    }

    /// Wraps a seal for `recipient` under a fresh one-time key.
    public static func wrap(_ seal: Event, recipient: PublicKey, extraTags: [Tag] = [], now: Timestamp = .now) throws -> Event {
        let ephemeral = SecretKey.generate()
        let key = try cryptoCall { try ConversationKey(secretKey: ephemeral, publicKey: recipient) }
        let content = try cryptoCall { try NIP44.encrypt(seal.json, conversationKey: key) }
        return EventTemplate(
            kind: .giftWrap, content: content, tags: [["p", recipient.hex]] + extraTags, createdAt: randomizedTimestamp(now)
        ).sign(with: ephemeral)
    }

    /// Seal then wrap.
    public static func sealAndWrap(_ rumor: UnsignedEvent, sender: SecretKey, recipient: PublicKey) throws -> Event {
        try wrap(try seal(rumor, sender: sender, recipient: recipient), recipient: recipient)
    }

    /// Opens a gift wrap addressed to `recipient`: checks both signatures and that the rumor's author is the
    /// seal's signer (so nobody can wrap a rumor in someone else's name). Returns the rumor.
    public static func unwrap(_ wrap: Event, recipient: SecretKey) throws -> UnsignedEvent {
        guard wrap.kind == .giftWrap else { throw NostrError(.invalidShape, "a gift wrap has kind 1059") }
        try wrap.verify()
        let wrapKey = try cryptoCall { try ConversationKey(secretKey: recipient, publicKey: wrap.pubkey) }
        let sealJSON = try cryptoCall { try NIP44.decrypt(wrap.content, conversationKey: wrapKey) }
        let seal = try Event(json: sealJSON)
        guard seal.kind == .seal else { throw NostrError(.invalidShape, "a seal has kind 13") }
        try seal.verify()
        let sealKey = try cryptoCall { try ConversationKey(secretKey: recipient, publicKey: seal.pubkey) }
        let rumorJSON = try cryptoCall { try NIP44.decrypt(seal.content, conversationKey: sealKey) }
        let rumor = try UnsignedEvent(json: rumorJSON)
        guard rumor.pubkey == seal.pubkey else {
            throw NostrError(.invalidSignature, "the rumor's author is not the seal's signer")
        }
        return rumor
    }

    static func cryptoCall<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as CryptoError {
            throw NostrError(.crypto, error.message)
        }
    }
}
