/// The one error type of ``NostrService``: a stable code and a message safe to send to the requester.
///
/// Handlers throw it to answer with an error; the runtime uses it for requests it refuses (rate limit,
/// concurrency, timeout). Each handler's ``RequestHandler/errorReply(to:error:)`` turns it into the protocol's
/// error reply (a NIP-46 `error`, a NIP-47 error code, a NIP-90 `error` feedback). Any other error a handler
/// throws is answered as ``Code/internal`` with a generic message; its details go to the log only.
public struct ServiceError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The sender made more requests than its rate allows.
        public static let rateLimited = Code("rate-limited")
        /// The sender has as many requests running as it may.
        public static let tooManyRequests = Code("too-many-requests")
        /// The handler did not finish within its timeout.
        public static let timeout = Code("timeout")
        /// The payload could not be decrypted or read.
        public static let badRequest = Code("bad-request")
        /// The request's encryption scheme is not one the handler accepts.
        public static let unsupportedEncryption = Code("unsupported-encryption")
        /// The sender may not do this.
        public static let unauthorized = Code("unauthorized")
        /// The request was being handled when the service stopped; it is not run again.
        public static let interrupted = Code("interrupted")
        /// The service is shutting down.
        public static let unavailable = Code("unavailable")
        /// Something failed inside the service.
        public static let `internal` = Code("internal")
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
