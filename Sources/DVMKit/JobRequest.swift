public import NostrCore
public import NostrCrypto
public import NostrRelay

/// NIP-90's kinds.
public enum NIP90 {
    /// Job requests: 5000–5999.
    public static let requestKinds: ClosedRange<UInt16> = 5_000...5_999
    /// Job feedback.
    public static let feedbackKind: Kind = 7_000
    /// NIP-89 handler information.
    public static let handlerInformationKind: Kind = 31_990
    /// A DVM's liveness beat (replaceable; as nostrdvm and Amethyst use it, proposed in nips#2465).
    public static let heartbeatKind: Kind = 11_998
    /// A ping to a DVM, answered by a 7000 feedback with status `pong` (as nostrdvm does, proposed in nips#1808).
    public static let pingKind: Kind = 7_007

    /// The result kind of a request kind (request + 1000).
    public static func resultKind(of requestKind: Kind) -> Kind {
        Kind(rawValue: requestKind.rawValue + 1_000)
    }

    /// Whether `kind` is a job request kind.
    public static func isRequestKind(_ kind: Kind) -> Bool {
        requestKinds.contains(kind.rawValue)
    }
}

/// One `i` tag of a job request: `["i", data, type, relay, marker]`.
public struct JobInput: Sendable, Hashable {
    public enum InputType: String, Sendable, Hashable, CaseIterable {
        /// The data is the input.
        case text
        /// A URL to fetch.
        case url
        /// A Nostr event id.
        case event
        /// The result of another job (chaining).
        case job
    }

    public var data: String
    public var type: InputType
    /// Where an `event` or `job` input was published.
    public var relay: String?
    /// How the input is used, as the job kind defines.
    public var marker: String?

    public init(data: String, type: InputType, relay: String? = nil, marker: String? = nil) {
        self.data = data
        self.type = type
        self.relay = relay
        self.marker = marker
    }

    /// The `i` tag.
    public var tag: Tag {
        var fields = ["i", data, type.rawValue]
        if relay != nil || marker != nil { fields.append(relay ?? "") }
        if let marker { fields.append(marker) }
        return Tag(fields)
    }
}

/// A `param` tag: a name and its values.
public struct JobParameter: Sendable, Hashable {
    public var name: String
    public var values: [String]

    public init(name: String, values: [String]) {
        self.name = name
        self.values = values
    }

    /// The first value.
    public var value: String { values.first ?? "" }
}

/// A job request, read from its event (and, for encrypted requests, its decrypted content).
public struct JobRequest: Sendable {
    /// The request event, as it arrived.
    public let event: Event
    public let inputs: [JobInput]
    public let parameters: [JobParameter]
    /// The `output` tag: the MIME type the customer wants.
    public let output: String?
    /// The most the customer will pay, in msat.
    public let bid: Int64?
    /// The `relays` tag: where the customer wants the answers.
    public let relays: [RelayURL]
    /// Whether the inputs and parameters came encrypted (the `encrypted` tag).
    public let isEncrypted: Bool

    public var id: EventID { event.id }
    public var kind: Kind { event.kind }
    public var requester: PublicKey { event.pubkey }

    /// The most inputs, parameters and relays one request may name.
    public static let maximumInputs = 32
    public static let maximumParameters = 64
    public static let maximumRelays = 8

    /// Reads `event`. For an encrypted request, `decryptedContent` is its content decrypted: a JSON array of
    /// the hidden tags (`i`, `param`, and whatever else the client moved there).
    public init(_ event: Event, decryptedContent: String? = nil) throws(JobRequestError) {
        guard NIP90.isRequestKind(event.kind) else { throw JobRequestError("kind \(event.kind.rawValue) is not a job request kind") }
        self.event = event
        self.isEncrypted = event.tags.contains { $0.name == "encrypted" }
        var tags = event.tags
        if isEncrypted {
            guard let decryptedContent else { throw JobRequestError("the request is encrypted but its content was not decrypted") }
            tags += try Self.hiddenTags(decryptedContent)
        }
        var inputs: [JobInput] = []
        var parameters: [JobParameter] = []
        var output: String?
        var bid: Int64?
        var relays: [RelayURL] = []
        for tag in tags {
            switch tag.name {
            case "i":
                guard tag.fields.count >= 3 else { throw JobRequestError("an i tag needs data and an input type") }
                guard let type = JobInput.InputType(rawValue: tag.fields[2]) else {
                    throw JobRequestError("unsupported input type \"\(tag.fields[2].prefix(32))\" (text, url, event and job are)")
                }
                let relay = tag.fields.count > 3 && !tag.fields[3].isEmpty ? tag.fields[3] : nil
                let marker = tag.fields.count > 4 && !tag.fields[4].isEmpty ? tag.fields[4] : nil
                if type == .event || type == .job {
                    guard (try? EventID(hex: tag.fields[1])) != nil else {
                        throw JobRequestError("a \(type.rawValue) input must be an event id (64 hex digits)")
                    }
                }
                inputs.append(JobInput(data: tag.fields[1], type: type, relay: relay, marker: marker))
            case "param":
                guard tag.fields.count >= 3 else { throw JobRequestError("a param tag needs a name and a value") }
                parameters.append(JobParameter(name: tag.fields[1], values: Array(tag.fields[2...])))
            case "output":
                output = tag.value
            case "bid":
                guard let text = tag.value, let amount = Int64(text), amount >= 0 else { throw JobRequestError("the bid must be a whole number of msat") }
                bid = amount
            case "relays":
                for name in tag.fields.dropFirst() {
                    if let url = try? RelayURL(name), !relays.contains(url), relays.count < Self.maximumRelays { relays.append(url) }
                }
            default:
                continue
            }
        }
        guard inputs.count <= Self.maximumInputs else { throw JobRequestError("more than \(Self.maximumInputs) inputs") }
        guard parameters.count <= Self.maximumParameters else { throw JobRequestError("more than \(Self.maximumParameters) parameters") }
        self.inputs = inputs
        self.parameters = parameters
        self.output = output
        self.bid = bid
        self.relays = relays
    }

    /// The first value of parameter `name`.
    public func parameter(_ name: String) -> String? {
        parameters.first { $0.name == name }?.value
    }

    /// The tags an encrypted request hides in its content.
    static func hiddenTags(_ content: String) throws(JobRequestError) -> [Tag] {
        guard let value = try? JSON.parse(content), let array = value.array else {
            throw JobRequestError("the encrypted content is not a JSON array of tags")
        }
        var tags: [Tag] = []
        for element in array {
            guard let fields = element.array, !fields.isEmpty else { throw JobRequestError("the encrypted content holds something that is not a tag") }
            var strings: [String] = []
            for field in fields {
                guard let string = field.string else { throw JobRequestError("a tag in the encrypted content has a field that is not a string") }
                strings.append(string)
            }
            tags.append(Tag(strings))
        }
        return tags
    }
}

/// Why a job request cannot be taken; sent to the customer in an `error` feedback.
public struct JobRequestError: Error, Hashable, Sendable, CustomStringConvertible {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}
