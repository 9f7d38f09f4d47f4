internal import CSodium
internal import Foundation

/// NIP-49 private-key encryption (`ncryptsec`): scrypt (N = 2^logN, r = 8, p = 1) over the NFKC-normalised
/// password, then XChaCha20-Poly1305 with the key-security byte as associated data.
///
/// See [NIP-49](https://github.com/nostr-protocol/nips/blob/master/49.md).
public enum NIP49 {
    /// What is known about how the key was handled before encryption (the associated-data byte).
    public enum KeySecurity: UInt8, Sendable {
        /// Known to have been handled insecurely (stored or pasted unencrypted).
        case insecure = 0x00
        /// Not known to have been handled insecurely.
        case secure = 0x01
        /// Not tracked.
        case unknown = 0x02
    }

    /// The highest `logN` accepted when decrypting (4 GiB of scrypt memory); higher values are refused
    /// rather than allowed to exhaust memory.
    public static let defaultMaximumLogN: UInt8 = 22

    static let version: UInt8 = 0x02
    static let payloadLength = 91

    /// Encrypts `secretKey` under `password` and returns the `ncryptsec1…` string.
    public static func encrypt(
        _ secretKey: SecretKey, password: String, logN: UInt8 = 16, keySecurity: KeySecurity = .unknown
    ) throws -> String {
        guard (1...defaultMaximumLogN).contains(logN) else {
            throw CryptoError(.invalidParameter, "logN must be 1 to \(defaultMaximumLogN)")
        }
        var salt = [UInt8](repeating: 0, count: 16)
        var nonce = [UInt8](repeating: 0, count: 24)
        salt.withUnsafeMutableBytes { SecureMemory.fillRandom($0) }
        nonce.withUnsafeMutableBytes { SecureMemory.fillRandom($0) }
        var key = try deriveKey(password: password, salt: salt, logN: logN)
        defer { zero(&key) }
        var ciphertext = [UInt8](repeating: 0, count: 32 + 16)
        var ciphertextLength: UInt64 = 0
        var associated = keySecurity.rawValue
        let status = secretKey.withUnsafeSecretBytes { secret in
            crypto_aead_xchacha20poly1305_ietf_encrypt(
                &ciphertext, &ciphertextLength,
                secret.baseAddress!.assumingMemoryBound(to: UInt8.self), 32,
                &associated, 1, nil, nonce, key)
        }
        guard status == 0, ciphertextLength == 48 else {
            throw CryptoError(.internalFailure, "XChaCha20-Poly1305 encryption failed")
        }
        let payload = [version, logN] + salt + nonce + [associated] + ciphertext
        return Bech32.encode(hrp: "ncryptsec", data: payload)
    }

    /// Decrypts an `ncryptsec1…` string with `password`.
    public static func decrypt(_ ncryptsec: String, password: String, maximumLogN: UInt8 = defaultMaximumLogN) throws -> SecretKey {
        let (hrp, payload) = try Bech32.decode(ncryptsec)
        guard hrp == "ncryptsec" else { throw CryptoError(.invalidParameter, "expected an ncryptsec, found '\(hrp)'") }
        guard payload.count == payloadLength else {
            throw CryptoError(.invalidPayload, "an ncryptsec holds \(payloadLength) bytes, this one \(payload.count)")
        }
        guard payload[0] == version else {
            throw CryptoError(.unsupportedVersion, "unknown ncryptsec version \(payload[0])")
        }
        let logN = payload[1]
        guard logN >= 1, logN <= maximumLogN else {
            throw CryptoError(.invalidParameter, "ncryptsec logN \(logN) is outside 1...\(maximumLogN)")
        }
        let salt = Array(payload[2..<18])
        let nonce = Array(payload[18..<42])
        var associated = payload[42]
        guard associated <= 2 else {
            throw CryptoError(.invalidPayload, "unknown ncryptsec key-security byte \(associated)")
        }
        let ciphertext = Array(payload[43..<91])
        var key = try deriveKey(password: password, salt: salt, logN: logN)
        defer { zero(&key) }
        var secret = [UInt8](repeating: 0, count: 32)
        defer { zero(&secret) }
        var secretLength: UInt64 = 0
        let status = crypto_aead_xchacha20poly1305_ietf_decrypt(
            &secret, &secretLength, nil, ciphertext, UInt64(ciphertext.count), &associated, 1, nonce, key)
        guard status == 0, secretLength == 32 else {
            throw CryptoError(.authenticationFailed, "wrong password or corrupted ncryptsec")
        }
        return try secret.withUnsafeBytes { try SecretKey(bytes: $0) }
    }

    /// The key-security byte recorded in an `ncryptsec`, without decrypting it.
    public static func keySecurity(of ncryptsec: String) throws -> KeySecurity {
        let (hrp, payload) = try Bech32.decode(ncryptsec)
        guard hrp == "ncryptsec", payload.count == payloadLength, let security = KeySecurity(rawValue: payload[42]) else {
            throw CryptoError(.invalidPayload, "not a valid ncryptsec")
        }
        return security
    }

    static func deriveKey(password: String, salt: [UInt8], logN: UInt8) throws -> [UInt8] {
        Sodium.ensureInitialized()
        var normalized = Array(password.precomposedStringWithCompatibilityMapping.utf8)
        defer { zero(&normalized) }
        var key = [UInt8](repeating: 0, count: 32)
        let status = crypto_pwhash_scryptsalsa208sha256_ll(
            normalized, normalized.count, salt, salt.count, UInt64(1) << UInt64(logN), 8, 1, &key, 32)
        guard status == 0 else {
            throw CryptoError(.internalFailure, "scrypt failed (logN \(logN) may need more memory than is available)")
        }
        return key
    }
}
