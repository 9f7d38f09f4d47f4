public import NostrCrypto

/// Something that signs events for one public key: a key in this process, or a remote signer.
///
/// The relay pool uses it for NIP-42 authentication; services use it to sign what they publish. Implementations
/// must be safe to call concurrently.
public protocol EventSigner: Sendable {
    /// The public key every signed event carries.
    var publicKey: PublicKey { get }

    /// Signs `template` (its `created_at` defaults to now).
    func sign(_ template: EventTemplate) async throws -> Event
}

/// An ``EventSigner`` over a secret key held in this process.
public struct KeySigner: EventSigner {
    private let secretKey: SecretKey
    public let publicKey: PublicKey

    public init(_ secretKey: SecretKey) {
        self.secretKey = secretKey
        self.publicKey = secretKey.publicKey
    }

    public func sign(_ template: EventTemplate) async throws -> Event {
        template.sign(with: secretKey)
    }
}
