public import NostrCrypto

/// Who may make requests and how fast: allow and deny lists, a token bucket per sender, and a cap on each
/// sender's requests in flight. A request over its sender's rate or cap waits its turn (briefly, a bounded
/// number per sender) rather than being refused, so a client's burst — a NIP-46 client decrypting a backlog,
/// say — is served at the sender's pace instead of answered with errors. A value-type state machine; the
/// runtime holds it under a lock and does the waiting.
public struct RequestPolicy: Sendable {
    public struct Configuration: Sendable {
        /// Requests per second each sender may make, sustained.
        public var rate: Double = 10
        /// Requests a sender may make at once after being idle.
        public var burst: Double = 30
        /// Requests of one sender handled at the same time.
        public var maximumConcurrentPerSender = 8
        /// Requests of one sender waiting for their turn (over its rate or its cap) at most; more are refused.
        public var maximumQueuedPerSender = 100
        /// Requests waiting for their turn over all senders at most (many senders each over their limits).
        public var maximumQueued = 10_000
        /// The longest a request waits for its turn, in seconds; one that would wait longer is refused
        /// (`rate-limited` over the rate, `too-many-requests` over the cap). Zero: none waits.
        public var maximumQueueWait: Double = 10
        /// When set, only these senders are served.
        public var allow: Set<PublicKey>?
        /// Senders whose requests are dropped unanswered.
        public var deny: Set<PublicKey> = []
        /// Senders tracked at most; idle ones are forgotten first.
        public var trackedSenders = 100_000
        /// Refused requests of one sender answered with an error per second; beyond that a flood is dropped
        /// (and counted), so it cannot make the service sign and send as much as it receives.
        public var refusalRepliesPerSecond = 50

        public init() {}
    }

    /// What to do with a request.
    public enum Decision: Equatable, Sendable {
        /// Handle it now.
        case admit
        /// Handle it after `delay` seconds (its sender is over its rate), once its sender has a slot: the
        /// runtime calls ``start(_:ticket:)`` then, and waits for the ticket to come up if it returns false.
        case queue(ticket: UInt64, delay: Double)
        /// Not answered at all (denied sender).
        case drop
        /// Answered with this error; `reply` is false when the sender already got
        /// ``Configuration/refusalRepliesPerSecond`` error replies within the current second.
        case refuse(ServiceError, reply: Bool)
    }

    struct Sender {
        var tokens: Double
        var updated: Double
        var inFlight = 0
        /// Admitted requests not yet started (delayed, or waiting for a slot).
        var queued = 0
        /// Tickets waiting for a slot, in order.
        var waiting: [UInt64] = []
        var refusalWindowStart = -Double.infinity
        var refusalReplies = 0
    }

    let configuration: Configuration
    private var senders: [PublicKey: Sender] = [:]
    private var nextTicket: UInt64 = 0
    /// Requests waiting for their turn, over all senders.
    public private(set) var queuedCount = 0

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    /// Whether the sender is allowed at all (checked before anything is recorded for its request).
    public func permits(_ sender: PublicKey) -> Bool {
        if configuration.deny.contains(sender) { return false }
        return configuration.allow?.contains(sender) ?? true
    }

    /// Decides on one request from `sender` at monotonic time `now` (seconds). An admitted request, and a
    /// queued one once it has started, must be matched by ``finished(_:)``.
    public mutating func admit(_ sender: PublicKey, now: Double) -> Decision {
        guard permits(sender) else { return .drop }
        if senders[sender] == nil && senders.count >= configuration.trackedSenders { forgetIdle(now: now) }
        var state = senders[sender] ?? Sender(tokens: configuration.burst, updated: now)
        state.tokens = min(configuration.burst, state.tokens + (now - state.updated) * configuration.rate)
        state.updated = now
        // Over the rate, the request waits until its token has accrued (the bucket goes into debt).
        let delay = state.tokens >= 1 ? 0 : configuration.rate > 0 ? (1 - state.tokens) / configuration.rate : .infinity
        let busy = state.inFlight >= configuration.maximumConcurrentPerSender || !state.waiting.isEmpty
        if delay == 0 && !busy {
            state.tokens -= 1
            state.inFlight += 1
            senders[sender] = state
            return .admit
        }
        let full = state.queued >= configuration.maximumQueuedPerSender || queuedCount >= configuration.maximumQueued
            || (busy && configuration.maximumQueueWait <= 0)
        let error: ServiceError? =
            if delay > 0 && (delay > configuration.maximumQueueWait || full) {
                ServiceError(.rateLimited, "rate limited: at most \(configuration.rate) requests per second")
            } else if full {
                ServiceError(.tooManyRequests, "too many requests in progress; wait for the answers")
            } else {
                nil
            }
        if let error {
            let reply = Self.mayReply(&state, now: now, perSecond: configuration.refusalRepliesPerSecond)
            senders[sender] = state
            return .refuse(error, reply: reply)
        }
        state.tokens -= 1
        state.queued += 1
        queuedCount += 1
        senders[sender] = state
        nextTicket &+= 1
        return .queue(ticket: nextTicket, delay: delay)
    }

