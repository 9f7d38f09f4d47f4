internal import CSecp256k1

/// Copies the unhashed x coordinate of the shared point (NIP-04 and NIP-44 both want it raw).
private func copyX(
    _ output: UnsafeMutablePointer<UInt8>?, _ x32: UnsafePointer<UInt8>?, _ y32: UnsafePointer<UInt8>?,
    _ data: UnsafeMutableRawPointer?
) -> Int32 {
    guard let output, let x32 else { return 0 }
    output.update(from: x32, count: 32)
    return 1
}

extension SecretKey {
    /// Runs x-only ECDH and lends the 32-byte x coordinate of `secret · P` to `body`, zeroing it afterwards.
    func withSharedX<R>(
        _ publicKey: PublicKey, _ body: (UnsafeRawBufferPointer) throws -> R
    ) throws -> R {
        var point = secp256k1_pubkey()
        let parsed = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 33) { serialized in
            serialized[0] = 0x02  // x-only keys are the even-y point (BIP-340)
            publicKey.bytes32.withUnsafeBytes { key in
                for i in 0..<32 { serialized[i + 1] = key[i] }
            }
            return secp256k1_ec_pubkey_parse(Secp256k1.context, &point, serialized.baseAddress!, 33)
        }
        guard parsed == 1 else {
            throw CryptoError(.invalidPublicKey, "the public key is not a point on secp256k1")
        }
        var shared = Bytes32.zero
        defer { withUnsafeMutableBytes(of: &shared) { SecureMemory.zero($0) } }
        let ok = withUnsafeSecretBytes { secret in
            withUnsafeMutableBytes(of: &shared) { out in
                secp256k1_ecdh(
                    Secp256k1.context,
                    out.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    &point,
                    secret.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    copyX,
                    nil)
            }
        }
        guard ok == 1 else {
            throw CryptoError(.internalFailure, "ECDH failed")
        }
        return try shared.withUnsafeBytes { (raw) throws -> R in try body(raw) }
    }
}
