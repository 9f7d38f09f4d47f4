import NostrCore
import NostrCrypto

/// The client side of one relay connection as a state machine: which subscriptions and publishes are in
/// flight, what must be re-sent after a reconnect, NIP-42 authentication and rate-limit back-off.
///
/// It performs no I/O. ``RelayConnection`` feeds it what happens (connected, a message arrived, a timer fired)
/// and executes the actions it returns.
struct RelayClientState {
    struct Configuration {
        /// Subtracted from the newest `created_at` seen when a subscription is resumed after a reconnect.
        var resumeMargin: Int64 = 60
        /// Whether a signer is available to answer NIP-42 challenges.
        var canAuthenticate = false
        /// Rate-limit back-off: first delay and cap, in seconds (doubled per attempt).
        var rateLimitDelay: Double = 1
        var rateLimitMaximumDelay: Double = 30
        /// How many times a rate-limited publish is retried before it is reported rejected.
        var rateLimitRetries = 5
        /// A subscription the relay closed for another reason (`error:`, `restricted:`, a failed
        /// authentication...) is asked for again after this delay, doubled per attempt up to the cap (seconds).
        var closedRetryDelay: Double = 5
        var closedRetryMaximumDelay: Double = 300
        /// The share of each back-off delay (rate limit, closed subscription) actually waited: a factor between
        /// half and all of it by default, so that clients a relay refused at the same moment (a restart, a
        /// limit reached) do not all come back at the same moment.
        var jitter: @Sendable () -> Double = { Double.random(in: 0.5...1) }
        /// NIP-42: AUTH rounds per connection at most (a relay that keeps refusing, or sends a fresh challenge
        /// before every refusal, cannot make the client sign without end), and how long a round (or a refusal
        /// waiting for a challenge) may go unanswered before what waits for it is refused (seconds).
        var maximumAuthenticationRounds = 4
        var authenticationTimeout: Double = 10
        var messageLimits = MessageLimits()
    }

    enum Waiting: Equatable {
        /// Sent (or will be, on connect); nothing to wait for.
        case none
        /// Refused with `auth-required:`; re-sent once authenticated.
        case authentication
        /// Refused with `rate-limited:`; re-sent at this monotonic time.
        case retry(at: Double, attempt: Int)
    }

    struct Subscription {
        var filters: [Filter]
        /// Newest `created_at` delivered (capped at the wall clock when it arrived), where a resumed
        /// subscription may start: raised only by live events and at `EOSE`, since stored events come newest
        /// first and a connection lost before its `EOSE` has not delivered the older ones.
        var newestSeen: Timestamp?
        /// Newest `created_at` among the stored events of the current request, before its `EOSE`.
        var newestStored: Timestamp?
        /// Between sending the request and its `EOSE`.
        var awaitingStored = true
        /// Wall clock when the relay first sent `EOSE`.
        var caughtUpAt: Timestamp?
        var waiting: Waiting = .none
        /// The message of an `auth-required:` refusal, reported if authentication fails.
        var refusal: String?
        /// Why the relay closed it, until it is asked for again and answered (an event or `EOSE`).
        var closedBecause: String?
        /// The subscription id its latest request went out under on the current connection. New filters for a
        /// subscription open on the relay go out under a new id (its own id, then `id.1`, `id.2`...): relays
        /// treat a `REQ` under an open id as a replacement and may cancel the earlier request's stored events
        /// without an `EOSE`, so an `EOSE` under a shared id could not say which filters it answers.
        var wireID: String
        var generation = 0
        /// A request under ``wireID`` is open on the relay: sent on the current connection, not closed since.
        var open = false
        /// The earlier id still open on the relay (its filters served until the new ones are registered),
        /// closed once the relay answers ``wireID``. Only one: a version replaced before it was answered is
        /// closed at once, so a subscription never holds more than two of the relay's subscription slots.
        var retired: String?
        /// The relay has answered one of its requests on the current connection with `EOSE`: it has
        /// registered the subscription (perhaps an earlier version of its filters) and sends new matching
        /// events from now on. Until then an ephemeral event may pass the relay unseen.
        var answered = false
        /// The relay has answered the request under ``wireID`` with `EOSE`: it has registered the latest filters.
        var isCurrent = false
        /// `EOSE` has been reported to the subscriber on the current connection (once per connection: the first
        /// `EOSE` of the latest filters; one for an earlier version does not count).
        var reportedOnConnection = false
    }

