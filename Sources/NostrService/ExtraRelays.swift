import Logging
import NostrCore
import NostrRelay
import Synchronization

/// Relays outside the service's own set that replies must reach (a request's `relays` tag, the requester's
/// inbox relays): connected on demand, for publishing only, at most `capacity` at a time, the least recently
/// used closed first. They never receive the service's subscriptions, so a requester cannot make the service
/// listen on relays of its choosing.
final class ExtraRelays: Sendable {
    let pool: RelayPool
    private let capacity: Int
    private let lastUse = Mutex<[RelayURL: ContinuousClock.Instant]>([:])

    init(capacity: Int, configuration: RelayPool.Configuration, logger: Logger) {
        self.capacity = max(0, capacity)
        self.pool = RelayPool(configuration: configuration, logger: logger)
    }

    func publish(_ event: Event, to relays: [RelayURL], timeout: Duration) async -> [RelayURL: PublishResult] {
        let now = ContinuousClock.now
        let (usable, evicted) = lastUse.withLock { lastUse -> ([RelayURL], [RelayURL]) in
            var evicted: [RelayURL] = []
            var usable: [RelayURL] = []
            for relay in relays.prefix(capacity) {
                if lastUse[relay] == nil, lastUse.count >= capacity,
                    let oldest = lastUse.min(by: { $0.value < $1.value })?.key
                {
                    lastUse[oldest] = nil
                    evicted.append(oldest)
                }
                lastUse[relay] = now
                usable.append(relay)
            }
            return (usable, evicted)
        }
        for relay in evicted { pool.remove(relay) }
        for relay in usable { pool.add(relay) }
        var results = await pool.publish(event, to: usable, timeout: timeout)
        for relay in relays where results[relay] == nil {
            results[relay] = .unreachable(reason: "more extra relays than the service connects to")
        }
        return results
    }
}
