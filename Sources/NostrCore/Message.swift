/// Limits the message codec enforces on untrusted input.
public struct MessageLimits: Hashable, Sendable {
    /// Longest accepted subscription id (NIP-01 says 64).
    public var maximumSubscriptionIDLength = 64
    /// Most filters in one `REQ` or `COUNT`.
    public var maximumFilters = 32

    public init() {}
}

/// A message a client sends to a relay (NIP-01, NIP-42, NIP-45).
public enum ClientMessage: Hashable, Sendable {
    case event(Event)
    case request(subscriptionID: String, filters: [Filter])
    case close(subscriptionID: String)
    case auth(Event)
    case count(subscriptionID: String, filters: [Filter])

    /// Parses one client message.
    public init(json: String, limits: MessageLimits = MessageLimits()) throws {
        if let event = JSON.directClientEvent(json) {
            self = .event(event)
            return
        }
        try self.init(jsonValue: JSON.parse(json), limits: limits)
    }

    /// Reads one client message from its parsed JSON. (``init(json:limits:)`` reads `EVENT` messages without
    /// building the tree; anything it does not read plainly comes here.)
    public init(jsonValue: JSONValue, limits: MessageLimits = MessageLimits()) throws {
        guard case .array(let array) = jsonValue, let verb = array.first?.string else {
            throw NostrError(.invalidShape, "a message is a JSON array starting with a verb string")
        }
        func subscriptionID() throws -> String {
            guard array.count >= 2, let id = array[1].string, !id.isEmpty,
                id.utf8.count <= limits.maximumSubscriptionIDLength
            else {
                throw NostrError(.invalidShape, "a subscription id is a string of 1 to \(limits.maximumSubscriptionIDLength) characters")
            }
            return id
        }
        func filters() throws -> [Filter] {
            let rest = array.dropFirst(2)
            guard rest.count <= limits.maximumFilters else {
                throw NostrError(.tooLarge, "more than \(limits.maximumFilters) filters")
            }
            return try rest.map(Filter.init(jsonValue:))
        }
        switch verb {
        case "EVENT":
            guard array.count == 2 else { throw NostrError(.invalidShape, "EVENT takes exactly one event") }
            self = .event(try Event(jsonValue: array[1]))
        case "REQ":
            let id = try subscriptionID()
            self = .request(subscriptionID: id, filters: try filters())
        case "COUNT":
            let id = try subscriptionID()
            self = .count(subscriptionID: id, filters: try filters())
        case "CLOSE":
            guard array.count == 2 else { throw NostrError(.invalidShape, "CLOSE takes exactly one subscription id") }
            self = .close(subscriptionID: try subscriptionID())
        case "AUTH":
            guard array.count == 2 else { throw NostrError(.invalidShape, "AUTH takes exactly one event") }
            self = .auth(try Event(jsonValue: array[1]))
        default:
            throw NostrError(.unknownMessage, "unknown message type \"\(verb.prefix(16))\"")
        }
    }

    /// The wire form.
    public var json: String {
        var writer = JSONWriter()
        switch self {
        case .event(let event):
            writer.raw("[\"EVENT\",")
            event.write(to: &writer)
        case .request(let id, let filters), .count(let id, let filters):
            if case .request = self { writer.raw("[\"REQ\",") } else { writer.raw("[\"COUNT\",") }
            writer.string(id)
            for filter in filters {
                writer.raw(",")
                filter.write(to: &writer)
            }
        case .close(let id):
            writer.raw("[\"CLOSE\",")
            writer.string(id)
        case .auth(let event):
            writer.raw("[\"AUTH\",")
            event.write(to: &writer)
        }
        writer.raw("]")
        return writer.text
    }
}

/// A message a relay sends to a client (NIP-01, NIP-42, NIP-45).
public enum RelayMessage: Hashable, Sendable {
    case event(subscriptionID: String, event: Event)
    case ok(eventID: EventID, accepted: Bool, message: String)
    case endOfStoredEvents(subscriptionID: String)
    case closed(subscriptionID: String, message: String)
    case notice(String)
    case auth(challenge: String)
    case count(subscriptionID: String, count: Int)

    /// Parses one relay message.
    public init(json: String, limits: MessageLimits = MessageLimits()) throws {
        if let (subscriptionID, event) = JSON.directRelayEvent(json) {
            self = .event(subscriptionID: subscriptionID, event: event)
            return
        }
        try self.init(jsonValue: JSON.parse(json), limits: limits)
    }

