/// A map that keeps at most `capacity` entries, forgetting the oldest insertion first.
///
/// Lookups and insertions are O(1) and memory stays bounded however many distinct keys arrive, which is what
/// caches of expensive results keyed by network input need (conversation keys, parsed public keys, verified
/// signatures). Not synchronised: hold it in a `Mutex` to share it.
public struct BoundedCache<Key: Hashable, Value> {
    private var values: [Key: Value] = [:]
    /// Keys in insertion order, as a ring once full; `next` is the oldest.
    private var order: [Key] = []
    private var next = 0
    /// The most entries kept.
    public let capacity: Int

    public init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    /// Entries kept now.
    public var count: Int { values.count }

    /// The value cached for `key`.
    public subscript(key: Key) -> Value? { values[key] }

    /// Caches `value` for `key`. A key already cached keeps its place (and its first value's age): the values
    /// cached here are results that do not change for a key.
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
