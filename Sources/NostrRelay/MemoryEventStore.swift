public import NostrCore
import NostrCrypto
import Synchronization

/// An ``EventStore`` in memory: the embedded relay's default, for development and tests.
///
/// Bounded three ways: at most `capacity` events and about `byteCapacity` bytes (the events' fields and the
/// indexes over them); past either, the oldest regular events are evicted first (a tenth of the store at a
/// time), replaceable and addressable ones only when no regular event is left to evict, since they are the
/// profiles, relay lists and announcements that others look up. NIP-09 deletion records are kept apart, at most
/// `deletionCapacity`, the oldest forgotten first (an event deleted that long ago could be stored again).
///
/// Queries use indexes by kind, author and single-letter tag, and the events in `created_at` order: a filter
/// with a `limit` reads about as many events as it returns, not the whole store.
public final class MemoryEventStore: EventStore {
    /// What one stored event is estimated to take beyond its content and tag fields (the value, its key in the
    /// maps, its place in the order and its index entries).
    static let overheadBytes = 320
    /// What one index entry or tag field is estimated to take.
    static let entryBytes = 48

    struct Stored {
        let event: Event
        let bytes: Int
    }

    struct State {
        var events: [EventID: Stored] = [:]
        var bytes = 0
        var order = EventOrder()
        var byKind: [Kind: Set<EventID>] = [:]
        var byAuthor: [PublicKey: Set<EventID>] = [:]
        /// Single-letter tags: name → value → events.
        var byTag: [String: [String: Set<EventID>]] = [:]
        /// Current version per replaceable/addressable address.
        var addresses: [String: EventID] = [:]
        /// NIP-09: ids with the pubkeys that asked to delete them (only the author's request counts), and when
        /// the latest asked.
        var deletedIDs: [EventID: (by: Set<PublicKey>, at: Timestamp)] = [:]
        /// NIP-09 `a` deletions: address → deletion `created_at` (versions up to it are deleted).
        var deletedAddresses: [String: Timestamp] = [:]
    }

    private let state = Mutex(State())
    /// The most events kept.
    public let capacity: Int
    /// About the most bytes the events and their indexes take.
    public let byteCapacity: Int
    /// The most NIP-09 deletion records (an event id or an address each) kept.
    public let deletionCapacity: Int

    public init(capacity: Int = 1_000_000, byteCapacity: Int = 256 << 20, deletionCapacity: Int = 100_000) {
        self.capacity = max(1, capacity)
        self.byteCapacity = max(1, byteCapacity)
        self.deletionCapacity = max(1, deletionCapacity)
    }

    public func save(_ event: Event, now: Timestamp) async throws -> StoreOutcome {
        if event.isExpired(at: now) { return .expired }
        if event.kind.isEphemeral { return .ephemeral }
        return state.withLock { state in
            if state.events[event.id] != nil { return .duplicate }
            if state.deletedIDs[event.id]?.by.contains(event.pubkey) == true { return .deleted }
            if let address = event.replacementAddress {
                if let deletedUpTo = state.deletedAddresses[address], event.createdAt <= deletedUpTo { return .deleted }
                if let currentID = state.addresses[address], let current = state.events[currentID]?.event {
                    guard event.replaces(current) else { return .superseded }
                    Self.remove(current, from: &state)
                }
                state.addresses[address] = event.id
            }
            if event.kind == .deletion { applyDeletion(event, to: &state) }
            Self.insert(event, into: &state)
            if state.events.count > capacity || state.bytes > byteCapacity { evict(&state) }
            return .stored
        }
    }

    // MARK: Storage and indexes

    static func size(of event: Event) -> Int {
        var bytes = overheadBytes + event.content.utf8.count
        for tag in event.tags {
            bytes += entryBytes
            for field in tag.fields { bytes += entryBytes + field.utf8.count }
        }
        return bytes
    }

