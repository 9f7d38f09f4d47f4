public import NostrCore
public import NostrCrypto
import Synchronization

/// A key a service answers with: signs its replies and decrypts and encrypts payloads for its peers.
///
/// ``LocalServiceKey`` holds the secret in this process; other implementations (a hardware key, a remote
/// signer) can stand in. Implementations must be safe to call concurrently.
public protocol ServiceSigner: EventSigner {
    /// Encrypts `plaintext` for `peer` with NIP-44 v2.
    func nip44Encrypt(_ plaintext: String, to peer: PublicKey) throws -> String
    /// Decrypts a NIP-44 v2 payload from `peer`.
    func nip44Decrypt(_ payload: String, from peer: PublicKey) throws -> String
    /// Encrypts `plaintext` for `peer` with legacy NIP-04.
    func nip04Encrypt(_ plaintext: String, to peer: PublicKey) throws -> String
    /// Decrypts a legacy NIP-04 payload from `peer`.
    func nip04Decrypt(_ payload: String, from peer: PublicKey) throws -> String
}

/// A ``ServiceSigner`` over a secret key in this process, with a bounded cache of NIP-44 conversation keys
/// (each costs an ECDH, the most expensive step of answering a request).
public final class LocalServiceKey: ServiceSigner {
    private let secretKey: SecretKey
    public let publicKey: PublicKey
    private let cache: Mutex<BoundedCache<PublicKey, ConversationKey>>

    /// - Parameter cacheCapacity: conversation keys kept (one per peer); the least recently added is
    ///   forgotten first.
    public init(_ secretKey: SecretKey, cacheCapacity: Int = 10_000) {
        self.secretKey = secretKey
        self.publicKey = secretKey.publicKey
        self.cache = Mutex(BoundedCache(capacity: cacheCapacity))
    }

    public func sign(_ template: EventTemplate) async throws -> Event {
        template.sign(with: secretKey)
    }

    public func nip44Encrypt(_ plaintext: String, to peer: PublicKey) throws -> String {
        try NIP44.encrypt(plaintext, conversationKey: conversationKey(peer))
    }

    public func nip44Decrypt(_ payload: String, from peer: PublicKey) throws -> String {
        try NIP44.decrypt(payload, conversationKey: conversationKey(peer))
    }

    public func nip04Encrypt(_ plaintext: String, to peer: PublicKey) throws -> String {
        try NIP04.encrypt(plaintext, secretKey: secretKey, publicKey: peer)
    }

    public func nip04Decrypt(_ payload: String, from peer: PublicKey) throws -> String {
        try NIP04.decrypt(payload, secretKey: secretKey, publicKey: peer)
    }

    /// Conversation keys computed so far that are still cached.
    public var cachedConversationKeys: Int { cache.withLock { $0.count } }

    private func conversationKey(_ peer: PublicKey) throws -> ConversationKey {
        if let key = cache.withLock({ $0[peer] }) { return key }
        let key = try ConversationKey(secretKey: secretKey, publicKey: peer)
        cache.withLock { $0.insert(key, forKey: peer) }
        return key
    }
}
