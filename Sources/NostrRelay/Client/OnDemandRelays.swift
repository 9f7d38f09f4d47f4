import Logging
import NostrCore
import Synchronization

/// Relays someone else named (a request's `relays` tag, a requester's inbox relays, a DVM input's relay hint),
/// connected on demand in a pool of their own and taken for one use at a time.
///
/// At most `capacity` relays are connected; to make room, the least recently used one that nothing has taken is
/// closed, and when every one is taken a new relay is not connected at all (``Lease/full``) rather than cutting
/// off a use in progress. Unless the pool's configuration allows it
/// (``RelayPool/Configuration/refusesPrivateAddresses``), a relay whose host is, or resolves to, a loopback,
/// private, link-local or reserved address is refused when first taken (``Lease/refused``, all looked up at
/// once, so that a refusal is known at once rather than after a timeout) and again by the pool before every
/// connection attempt.
///
/// Run ``pool`` alongside whatever takes relays: connections exist only while it runs.
package final class OnDemandRelays: Sendable {
    /// The outcome of ``take(_:)``: each relay asked for is in exactly one of the three.
    package struct Lease: Sendable {
        /// Connected (or connecting) in ``OnDemandRelays/pool``, held until ``OnDemandRelays/release(_:)``.
        package var taken: [RelayURL] = []
        /// Not connected for its address, with the reason.
        package var refused: [RelayURL: String] = [:]
        /// Not connected because every place is taken.
        package var full: [RelayURL] = []

        package init(taken: [RelayURL] = [], refused: [RelayURL: String] = [:], full: [RelayURL] = []) {
            self.taken = taken
            self.refused = refused
            self.full = full
        }
    }

    /// A connected relay: when it was last taken, and by how many uses it is held now.
    private struct Use {
        var lastUse: ContinuousClock.Instant
        var holders: Int
    }

    /// The connections; run it (``RelayPool/run()``) while relays are taken.
    package let pool: RelayPool
    private let capacity: Int
    private let uses = Mutex<[RelayURL: Use]>([:])
    private let lookup: @Sendable (String) -> [[UInt8]]

    /// - Parameter lookup: the addresses a host name resolves to (the system's resolver; tests give their own).
    package init(
        capacity: Int, configuration: RelayPool.Configuration, logger: Logger,
        lookup: @escaping @Sendable (String) -> [[UInt8]] = AddressPolicy.resolve
    ) {
        self.capacity = max(0, capacity)
        self.pool = RelayPool(configuration: configuration, logger: logger)
        self.lookup = lookup
    }

    /// Takes `relays` (duplicates ignored): connects those not connected yet, making room as described above.
    /// Beyond the first `capacity` of them none is looked up or taken (``Lease/full``). Every relay in the
    /// lease's ``Lease/taken`` must be given back with ``release(_:)``.
    package func take(_ relays: [RelayURL]) async -> Lease {
        var seen = Set<RelayURL>()
        let distinct = relays.filter { seen.insert($0).inserted }
        let relays = Array(distinct.prefix(capacity))
        var lease = Lease(full: Array(distinct.dropFirst(capacity)))
        lease.refused = await refusals(among: relays)
        let now = ContinuousClock.now
        // Pool changes happen under the lock too, so that a relay one caller closes is never one another has
        // just taken.
        uses.withLock { uses in
            for relay in relays where lease.refused[relay] == nil {
                if uses[relay] == nil {
                    if uses.count >= capacity {
                        guard let idle = uses.filter({ $0.value.holders == 0 }).min(by: { $0.value.lastUse < $1.value.lastUse })?.key else {
                            lease.full.append(relay)
                            continue
                        }
                        uses[idle] = nil
                        pool.remove(idle)
                    }
                    _ = pool.add(relay)
                }
                uses[relay] = Use(lastUse: now, holders: (uses[relay]?.holders ?? 0) + 1)
                lease.taken.append(relay)
            }
        }
        return lease
    }

    /// Gives back the relays `lease` took; they stay connected until room is needed.
    package func release(_ lease: Lease) {
        uses.withLock { uses in
            for relay in lease.taken { uses[relay]?.holders -= 1 }
        }
    }

    /// Takes `relays` for the duration of `body`.
    package func withRelays<Result>(_ relays: [RelayURL], _ body: (Lease) async throws -> Result) async rethrows -> Result {
        let lease = await take(relays)
        defer { release(lease) }
        return try await body(lease)
    }

    /// The relays of `relays` refused for their address. One already connected passed when it was added (the
    /// pool checks it again whenever it reconnects); the others are looked up now, concurrently.
    private func refusals(among relays: [RelayURL]) async -> [RelayURL: String] {
        guard pool.configuration.refusesPrivateAddresses else { return [:] }
        let connected = uses.withLock { uses in Set(relays.filter { uses[$0] != nil }) }
        let lookup = self.lookup
        return await withTaskGroup(of: (RelayURL, String?).self) { group in
            for relay in relays where !connected.contains(relay) {
                group.addTask {
                    do {
                        _ = try await AddressPolicy.checked(relay.host, lookup: lookup)
                        return (relay, nil)
                    } catch {
                        return (relay, "\(error)")
                    }
                }
            }
            var refused: [RelayURL: String] = [:]
            for await (relay, reason) in group {
                if let reason { refused[relay] = reason }
            }
            return refused
        }
    }
}