    /// The single-letter tags `event` is found by (NIP-01 tag filters are single letters).
    static func indexedTags(of event: Event) -> [(name: String, value: String)] {
        event.tags.compactMap { tag in
            guard tag.fields.count >= 2, tag.fields[0].utf8.count == 1 else { return nil }
            return (tag.fields[0], tag.fields[1])
        }
    }

    static func insert(_ event: Event, into state: inout State) {
        let bytes = size(of: event)
        state.events[event.id] = Stored(event: event, bytes: bytes)
        state.bytes += bytes
        state.order.insert(EventOrder.Key(event))
        state.byKind[event.kind, default: []].insert(event.id)
        state.byAuthor[event.pubkey, default: []].insert(event.id)
        for (name, value) in indexedTags(of: event) {
            state.byTag[name, default: [:]][value, default: []].insert(event.id)
        }
    }

    static func remove(_ event: Event, from state: inout State) {
        guard let stored = state.events.removeValue(forKey: event.id) else { return }
        state.bytes -= stored.bytes
        state.order.remove(EventOrder.Key(event))
        removeEntry(event.id, at: event.kind, in: &state.byKind)
        removeEntry(event.id, at: event.pubkey, in: &state.byAuthor)
        for (name, value) in indexedTags(of: event) {
            removeEntry(event.id, at: value, in: &state.byTag[name, default: [:]])
            if state.byTag[name]?.isEmpty == true { state.byTag[name] = nil }
        }
        if let address = event.replacementAddress, state.addresses[address] == event.id {
            state.addresses[address] = nil
        }
    }

    private static func removeEntry<Key: Hashable>(_ id: EventID, at key: Key, in index: inout [Key: Set<EventID>]) {
        index[key]?.remove(id)
        if index[key]?.isEmpty == true { index[key] = nil }
    }

    func applyDeletion(_ deletion: Event, to state: inout State) {
        for tag in deletion.tags where tag.fields.count >= 2 {
            switch tag.fields[0] {
            case "e":
                guard let b = try? EventID(hex: tag.fields[1]) else { continue }
                if let target = state.events[b]?.event {
                    // Only the author may delete; deleting a deletion has no effect (NIP-09).
                    guard target.pubkey == deletion.pubkey, target.kind != .deletion else { continue }
                    Self.remove(target, from: &state)
                }
                var record = state.deletedIDs[b] ?? (by: [], at: deletion.createdAt)
                record.by.insert(deletion.pubkey)
                record.at = max(record.at, deletion.createdAt)
                state.deletedIDs[b] = record
            case "a":
                let address = tag.fields[1]
                let parts = address.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
                guard parts.count >= 2, parts[1] == deletion.pubkey.hex else { continue }
                let key = parts.count == 2 ? address + ":" : address
                state.deletedAddresses[key] = max(state.deletedAddresses[key] ?? 0, deletion.createdAt)
                if let currentID = state.addresses[key], let current = state.events[currentID]?.event,
                    current.createdAt <= deletion.createdAt
                {
                    Self.remove(current, from: &state)
                }
            default:
                continue
            }
        }
        if state.deletedIDs.count + state.deletedAddresses.count > deletionCapacity { forgetOldestDeletions(&state) }
    }

    /// Drops the oldest tenth of the deletion records (by the time of the deletion that made them).
    private func forgetOldestDeletions(_ state: inout State) {
        enum Record { case id(EventID), address(String) }
        let records = state.deletedIDs.map { (at: $0.value.at, record: Record.id($0.key)) }
            + state.deletedAddresses.map { (at: $0.value, record: Record.address($0.key)) }
        let excess = records.count - (deletionCapacity - deletionCapacity / 10)
        guard excess > 0 else { return }
        for (_, record) in records.sorted(by: { $0.at < $1.at }).prefix(excess) {
            switch record {
            case .id(let id): state.deletedIDs[id] = nil
            case .address(let address): state.deletedAddresses[address] = nil
            }
        }
    }

