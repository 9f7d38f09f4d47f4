import Logging
import NostrCore
import NostrRelay
import Synchronization

/// Relays outside the service's own set that replies must reach (a request's `relays` tag, the requester's
/// inbox relays): connected on demand, for publishing only, at most `capacity` at a time, the least recently
/// used that no publish is using closed first. They never receive the service's subscriptions, so a requester cannot make the service
/// listen on relays of its choosing; and unless the pool allows it
/// (``RelayPool/Configuration/refusesPrivateAddresses``), none whose host is a loopback, private or link-local
/// address is connected to, so a requester cannot point the service into its own network.
final class ExtraRelays: Sendable {
    /// A connected extra relay: when a publish last took it, and how many publishes are using it now (one in
    /// use is never closed to make room for another).
    private struct Use {
        var lastUse: ContinuousClock.Instant
        var users: Int
    }

    let pool: RelayPool
    private let capacity: Int
    private let uses = Mutex<[RelayURL: Use]>([:])

    init(capacity: Int, configuration: RelayPool.Configuration, logger: Logger) {
        self.capacity = max(0, capacity)
        self.pool = RelayPool(configuration: configuration, logger: logger)
    }

    /// Publishes `event` to `relays`; `refused`: those not connected to for their address.
    func publish(_ event: Event, to relays: [RelayURL], timeout: Duration) async -> (results: [RelayURL: PublishResult], refused: Set<RelayURL>) {
        let (allowed, refused) = await checked(Array(relays.prefix(capacity)))
        let now = ContinuousClock.now
        // Taken under the lock, pool changes included, so that a relay one publish closes is never one another
        // has just taken.
        let taken = uses.withLock { uses -> [RelayURL] in
            var taken: [RelayURL] = []
            for relay in allowed {
                if uses[relay] == nil {
                    if uses.count >= capacity {
                        guard let idle = uses.filter({ $0.value.users == 0 }).min(by: { $0.value.lastUse < $1.value.lastUse })?.key
                        else { continue }
                        uses[idle] = nil
                        pool.remove(idle)
                    }
                    pool.add(relay)
                }
                uses[relay] = Use(lastUse: now, users: (uses[relay]?.users ?? 0) + 1)
                taken.append(relay)
            }
            return taken
        }
        var results = await pool.publish(event, to: taken, timeout: timeout)
        uses.withLock { uses in
            for relay in taken { uses[relay]?.users -= 1 }
        }
        results.merge(refused) { first, _ in first }
        for relay in relays where results[relay] == nil {
            results[relay] = .unreachable(reason: "more extra relays than the service connects to, all in use")
        }
        return (results, Set(refused.keys))
    }

    /// Splits `relays` into those that may be connected and those refused for their address. A relay already
    /// connected passed when it was added (the pool checks it again whenever it reconnects); a new one is
    /// looked up now, all at once, so that a refused one is answered at once rather than after the timeout.
    private func checked(_ relays: [RelayURL]) async -> (allowed: [RelayURL], refused: [RelayURL: PublishResult]) {
        guard pool.configuration.refusesPrivateAddresses else { return (relays, [:]) }
        let known = uses.withLock { uses in Set(relays.filter { uses[$0] != nil }) }
        let refused = await withTaskGroup(of: (RelayURL, String?).self) { group in
            for relay in relays where !known.contains(relay) {
                group.addTask {
                    do {
                        _ = try await AddressPolicy.checked(relay.host)
                        return (relay, nil)
                    } catch {
                        return (relay, "\(error)")
                    }
                }
            }
            var refused: [RelayURL: PublishResult] = [:]
            for await (relay, reason) in group {
                if let reason { refused[relay] = .unreachable(reason: reason) }
            }
            return refused
        }
        return (relays.filter { refused[$0] == nil }, refused)
    }
}
