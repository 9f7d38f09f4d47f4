internal import COpenSSL

/// SHA-256 on OpenSSL's assembly implementation.
public struct SHA256: Sendable {
    var context = SHA256_CTX()

    /// A fresh hash state.
    public init() {
        SHA256_Init(&context)
    }

    /// Feeds bytes.
    public mutating func update(_ buffer: UnsafeRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        SHA256_Update(&context, base, buffer.count)
    }

    /// Feeds bytes.
    public mutating func update(_ bytes: some Sequence<UInt8>) {
        let handled: Void? = bytes.withContiguousStorageIfAvailable { update(UnsafeRawBufferPointer($0)) }
        if handled == nil {
            let array = Array(bytes)
            array.withUnsafeBytes { update($0) }
        }
    }

    /// Finishes and returns the digest; the state is zeroed.
    public mutating func finalize() -> Bytes32 {
        let digest = Bytes32 { out in
            _ = SHA256_Final(out.baseAddress!.assumingMemoryBound(to: UInt8.self), &context)
        }
        withUnsafeMutableBytes(of: &context) { SecureMemory.zero($0) }
        return digest
    }

    /// The SHA-256 digest of `buffer`.
    public static func hash(_ buffer: UnsafeRawBufferPointer) -> Bytes32 {
        var hasher = SHA256()
        hasher.update(buffer)
        return hasher.finalize()
    }

    /// The SHA-256 digest of `bytes`.
    public static func hash(_ bytes: some Sequence<UInt8>) -> Bytes32 {
        var hasher = SHA256()
        hasher.update(bytes)
        return hasher.finalize()
    }
}

/// HMAC-SHA256 (RFC 2104) on OpenSSL's SHA-256, keyed once and reusable by copy.
///
/// The keyed inner and outer states are kept, so computing many MACs under one key (HKDF-expand) costs
/// only the message's compression rounds.
struct HMACSHA256 {
    private var inner: SHA256_CTX
    private var outer: SHA256_CTX

    init(key: UnsafeRawBufferPointer) {
        var block = (Bytes32.zero, Bytes32.zero)
        withUnsafeMutableBytes(of: &block) { padded in
            if key.count > 64 {
                let digest = SHA256.hash(key)
                digest.withUnsafeBytes { padded.copyMemory(from: $0) }
            } else if key.count > 0 {
                UnsafeMutableRawBufferPointer(rebasing: padded[0..<key.count]).copyMemory(from: key)
            }
        }
        inner = SHA256_CTX()
        outer = SHA256_CTX()
        withUnsafeMutableBytes(of: &block) { padded in
            for i in 0..<64 { padded[i] ^= 0x36 }
            SHA256_Init(&inner)
            SHA256_Update(&inner, padded.baseAddress, 64)
            for i in 0..<64 { padded[i] ^= 0x36 ^ 0x5c }
            SHA256_Init(&outer)
            SHA256_Update(&outer, padded.baseAddress, 64)
            SecureMemory.zero(padded)
        }
    }

    mutating func update(_ buffer: UnsafeRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        SHA256_Update(&inner, base, buffer.count)
    }

    /// Writes the 32-byte MAC to `output` and zeroes the states.
    mutating func finalize(into output: UnsafeMutableRawBufferPointer) {
        precondition(output.count >= 32)
        let out = output.baseAddress!.assumingMemoryBound(to: UInt8.self)
        SHA256_Final(out, &inner)
        SHA256_Update(&outer, out, 32)
        SHA256_Final(out, &outer)
        zeroStates()
    }

    mutating func zeroStates() {
        withUnsafeMutableBytes(of: &inner) { SecureMemory.zero($0) }
        withUnsafeMutableBytes(of: &outer) { SecureMemory.zero($0) }
    }

    /// The HMAC of `message` under `key`.
    static func mac(key: UnsafeRawBufferPointer, message: UnsafeRawBufferPointer) -> Bytes32 {
        var hmac = HMACSHA256(key: key)
        hmac.update(message)
        return Bytes32 { hmac.finalize(into: $0) }
    }
}

/// HKDF with SHA-256 (RFC 5869).
enum HKDF {
    /// HKDF-extract: `HMAC(salt, ikm)`.
    static func extract(salt: UnsafeRawBufferPointer, inputKeyMaterial: UnsafeRawBufferPointer) -> Bytes32 {
        HMACSHA256.mac(key: salt, message: inputKeyMaterial)
    }

    /// HKDF-expand into `output` (at most 255 × 32 bytes).
    static func expand(
        pseudoRandomKey: UnsafeRawBufferPointer, info: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer
    ) {
        precondition(output.count <= 255 * 32)
        var keyed = HMACSHA256(key: pseudoRandomKey)
        var previous = Bytes32.zero
        var produced = 0
        var counter: UInt8 = 1
        while produced < output.count {
            var hmac = keyed
            if counter > 1 {
                withUnsafeBytes(of: &previous) { hmac.update($0) }
            }
            hmac.update(info)
            withUnsafeBytes(of: &counter) { hmac.update($0) }
            withUnsafeMutableBytes(of: &previous) { hmac.finalize(into: $0) }
            let take = min(32, output.count - produced)
            withUnsafeBytes(of: &previous) { block in
                UnsafeMutableRawBufferPointer(rebasing: output[produced..<(produced + take)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: block[0..<take]))
            }
            produced += take
            counter += 1
        }
        withUnsafeMutableBytes(of: &previous) { SecureMemory.zero($0) }
        keyed.zeroStates()
    }
}
