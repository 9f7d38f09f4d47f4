/// The one error type of ``NostrCore``: a stable code and a message a person understands.
///
/// Decoders never trap on input; every rejection is one of these.
public struct NostrError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A stable, machine-readable error code.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The text is not well-formed JSON.
        public static let invalidJSON = Code("invalid-json")
        /// Well-formed JSON of the wrong shape (missing field, wrong type, out of range).
        public static let invalidShape = Code("invalid-shape")
        /// An event's id does not match its content.
        public static let invalidID = Code("invalid-id")
        /// An event's signature does not verify.
        public static let invalidSignature = Code("invalid-signature")
        /// A message verb this codec does not know.
        public static let unknownMessage = Code("unknown-message")
        /// A NIP-19 / NIP-21 string that cannot be decoded.
        public static let invalidEntity = Code("invalid-entity")
        /// Input larger than a configured limit.
        public static let tooLarge = Code("too-large")
        /// Cryptography failed (see the message).
        public static let crypto = Code("crypto")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
