/// A 64-byte BIP-340 Schnorr signature.
public struct SchnorrSignature: Hashable, Sendable, CustomStringConvertible {
    /// The first half, `R.x`.
    public let r: Bytes32
    /// The second half, `s`.
    public let s: Bytes32

    /// Wraps the two halves.
    public init(r: Bytes32, s: Bytes32) {
        self.r = r
        self.s = s
    }

    /// Copies exactly 64 bytes; `nil` for any other count.
    public init?(_ bytes: some Collection<UInt8>) {
        guard bytes.count == 64, let r = Bytes32(bytes.prefix(32)), let s = Bytes32(bytes.dropFirst(32)) else {
            return nil
        }
        self.init(r: r, s: s)
    }

    /// Parses 128 hex characters.
    public init(hex: some StringProtocol) throws {
        let utf8 = hex.utf8
        guard utf8.count == 128,
            let r = Bytes32(hex: Substring(hex).prefix(64)),
            let s = Bytes32(hex: Substring(hex).dropFirst(64))
        else {
            throw CryptoError(.invalidHex, "a signature is 128 hex characters")
        }
        self.init(r: r, s: s)
    }

    /// Parses 128 hex characters given as UTF-8 code units; `nil` for anything else.
    public init?(hexUTF8 utf8: UnsafeBufferPointer<UInt8>) {
        guard utf8.count == 128,
            let r = Bytes32(hexUTF8: UnsafeBufferPointer(rebasing: utf8[..<64])),
            let s = Bytes32(hexUTF8: UnsafeBufferPointer(rebasing: utf8[64...]))
        else { return nil }
        self.init(r: r, s: s)
    }

    /// The 64 bytes, `r` then `s`.
    public var bytes: [UInt8] { r.bytes + s.bytes }

    /// Lowercase hex, 128 characters.
    public var hex: String { r.hex + s.hex }

    public var description: String { hex }

    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var both = (r, s)
        return try Swift.withUnsafeBytes(of: &both) { try body($0) }
    }
}
