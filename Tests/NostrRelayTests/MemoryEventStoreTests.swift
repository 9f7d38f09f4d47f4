import NostrCore
import NostrCrypto
import Testing
@testable import NostrRelay

// Swift Testing also has a `Tag`.
typealias Tag = NostrCore.Tag

@Suite("MemoryEventStore: NIP-01 storage, NIP-09 deletion, NIP-40 expiration")
struct MemoryEventStoreTests {
    let alice = SecretKey.generate()
    let bob = SecretKey.generate()

    func event(_ key: SecretKey, kind: Kind = 1, at t: Timestamp, tags: [Tag] = [], content: String = "") -> Event {
        EventTemplate(kind: kind, content: content, tags: tags, createdAt: t).sign(with: key)
    }

    @Test("regular events are stored once, queried newest first with per-filter limits")
    func regular() async throws {
        let store = MemoryEventStore()
        let events = (0..<5).map { event(alice, at: 100 + Timestamp($0)) }
        for e in events { #expect(try await store.save(e, now: 1000) == .stored) }
        #expect(try await store.save(events[0], now: 1000) == .duplicate)
        let all = try await store.query([Filter(kinds: [1])], now: 1000)
        #expect(all.map(\.createdAt) == [104, 103, 102, 101, 100])
        let limited = try await store.query([Filter(kinds: [1], limit: 2), Filter(ids: [events[0].id])], now: 1000)
        #expect(limited.map(\.createdAt) == [104, 103, 100])
        #expect(try await store.count([Filter(authors: [alice.publicKey], limit: 1)], now: 1000) == 5)
    }

    @Test("ties on created_at are ordered by lowest id")
    func ties() async throws {
        let store = MemoryEventStore()
        let a = event(alice, at: 50, content: "a"), b = event(alice, at: 50, content: "b")
        _ = try await store.save(a, now: 100)
        _ = try await store.save(b, now: 100)
        let result = try await store.query([Filter()], now: 100)
        #expect(result.map(\.id) == [a, b].sorted { $0.id < $1.id }.map(\.id))
    }

    @Test("replaceable: newest kept, older refused; equal timestamps keep the lower id")
    func replaceable() async throws {
        let store = MemoryEventStore()
        let v1 = event(alice, kind: 0, at: 10, content: "v1")
        let v2 = event(alice, kind: 0, at: 20, content: "v2")
        #expect(try await store.save(v1, now: 100) == .stored)
        #expect(try await store.save(v2, now: 100) == .stored)
        #expect(try await store.save(v1, now: 100) == .superseded)
        #expect(try await store.query([Filter(kinds: [0])], now: 100).map(\.content) == ["v2"])
        let x = event(alice, kind: 10002, at: 30, content: "x"), y = event(alice, kind: 10002, at: 30, content: "y")
        let (low, high) = x.id < y.id ? (x, y) : (y, x)
        _ = try await store.save(high, now: 100)
        #expect(try await store.save(low, now: 100) == .stored)
        #expect(try await store.save(high, now: 100) == .superseded)
        #expect(try await store.query([Filter(kinds: [10002])], now: 100).map(\.id) == [low.id])
        // Another author's metadata is separate.
        #expect(try await store.save(event(bob, kind: 0, at: 5), now: 100) == .stored)
        #expect(try await store.count([Filter(kinds: [0])], now: 100) == 2)
    }

    @Test("addressable: replaced per d tag")
    func addressable() async throws {
        let store = MemoryEventStore()
        _ = try await store.save(event(alice, kind: 30023, at: 10, tags: [["d", "one"]], content: "1a"), now: 100)
        _ = try await store.save(event(alice, kind: 30023, at: 10, tags: [["d", "two"]], content: "2a"), now: 100)
        _ = try await store.save(event(alice, kind: 30023, at: 20, tags: [["d", "one"]], content: "1b"), now: 100)
        let contents = try await store.query([Filter(kinds: [30023])], now: 100).map(\.content).sorted()
        #expect(contents == ["1b", "2a"])
    }

    @Test("ephemeral events are never stored; expired ones are refused and not served")
    func ephemeralAndExpired() async throws {
        let store = MemoryEventStore()
        #expect(try await store.save(event(alice, kind: 20001, at: 10), now: 100) == .ephemeral)
        #expect(try await store.count([Filter()], now: 100) == 0)
        #expect(try await store.save(event(alice, at: 10, tags: [["expiration", "50"]]), now: 100) == .expired)
        let later = event(alice, at: 10, tags: [["expiration", "150"]])
        #expect(try await store.save(later, now: 100) == .stored)
        #expect(try await store.query([Filter()], now: 149).count == 1)
        #expect(try await store.query([Filter()], now: 150).isEmpty)
    }

    @Test("NIP-09: authors delete their own events (e and a tags); others cannot; deleted ids stay out")
    func deletion() async throws {
        let store = MemoryEventStore()
        let note = event(alice, at: 10, content: "oops")
        let bobsNote = event(bob, at: 10, content: "bob")
        let article = event(alice, kind: 30023, at: 10, tags: [["d", "a1"]])
        for e in [note, bobsNote, article] { _ = try await store.save(e, now: 100) }
        let deletion = event(alice, kind: 5, at: 20, tags: [
            ["e", note.id.hex], ["e", bobsNote.id.hex], ["a", "30023:\(alice.publicKey.hex):a1"], ["k", "1"],
        ])
        #expect(try await store.save(deletion, now: 100) == .stored)
        let remaining = try await store.query([Filter()], now: 100)
        #expect(Set(remaining.map(\.id)) == [bobsNote.id, deletion.id])
        #expect(try await store.save(note, now: 100) == .deleted)
        // An older version of the deleted address stays deleted; a newer one is accepted.
        #expect(try await store.save(event(alice, kind: 30023, at: 15, tags: [["d", "a1"]]), now: 100) == .deleted)
        #expect(try await store.save(event(alice, kind: 30023, at: 25, tags: [["d", "a1"]]), now: 100) == .stored)
        // Deleting a deletion has no effect.
        let undo = event(alice, kind: 5, at: 30, tags: [["e", deletion.id.hex]])
        _ = try await store.save(undo, now: 100)
        #expect(try await store.query([Filter(ids: [deletion.id])], now: 100).count == 1)
    }

    @Test("capacity evicts the oldest events")
    func capacity() async throws {
        let store = MemoryEventStore(capacity: 20)
        for i in 0..<25 { _ = try await store.save(event(alice, at: Timestamp(i), content: "\(i)"), now: 100) }
        let kept = try await store.query([Filter()], now: 100)
        #expect(kept.count <= 20)
        #expect(kept.first?.createdAt == 24)
        #expect(!kept.contains { $0.createdAt == 0 })
    }
}
