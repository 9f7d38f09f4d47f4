public import NostrCore
public import NostrCrypto

/// One client connection to the embedded relay, as a state machine: text in, actions out. No I/O — the
/// server executes the actions (store, query, send) in order, which keeps NIP-01's ordering per
/// connection (stored events, then `EOSE`, then live events).
public struct RelaySession: Sendable {
    /// What the server must do in response to a message.
    public enum Action: Hashable, Sendable {
        /// Send this message to the client.
        case send(RelayMessage)
        /// Save the (verified, admitted) event, reply `OK` from the outcome, broadcast if it says so.
        case store(Event)
        /// Query stored events for a new subscription, send them, then `EOSE`.
        case query(subscriptionID: String, filters: [Filter])
        /// Count stored events and reply `COUNT`.
        case count(subscriptionID: String, filters: [Filter])
    }

    public let policy: RelayPolicy
    /// The NIP-42 challenge sent to this connection.
    public let challenge: String
    /// Open subscriptions by id.
    public private(set) var subscriptions: [String: [Filter]] = [:] { didSet { revision &+= 1 } }

    /// Ends a subscription the relay could not serve (its `CLOSED` is sent by the caller).
    mutating func dropSubscription(_ id: String) { subscriptions[id] = nil }
    /// Public keys this connection has authenticated as (NIP-42).
    public private(set) var authenticated: Set<PublicKey> = [] { didSet { revision &+= 1 } }
    /// Changes whenever ``subscriptions`` or ``authenticated`` change: what decides which live events the
    /// connection receives.
    public private(set) var revision = 0
    private var bucket: TokenBucket

    /// A session for a new connection; `now` is monotonic seconds for the rate limiter.
    public init(policy: RelayPolicy, challenge: String, now: Double) {
        self.policy = policy
        self.challenge = challenge
        self.bucket = TokenBucket(rate: policy.messagesPerSecond, burst: policy.messageBurst, now: now)
    }

    /// The messages to send as the connection opens (the NIP-42 challenge).
    public var greeting: [Action] { [.send(.auth(challenge: challenge))] }

    /// Handles one text message from the client.
    /// - Parameters:
    ///   - clock: wall-clock seconds (for `created_at` checks); `monotonic`: for the rate limiter.
    public mutating func receive(_ text: String, clock: Timestamp, monotonic: Double) -> [Action] {
        guard bucket.take(now: monotonic) else {
            return refusal(for: text, .rateLimited, "slow down")
        }
        guard text.utf8.count <= policy.maximumMessageLength else {
            return refusal(for: text, .invalid, "message larger than \(policy.maximumMessageLength) bytes")
        }
        let message: ClientMessage
        do {
            message = try ClientMessage(json: text, limits: policy.messageLimits)
        } catch let error as NostrError {
            return rejection(for: text, error)
        } catch {
            return [.send(.notice("error: could not parse the message"))]
        }
        switch message {
        case .event(let event): return receiveEvent(event, clock: clock)
        case .request(let id, let filters): return openSubscription(id, filters, counting: false)
        case .count(let id, let filters): return openSubscription(id, filters, counting: true)
        case .close(let id):
            subscriptions[id] = nil
            return []
        case .auth(let event): return authenticate(event, clock: clock)
        }
    }

    /// A message refused before parsing (rate limit, size) still gets the reply its sender waits for: `OK`
    /// for an EVENT, `CLOSED` for a REQ or COUNT, `NOTICE` otherwise. The verb and id are found by a bounded
    /// scan, not a full parse, so a flood costs little.
    private func refusal(for text: String, _ prefix: MachineReadablePrefix, _ detail: String) -> [Action] {
        let reason = prefix.message(detail)
        switch Self.sniff(text) {
        case .event(let id): return [.send(.ok(eventID: id, accepted: false, message: reason))]
        case .subscription(let id) where id.utf8.count <= policy.maximumSubscriptionIDLength:
            return [.send(.closed(subscriptionID: id, message: reason))]
        default: return [.send(.notice(prefix == .rateLimited ? reason : "error: \(detail)"))]
        }
    }

    enum Sniffed: Equatable {
        case event(EventID)
        case subscription(String)
        case other
    }

