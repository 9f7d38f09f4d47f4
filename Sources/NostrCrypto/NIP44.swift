internal import CSodium

/// The NIP-44 v2 conversation key between two parties: `HKDF-extract(salt: "nip44-v2", ikm: ECDH x)`.
///
/// Symmetric: `ConversationKey(a, B) == ConversationKey(b, A)`. Held in zeroed-on-release memory. Computing it
/// costs one ECDH, so services cache it per peer.
public struct ConversationKey: Sendable, Equatable {
    let storage: SecureBuffer

    /// Derives the key for `secretKey` talking to `publicKey`.
    public init(secretKey: SecretKey, publicKey: PublicKey) throws {
        var key = Bytes32.zero
        defer { withUnsafeMutableBytes(of: &key) { SecureMemory.zero($0) } }
        key = try secretKey.withSharedX(publicKey) { (sharedX) throws -> Bytes32 in
            NIP44.salt.withUnsafeBytes { salt in HKDF.extract(salt: salt, inputKeyMaterial: sharedX) }
        }
        let derived = key
        storage = SecureBuffer(count: 32) { buffer in derived.withUnsafeBytes { buffer.copyMemory(from: $0) } }
    }

    /// Wraps 32 raw key bytes (test vectors, or a key kept by the caller).
    public init(bytes: UnsafeRawBufferPointer) throws {
        guard bytes.count == 32 else { throw CryptoError(.invalidParameter, "a conversation key is 32 bytes") }
        storage = SecureBuffer(count: 32) { $0.copyMemory(from: bytes) }
    }

    /// Lends the 32 key bytes to `body`.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(storage.bytes)
    }

    public static func == (lhs: ConversationKey, rhs: ConversationKey) -> Bool {
        SecureMemory.constantTimeEqual(lhs.storage.bytes, rhs.storage.bytes)
    }
}

/// NIP-44 v2 encrypted payloads: ChaCha20, HMAC-SHA256 with the nonce as associated data, power-of-two
/// padding, and the extended 6-byte length prefix for plaintexts of 65,536 bytes and more.
///
/// See [NIP-44](https://github.com/nostr-protocol/nips/blob/master/44.md).
public enum NIP44 {
    static let salt: [UInt8] = Array("nip44-v2".utf8)
    static let version: UInt8 = 2
    static let extendedPrefixThreshold = 65_536

    /// The largest plaintext the scheme can carry (2^32 − 1 bytes).
    public static let maximumPlaintextLength = Int(UInt32.max)

    /// The default cap on payload characters accepted by ``decrypt(_:conversationKey:maximumPayloadLength:)``:
    /// 16 MiB, far above any relay's message limit, so a hostile payload cannot make us allocate gigabytes.
    public static let defaultMaximumPayloadLength = 16 << 20

    /// The padded length of a plaintext of `unpaddedLength` bytes (without the length prefix).
    public static func paddedLength(_ unpaddedLength: Int) -> Int {
        if unpaddedLength <= 32 { return 32 }
        let nextPower = 1 << (Int.bitWidth - (unpaddedLength - 1).leadingZeroBitCount)
        let chunk = nextPower <= 256 ? 32 : nextPower / 8
        return chunk * ((unpaddedLength - 1) / chunk + 1)
    }

    /// Encrypts UTF-8 text with a fresh random nonce.
    public static func encrypt(_ plaintext: String, conversationKey: ConversationKey) throws -> String {
        var nonce = Bytes32.zero
        withUnsafeMutableBytes(of: &nonce) { SecureMemory.fillRandom($0) }
        return try encrypt(plaintext, conversationKey: conversationKey, nonce: nonce)
    }

    /// Encrypts UTF-8 text with a caller-chosen nonce. Never reuse a nonce; this exists for test vectors.
    public static func encrypt(
        _ plaintext: String, conversationKey: ConversationKey, nonce: Bytes32
    ) throws -> String {
        var text = plaintext
        return try text.withUTF8 { (utf8) throws -> String in
            try encrypt(bytes: UnsafeRawBufferPointer(utf8), conversationKey: conversationKey, nonce: nonce)
        }
    }

