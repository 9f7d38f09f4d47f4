internal import CSecp256k1
import Synchronization

/// The process-wide libsecp256k1 context.
enum Secp256k1 {
    /// Created and randomised once (blinding against side channels); afterwards only passed as a
    /// `const` context to signing, verification and ECDH, which libsecp256k1 documents as thread-safe.
    nonisolated(unsafe) static let context: OpaquePointer = {
        guard let context = secp256k1_context_create(UInt32(SECP256K1_CONTEXT_NONE)) else {
            fatalError("libsecp256k1: cannot create a context")
        }
        var seed = [UInt8](repeating: 0, count: 32)
        seed.withUnsafeMutableBytes { SecureMemory.fillRandom($0) }
        let randomized = seed.withUnsafeBufferPointer { secp256k1_context_randomize(context, $0.baseAddress) }
        zero(&seed)
        precondition(randomized == 1, "libsecp256k1: cannot randomise the context")
        return context
    }()

    /// Parses 32 bytes as an x-only public key; `nil` when they are not the x of a curve point.
    ///
    /// Parsing costs a square root in the field, about an eighth of a signature verification, and services see
    /// the same few keys again and again (their clients, their relays' other users), so parsed keys are cached.
    static func parseXOnly(_ key: Bytes32) -> secp256k1_xonly_pubkey? {
        if let parsed = parsedKeys.withLock({ $0[key] }) { return parsed }
        var parsed = secp256k1_xonly_pubkey()
        let ok = key.withUnsafeBytes { raw in
            secp256k1_xonly_pubkey_parse(context, &parsed, raw.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
        guard ok == 1 else { return nil }
        parsedKeys.withLock { $0.insert(parsed, forKey: key) }
        return parsed
    }

    /// Keys parsed lately (~160 bytes each with the table's overhead: ~2.6 MB when full). Only valid points
    /// are kept, so input that is not a key cannot evict the keys in use any faster than valid keys can.
    static let parsedKeys = Mutex(BoundedCache<Bytes32, secp256k1_xonly_pubkey>(capacity: 16_384))
}