    /// Reads one relay message from its parsed JSON. (``init(json:limits:)`` reads `EVENT` messages without
    /// building the tree; anything it does not read plainly comes here.)
    public init(jsonValue: JSONValue, limits: MessageLimits = MessageLimits()) throws {
        guard case .array(let array) = jsonValue, let verb = array.first?.string else {
            throw NostrError(.invalidShape, "a message is a JSON array starting with a verb string")
        }
        func string(_ i: Int, _ what: String) throws -> String {
            guard i < array.count, let s = array[i].string else {
                throw NostrError(.invalidShape, "\(verb) needs \(what) as a string")
            }
            return s
        }
        func arity(_ n: Int) throws {
            guard array.count == n else { throw NostrError(.invalidShape, "\(verb) takes \(n - 1) elements") }
        }
        switch verb {
        case "EVENT":
            try arity(3)
            self = .event(subscriptionID: try string(1, "a subscription id"), event: try Event(jsonValue: array[2]))
        case "OK":
            try arity(4)
            guard case .bool(let accepted) = array[2] else { throw NostrError(.invalidShape, "OK needs a boolean") }
            self = .ok(eventID: try EventID(hex: try string(1, "an event id")), accepted: accepted, message: try string(3, "a message"))
        case "EOSE":
            try arity(2)
            self = .endOfStoredEvents(subscriptionID: try string(1, "a subscription id"))
        case "CLOSED":
            guard array.count == 2 || array.count == 3 else { throw NostrError(.invalidShape, "CLOSED takes 1 or 2 elements") }
            self = .closed(subscriptionID: try string(1, "a subscription id"), message: array.count == 3 ? try string(2, "a message") : "")
        case "NOTICE":
            try arity(2)
            self = .notice(try string(1, "a message"))
        case "AUTH":
            try arity(2)
            self = .auth(challenge: try string(1, "a challenge"))
        case "COUNT":
            try arity(3)
            guard let n = array[2].object?["count"]?.int64, n >= 0, let count = Int(exactly: n) else {
                throw NostrError(.invalidShape, "COUNT needs {\"count\": n}")
            }
            self = .count(subscriptionID: try string(1, "a subscription id"), count: count)
        default:
            throw NostrError(.unknownMessage, "unknown message type \"\(verb.prefix(16))\"")
        }
    }

    /// The wire form.
    public var json: String {
        var writer = JSONWriter()
        switch self {
        case .event(let id, let event):
            writer.raw("[\"EVENT\",")
            writer.string(id)
            writer.raw(",")
            event.write(to: &writer)
        case .ok(let id, let accepted, let message):
            writer.raw("[\"OK\",\"")
            writer.rawString(id.hex)
            writer.raw("\",")
            writer.bool(accepted)
            writer.raw(",")
            writer.string(message)
        case .endOfStoredEvents(let id):
            writer.raw("[\"EOSE\",")
            writer.string(id)
        case .closed(let id, let message):
            writer.raw("[\"CLOSED\",")
            writer.string(id)
            writer.raw(",")
            writer.string(message)
        case .notice(let message):
            writer.raw("[\"NOTICE\",")
            writer.string(message)
        case .auth(let challenge):
            writer.raw("[\"AUTH\",")
            writer.string(challenge)
        case .count(let id, let count):
            writer.raw("[\"COUNT\",")
            writer.string(id)
            writer.raw(",{\"count\":")
            writer.integer(count)
            writer.raw("}")
        }
        writer.raw("]")
        return writer.text
    }
}

/// The machine-readable prefixes NIP-01 defines for `OK` and `CLOSED` messages.
public enum MachineReadablePrefix: String, Sendable, CaseIterable {
    case duplicate, pow, blocked, rateLimited = "rate-limited", invalid, restricted, mute, error
    case authRequired = "auth-required"
    case unsupported

    /// The prefix of `message`, when it has a known one.
    public init?(message: String) {
        guard let colon = message.firstIndex(of: ":") else { return nil }
        self.init(rawValue: String(message[..<colon]))
    }

    /// `"prefix: detail"`.
    public func message(_ detail: String) -> String { "\(rawValue): \(detail)" }
}
