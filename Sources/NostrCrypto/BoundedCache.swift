/// A map that keeps at most `capacity` entries, forgetting the oldest insertion first.
///
/// Lookups and insertions are O(1) and memory stays bounded however many distinct keys arrive, which is what
/// caches of expensive results keyed by network input need (conversation keys, parsed public keys, verified
/// signatures). Not synchronised: hold it in a `Mutex` to share it.
public struct BoundedCache<Key: Hashable, Value> {
    // Inlinable, so that callers in other modules get code specialised for their key and value types (the
    // generic version hashes and copies through witness tables: ~1.5 % of a relay's CPU under load).
    @usableFromInline var values: [Key: Value] = [:]
    /// Keys in insertion order, as a ring once full; `next` is the oldest.
    @usableFromInline var order: [Key] = []
    @usableFromInline var next = 0
    /// The most entries kept.
    public let capacity: Int

    @inlinable
    public init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    /// Entries kept now.
    @inlinable
    public var count: Int { values.count }

    /// The value cached for `key`.
    @inlinable
    public subscript(key: Key) -> Value? { values[key] }

    /// Caches `value` for `key`. A key already cached keeps its place (and its first value's age): the values
    /// cached here are results that do not change for a key.
    @inlinable
    public mutating func insert(_ value: Value, forKey key: Key) {
        guard values.updateValue(value, forKey: key) == nil else { return }
        if order.count < capacity {
            order.append(key)
        } else {
            values[order[next]] = nil
            order[next] = key
            next = (next + 1) % capacity
        }
    }
}

extension BoundedCache: Sendable where Key: Sendable, Value: Sendable {}