    /// A queued request's delay is over: true if it may start now (it holds a slot), false if it waits for
    /// its ticket to come up in ``finished(_:)`` (or to be withdrawn).
    public mutating func start(_ sender: PublicKey, ticket: UInt64) -> Bool {
        if startIfFree(sender) { return true }
        senders[sender]?.waiting.append(ticket)
        return false
    }

    /// A queued request's delay is over: true if it may start now (it holds a slot); false, and nothing
    /// changes, otherwise.
    public mutating func startIfFree(_ sender: PublicKey) -> Bool {
        guard var state = senders[sender],
            state.inFlight < configuration.maximumConcurrentPerSender && state.waiting.isEmpty
        else { return false }
        state.inFlight += 1
        state.queued -= 1
        queuedCount -= 1
        senders[sender] = state
        return true
    }

    /// A queued request still in its delay gives up its turn (it is cancelled before asking to start).
    public mutating func abandon(_ sender: PublicKey) {
        guard senders[sender] != nil else { return }
        senders[sender]?.queued -= 1
        queuedCount -= 1
    }

    /// A request waiting for its ticket to come up gives up its turn (it waited too long, or is cancelled):
    /// true if it was still waiting, false if its ticket had already come up (it holds a slot, to be
    /// returned by ``finished(_:)``).
    public mutating func withdraw(_ sender: PublicKey, ticket: UInt64) -> Bool {
        guard var state = senders[sender], let index = state.waiting.firstIndex(of: ticket) else { return false }
        state.waiting.remove(at: index)
        state.queued -= 1
        queuedCount -= 1
        senders[sender] = state
        return true
    }

    /// A refused request outside ``admit(_:now:)`` (one that waited too long): whether it gets an error reply.
    public mutating func refusal(_ sender: PublicKey, now: Double) -> Bool {
        guard var state = senders[sender] else { return false }
        defer { senders[sender] = state }
        return Self.mayReply(&state, now: now, perSecond: configuration.refusalRepliesPerSecond)
    }

    private static func mayReply(_ state: inout Sender, now: Double, perSecond: Int) -> Bool {
        if now - state.refusalWindowStart >= 1 {
            state.refusalWindowStart = now
            state.refusalReplies = 0
        }
        guard state.refusalReplies < perSecond else { return false }
        state.refusalReplies += 1
        return true
    }

    /// An admitted (or started) request of `sender` has finished. Its slot passes to the sender's first
    /// waiting ticket, which is returned (its request may start now).
    public mutating func finished(_ sender: PublicKey) -> UInt64? {
        guard var state = senders[sender] else { return nil }
        defer { senders[sender] = state }
        guard !state.waiting.isEmpty else {
            state.inFlight -= 1
            return nil
        }
        state.queued -= 1
        queuedCount -= 1
        return state.waiting.removeFirst()
    }

    /// Senders currently tracked.
    public var trackedCount: Int { senders.count }

    /// Forgets senders with nothing in flight whose bucket has refilled (they would start full anyway); if
    /// none has, the half least recently seen with nothing in flight.
    private mutating func forgetIdle(now: Double) {
        let before = senders.count
        senders = senders.filter { _, state in
            state.inFlight > 0 || state.queued > 0 || state.tokens + (now - state.updated) * configuration.rate < configuration.burst
        }
        guard senders.count == before else { return }
        let idle = senders.filter { $0.value.inFlight == 0 && $0.value.queued == 0 }.sorted { $0.value.updated < $1.value.updated }
        for (key, _) in idle.prefix(max(1, idle.count / 2)) { senders[key] = nil }
    }
}
