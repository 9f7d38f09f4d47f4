import NostrCore

/// The relay's NIP-11 information document.
public struct RelayInformation: Sendable {
    public var name: String
    public var description: String
    public var software = "switchboard"
    public var version = "0.1.0"
    public var supportedNIPs = [1, 9, 11, 40, 42, 45]

    public init(name: String = "switchboard embedded relay", description: String = "A development relay from Switchboard.") {
        self.name = name
        self.description = description
    }

    /// The document as JSON, with `limitation` taken from `policy`.
    public func json(policy: RelayPolicy) -> String {
        let limitation: [String: JSONValue] = [
            "max_message_length": .number(String(policy.maximumMessageLength)),
            "max_subscriptions": .number(String(policy.maximumSubscriptions)),
            "max_filters": .number(String(policy.maximumFilters)),
            "max_limit": .number(String(policy.maximumLimit)),
            "max_subid_length": .number(String(policy.maximumSubscriptionIDLength)),
            "max_event_tags": .number(String(policy.maximumEventTags)),
            "auth_required": .bool(policy.authRequired),
            "restricted_writes": .bool(policy.authRequired),
            "payment_required": .bool(false),
            "created_at_upper_limit": .number(String(policy.maximumFutureSkew)),
        ]
        let document: JSONValue = .object([
            "name": .string(name), "description": .string(description), "software": .string(software),
            "version": .string(version), "supported_nips": .array(supportedNIPs.map { .number(String($0)) }),
            "limitation": .object(limitation),
        ])
        var writer = JSONWriter()
        writer.value(document)
        return writer.text
    }
}