    struct Publish {
        var event: Event
        var waiting: Waiting = .none
        var refusal: String?
    }

    /// A message from the relay, parsed and, if it is an event, checked (id and signature): the expensive part
    /// of receiving, which needs no state, so ``RelayConnection`` does it outside its lock and, for a burst of
    /// messages, on several cores at once.
    enum Received: Sendable {
        case message(RelayMessage, eventIsValid: Bool)
        case unreadable(reason: String)

        init(_ text: String, limits: MessageLimits) {
            do {
                let message = try RelayMessage(json: text, limits: limits)
                if case .event(_, let event) = message {
                    self = .message(message, eventIsValid: event.isValid)
                } else {
                    self = .message(message, eventIsValid: true)
                }
            } catch {
                self = .unreadable(reason: "unreadable message: \(error)")
            }
        }
    }

    enum Action: Equatable {
        case send(String)
        case deliver(subscriptionID: String, Event)
        case endOfStoredEvents(subscriptionID: String)
        case subscriptionClosed(subscriptionID: String, message: String)
        case publishFinished(EventID, PublishResult)
        /// Sign NIP-42 events for this challenge — as the default key, and as each of `keys` that a signer is
        /// held for — and pass them to ``authenticationSigned(_:)``.
        case authenticate(challenge: String, keys: Set<PublicKey>)
        case notice(String)
        /// A message or event the relay should not have sent: dropped and counted.
        case dropped(reason: String)
    }

    let configuration: Configuration
    private(set) var isConnected = false
    private(set) var subscriptions: [String: Subscription] = [:]
    /// The ids requests went out under (the latest and earlier versions still open), to their subscription.
    private var wireIDs: [String: String] = [:]
    private(set) var publishes: [EventID: Publish] = [:]
    private var authentication = Authentication()

    /// NIP-42 on this connection. A round signs AUTH events for every key the refused messages need (the keys
    /// their filters `p`-tag, the authors of refused events) plus the default key, all at once: a relay that
    /// limits reading `p`-tagged events to their recipient needs one per key (NIP-42 lets a client
    /// authenticate as several). A message refused again after a round that covered its keys, under the same
    /// challenge, is refused for good; so is everything after ``Configuration/maximumAuthenticationRounds``.
    struct Authentication {
        var challenge: String?
        /// The challenge the last round answered.
        var answered: String?
        /// AUTH events sent in the current round and not yet answered.
        var inFlight: Set<EventID> = []
        /// Between asking for signatures and receiving them.
        var signing = false
        /// Whether an AUTH of the current round was accepted.
        var accepted = false
        /// Rounds on this connection, and the keys they asked for.
        var rounds = 0
        var requested: Set<PublicKey> = []
        /// When the current round began, or (with no round and no challenge) when a refusal began waiting.
        var since: Double?

        var inProgress: Bool { signing || !inFlight.isEmpty }
    }

    init(configuration: Configuration) {
        self.configuration = configuration
    }

    // MARK: Connection

    /// A connection opened: everything live is sent again (subscriptions resumed from where they were).
    mutating func connected() -> [Action] {
        isConnected = true
        authentication = Authentication()
        unanswerAll()
        return resend { _ in Waiting.none }
    }

    mutating func disconnected() {
        isConnected = false
        authentication = Authentication()
        unanswerAll()
    }

    /// Nothing is open on the relay any more: each subscription goes out again under its own id.
    private mutating func unanswerAll() {
        wireIDs = [:]
        for (id, var subscription) in subscriptions {
            subscription.answered = false
            subscription.isCurrent = false
            subscription.reportedOnConnection = false
            subscription.open = false
            subscription.retired = nil
            subscription.wireID = id
            subscriptions[id] = subscription
            wireIDs[id] = id
        }
    }

    /// The filters that resume `subscription` after a gap: `since` moved up to what was already seen (minus
    /// the margin) and no `limit`, so every event of the gap comes, and little else.
    func resumeFilters(_ subscription: Subscription) -> [Filter] {
        guard let anchor = subscription.newestSeen ?? subscription.caughtUpAt else { return subscription.filters }
        let since = max(0, anchor - configuration.resumeMargin)
        return subscription.filters.map { filter in
            var f = filter
            f.since = max(filter.since ?? 0, since)
            f.limit = nil
            return f
        }
    }

