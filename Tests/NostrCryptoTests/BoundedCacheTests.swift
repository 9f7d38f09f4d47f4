import NostrCrypto
import Testing

@Suite("BoundedCache: at most capacity entries, the oldest insertion forgotten first")
struct BoundedCacheTests {
    @Test("keeps what fits, then forgets in insertion order")
    func eviction() {
        var cache = BoundedCache<Int, String>(capacity: 3)
        for key in 1...3 { cache.insert("\(key)", forKey: key) }
        #expect(cache.count == 3)
        #expect((1...3).allSatisfy { cache[$0] == "\($0)" })
        cache.insert("4", forKey: 4)
        #expect(cache.count == 3)
        #expect(cache[1] == nil && cache[2] == "2" && cache[4] == "4")
        // Inserting a key already cached neither grows the cache nor evicts anything.
        cache.insert("2 again", forKey: 2)
        #expect(cache.count == 3 && cache[3] == "3")
        cache.insert("5", forKey: 5)
        #expect(cache[2] == nil && cache[3] == "3" && cache[5] == "5")
    }

    @Test("stays bounded over many distinct keys", arguments: [1, 7, 1000])
    func bounded(capacity: Int) {
        var cache = BoundedCache<Int, Int>(capacity: capacity)
        for key in 0..<10_000 { cache.insert(key, forKey: key) }
        #expect(cache.count == capacity)
        #expect(cache[9_999] == 9_999)
        #expect(cache[9_999 - capacity] == nil)
    }

    @Test("a verification with a cached key still rejects a wrong signature")
    func cachedKeysStillCheck() {
        let key = SecretKey.generate()
        let message = SHA256.hash(Array("message".utf8)), other = SHA256.hash(Array("other".utf8))
        let signature = key.sign(message)
        #expect(key.publicKey.isValidSignature(signature, for: message))
        #expect(!key.publicKey.isValidSignature(signature, for: other))
        #expect(!SecretKey.generate().publicKey.isValidSignature(signature, for: message))
        #expect(key.publicKey.isValidSignature(signature, for: message))
    }
}
