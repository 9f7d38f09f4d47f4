public import NostrCore

/// What one relay did with a published event.
public enum PublishResult: Hashable, Sendable, CustomStringConvertible {
    /// The relay answered `OK true`, or `duplicate:` with either flag (the relay has the event).
    case accepted(message: String)
    /// The relay answered `OK false` with this message (`blocked:`, `invalid:`, `auth-required:`...), and
    /// retrying could not help (or retries ran out).
    case rejected(message: String)
    /// The relay was connected but did not answer `OK` in time.
    case timedOut
    /// The relay could not be reached before the deadline; `reason` is the last connection error.
    case unreachable(reason: String)

    /// Whether the relay has the event.
    public var isAccepted: Bool {
        if case .accepted = self { return true }
        return false
    }

    /// The machine-readable prefix of a relay's rejection.
    public var rejectionPrefix: MachineReadablePrefix? {
        if case .rejected(let message) = self { return MachineReadablePrefix(message: message) }
        return nil
    }

    public var description: String {
        switch self {
        case .accepted(let message): return message.isEmpty ? "accepted" : "accepted (\(message))"
        case .rejected(let message): return "rejected (\(message))"
        case .timedOut: return "timed out"
        case .unreachable(let reason): return "unreachable (\(reason))"
        }
    }
}

/// What a pool subscription yields.
public enum SubscriptionItem: Hashable, Sendable {
    /// A verified event matching the subscription, first seen on `relay` (later copies from other relays are
    /// dropped).
    case event(Event, relay: RelayURL)
    /// `relay` has sent all the stored events it has for the subscription; what follows is live. Reported once
    /// per connection: after a reconnect the relay sends what it stored meanwhile, then this again.
    case endOfStoredEvents(relay: RelayURL)
    /// `relay` ended the subscription with `message` and will not be asked again (authentication and rate
    /// limits are handled before this is reported).
    case closed(relay: RelayURL, message: String)
}