    // MARK: Requests from the pool

    mutating func subscribe(_ id: String, filters: [Filter]) -> [Action] {
        var subscription = Subscription(filters: filters, wireID: id)
        var actions: [Action] = []
        if let old = subscriptions[id] {
            // New filters replace the old ones, which the relay goes on serving until it has registered them.
            subscription.answered = old.answered
            subscription.reportedOnConnection = old.reportedOnConnection
            subscription.retired = old.retired
            subscription.generation = old.generation
            subscription.wireID = old.wireID
            if old.open {
                if old.isCurrent || old.retired == nil {
                    subscription.retired = old.wireID
                } else {
                    // Replaced before it was answered, while an earlier version still serves: not needed.
                    wireIDs[old.wireID] = nil
                    actions.append(.send(ClientMessage.close(subscriptionID: old.wireID).json))
                }
                subscription.generation += 1
                subscription.wireID = "\(id).\(subscription.generation)"
            }
        }
        subscriptions[id] = subscription
        wireIDs[subscription.wireID] = id
        guard isConnected else { return actions }
        subscriptions[id]?.open = true
        return actions + [.send(ClientMessage.request(subscriptionID: subscription.wireID, filters: filters).json)]
    }

    mutating func unsubscribe(_ id: String) -> [Action] {
        guard let subscription = subscriptions.removeValue(forKey: id) else { return [] }
        let open = [subscription.retired, subscription.open ? subscription.wireID : nil].compactMap { $0 }
        for wireID in open + [subscription.wireID] { wireIDs[wireID] = nil }
        guard isConnected else { return [] }
        return open.map { .send(ClientMessage.close(subscriptionID: $0).json) }
    }

    /// The subscription a relay's message names (by the id a request went out under), and whether that
    /// request was an earlier version of its filters.
    private func subscription(wireID: String) -> (id: String, retired: Bool)? {
        guard let id = wireIDs[wireID], let subscription = subscriptions[id] else { return nil }
        return (id, subscription.wireID != wireID)
    }

    mutating func publish(_ event: Event) -> [Action] {
        publishes[event.id] = Publish(event: event)
        return isConnected ? [.send(ClientMessage.event(event).json)] : []
    }

    /// The publisher stopped waiting (timeout): forget the event.
    mutating func abandonPublish(_ id: EventID) {
        publishes[id] = nil
    }

    // MARK: Relay messages

    /// Parses, checks and handles one message from the relay.
    mutating func receive(_ text: String, now: Timestamp, monotonic: Double) -> [Action] {
        receive(Received(text, limits: configuration.messageLimits), now: now, monotonic: monotonic)
    }

    /// Handles one message from the relay, already parsed and checked.
    mutating func receive(_ received: Received, now: Timestamp, monotonic: Double) -> [Action] {
        let message: RelayMessage, eventIsValid: Bool
        switch received {
        case .unreadable(let reason):
            return [.dropped(reason: reason)]
        case .message(let parsed, let valid):
            (message, eventIsValid) = (parsed, valid)
        }
        switch message {
        case .event(let wireID, let event):
            return receiveEvent(event, isValid: eventIsValid, wireID: wireID, now: now)
        case .endOfStoredEvents(let wireID):
            guard let (id, retired) = subscription(wireID: wireID), var subscription = subscriptions[id] else { return [] }
            guard !retired else {
                // The earlier filters are registered: the relay serves those until it has the new ones.
                subscriptions[id]?.answered = true
                return []
            }
            if subscription.caughtUpAt == nil { subscription.caughtUpAt = now }
            if let stored = subscription.newestStored { subscription.newestSeen = max(subscription.newestSeen ?? stored, stored) }
            subscription.newestStored = nil
            subscription.awaitingStored = false
            if case .retry = subscription.waiting { subscription.waiting = .none }
            subscription.closedBecause = nil
            subscription.answered = true
            subscription.isCurrent = true
            let first = !subscription.reportedOnConnection
            subscription.reportedOnConnection = true
            var actions = closeRetired(&subscription)
            subscriptions[id] = subscription
            if first { actions.append(.endOfStoredEvents(subscriptionID: id)) }
            return actions
        case .closed(let wireID, let text):
            return receiveClosed(wireID, text, monotonic: monotonic)
        case .ok(let id, let accepted, let text):
            return receiveOK(id, accepted: accepted, text, monotonic: monotonic)
        case .auth(let newChallenge):
            authentication.challenge = newChallenge
            return authenticateIfNeeded(monotonic: monotonic)
        case .notice(let text):
            return [.notice(text)]
        case .count:
            return []
        }
    }

