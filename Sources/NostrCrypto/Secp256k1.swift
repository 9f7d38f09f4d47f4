internal import CSecp256k1

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
    static func parseXOnly(_ key: Bytes32) -> secp256k1_xonly_pubkey? {
        var parsed = secp256k1_xonly_pubkey()
        let ok = key.withUnsafeBytes { raw in
            secp256k1_xonly_pubkey_parse(context, &parsed, raw.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
        return ok == 1 ? parsed : nil
    }
}