    /// Evicts the oldest events until the store is a tenth below both bounds: regular events first, then, if
    /// that is not enough, replaceable and addressable ones.
    private func evict(_ state: inout State) {
        let targetCount = capacity - capacity / 10
        let targetBytes = byteCapacity - byteCapacity / 10
        func enough(_ state: State) -> Bool { state.events.count <= targetCount && state.bytes <= targetBytes }
        for replaceable in [false, true] {
            var victims: [Event] = []
            var count = state.events.count, bytes = state.bytes
            for key in state.order.ascending() {
                if count <= targetCount && bytes <= targetBytes { break }
                guard let stored = state.events[key.id], (stored.event.replacementAddress != nil) == replaceable else { continue }
                victims.append(stored.event)
                count -= 1
                bytes -= stored.bytes
            }
            for victim in victims { Self.remove(victim, from: &state) }
            if enough(state) { return }
        }
    }

    // MARK: Queries

    public func query(_ filters: [Filter], now: Timestamp) async throws -> [Event] {
        state.withLock { state in
            var seen = Set<EventID>()
            var result = [Event]()
            for filter in filters {
                for event in Self.matches(of: filter, in: state, now: now) where seen.insert(event.id).inserted {
                    result.append(event)
                }
            }
            result.sort(by: Event.queryOrder)
            return result
        }
    }

    /// The events `filter` matches, newest first, at most its `limit`.
    static func matches(of filter: Filter, in state: State, now: Timestamp) -> [Event] {
        let limit = filter.limit ?? Int.max
        guard limit > 0 else { return [] }
        // The smallest index the filter selects by, unless walking the order newest first would read fewer
        // events: about `limit` divided by the share of the store the index holds.
        let keys: AnySequence<EventOrder.Key>
        if let index = smallestIndex(for: filter, in: state),
            limit == Int.max || index.size <= 2 * walkLength(limit: limit, matching: index.size, of: state.events.count)
        {
            var candidates = index.read().compactMap { id in state.events[id].map { EventOrder.Key($0.event) } }
            candidates.sort(by: >)
            keys = AnySequence(candidates)
        } else {
            keys = AnySequence(state.order.descending(from: filter.until, to: filter.since))
        }
        var matches: [Event] = []
        for key in keys {
            if let since = filter.since, key.createdAt < since { break }
            guard let event = state.events[key.id]?.event, filter.matches(event), !event.isExpired(at: now) else { continue }
            matches.append(event)
            if matches.count == limit { break }
        }
        return matches
    }

    /// About how many events a walk reads to find `limit` of `matching` spread among `total`.
    static func walkLength(limit: Int, matching: Int, of total: Int) -> Int {
        guard matching > 0 else { return total }
        let (length, overflow) = limit.multipliedReportingOverflow(by: total / matching)
        return overflow ? total : min(total, length)
    }

    /// The smallest index that holds every event `filter` can match (its size, a tag's values counted with
    /// overlaps, and how to read its ids); nil when no index applies.
    static func smallestIndex(for filter: Filter, in state: State) -> (size: Int, read: () -> [EventID])? {
        var best: (size: Int, read: () -> [EventID])?
        func consider(_ size: Int, _ read: @escaping () -> [EventID]) {
            if size < best?.size ?? Int.max { best = (size, read) }
        }
        if let ids = filter.ids { consider(ids.count) { Array(ids) } }
        if let kinds = filter.kinds {
            let sets = kinds.compactMap { state.byKind[$0] }
            consider(sets.reduce(0) { $0 + $1.count }) { sets.flatMap { $0 } }
        }
        if let authors = filter.authors {
            let sets = authors.compactMap { state.byAuthor[$0] }
            consider(sets.reduce(0) { $0 + $1.count }) { sets.flatMap { $0 } }
        }
        for (name, values) in filter.tags where name.utf8.count == 1 {
            let index = state.byTag[name] ?? [:]
            let sets = values.compactMap { index[$0] }
            consider(sets.reduce(0) { $0 + $1.count }) { Array(sets.reduce(into: Set<EventID>()) { $0.formUnion($1) }) }
        }
        return best
    }