    /// Encrypts arbitrary bytes (1 byte to 4 GiB − 1) with a caller-chosen nonce.
    public static func encrypt(
        bytes plaintext: UnsafeRawBufferPointer, conversationKey: ConversationKey, nonce: Bytes32
    ) throws -> String {
        let length = plaintext.count
        guard length >= 1, length <= maximumPlaintextLength else {
            throw CryptoError(.invalidPlaintextLength, "NIP-44 plaintext must be 1 to 4,294,967,295 bytes, not \(length)")
        }
        let prefixLength = length >= extendedPrefixThreshold ? 6 : 2
        let padded = prefixLength + paddedLength(length)
        // version(1) | nonce(32) | ciphertext(padded) | mac(32)
        let rawCount = 1 + 32 + padded + 32
        var raw = [UInt8](repeating: 0, count: rawCount)
        var keys = MessageKeys(conversationKey: conversationKey, nonce: nonce)
        defer { keys.zero() }
        raw.withUnsafeMutableBytes { out in
            out[0] = version
            nonce.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: out[1..<33]).copyMemory(from: $0) }
            let body = UnsafeMutableRawBufferPointer(rebasing: out[33..<(33 + padded)])
            if prefixLength == 2 {
                body[0] = UInt8(truncatingIfNeeded: length >> 8)
                body[1] = UInt8(truncatingIfNeeded: length)
            } else {
                body[2] = UInt8(truncatingIfNeeded: length >> 24)
                body[3] = UInt8(truncatingIfNeeded: length >> 16)
                body[4] = UInt8(truncatingIfNeeded: length >> 8)
                body[5] = UInt8(truncatingIfNeeded: length)
            }
            UnsafeMutableRawBufferPointer(rebasing: body[prefixLength..<(prefixLength + length)]).copyMemory(from: plaintext)
            keys.chacha20InPlace(body)
            let mac = keys.mac(nonce: nonce, ciphertext: UnsafeRawBufferPointer(body))
            mac.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: out[(33 + padded)...]).copyMemory(from: $0) }
        }
        return raw.withUnsafeBytes { Base64.encode($0) }
    }

    /// Decrypts a payload to UTF-8 text.
    public static func decrypt(
        _ payload: String, conversationKey: ConversationKey, maximumPayloadLength: Int = defaultMaximumPayloadLength
    ) throws -> String {
        var bytes = try decryptBytes(payload, conversationKey: conversationKey, maximumPayloadLength: maximumPayloadLength)
        defer { zero(&bytes) }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw CryptoError(.invalidUTF8, "the decrypted NIP-44 plaintext is not valid UTF-8")
        }
        return text
    }

    /// Decrypts a payload to bytes. Checks, in the order NIP-44 gives: version flag, size, base64, version,
    /// MAC (constant-time), then padding.
    public static func decryptBytes(
        _ payload: String, conversationKey: ConversationKey, maximumPayloadLength: Int = defaultMaximumPayloadLength
    ) throws -> [UInt8] {
        let utf8 = payload.utf8
        guard let first = utf8.first, first != UInt8(ascii: "#") else {
            throw CryptoError(.unsupportedVersion, "unknown NIP-44 encryption version")
        }
        guard utf8.count >= 132 else {
            throw CryptoError(.invalidPayload, "a NIP-44 payload has at least 132 characters, this one \(utf8.count)")
        }
        guard utf8.count <= maximumPayloadLength else {
            throw CryptoError(.invalidPayload, "the NIP-44 payload is larger than the \(maximumPayloadLength)-character limit")
        }
        guard let raw = Base64.decode(payload) else {
            throw CryptoError(.invalidPayload, "the NIP-44 payload is not valid base64")
        }
        guard raw.count >= 99 else {
            throw CryptoError(.invalidPayload, "a decoded NIP-44 payload has at least 99 bytes")
        }
        guard raw[0] == version else {
            throw CryptoError(.unsupportedVersion, "unknown NIP-44 encryption version \(raw[0])")
        }
        return try raw.withUnsafeBytes { (data) throws -> [UInt8] in
            let nonce = Bytes32(UnsafeRawBufferPointer(rebasing: data[1..<33]))!
            let ciphertext = UnsafeRawBufferPointer(rebasing: data[33..<(data.count - 32)])
            let mac = UnsafeRawBufferPointer(rebasing: data[(data.count - 32)...])
            var keys = MessageKeys(conversationKey: conversationKey, nonce: nonce)
            defer { keys.zero() }
            let expected = keys.mac(nonce: nonce, ciphertext: ciphertext)
            let matches = expected.withUnsafeBytes { SecureMemory.constantTimeEqual($0, mac) }
            guard matches else {
                throw CryptoError(.authenticationFailed, "invalid NIP-44 MAC")
            }
            var padded = [UInt8](ciphertext)
            defer { zero(&padded) }
            padded.withUnsafeMutableBytes { keys.chacha20InPlace($0) }
            return try unpad(padded)
        }
    }

    /// Removes NIP-44 padding from a decrypted body (exposed to the fuzz targets, which cannot forge a MAC to
    /// reach it through ``decryptBytes(_:conversationKey:maximumPayloadLength:)``).
    @_spi(Fuzzing)
    public static func unpad(_ padded: [UInt8]) throws -> [UInt8] {
        let invalid = CryptoError(.invalidPayload, "invalid NIP-44 padding")
        guard padded.count >= 2 else { throw invalid }
        let firstTwo = Int(padded[0]) << 8 | Int(padded[1])
        let length: Int
        let prefixLength: Int
        if firstTwo == 0 {
            guard padded.count >= 6 else { throw invalid }
            length = Int(padded[2]) << 24 | Int(padded[3]) << 16 | Int(padded[4]) << 8 | Int(padded[5])
            guard length >= extendedPrefixThreshold else { throw invalid }
            prefixLength = 6
        } else {
            length = firstTwo
            prefixLength = 2
        }
        guard padded.count == prefixLength + paddedLength(length) else { throw invalid }
        return Array(padded[prefixLength..<(prefixLength + length)])
    }

    /// The per-message keys: ChaCha20 key and nonce, HMAC key (HKDF-expand of the conversation key, 76 bytes).
    struct MessageKeys {
        var material: (Bytes32, Bytes32, Bytes32)  // 96 bytes, the first 76 used

        init(conversationKey: ConversationKey, nonce: Bytes32) {
            material = (.zero, .zero, .zero)
            withUnsafeMutableBytes(of: &material) { out in
                conversationKey.withUnsafeBytes { prk in
                    nonce.withUnsafeBytes { info in
                        HKDF.expand(
                            pseudoRandomKey: prk, info: info, into: UnsafeMutableRawBufferPointer(rebasing: out[0..<76]))
                    }
                }
            }
        }

        func withParts<R>(
            _ body: (_ chachaKey: UnsafeRawBufferPointer, _ chachaNonce: UnsafeRawBufferPointer, _ hmacKey: UnsafeRawBufferPointer) -> R
        ) -> R {
            withUnsafeBytes(of: material) { all in
                body(
                    UnsafeRawBufferPointer(rebasing: all[0..<32]),
                    UnsafeRawBufferPointer(rebasing: all[32..<44]),
                    UnsafeRawBufferPointer(rebasing: all[44..<76]))
            }
        }

        func chacha20InPlace(_ buffer: UnsafeMutableRawBufferPointer) {
            guard let base = buffer.baseAddress, buffer.count > 0 else { return }
            withParts { key, nonce, _ in
                let p = base.assumingMemoryBound(to: UInt8.self)
                _ = crypto_stream_chacha20_ietf_xor(
                    p, p, UInt64(buffer.count),
                    nonce.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    key.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }

        func mac(nonce: Bytes32, ciphertext: UnsafeRawBufferPointer) -> Bytes32 {
            withParts { _, _, hmacKey in
                var hmac = HMACSHA256(key: hmacKey)
                nonce.withUnsafeBytes { hmac.update($0) }
                hmac.update(ciphertext)
                return Bytes32 { hmac.finalize(into: $0) }
            }
        }

        /// Exposed for the NIP-44 `get_message_keys` vectors.
        var chachaKey: Bytes32 { withParts { k, _, _ in Bytes32(k)! } }
        var chachaNonce: [UInt8] { withParts { _, n, _ in Array(n) } }
        var hmacKey: Bytes32 { withParts { _, _, h in Bytes32(h)! } }

        mutating func zero() {
            withUnsafeMutableBytes(of: &material) { SecureMemory.zero($0) }
        }
    }
}
