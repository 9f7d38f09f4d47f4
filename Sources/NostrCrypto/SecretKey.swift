internal import CSecp256k1

/// A secp256k1 secret key with its public key.
///
/// The secret lives in one heap buffer that is zeroed when the last copy of this value is released; the
/// key never appears as a `String`, `Data` or `[UInt8]` unless exported on purpose with
/// ``withUnsafeSecretBytes(_:)``. `description` is redacted. Equality is constant-time.
public struct SecretKey: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    // Layout of `storage`: 32 secret bytes, then libsecp256k1's 96-byte keypair (so signing does not
    // recompute the public point).
    private static let keypairOffset = 32
    private static let storageSize = 32 + MemoryLayout<secp256k1_keypair>.size

    private let storage: SecureBuffer

    /// The x-only public key of this secret.
    public let publicKey: PublicKey

    /// Builds a key from 32 secret bytes. The caller keeps ownership of (and should zero) `bytes`.
    public init(bytes: UnsafeRawBufferPointer) throws {
        guard bytes.count == 32 else {
            throw CryptoError(.invalidSecretKey, "a secret key is 32 bytes")
        }
        var publicKey = Bytes32.zero
        storage = try SecureBuffer(count: Self.storageSize) { buffer in
                buffer.copyMemory(from: bytes)
                let secret = buffer.baseAddress!.assumingMemoryBound(to: UInt8.self)
                let keypair = (buffer.baseAddress! + Self.keypairOffset).assumingMemoryBound(to: secp256k1_keypair.self)
                guard secp256k1_keypair_create(Secp256k1.context, keypair, secret) == 1 else {
                    throw CryptoError(.invalidSecretKey, "the secret key is zero or not below the curve order")
                }
                var xonly = secp256k1_xonly_pubkey()
                guard secp256k1_keypair_xonly_pub(Secp256k1.context, &xonly, nil, keypair) == 1 else {
                    throw CryptoError(.internalFailure, "libsecp256k1 could not derive the public key")
                }
                publicKey = Bytes32 { out in
                    _ = secp256k1_xonly_pubkey_serialize(
                        Secp256k1.context, out.baseAddress!.assumingMemoryBound(to: UInt8.self), &xonly)
                }
            }
        self.publicKey = PublicKey(publicKey)
    }

    /// Parses 64 hex characters. The decoded temporary is zeroed.
    public init(hex: some StringProtocol) throws {
        var raw = Bytes32.zero
        let ok = withUnsafeMutableBytes(of: &raw) { Hex.decode(hex, into: $0) }
        defer { withUnsafeMutableBytes(of: &raw) { SecureMemory.zero($0) } }
        guard ok else { throw CryptoError(.invalidHex, "a secret key is 64 hex characters") }
        try self = raw.withUnsafeBytes { buffer throws in try SecretKey(bytes: buffer) }
    }

    /// A new key from the operating system's CSPRNG.
    public static func generate() -> SecretKey {
        var candidate = Bytes32.zero
        defer { withUnsafeMutableBytes(of: &candidate) { SecureMemory.zero($0) } }
        while true {
            withUnsafeMutableBytes(of: &candidate) { SecureMemory.fillRandom($0) }
            // A random 32-byte string is out of range with probability ~2^-128; loop regardless.
            if let key = try? candidate.withUnsafeBytes({ buffer throws in try SecretKey(bytes: buffer) }) {
                return key
            }
        }
    }

    /// Lends the 32 secret bytes to `body` (for export or encryption at rest). Do not let them escape.
    public func withUnsafeSecretBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(rebasing: storage.bytes[0..<32]))
    }

    /// The secret as 64 lowercase hex characters: for deliberate export only (a `String` cannot be zeroed).
    public func exportHex() -> String {
        withUnsafeSecretBytes { Hex.encode($0) }
    }

    func withKeypair<R>(_ body: (UnsafePointer<secp256k1_keypair>) throws -> R) rethrows -> R {
        try body((storage.bytes.baseAddress! + Self.keypairOffset).assumingMemoryBound(to: secp256k1_keypair.self))
    }

    public static func == (lhs: SecretKey, rhs: SecretKey) -> Bool {
        lhs.withUnsafeSecretBytes { a in rhs.withUnsafeSecretBytes { b in SecureMemory.constantTimeEqual(a, b) } }
    }

    public var description: String { "SecretKey(redacted, public: \(publicKey.hex))" }
    public var debugDescription: String { description }
}
