import Foundation
import NostrCore
import NostrCrypto
import NostrRelay
import Synchronization

/// Where a user wants to be written to: the read relays of their NIP-65 relay list (kind 10002), else their
/// NIP-17 inbox relays (kind 10050), looked up on the service's relays and cached (bounded, for a while, misses
/// included). At most `maximumPerUser` relays per user, so a requester cannot make the service publish to
/// dozens of relays of its choosing.
final class InboxRelays: Sendable {
    private let pool: RelayPool
    private let capacity: Int
    private let lifetime: Int64
    private let maximumPerUser: Int
    private let timeout: Duration
    private let cache = Mutex<[PublicKey: (relays: [RelayURL], fetchedAt: Int64)]>([:])

    init(pool: RelayPool, capacity: Int, lifetime: Int64, maximumPerUser: Int, timeout: Duration) {
        self.pool = pool
        self.capacity = max(1, capacity)
        self.lifetime = lifetime
        self.maximumPerUser = maximumPerUser
        self.timeout = timeout
    }

    func relays(of user: PublicKey) async -> [RelayURL] {
        let now = monotonicSeconds()
        if let cached = cache.withLock({ $0[user] }), Int64(now) - cached.fetchedAt < lifetime {
            return cached.relays
        }
        let lists = (try? await pool.fetch([Filter(authors: [user], kinds: [10_002, 10_050])], timeout: timeout)) ?? []
        let relays = Self.inbox(from: lists, maximum: maximumPerUser)
        cache.withLock { cache in
            if cache.count >= capacity {
                // Expired entries go first; if none has, any one does (the cache only saves lookups).
                cache = cache.filter { Int64(now) - $0.value.fetchedAt < lifetime }
                if cache.count >= capacity, let any = cache.keys.first { cache[any] = nil }
            }
            cache[user] = (relays, Int64(now))
        }
        return relays
    }

    /// The inbox relays `lists` (a user's 10002 and 10050 events, any order) name, newest list of each kind.
    static func inbox(from lists: [Event], maximum: Int) -> [RelayURL] {
        func newest(_ kind: Kind) -> Event? {
            lists.filter { $0.kind == kind }.max { ($0.createdAt, $0.id.hex) < ($1.createdAt, $1.id.hex) }
        }
        var names: [String] = []
        if let relayList = newest(10_002) {
            for tag in relayList.tags where tag.name == "r" {
                let marker = tag.fields.count > 2 ? tag.fields[2] : nil
                if let url = tag.value, marker == nil || marker == "read" { names.append(url) }
            }
        }
        if names.isEmpty, let inbox = newest(10_050) {
            names = inbox.tags.filter { $0.name == "relay" }.compactMap(\.value)
        }
        var relays: [RelayURL] = []
        for name in names {
            guard let url = try? RelayURL(name), !relays.contains(url) else { continue }
            relays.append(url)
            if relays.count == maximum { break }
        }
        return relays
    }
}
