public import NostrCrypto

/// Who may make requests and how fast: allow and deny lists, a token bucket per sender, and a cap on each
/// sender's requests in flight. A value-type state machine; the runtime holds it under a lock.
public struct RequestPolicy: Sendable {
    public struct Configuration: Sendable {
        /// Requests per second each sender may make, sustained.
        public var rate: Double = 10
        /// Requests a sender may make at once after being idle.
        public var burst: Double = 30
        /// Requests of one sender handled at the same time.
        public var maximumConcurrentPerSender = 8
        /// When set, only these senders are served.
        public var allow: Set<PublicKey>?
        /// Senders whose requests are dropped unanswered.
        public var deny: Set<PublicKey> = []
        /// Senders tracked at most; idle ones are forgotten first.
        public var trackedSenders = 100_000
        /// Refused requests of one sender answered with an error per second; beyond that a flood is dropped
        /// (and counted), so it cannot make the service sign and send as much as it receives.
        public var refusalRepliesPerSecond = 1

        public init() {}
    }

    /// What to do with a request.
    public enum Decision: Equatable, Sendable {
        case admit
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
        var refusalWindowStart = -Double.infinity
        var refusalReplies = 0
    }

    let configuration: Configuration
    private var senders: [PublicKey: Sender] = [:]

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    /// Whether the sender is allowed at all (checked before anything is recorded for its request).
    public func permits(_ sender: PublicKey) -> Bool {
        if configuration.deny.contains(sender) { return false }
        return configuration.allow?.contains(sender) ?? true
    }

    /// Decides on one request from `sender` at monotonic time `now` (seconds); an admitted request must be
    /// matched by ``finished(_:)``.
    public mutating func admit(_ sender: PublicKey, now: Double) -> Decision {
        guard permits(sender) else { return .drop }
        if senders[sender] == nil && senders.count >= configuration.trackedSenders { forgetIdle(now: now) }
        var state = senders[sender] ?? Sender(tokens: configuration.burst, updated: now)
        state.tokens = min(configuration.burst, state.tokens + (now - state.updated) * configuration.rate)
        state.updated = now
        let error: ServiceError?
        if state.inFlight >= configuration.maximumConcurrentPerSender {
            error = ServiceError(.tooManyRequests, "too many requests in progress; wait for the answers")
        } else if state.tokens < 1 {
            error = ServiceError(.rateLimited, "rate limited: at most \(configuration.rate) requests per second")
        } else {
            error = nil
        }
        guard let error else {
            state.tokens -= 1
            state.inFlight += 1
            senders[sender] = state
            return .admit
        }
        if now - state.refusalWindowStart >= 1 {
            state.refusalWindowStart = now
            state.refusalReplies = 0
        }
        let reply = state.refusalReplies < configuration.refusalRepliesPerSecond
        if reply { state.refusalReplies += 1 }
        senders[sender] = state
        return .refuse(error, reply: reply)
    }

    /// An admitted request of `sender` has finished.
    public mutating func finished(_ sender: PublicKey) {
        senders[sender]?.inFlight -= 1
    }

    /// Senders currently tracked.
    public var trackedCount: Int { senders.count }

    /// Forgets senders with nothing in flight whose bucket has refilled (they would start full anyway); if
    /// none has, the half least recently seen with nothing in flight.
    private mutating func forgetIdle(now: Double) {
        let before = senders.count
        senders = senders.filter { _, state in
            state.inFlight > 0 || state.tokens + (now - state.updated) * configuration.rate < configuration.burst
        }
        guard senders.count == before else { return }
        let idle = senders.filter { $0.value.inFlight == 0 }.sorted { $0.value.updated < $1.value.updated }
        for (key, _) in idle.prefix(max(1, idle.count / 2)) { senders[key] = nil }
    }
}