    /// Finds `["EVENT",{…"id":"<hex>"…` or `["REQ"|"COUNT","<sub>"` without parsing the whole message. In an
    /// EVENT the first unescaped `"id":"` is the event's own key (strings inside it have their quotes escaped).
    static func sniff(_ text: String) -> Sniffed {
        let bytes = Array(text.utf8.prefix(4096))
        func string(at start: Int) -> String? {
            guard start < bytes.count, bytes[start] == UInt8(ascii: "\"") else { return nil }
            var end = start + 1
            while end < bytes.count, bytes[end] != UInt8(ascii: "\""), bytes[end] != UInt8(ascii: "\\") { end += 1 }
            guard end < bytes.count, bytes[end] == UInt8(ascii: "\"") else { return nil }
            return String(decoding: bytes[(start + 1)..<end], as: UTF8.self)
        }
        func skipSpace(_ i: Int) -> Int {
            var i = i
            while i < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[i]) { i += 1 }
            return i
        }
        var i = skipSpace(0)
        guard i < bytes.count, bytes[i] == UInt8(ascii: "[") else { return .other }
        i = skipSpace(i + 1)
        guard let verb = string(at: i) else { return .other }
        i = skipSpace(i + verb.utf8.count + 2)
        guard i < bytes.count, bytes[i] == UInt8(ascii: ",") else { return .other }
        i = skipSpace(i + 1)
        switch verb {
        case "REQ", "COUNT":
            return string(at: i).map(Sniffed.subscription) ?? .other
        case "EVENT":
            let key = Array("\"id\"".utf8)
            var j = i
            while j + key.count < bytes.count {
                if Array(bytes[j..<(j + key.count)]) == key {
                    var k = skipSpace(j + key.count)
                    guard k < bytes.count, bytes[k] == UInt8(ascii: ":") else { return .other }
                    k = skipSpace(k + 1)
                    guard let hex = string(at: k), let id = try? EventID(hex: hex) else { return .other }
                    return .event(id)
                }
                j += 1
            }
            return .other
        default:
            return .other
        }
    }

    /// A parse failure becomes the most specific reply the client can match to its request.
    private func rejection(for text: String, _ error: NostrError) -> [Action] {
        // If it looked like an EVENT with an id, answer OK false so the publisher is not left waiting.
        if case .array(let array)? = try? JSON.parse(text), array.first?.string == "EVENT", array.count >= 2,
            let idText = array[1].object?["id"]?.string, let id = try? EventID(hex: idText)
        {
            return [.send(.ok(eventID: id, accepted: false, message: MachineReadablePrefix.invalid.message(error.message)))]
        }
        if case .array(let array)? = try? JSON.parse(text), let verb = array.first?.string, verb == "REQ" || verb == "COUNT",
            array.count >= 2, let id = array[1].string, !id.isEmpty, id.utf8.count <= policy.maximumSubscriptionIDLength
        {
            let prefix: MachineReadablePrefix = error.code == .tooLarge ? .restricted : .invalid
            return [.send(.closed(subscriptionID: id, message: prefix.message(error.message)))]
        }
        return [.send(.notice("error: \(error.message)"))]
    }

    private func receiveEvent(_ event: Event, clock: Timestamp) -> [Action] {
        func reject(_ prefix: MachineReadablePrefix, _ detail: String) -> [Action] {
            [.send(.ok(eventID: event.id, accepted: false, message: prefix.message(detail)))]
        }
        do {
            try event.verify()
        } catch let error as NostrError {
            return reject(.invalid, error.code == .invalidID ? "event id does not match" : "bad signature")
        } catch {
            return reject(.invalid, "could not verify")
        }
        if policy.authRequired && !authenticated.contains(event.pubkey) {
            // A fresh copy of the challenge: clients such as rust-nostr wait for one before authenticating.
            return reject(.authRequired, "authenticate as the event's author to publish") + greeting
        }
        if event.createdAt > clock + policy.maximumFutureSkew {
            return reject(.invalid, "created_at is too far in the future")
        }
        if event.kind.rawValue == 22_242 {
            // NIP-42: authentication events go in AUTH messages and are never published or broadcast.
            return reject(.invalid, "kind 22242 events are sent with AUTH, not published")
        }
        if event.tags.count > policy.maximumEventTags {
            return reject(.restricted, "at most \(policy.maximumEventTags) tags per event")
        }
        // SQLite would cut a value at a NUL byte, so that "a\0b" would match, replace or delete "a".
        if event.tags.contains(where: { $0.fields.contains { $0.utf8.contains(0) } }) {
            return reject(.invalid, "tag values may not contain NUL")
        }
        return [.store(event)]
    }

    private mutating func openSubscription(_ id: String, _ filters: [Filter], counting: Bool) -> [Action] {
        let most = policy.maximumFilterValues
        if filters.contains(where: { filter in
            (filter.ids?.count ?? 0) > most || (filter.authors?.count ?? 0) > most || (filter.kinds?.count ?? 0) > most
                || filter.tags.values.contains { $0.count > most }
        }) {
            return [.send(.closed(subscriptionID: id, message: MachineReadablePrefix.restricted.message("at most \(most) values per filter list")))]
        }
        if policy.authRequired {
            // COUNT cannot leave out what this connection may not read (NIP-42 read rule), so it is not served.
            if counting {
                return [.send(.closed(
                    subscriptionID: id, message: MachineReadablePrefix.restricted.message("COUNT is not served when authentication is required")))]
            }
            let keys = Set(authenticated.map(\.hex))
            for filter in filters {
                let wanted = filter.tags["p"] ?? []
                if let missing = wanted.first(where: { !keys.contains($0) }) {
                    return [.send(.closed(
                        subscriptionID: id,
                        message: MachineReadablePrefix.authRequired.message("authenticate as \(missing.prefix(64)) to read its events")))]
                        + greeting
                }
            }
        }
        let capped = filters.map { filter -> Filter in
            var f = filter
            f.limit = min(filter.limit ?? policy.maximumLimit, policy.maximumLimit)
            return f
        }
        if counting { return [.count(subscriptionID: id, filters: capped)] }
        if subscriptions[id] == nil, subscriptions.count >= policy.maximumSubscriptions {
            return [.send(.closed(
                subscriptionID: id,
                message: MachineReadablePrefix.restricted.message("at most \(policy.maximumSubscriptions) subscriptions per connection")))]
        }
        subscriptions[id] = filters
        return [.query(subscriptionID: id, filters: capped)]
    }

    private mutating func authenticate(_ event: Event, clock: Timestamp) -> [Action] {
        do {
            let key = try ClientAuthentication.validate(event, challenge: challenge, relayURL: policy.relayURL, now: clock)
            guard authenticated.contains(key) || authenticated.count < policy.maximumAuthenticatedKeys else {
                return [.send(.ok(
                    eventID: event.id, accepted: false,
                    message: MachineReadablePrefix.restricted.message("at most \(policy.maximumAuthenticatedKeys) keys per connection")))]
            }
            authenticated.insert(key)
            return [.send(.ok(eventID: event.id, accepted: true, message: ""))]
        } catch let error as NostrError {
            return [.send(.ok(eventID: event.id, accepted: false, message: MachineReadablePrefix.authRequired.message(error.message)))]
        } catch {
            return [.send(.ok(eventID: event.id, accepted: false, message: MachineReadablePrefix.error.message("auth failed")))]
        }
    }

    /// Whether this connection may receive `event` (NIP-42 read policy when auth is required): events
    /// that `p`-tag someone go only to that someone or the author.
    public func mayRead(_ event: Event) -> Bool {
        guard policy.authRequired else { return true }
        let tagged = event.tagValues("p")
        if tagged.isEmpty || authenticated.contains(event.pubkey) { return true }
        return authenticated.contains { key in tagged.contains(key.hex) }
    }

    /// The ids of this connection's subscriptions that `event` matches and may be delivered to (live fan-out).
    public func liveSubscriptions(for event: Event) -> [String] {
        guard mayRead(event) else { return [] }
        return subscriptions.compactMap { id, filters in filters.contains { $0.matches(event) } ? id : nil }
    }
}
