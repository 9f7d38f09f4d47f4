public import NostrCore
import NostrCrypto

/// NIP-47 (Nostr Wallet Connect) on the wire: kinds, methods, error codes, and the JSON of responses,
/// transactions and notifications.
public enum NIP47 {
    public static let infoKind: Kind = 13_194
    public static let requestKind: Kind = 23_194
    public static let responseKind: Kind = 23_195
    /// Notifications encrypted with NIP-04 (legacy clients).
    public static let legacyNotificationKind: Kind = 23_196
    public static let notificationKind: Kind = 23_197

    /// The methods wallet-bridge answers (the optional ones only where the backend can).
    public static let coreMethods: [String] = [
        "pay_invoice", "make_invoice", "lookup_invoice", "list_transactions", "get_balance", "get_info", "get_budget",
    ]
    public static let optionalMethods: [String] = ["pay_keysend", "make_hold_invoice", "settle_hold_invoice", "cancel_hold_invoice"]
    /// Methods every connection may call, whatever it was granted (they reveal only the connection's own
    /// limits and the node's public facts).
    public static let alwaysGranted: Set<String> = ["get_info", "get_budget"]
    public static let notificationTypes = ["payment_received", "payment_sent"]
    /// Methods that spend (and so count against a budget).
    public static let payingMethods: Set<String> = ["pay_invoice", "pay_keysend"]
    /// The largest amount accepted anywhere (21 million bitcoin, in msat): an amount, its fee reserve and a
    /// period's spending then stay far from `Int64`'s limit.
    public static let maximumAmountMsat: Int64 = 21_000_000 * 100_000_000_000

    /// NIP-47's error codes (the core set, plus the per-method `PAYMENT_FAILED` and `NOT_FOUND`).
    public enum ErrorCode: String, Sendable, CaseIterable {
        case rateLimited = "RATE_LIMITED"
        case notImplemented = "NOT_IMPLEMENTED"
        case insufficientBalance = "INSUFFICIENT_BALANCE"
        case quotaExceeded = "QUOTA_EXCEEDED"
        case restricted = "RESTRICTED"
        case unauthorized = "UNAUTHORIZED"
        case `internal` = "INTERNAL"
        case unsupportedEncryption = "UNSUPPORTED_ENCRYPTION"
        case other = "OTHER"
        case paymentFailed = "PAYMENT_FAILED"
        case notFound = "NOT_FOUND"
    }

    /// A request's decrypted content: `{"method": …, "params": {…}}`.
    public struct Request: Sendable, Hashable {
        public var method: String
        public var params: [String: JSONValue]

        public init(method: String, params: [String: JSONValue] = [:]) {
            self.method = method
            self.params = params
        }

        public init(json: String) throws {
            guard case .object(let object) = try JSON.parse(json) else { throw NIP47Error(.other, "the request is not a JSON object") }
            guard let method = object["method"]?.string else { throw NIP47Error(.other, "the request has no string \"method\"") }
            var params: [String: JSONValue] = [:]
            switch object["params"] {
            case nil, .null?: break
            case .object(let value)?: params = value
            default: throw NIP47Error(.other, "\"params\" must be an object")
            }
            self.init(method: method, params: params)
        }

        /// The method of a request that may be malformed otherwise (for the error's `result_type`).
        public static func method(in json: String) -> String? {
            guard case .object(let object)? = try? JSON.parse(json) else { return nil }
            return object["method"]?.string
        }

        public var json: String {
            var writer = JSONWriter()
            writer.value(.object(["method": .string(method), "params": .object(params)]))
            return writer.text
        }
    }

    /// A response's content.
    public static func response(_ method: String, result: JSONValue) -> String {
        var writer = JSONWriter()
        writer.value(.object(["result_type": .string(method), "error": .null, "result": result]))
        return writer.text
    }

    public static func errorResponse(_ method: String, _ error: NIP47Error) -> String {
        var writer = JSONWriter()
        writer.value(.object([
            "result_type": .string(method), "result": .null,
            "error": .object(["code": .string(error.code.rawValue), "message": .string(error.message)]),
        ]))
        return writer.text
    }

    public static func notification(_ type: String, _ transaction: JSONValue) -> String {
        var writer = JSONWriter()
        writer.value(.object(["notification_type": .string(type), "notification": transaction]))
        return writer.text
    }

    /// The transaction object (`make_invoice`, `lookup_invoice`, `list_transactions`, notifications): amounts
    /// in msat, times in unix seconds, `state` always present, the preimage only once settled.
    public static func transactionJSON(_ transaction: WalletTransaction, now: Timestamp) -> JSONValue {
        let state = transaction.state(at: now)
        var object: [String: JSONValue] = [
            "type": .string(transaction.direction.rawValue),
            "state": .string(state.rawValue),
            "payment_hash": .string(transaction.paymentHash.hex),
            "amount": .int(transaction.amountMsat),
            "fees_paid": .int(transaction.feesPaidMsat),
            "created_at": .int(transaction.createdAt),
        ]
        if let invoice = transaction.invoice { object["invoice"] = .string(invoice) }
        if let description = transaction.description { object["description"] = .string(description) }
        if let hash = transaction.descriptionHash { object["description_hash"] = .string(hash) }
        if state == .settled, let preimage = transaction.preimage { object["preimage"] = .string(preimage) }
        if let expiresAt = transaction.expiresAt { object["expires_at"] = .int(expiresAt) }
        if let settledAt = transaction.settledAt { object["settled_at"] = .int(settledAt) }
        if let metadata = transaction.metadata, let value = try? JSON.parse(metadata) { object["metadata"] = value }
        return .object(object)
    }
}

/// An error answered on the wire with a NIP-47 code.
public struct NIP47Error: Error, Hashable, Sendable, CustomStringConvertible {
    public var code: NIP47.ErrorCode
    public var message: String

    public init(_ code: NIP47.ErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }
}

extension JSONValue {
    static func int(_ value: Int64) -> JSONValue { .number(String(value)) }
}