    private mutating func receiveEvent(_ event: Event, isValid: Bool, wireID: String, now: Timestamp) -> [Action] {
        guard let (id, retired) = subscription(wireID: wireID), var subscription = subscriptions[id] else { return [] }  // closed meanwhile
        guard isValid else { return [.dropped(reason: "event \(event.id.hex) fails id or signature check")] }
        guard subscription.filters.contains(where: { $0.matches(event) }) else {
            // Earlier filters may match what the new ones do not.
            if retired { return [] }
            return [.dropped(reason: "event \(event.id.hex) does not match subscription \(id)")]
        }
        let seen = min(event.createdAt, now)
        if subscription.awaitingStored {
            subscription.newestStored = max(subscription.newestStored ?? seen, seen)
        } else {
            subscription.newestSeen = max(subscription.newestSeen ?? seen, seen)
        }
        subscription.closedBecause = nil
        subscriptions[id] = subscription
        return [.deliver(subscriptionID: id, event)]
    }

    private mutating func receiveClosed(_ wireID: String, _ text: String, monotonic: Double) -> [Action] {
        guard let (id, retired) = subscription(wireID: wireID), var subscription = subscriptions[id] else { return [] }
        if retired {
            // The earlier version closed: what the relay still serves is the latest, if it has answered it.
            subscription.retired = nil
            wireIDs[wireID] = nil
            subscription.answered = subscription.isCurrent
            subscriptions[id] = subscription
            return []
        }
        subscription.isCurrent = false
        subscription.open = false
        // An earlier version still open goes on serving while the latest waits for authentication or a
        // back-off; the relay's answer counts as registered only with it.
        subscription.answered = subscription.answered && subscription.retired != nil
        switch MachineReadablePrefix(message: text) {
        case .authRequired where mayAuthenticate(for: Self.keys(of: subscription)):
            subscription.waiting = .authentication
            subscription.refusal = text
            subscriptions[id] = subscription
            return authenticateIfNeeded(monotonic: monotonic)
        case .rateLimited:
            let attempt = subscription.waiting.attempt + 1
            subscription.waiting = .retry(at: monotonic + backoff(attempt), attempt: attempt)
            subscriptions[id] = subscription
            return []
        default:
            guard subscription.retired == nil else {
                // Perhaps refused for the number of subscriptions: the earlier version makes way, and the
                // latest is asked for again at once; refused again, it is reported and retried as usual.
                subscription.answered = false
                var actions = closeRetired(&subscription)
                subscription.open = true
                subscriptions[id] = subscription
                actions.append(.send(ClientMessage.request(subscriptionID: subscription.wireID, filters: resumeFilters(subscription)).json))
                return actions
            }
            subscriptions[id] = Self.closed(subscription, because: text, monotonic: monotonic, configuration)
            return [.subscriptionClosed(subscriptionID: id, message: text)]
        }
    }

    /// Closes the earlier version of `subscription` still open on the relay, if any.
    private mutating func closeRetired(_ subscription: inout Subscription) -> [Action] {
        guard let retired = subscription.retired else { return [] }
        subscription.retired = nil
        wireIDs[retired] = nil
        return [.send(ClientMessage.close(subscriptionID: retired).json)]
    }

    /// `subscription`, closed by the relay: reported, and asked for again after a back-off (and on the next
    /// connection), until its subscriber closes it. A relay that refused it may accept it later (a restart, a
    /// policy change, a limit no longer reached); a service that stopped asking would stop listening there.
    private static func closed(_ subscription: Subscription, because text: String, monotonic: Double, _ configuration: Configuration) -> Subscription {
        var subscription = subscription
        let attempt = subscription.closedBecause == nil ? 1 : subscription.waiting.attempt + 1
        let delay = min(configuration.closedRetryMaximumDelay, configuration.closedRetryDelay * Double(1 << min(attempt - 1, 16)))
            * configuration.jitter()
        subscription.waiting = .retry(at: monotonic + delay, attempt: attempt)
        subscription.closedBecause = text
        subscription.refusal = nil
        return subscription
    }

