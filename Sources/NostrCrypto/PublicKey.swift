internal import CSecp256k1

/// A BIP-340 x-only secp256k1 public key, as Nostr writes it (32 bytes, 64 hex characters).
///
/// Constructing one checks the format only. Whether the bytes are the x coordinate of a curve point is
/// checked where it matters (signature verification, ECDH), or explicitly with ``isOnCurve`` /
/// ``init(validatingHex:)`` for keys typed in by people.
public struct PublicKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The 32 key bytes.
    public let bytes32: Bytes32

    /// Wraps 32 bytes without checking the curve.
    public init(_ bytes32: Bytes32) { self.bytes32 = bytes32 }

    /// Parses 64 hex characters; checks the format, not the curve.
    public init(hex: some StringProtocol) throws {
        guard let bytes = Bytes32(hex: hex) else {
            throw CryptoError(.invalidHex, "a public key is 64 hex characters")
        }
        self.bytes32 = bytes
    }

    /// Parses 64 hex characters and checks that they name a point on the curve.
    public init(validatingHex hex: some StringProtocol) throws {
        try self.init(hex: hex)
        guard isOnCurve else {
            throw CryptoError(.invalidPublicKey, "the public key is not a point on secp256k1")
        }
    }

    /// Whether the bytes are the x coordinate of a secp256k1 point (BIP-340 `lift_x` succeeds).
    public var isOnCurve: Bool { Secp256k1.parseXOnly(bytes32) != nil }

    /// Lowercase hex, 64 characters.
    public var hex: String { bytes32.hex }

    public var description: String { hex }

    public static func < (lhs: PublicKey, rhs: PublicKey) -> Bool { lhs.bytes32 < rhs.bytes32 }
}
