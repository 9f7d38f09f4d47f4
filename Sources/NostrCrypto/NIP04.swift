internal import COpenSSL

/// NIP-04 legacy direct-message encryption: AES-256-CBC keyed by the raw ECDH x coordinate,
/// written `base64(ciphertext)?iv=base64(iv)`.
///
/// Deprecated by NIP-17/NIP-44, still spoken by many NIP-46 and NIP-47 clients. It has no MAC: a tampered
/// payload can decrypt to garbage, which surfaces as a padding or UTF-8 error.
/// See [NIP-04](https://github.com/nostr-protocol/nips/blob/master/04.md).
public enum NIP04 {
    /// OpenSSL's cipher, fetched once instead of implicitly on every call.
    nonisolated(unsafe) private static let cipher: OpaquePointer? = EVP_CIPHER_fetch(nil, "AES-256-CBC", nil)

    /// The default cap on payload characters accepted by ``decrypt(_:secretKey:publicKey:maximumPayloadLength:)``.
    public static let defaultMaximumPayloadLength = 16 << 20

    /// Whether a payload looks like NIP-04 (`?iv=`) rather than NIP-44.
    public static func isNIP04Payload(_ payload: String) -> Bool {
        // A byte scan (NIP-44 payloads are base64, without `?`), cheaper than a String search.
        var payload = payload
        return payload.withUTF8 { bytes in
            guard bytes.count >= 24 else { return false }
            var i = 0
            while i + 4 <= bytes.count {
                if bytes[i] == UInt8(ascii: "?"), bytes[i + 1] == UInt8(ascii: "i"), bytes[i + 2] == UInt8(ascii: "v"),
                    bytes[i + 3] == UInt8(ascii: "=")
                {
                    return true
                }
                i += 1
            }
            return false
        }
    }

    /// Encrypts `plaintext` from `secretKey` to `publicKey` with a random IV.
    public static func encrypt(_ plaintext: String, secretKey: SecretKey, publicKey: PublicKey) throws -> String {
        var iv = [UInt8](repeating: 0, count: 16)
        iv.withUnsafeMutableBytes { SecureMemory.fillRandom($0) }
        var text = plaintext
        let ciphertext = try secretKey.withSharedX(publicKey) { key in
            try text.withUTF8 { try crypt(UnsafeRawBufferPointer($0), key: key, iv: iv, encrypt: true) }
        }
        return ciphertext.withUnsafeBytes { Base64.encode($0) } + "?iv=" + iv.withUnsafeBytes { Base64.encode($0) }
    }

    /// Decrypts a `ciphertext?iv=iv` payload sent between `secretKey` and `publicKey`.
    public static func decrypt(
        _ payload: String, secretKey: SecretKey, publicKey: PublicKey,
        maximumPayloadLength: Int = defaultMaximumPayloadLength
    ) throws -> String {
        guard payload.utf8.count <= maximumPayloadLength else {
            throw CryptoError(.invalidPayload, "the NIP-04 payload is larger than the \(maximumPayloadLength)-character limit")
        }
        guard let (ciphertextText, ivText) = splitPayload(payload), let ciphertext = Base64.decode(ciphertextText),
            let iv = Base64.decode(ivText)
        else {
            throw CryptoError(.invalidPayload, "a NIP-04 payload is base64(ciphertext)?iv=base64(iv)")
        }
        guard iv.count == 16 else { throw CryptoError(.invalidPayload, "the NIP-04 IV must be 16 bytes") }
        guard !ciphertext.isEmpty, ciphertext.count % 16 == 0 else {
            throw CryptoError(.invalidPayload, "the NIP-04 ciphertext must be a non-empty multiple of 16 bytes")
        }
        var plain = try secretKey.withSharedX(publicKey) { key in
            try ciphertext.withUnsafeBytes { try crypt($0, key: key, iv: iv, encrypt: false) }
        }
        defer { zero(&plain) }
        guard let text = String(validating: plain, as: UTF8.self) else {
            throw CryptoError(.invalidUTF8, "the decrypted NIP-04 plaintext is not valid UTF-8")
        }
        return text
    }

    /// Splits `ciphertext?iv=iv` at the first `?iv=` (a byte scan: `split(separator:)` with a string
    /// separator goes through the generic string-processing machinery and costs more than the AES).
    static func splitPayload(_ payload: String) -> (String, String)? {
        let utf8 = Array(payload.utf8)
        let marker: [UInt8] = Array("?iv=".utf8)
        guard utf8.count >= marker.count else { return nil }
        for i in 0...(utf8.count - marker.count) where utf8[i] == marker[0] {
            if utf8[i + 1] == marker[1] && utf8[i + 2] == marker[2] && utf8[i + 3] == marker[3] {
                return (String(decoding: utf8[..<i], as: UTF8.self), String(decoding: utf8[(i + 4)...], as: UTF8.self))
            }
        }
        return nil
    }

    static func crypt(_ input: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer, iv: [UInt8], encrypt: Bool) throws -> [UInt8] {
        guard let cipher, let context = EVP_CIPHER_CTX_new() else {
            throw CryptoError(.internalFailure, "OpenSSL has no AES-256-CBC")
        }
        defer { EVP_CIPHER_CTX_free(context) }
        var output = [UInt8](repeating: 0, count: input.count + 16)
        var written: Int32 = 0
        var final: Int32 = 0
        let ok = output.withUnsafeMutableBufferPointer { out -> Bool in
            let keyPointer = key.baseAddress!.assumingMemoryBound(to: UInt8.self)
            let inPointer = input.baseAddress?.assumingMemoryBound(to: UInt8.self)
            return iv.withUnsafeBufferPointer { ivPointer -> Bool in
                guard EVP_CipherInit_ex2(context, cipher, keyPointer, ivPointer.baseAddress, encrypt ? 1 : 0, nil) == 1,
                    EVP_CipherUpdate(context, out.baseAddress, &written, inPointer, Int32(input.count)) == 1,
                    EVP_CipherFinal_ex(context, out.baseAddress! + Int(written), &final) == 1
                else { return false }
                return true
            }
        }
        guard ok else {
            zero(&output)
            throw CryptoError(.invalidPayload, encrypt ? "AES-256-CBC encryption failed" : "invalid NIP-04 padding")
        }
        output.removeLast(output.count - Int(written + final))
        return output
    }
}
