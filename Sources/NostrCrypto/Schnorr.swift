internal import CSecp256k1

extension SecretKey {
    /// Signs a 32-byte message (for Nostr, an event id) with BIP-340 Schnorr and fresh auxiliary randomness.
    public func sign(_ message: Bytes32) -> SchnorrSignature {
        var aux = Bytes32.zero
        withUnsafeMutableBytes(of: &aux) { SecureMemory.fillRandom($0) }
        return sign(message, auxiliaryRandomness: aux)
    }

    /// Signs with caller-chosen auxiliary randomness (deterministic; BIP-340 test vectors use it).
    /// Prefer ``sign(_:)``, which draws it from the CSPRNG.
    public func sign(_ message: Bytes32, auxiliaryRandomness: Bytes32) -> SchnorrSignature {
        var signature = (Bytes32.zero, Bytes32.zero)
        let ok = withKeypair { keypair in
            message.withUnsafeBytes { msg in
                auxiliaryRandomness.withUnsafeBytes { aux in
                    withUnsafeMutableBytes(of: &signature) { out in
                        secp256k1_schnorrsig_sign32(
                            Secp256k1.context,
                            out.baseAddress!.assumingMemoryBound(to: UInt8.self),
                            msg.baseAddress!.assumingMemoryBound(to: UInt8.self),
                            keypair,
                            aux.baseAddress!.assumingMemoryBound(to: UInt8.self))
                    }
                }
            }
        }
        // Signing with a valid keypair cannot fail.
        precondition(ok == 1, "libsecp256k1 failed to sign")
        return SchnorrSignature(r: signature.0, s: signature.1)
    }
}

extension PublicKey {
    /// Whether `signature` is a valid BIP-340 signature by this key over `message`.
    /// `false` also when the key is not a curve point.
    public func isValidSignature(_ signature: SchnorrSignature, for message: Bytes32) -> Bool {
        guard var key = Secp256k1.parseXOnly(bytes32) else { return false }
        return signature.withUnsafeBytes { sig in
            message.withUnsafeBytes { msg in
                secp256k1_schnorrsig_verify(
                    Secp256k1.context,
                    sig.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    msg.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    32,
                    &key) == 1
            }
        }
    }
}