    /// Subscriptions the relay has closed and not yet accepted again.
    var closedSubscriptions: Int { subscriptions.values.count { $0.closedBecause != nil } }

    /// Subscriptions the relay has not answered with `EOSE` on the current connection (closed ones included).
    var unansweredSubscriptions: Int { subscriptions.values.count { !$0.answered } }

    /// Subscriptions whose latest filters the relay has not yet answered with `EOSE` on the current connection
    /// (the unanswered ones, and those whose replacement is in flight).
    var unconfirmedSubscriptions: Int { subscriptions.values.count { !$0.isCurrent } }

    private mutating func receiveOK(_ id: EventID, accepted: Bool, _ text: String, monotonic: Double) -> [Action] {
        if authentication.inFlight.remove(id) != nil {
            if accepted { authentication.accepted = true }
            guard authentication.inFlight.isEmpty else { return [] }
            authentication.since = nil
            return authentication.accepted ? authenticationAccepted() : authenticationRefused(text, monotonic: monotonic)
        }
        guard var publish = publishes[id] else { return [] }
        let prefix = MachineReadablePrefix(message: text)
        // NIP-01 has relays answer a duplicate with `OK true`; some (nostr_relay 1.14) say `false`. Either way
        // the relay has the event.
        if accepted || prefix == .duplicate {
            publishes[id] = nil
            return [.publishFinished(id, .accepted(message: text))]
        }
        switch prefix {
        case .authRequired where mayAuthenticate(for: [publish.event.pubkey]):
            publish.waiting = .authentication
            publish.refusal = text
            publishes[id] = publish
            return authenticateIfNeeded(monotonic: monotonic)
        case .rateLimited where publish.waiting.attempt < configuration.rateLimitRetries:
            let attempt = publish.waiting.attempt + 1
            publish.waiting = .retry(at: monotonic + backoff(attempt), attempt: attempt)
            publishes[id] = publish
            return []
        default:
            publishes[id] = nil
            return [.publishFinished(id, .rejected(message: text))]
        }
    }

    // MARK: NIP-42

    private var waitingForAuthentication: Bool {
        subscriptions.values.contains { $0.waiting == .authentication }
            || publishes.values.contains { $0.waiting == .authentication }
    }

    /// Whether an `auth-required:` refusal of a message that needs `keys` may be answered by authenticating:
    /// a round is under way (the message crossed it), none was done yet, or it would ask for a key not asked for.
    private func mayAuthenticate(for keys: Set<PublicKey>) -> Bool {
        guard configuration.canAuthenticate else { return false }
        if authentication.inProgress { return true }
        guard authentication.rounds < configuration.maximumAuthenticationRounds else { return false }
        return authentication.rounds == 0 || !keys.isSubset(of: authentication.requested)
            || (authentication.challenge != nil && authentication.challenge != authentication.answered)
    }

    /// The keys a subscription's filters `p`-tag (whose events a relay may show only to them).
    private static func keys(of subscription: Subscription) -> Set<PublicKey> {
        Set(subscription.filters.flatMap { $0.tags["p"] ?? [] }.compactMap { try? PublicKey(hex: $0) })
    }

    private mutating func authenticateIfNeeded(monotonic: Double) -> [Action] {
        guard isConnected, configuration.canAuthenticate, !authentication.inProgress, waitingForAuthentication else { return [] }
        guard let challenge = authentication.challenge else {
            // Refused before the relay sent a challenge: wait for one, within the timeout.
            if authentication.since == nil { authentication.since = monotonic }
            return []
        }
        var keys = Set<PublicKey>()
        for subscription in subscriptions.values where subscription.waiting == .authentication { keys.formUnion(Self.keys(of: subscription)) }
        for publish in publishes.values where publish.waiting == .authentication { keys.insert(publish.event.pubkey) }
        authentication.signing = true
        authentication.accepted = false
        authentication.rounds += 1
        authentication.requested.formUnion(keys)
        authentication.answered = challenge
        authentication.since = monotonic
        return [.authenticate(challenge: challenge, keys: keys)]
    }

