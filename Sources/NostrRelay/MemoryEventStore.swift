public import NostrCore
import NostrCrypto
import Synchronization

/// An ``EventStore`` in memory: the embedded relay's default, for development and tests.
///
/// Bounded by `capacity`: past it, the oldest regular events are evicted first.
public final class MemoryEventStore: EventStore {
    struct State {
        var events: [EventID: Event] = [:]
        /// Current version per replaceable/addressable address.
        var addresses: [String: EventID] = [:]
        /// NIP-09: ids with the pubkeys that asked to delete them (only the author's request counts).
        var deletedIDs: [EventID: Set<PublicKey>] = [:]
        /// NIP-09 `a` deletions: address → deletion `created_at` (versions up to it are deleted).
        var deletedAddresses: [String: Timestamp] = [:]
    }

    private let state = Mutex(State())
    /// The most events kept.
    public let capacity: Int

    public init(capacity: Int = 1_000_000) {
        self.capacity = capacity
    }

    public func save(_ event: Event, now: Timestamp) async throws -> StoreOutcome {
        if event.isExpired(at: now) { return .expired }
        if event.kind.isEphemeral { return .ephemeral }
        return state.withLock { state in
            if state.events[event.id] != nil { return .duplicate }
            if state.deletedIDs[event.id]?.contains(event.pubkey) == true { return .deleted }
            if let address = event.replacementAddress {
                if let deletedUpTo = state.deletedAddresses[address], event.createdAt <= deletedUpTo { return .deleted }
                if let currentID = state.addresses[address], let current = state.events[currentID] {
                    guard event.replaces(current) else { return .superseded }
                    state.events[currentID] = nil
                }
                state.addresses[address] = event.id
            }
            if event.kind == .deletion { Self.applyDeletion(event, to: &state) }
            state.events[event.id] = event
            if state.events.count > capacity { Self.evictOldest(&state) }
            return .stored
        }
    }

    static func applyDeletion(_ deletion: Event, to state: inout State) {
        for tag in deletion.tags where tag.fields.count >= 2 {
            switch tag.fields[0] {
            case "e":
                guard let b = try? EventID(hex: tag.fields[1]) else { continue }
                if let target = state.events[b] {
                    // Only the author may delete; deleting a deletion has no effect (NIP-09).
                    guard target.pubkey == deletion.pubkey, target.kind != .deletion else { continue }
                    state.events[b] = nil
                    if let address = target.replacementAddress, state.addresses[address] == b {
                        state.addresses[address] = nil
                    }
                }
                state.deletedIDs[b, default: []].insert(deletion.pubkey)
            case "a":
                let address = tag.fields[1]
                let parts = address.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
                guard parts.count >= 2, parts[1] == deletion.pubkey.hex else { continue }
                let key = parts.count == 2 ? address + ":" : address
                state.deletedAddresses[key] = max(state.deletedAddresses[key] ?? 0, deletion.createdAt)
                if let currentID = state.addresses[key], let current = state.events[currentID],
                    current.createdAt <= deletion.createdAt
                {
                    state.events[currentID] = nil
                    state.addresses[key] = nil
                }
            default:
                continue
            }
        }
    }

    static func evictOldest(_ state: inout State) {
        // Rare (only past capacity): drop the oldest tenth in one pass rather than one event per insert.
        let victims = state.events.values.sorted { $0.createdAt < $1.createdAt }.prefix(max(1, state.events.count / 10))
        for victim in victims {
            state.events[victim.id] = nil
            if let address = victim.replacementAddress, state.addresses[address] == victim.id {
                state.addresses[address] = nil
            }
        }
    }

    public func query(_ filters: [Filter], now: Timestamp) async throws -> [Event] {
        state.withLock { state in
            var seen = Set<EventID>()
            var result = [Event]()
            for filter in filters {
                var matches: [Event]
                if let ids = filter.ids {
                    matches = ids.compactMap { state.events[$0] }.filter(filter.matches)
                } else {
                    matches = state.events.values.filter(filter.matches)
                }
                matches.removeAll { $0.isExpired(at: now) }
                matches.sort(by: Event.queryOrder)
                if let limit = filter.limit { matches = Array(matches.prefix(limit)) }
                for event in matches where seen.insert(event.id).inserted {
                    result.append(event)
                }
            }
            result.sort(by: Event.queryOrder)
            return result
        }
    }

    public func count(_ filters: [Filter], now: Timestamp) async throws -> Int {
        var unlimited = filters
        for i in unlimited.indices { unlimited[i].limit = nil }
        return try await query(unlimited, now: now).count
    }
}
