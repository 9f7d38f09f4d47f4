/// The one error type of ``NostrCrypto``: a stable code and a message a person understands.
///
/// Messages never contain secret material, decrypted text or key bytes.
public struct CryptoError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A stable, machine-readable error code.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// Input that should be hex is not hex of the expected length.
        public static let invalidHex = Code("invalid-hex")
        /// A secret key is zero or not below the curve order.
        public static let invalidSecretKey = Code("invalid-secret-key")
        /// A public key is not the x coordinate of a point on secp256k1.
        public static let invalidPublicKey = Code("invalid-public-key")
        /// An encrypted payload names a version or scheme this library does not implement.
        public static let unsupportedVersion = Code("unsupported-version")
        /// An encrypted payload is malformed (size, encoding, padding).
        public static let invalidPayload = Code("invalid-payload")
        /// A message authentication code or AEAD tag did not verify.
        public static let authenticationFailed = Code("authentication-failed")
        /// A plaintext is empty or larger than the scheme allows.
        public static let invalidPlaintextLength = Code("invalid-plaintext-length")
        /// Decrypted bytes are not valid UTF-8 where text was expected.
        public static let invalidUTF8 = Code("invalid-utf8")
        /// A key-derivation parameter is out of range.
        public static let invalidParameter = Code("invalid-parameter")
        /// A C library reported a failure it should not have.
        public static let internalFailure = Code("internal-failure")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