    /// The signed AUTH events for the current challenge (a round's).
    mutating func authenticationSigned(_ events: [Event]) -> [Action] {
        let events = events.filter { $0.firstTagValue("challenge") == authentication.challenge }
        guard isConnected, authentication.signing, !events.isEmpty else { return [] }
        authentication.signing = false
        authentication.inFlight = Set(events.map(\.id))
        return events.map { .send(ClientMessage.auth($0).json) }
    }

    /// Signing the AUTH events failed: whatever waited for them fails with the relay's refusal.
    mutating func authenticationFailed(_ reason: String, monotonic: Double) -> [Action] {
        authentication.signing = false
        authentication.since = nil
        return authenticationRefused(reason, monotonic: monotonic)
    }

    private mutating func authenticationAccepted() -> [Action] {
        resend { $0 == .authentication ? Waiting.none : nil }
    }

    private mutating func authenticationRefused(_ reason: String, monotonic: Double) -> [Action] {
        var actions = [Action]()
        for (id, subscription) in subscriptions.sorted(by: { $0.key < $1.key }) where subscription.waiting == .authentication {
            let message = subscription.refusal ?? reason
            subscriptions[id] = Self.closed(subscription, because: message, monotonic: monotonic, configuration)
            actions.append(.subscriptionClosed(subscriptionID: id, message: message))
        }
        for (id, publish) in publishes.sorted(by: { $0.key < $1.key }) where publish.waiting == .authentication {
            publishes[id] = nil
            actions.append(.publishFinished(id, .rejected(message: publish.refusal ?? reason)))
        }
        return actions
    }

    // MARK: Timers

    /// Re-sends what waited out a rate-limit back-off.
    mutating func tick(monotonic: Double) -> [Action] {
        guard isConnected else { return [] }
        var actions: [Action] = []
        // A round the relay never finished answering, or a refusal no challenge came for: what waits is refused
        // (a closed subscription is asked for again after its back-off).
        if let since = authentication.since, monotonic - since > configuration.authenticationTimeout {
            let accepted = authentication.accepted
            authentication.signing = false
            authentication.inFlight = []
            authentication.since = nil
            actions += accepted ? authenticationAccepted() : authenticationRefused("auth-required: the relay did not complete authentication", monotonic: monotonic)
        }
        // In flight again; the attempt count is kept until the relay answers.
        return actions + resend { waiting in
            guard case .retry(let at, let attempt) = waiting, at <= monotonic else { return nil }
            return .retry(at: .infinity, attempt: attempt)
        }
    }

    /// Re-sends (in id order, subscriptions first) every subscription and publish for which `next` gives a new
    /// waiting state, and sets it.
    private mutating func resend(_ next: (Waiting) -> Waiting?) -> [Action] {
        var actions = [Action]()
        for id in subscriptions.compactMap({ next($0.value.waiting) == nil ? nil : $0.key }).sorted() {
            guard var subscription = subscriptions[id], let waiting = next(subscription.waiting) else { continue }
            subscription.waiting = waiting
            subscription.awaitingStored = true
            subscription.newestStored = nil
            subscription.open = true
            subscriptions[id] = subscription
            actions.append(.send(ClientMessage.request(subscriptionID: subscription.wireID, filters: resumeFilters(subscription)).json))
        }
        for id in publishes.compactMap({ next($0.value.waiting) == nil ? nil : $0.key }).sorted() {
            guard var publish = publishes[id], let waiting = next(publish.waiting) else { continue }
            publish.waiting = waiting
            publishes[id] = publish
            actions.append(.send(ClientMessage.event(publish.event).json))
        }
        return actions
    }

    private func backoff(_ attempt: Int) -> Double {
        min(configuration.rateLimitMaximumDelay, configuration.rateLimitDelay * Double(1 << min(attempt - 1, 16))) * configuration.jitter()
    }
}

extension RelayClientState.Waiting {
    /// Rate-limit attempts so far (kept while the re-sent message is in flight).
    var attempt: Int {
        if case .retry(_, let attempt) = self { return attempt }
        return 0
    }
}
