internal import CSecp256k1

/// Recoverable ECDSA over secp256k1, as Lightning invoices (BOLT11) use it: the signer's compressed public
/// key is not sent but recovered from the signature.
public enum ECDSA {
    /// A compact signature (r ‖ s, low-s) with its recovery id.
    public struct RecoverableSignature: Sendable, Hashable {
        /// 64 bytes: r then s, big-endian.
        public let compact: [UInt8]
        /// 0...3.
        public let recoveryID: Int

        public init(compact: [UInt8], recoveryID: Int) throws {
            guard compact.count == 64, (0...3).contains(recoveryID) else {
                throw CryptoError(.invalidParameter, "a recoverable signature is 64 bytes and a recovery id 0...3")
            }
            self.compact = compact
            self.recoveryID = recoveryID
        }
    }

    /// Signs a 32-byte digest with `key` (RFC 6979 nonce, low-s).
    public static func signRecoverable(_ digest: Bytes32, with key: SecretKey) throws -> RecoverableSignature {
        var signature = secp256k1_ecdsa_recoverable_signature()
        let signed = digest.withUnsafeBytes { message in
            key.withUnsafeSecretBytes { secret in
                secp256k1_ecdsa_sign_recoverable(
                    Secp256k1.context, &signature, message.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    secret.baseAddress!.assumingMemoryBound(to: UInt8.self), nil, nil)
            }
        }
        guard signed == 1 else { throw CryptoError(.internalFailure, "libsecp256k1 could not sign") }
        var compact = [UInt8](repeating: 0, count: 64)
        var recoveryID: Int32 = 0
        _ = secp256k1_ecdsa_recoverable_signature_serialize_compact(Secp256k1.context, &compact, &recoveryID, &signature)
        return try RecoverableSignature(compact: compact, recoveryID: Int(recoveryID))
    }

    /// The compressed public key (33 bytes) that made `signature` over `digest`; throws when none did (a
    /// malformed or high-s signature, which Lightning does not accept).
    public static func recover(_ signature: RecoverableSignature, digest: Bytes32) throws -> [UInt8] {
        var parsed = secp256k1_ecdsa_recoverable_signature()
        guard secp256k1_ecdsa_recoverable_signature_parse_compact(
            Secp256k1.context, &parsed, signature.compact, Int32(signature.recoveryID)) == 1
        else { throw CryptoError(.invalidParameter, "the signature is not a valid compact signature") }
        // Recovery accepts high-s signatures; BOLT11 requires low-s, so check the normalised form.
        var plain = secp256k1_ecdsa_signature()
        _ = secp256k1_ecdsa_recoverable_signature_convert(Secp256k1.context, &plain, &parsed)
        var normalised = secp256k1_ecdsa_signature()
        guard secp256k1_ecdsa_signature_normalize(Secp256k1.context, &normalised, &plain) == 0 else {
            throw CryptoError(.invalidParameter, "the signature is not in low-s form")
        }
        var point = secp256k1_pubkey()
        let recovered = digest.withUnsafeBytes { message in
            secp256k1_ecdsa_recover(Secp256k1.context, &point, &parsed, message.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
        guard recovered == 1 else { throw CryptoError(.invalidParameter, "no public key recovers from the signature") }
        return serializeCompressed(&point)
    }

    /// Whether `key` is a valid compressed (33-byte) secp256k1 public key.
    public static func isCompressedPublicKey(_ key: [UInt8]) -> Bool {
        guard key.count == 33 else { return false }
        var point = secp256k1_pubkey()
        return secp256k1_ec_pubkey_parse(Secp256k1.context, &point, key, 33) == 1
    }

    static func serializeCompressed(_ point: inout secp256k1_pubkey) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 33)
        var length = 33
        _ = secp256k1_ec_pubkey_serialize(Secp256k1.context, &out, &length, &point, UInt32(SECP256K1_EC_COMPRESSED))
        return out
    }
}

extension SecretKey {
    /// The full public key in compressed SEC1 form (33 bytes), as Lightning names nodes.
    public var compressedPublicKey: [UInt8] {
        var point = secp256k1_pubkey()
        _ = withUnsafeSecretBytes { secret in
            secp256k1_ec_pubkey_create(Secp256k1.context, &point, secret.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
        return ECDSA.serializeCompressed(&point)
    }
}

/// HMAC-SHA256 (RFC 2104), for keyed derivations.
public enum HMAC {
    /// The HMAC-SHA256 of `message` under `key`.
    public static func sha256(key: some Sequence<UInt8>, message: some Sequence<UInt8>) -> Bytes32 {
        let key = Array(key)
        let message = Array(message)
        return key.withUnsafeBytes { key in message.withUnsafeBytes { HMACSHA256.mac(key: key, message: $0) } }
    }

    /// The HMAC-SHA256 of `message` under a secret key's 32 bytes (which do not leave secure memory).
    public static func sha256(key: SecretKey, message: some Sequence<UInt8>) -> Bytes32 {
        let message = Array(message)
        return key.withUnsafeSecretBytes { key in message.withUnsafeBytes { HMACSHA256.mac(key: key, message: $0) } }
    }
}