    public func count(_ filters: [Filter], now: Timestamp) async throws -> Int {
        var unlimited = filters
        for i in unlimited.indices { unlimited[i].limit = nil }
        return try await query(unlimited, now: now).count
    }
}

/// Stored events' ids in `created_at` order (ties: the higher id first, so that reading backwards gives the
/// NIP-01 query order), in sorted chunks so that an insertion out of order or a removal moves one chunk, not the
/// whole store.
struct EventOrder {
    struct Key: Comparable {
        let createdAt: Timestamp
        let id: EventID

        init(_ event: Event) {
            self.createdAt = event.createdAt
            self.id = event.id
        }

        static func < (a: Key, b: Key) -> Bool {
            a.createdAt != b.createdAt ? a.createdAt < b.createdAt : a.id > b.id
        }
    }

    static let chunkSize = 512
    private(set) var chunks: [[Key]] = []

    /// The chunk `key` belongs in: the first whose last key is not below it, else the last.
    private func chunkIndex(for key: Key) -> Int {
        var low = 0, high = chunks.count - 1
        while low < high {
            let middle = (low + high) / 2
            if let last = chunks[middle].last, last < key { low = middle + 1 } else { high = middle }
        }
        return low
    }

    private static func position(of key: Key, in chunk: [Key]) -> Int {
        var low = 0, high = chunk.count
        while low < high {
            let middle = (low + high) / 2
            if chunk[middle] < key { low = middle + 1 } else { high = middle }
        }
        return low
    }

    mutating func insert(_ key: Key) {
        guard !chunks.isEmpty else {
            chunks = [[key]]
            return
        }
        let index = chunkIndex(for: key)
        chunks[index].insert(key, at: Self.position(of: key, in: chunks[index]))
        if chunks[index].count > Self.chunkSize * 2 {
            let upper = Array(chunks[index][Self.chunkSize...])
            chunks[index].removeSubrange(Self.chunkSize...)
            chunks.insert(upper, at: index + 1)
        }
    }

    mutating func remove(_ key: Key) {
        guard !chunks.isEmpty else { return }
        let index = chunkIndex(for: key)
        let position = Self.position(of: key, in: chunks[index])
        guard position < chunks[index].count, chunks[index][position] == key else { return }
        chunks[index].remove(at: position)
        if chunks[index].isEmpty { chunks.remove(at: index) }
    }

    /// Oldest first.
    func ascending() -> some Sequence<Key> {
        chunks.lazy.joined()
    }

    /// Newest first, from `until` (inclusive; nil: the newest) down to `since` (inclusive; nil: the oldest).
    func descending(from until: Timestamp?, to since: Timestamp?) -> some Sequence<Key> {
        var chunk = chunks.count - 1
        var position = chunks.last.map { $0.count - 1 } ?? -1
        if let until, !chunks.isEmpty {
            // Just past the last key at `until`: the first key of `until + 1` or later, minus one.
            var low = 0, high = chunks.count
            while low < high {
                let middle = (low + high) / 2
                if let last = chunks[middle].last, last.createdAt <= until { low = middle + 1 } else { high = middle }
            }
            if low == chunks.count {
                chunk = chunks.count - 1
                position = chunks[chunk].count - 1
            } else {
                chunk = low
                position = (chunks[low].firstIndex { $0.createdAt > until } ?? chunks[low].count) - 1
            }
        }
        let chunks = self.chunks
        return sequence(state: (chunk, position)) { cursor -> Key? in
            while cursor.0 >= 0 {
                if cursor.1 >= 0 {
                    let key = chunks[cursor.0][cursor.1]
                    cursor.1 -= 1
                    if let since, key.createdAt < since { return nil }
                    return key
                }
                cursor.0 -= 1
                if cursor.0 >= 0 { cursor.1 = chunks[cursor.0].count - 1 }
            }
            return nil
        }
    }
}
