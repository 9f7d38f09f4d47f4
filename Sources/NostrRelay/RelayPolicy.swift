import Foundation
import NostrCore

/// The embedded relay's limits and access rules; all of them are reported in its NIP-11 document.
public struct RelayPolicy: Hashable, Sendable {
    /// Largest accepted client message, in bytes of UTF-8.
    public var maximumMessageLength = 512 * 1024
    /// Most open subscriptions per connection.
    public var maximumSubscriptions = 32
    /// Most filters in one REQ or COUNT.
    public var maximumFilters = 16
    /// Cap on a filter's `limit` (and the default when a filter has none) for stored events.
    public var maximumLimit = 5_000
    /// Longest subscription id.
    public var maximumSubscriptionIDLength = 64
    /// Most tags on an event (each is a row to store and a comparison for every live filter).
    public var maximumEventTags = 2_000
    /// Most values in one list of a filter (`ids`, `authors`, `kinds`, each `#x`).
    public var maximumFilterValues = 1_000
    /// Most keys one connection may authenticate as (NIP-42).
    public var maximumAuthenticatedKeys = 16
    /// Most bytes of stored events one REQ is answered with (the newest first; `EOSE` follows, and a client pages
    /// back with `until`), so that a few large events cannot make one reply gigabytes.
    public var maximumReplyBytes = 16 << 20
    /// Messages per second a connection may send, sustained.
    public var messagesPerSecond: Double = 100
    /// Messages a connection may send in a burst above the sustained rate.
    public var messageBurst: Double = 200
    /// How far in the future `created_at` may be.
    public var maximumFutureSkew: Int64 = 15 * 60
    /// NIP-42 required: writers must authenticate as the event's author, and readers of events that `p`-tag
    /// a pubkey must authenticate as that pubkey (the DM / service-inbox policy).
    public var authRequired = false
    /// This relay's own URL, which NIP-42 AUTH events must name.
    public var relayURL: String

    public init(relayURL: String) { self.relayURL = relayURL }

    var messageLimits: MessageLimits {
        var limits = MessageLimits()
        limits.maximumFilters = maximumFilters
        limits.maximumSubscriptionIDLength = maximumSubscriptionIDLength
        return limits
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
public struct TokenBucket: Hashable, Sendable {
    public let rate: Double
    public let burst: Double
    private var tokens: Double
    private var last: Double

    /// A full bucket at time `now` (seconds, any monotonic origin).
    public init(rate: Double, burst: Double, now: Double) {
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now
    }

    /// Takes one token if there is one.
    public mutating func take(now: Double) -> Bool {
        tokens = min(burst, tokens + max(0, now - last) * rate)
        last = max(last, now)
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }
}

/// Seconds on the monotonic clock, for the rate limiter and back-off timers (it never jumps with the wall clock).
package func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
