public import NostrCore

/// What happened to an event offered to an ``EventStore``.
public enum StoreOutcome: Hashable, Sendable {
    /// Stored (and, for replaceable or addressable kinds, any older version removed).
    case stored
    /// Already stored; nothing changed.
    case duplicate
    /// A newer version of this replaceable or addressable event is stored; this one was discarded.
    case superseded
    /// The author deleted this event (NIP-09) before it arrived; it will not be stored.
    case deleted
    /// The event has expired (NIP-40); not stored.
    case expired
    /// Ephemeral kind: relayed to subscribers, never stored.
    case ephemeral

    /// Whether subscribers should receive the event live.
    public var shouldBroadcast: Bool { self == .stored || self == .ephemeral }

    /// The `OK` reply for a publisher: accepted or not, and the NIP-01 machine-readable message.
    public var okReply: (accepted: Bool, message: String) {
        switch self {
        case .stored, .ephemeral: return (true, "")
        case .duplicate: return (true, MachineReadablePrefix.duplicate.message("already have this event"))
        case .superseded: return (true, MachineReadablePrefix.duplicate.message("a newer version is already stored"))
        case .deleted: return (false, MachineReadablePrefix.blocked.message("this event was deleted by its author"))
        case .expired: return (false, MachineReadablePrefix.invalid.message("event has expired (NIP-40)"))
        }
    }
}

/// Where a relay keeps events: NIP-01 storage semantics (regular, replaceable, addressable, ephemeral),
/// NIP-09 deletion by the author and NIP-40 expiration.
///
/// Implementations receive events whose id and signature were already verified.
public protocol EventStore: Sendable {
    /// Offers a verified event; applies replacement, deletion and expiration rules.
    func save(_ event: Event, now: Timestamp) async throws -> StoreOutcome

    /// Events matching any of `filters`, newest first (ties: lowest id first), each filter's `limit`
    /// applied to its own matches, expired events left out, no duplicates.
    func query(_ filters: [Filter], now: Timestamp) async throws -> [Event]

    /// How many stored events match any of `filters` (NIP-45).
    func count(_ filters: [Filter], now: Timestamp) async throws -> Int
}

extension Event {
    /// NIP-01 order for query results: newer first; on equal `created_at`, the lower id first.
    public static func queryOrder(_ a: Event, _ b: Event) -> Bool {
        a.createdAt != b.createdAt ? a.createdAt > b.createdAt : a.id < b.id
    }

    /// The identity a replaceable or addressable event is replaced under: `kind:pubkey:d` (NIP-01 "a" tag
    /// form); `nil` for regular and ephemeral kinds.
    public var replacementAddress: String? {
        switch kind.classification {
        case .replaceable: return "\(kind.rawValue):\(pubkey.hex):"
        case .addressable: return "\(kind.rawValue):\(pubkey.hex):\(firstTagValue("d") ?? "")"
        case .regular, .ephemeral: return nil
        }
    }

    /// Whether `self` should replace `other` at the same address (newer wins; a tie goes to the lower id).
    public func replaces(_ other: Event) -> Bool {
        createdAt != other.createdAt ? createdAt > other.createdAt : id < other.id
    }
}
