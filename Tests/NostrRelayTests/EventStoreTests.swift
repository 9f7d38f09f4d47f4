import Foundation
import NostrCore
import NostrCrypto
import Testing
@testable import NostrRelay

// Swift Testing also has a `Tag`.
typealias Tag = NostrCore.Tag

/// The stores under test: each test runs once per kind, on a fresh store.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case memory, sqlite

    var testDescription: String { rawValue }

    /// Runs `body` on a fresh store; an SQLite store lives in a temporary directory removed afterwards.
    func withStore(_ body: (any EventStore) async throws -> Void) async throws {
        switch self {
        case .memory:
            try await body(MemoryEventStore())
        case .sqlite:
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("switchboard-\(UUID())")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            try await body(try SQLiteEventStore(path: directory.appendingPathComponent("events.sqlite").path))
        }
    }
}

@Suite("Event stores: NIP-01 storage, NIP-09 deletion, NIP-40 expiration")
struct EventStoreTests {
    let alice = SecretKey.generate()
    let bob = SecretKey.generate()

    func event(_ key: SecretKey, kind: Kind = 1, at t: Timestamp, tags: [Tag] = [], content: String = "") -> Event {
        EventTemplate(kind: kind, content: content, tags: tags, createdAt: t).sign(with: key)
    }

    @Test("regular events are stored once, queried newest first with per-filter limits", arguments: StoreKind.allCases)
    func regular(_ kind: StoreKind) async throws {
        try await kind.withStore { (store: any EventStore) async throws in
            let events = (0..<5).map { event(alice, at: 100 + Timestamp($0)) }
            for e in events { #expect(try await store.save(e, now: 1000) == .stored) }
            #expect(try await store.save(events[0], now: 1000) == .duplicate)
            let all = try await store.query([Filter(kinds: [1])], now: 1000)
            #expect(all.map(\.createdAt) == [104, 103, 102, 101, 100])
            let limited = try await store.query([Filter(kinds: [1], limit: 2), Filter(ids: [events[0].id])], now: 1000)
            #expect(limited.map(\.createdAt) == [104, 103, 100])
            #expect(try await store.count([Filter(authors: [alice.publicKey], limit: 1)], now: 1000) == 5)
        }
    }

    @Test("ties on created_at are ordered by lowest id", arguments: StoreKind.allCases)
    func ties(_ kind: StoreKind) async throws {
        try await kind.withStore { (store: any EventStore) async throws in
            let a = event(alice, at: 50, content: "a"), b = event(alice, at: 50, content: "b")
            _ = try await store.save(a, now: 100)
            _ = try await store.save(b, now: 100)
            let result = try await store.query([Filter()], now: 100)
            #expect(result.map(\.id) == [a, b].sorted { $0.id < $1.id }.map(\.id))
        }
    }

    @Test("replaceable: newest kept, older refused; equal timestamps keep the lower id", arguments: StoreKind.allCases)
    func replaceable(_ kind: StoreKind) async throws {
        try await kind.withStore { (store: any EventStore) async throws in
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
    }

    @Test("addressable: replaced per d tag", arguments: StoreKind.allCases)
    func addressable(_ kind: StoreKind) async throws {
        try await kind.withStore { (store: any EventStore) async throws in
            _ = try await store.save(event(alice, kind: 30023, at: 10, tags: [["d", "one"]], content: "1a"), now: 100)
            _ = try await store.save(event(alice, kind: 30023, at: 10, tags: [["d", "two"]], content: "2a"), now: 100)
            _ = try await store.save(event(alice, kind: 30023, at: 20, tags: [["d", "one"]], content: "1b"), now: 100)
            let contents = try await store.query([Filter(kinds: [30023])], now: 100).map(\.content).sorted()
            #expect(contents == ["1b", "2a"])
        }
    }

    @Test("ephemeral events are never stored; expired ones are refused and not served", arguments: StoreKind.allCases)
    func ephemeralAndExpired(_ kind: StoreKind) async throws {
        try await kind.withStore { (store: any EventStore) async throws in
            #expect(try await store.save(event(alice, kind: 20001, at: 10), now: 100) == .ephemeral)
            #expect(try await store.count([Filter()], now: 100) == 0)
            #expect(try await store.save(event(alice, at: 10, tags: [["expiration", "50"]]), now: 100) == .expired)
            let later = event(alice, at: 10, tags: [["expiration", "150"]])
            #expect(try await store.save(later, now: 100) == .stored)
            #expect(try await store.query([Filter()], now: 149).count == 1)
            #expect(try await store.query([Filter()], now: 150).isEmpty)
        }
    }

    @Test("NIP-09: authors delete their own events (e and a tags); others cannot; deleted ids stay out", arguments: StoreKind.allCases)
    func deletion(_ kind: StoreKind) async throws {
        try await kind.withStore { (store: any EventStore) async throws in
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
            // A deletion request for an event not seen yet: only its author's request keeps it out.
            let future = event(alice, at: 40, content: "future"), bobs = event(bob, at: 40, content: "bob's")
            _ = try await store.save(event(bob, kind: 5, at: 41, tags: [["e", future.id.hex], ["e", bobs.id.hex]]), now: 100)
            _ = try await store.save(event(alice, kind: 5, at: 42, tags: [["e", bobs.id.hex]]), now: 100)
            #expect(try await store.save(future, now: 100) == .stored)
            #expect(try await store.save(bobs, now: 100) == .deleted)
        }
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

    @Test("the byte bound evicts the oldest regular events; replaceable and addressable ones only when no regular one is left")
    func byteCapacity() async throws {
        let big = String(repeating: "x", count: 4_000)
        let store = MemoryEventStore(byteCapacity: 100_000)
        let profile = event(alice, kind: 0, at: 0, content: "{}")
        let article = event(alice, kind: 30023, at: 1, tags: [["d", "a"]], content: big)
        _ = try await store.save(profile, now: 100)
        _ = try await store.save(article, now: 100)
        for i in 2..<60 { _ = try await store.save(event(bob, at: Timestamp(i), content: big), now: 100) }
        let kept = try await store.query([Filter()], now: 100)
        #expect(kept.count < 25, "about 4 KB each within 100 KB")
        #expect(kept.first?.createdAt == 59)
        #expect(kept.contains(profile) && kept.contains(article))
        // Only replaceable ones left past the bound: they go too, oldest first.
        let small = MemoryEventStore(byteCapacity: 20_000)
        for i in 0..<10 {
            _ = try await small.save(event(alice, kind: 30023, at: Timestamp(i), tags: [["d", "\(i)"]], content: big), now: 100)
        }
        let left = try await small.query([Filter()], now: 100)
        #expect(!left.isEmpty && left.count < 5)
        #expect(left.first?.createdAt == 9)
        #expect(!left.contains { $0.createdAt == 0 })
    }

    @Test("deletion records are bounded, the oldest forgotten first")
    func deletionCapacity() async throws {
        let store = MemoryEventStore(deletionCapacity: 100)
        let targets = (0..<150).map { event(alice, at: Timestamp(1_000 + $0), content: "\($0)") }
        for (i, target) in targets.enumerated() {
            _ = try await store.save(event(alice, kind: 5, at: Timestamp(i), tags: [["e", target.id.hex]]), now: 2_000)
        }
        #expect(try await store.save(targets[149], now: 2_000) == .deleted, "the newest record is kept")
        #expect(try await store.save(targets[0], now: 2_000) == .stored, "the oldest record was forgotten")
    }

    @Test("queries over thousands of events, out of order with many ties, answer as a scan of every event does")
    func indexedQueriesAgreeWithScan() async throws {
        var rng = SystemRandomNumberGenerator()
        let keys = (0..<4).map { _ in SecretKey.generate() }
        let store = MemoryEventStore()
        var all: [Event] = []
        for i in 0..<3_000 {
            var tags: [Tag] = []
            for name in ["p", "t"] where Bool.random(using: &rng) { tags.append([name, ["a", "b", "c"].randomElement(using: &rng) ?? "a"]) }
            let key = keys[Int.random(in: 0..<keys.count, using: &rng)]
            let kind = Kind([1, 7, 1111][Int.random(in: 0..<3, using: &rng)])
            let e = EventTemplate(kind: kind, content: "\(i)", tags: tags, createdAt: Timestamp.random(in: 0..<300, using: &rng)).sign(with: key)
            #expect(try await store.save(e, now: 1_000) == .stored)
            all.append(e)
        }
        for _ in 0..<300 {
            // Each scan below is a few milliseconds of work without a suspension; yielding between them keeps this
            // test from holding one of the few threads the other tests' tasks run on.
            await Task.yield()
            var filter = Filter()
            if Int.random(in: 0..<3, using: &rng) == 0 { filter.authors = [keys[Int.random(in: 0..<keys.count, using: &rng)].publicKey] }
            if Bool.random(using: &rng) { filter.kinds = Set([1, 7, 1111].filter { _ in Bool.random(using: &rng) }.map { Kind($0) }) }
            if Int.random(in: 0..<8, using: &rng) == 0 { filter.ids = Set(all.shuffled(using: &rng).prefix(20).map(\.id)) }
            if Bool.random(using: &rng) { filter.tags["p"] = Set(["a", "b", "c"].filter { _ in Bool.random(using: &rng) }) }
            if Bool.random(using: &rng) { filter.since = Timestamp.random(in: 0..<300, using: &rng) }
            if Bool.random(using: &rng) { filter.until = Timestamp.random(in: 0..<300, using: &rng) }
            if Int.random(in: 0..<4, using: &rng) != 0 { filter.limit = Int.random(in: 0..<400, using: &rng) }
            let scanned = all.filter(filter.matches).sorted(by: Event.queryOrder).prefix(filter.limit ?? Int.max).map(\.id)
            #expect(try await store.query([filter], now: 1_000).map(\.id) == scanned, "\(filter)")
        }
    }
}

@Suite("EventOrder")
struct EventOrderTests {
    @Test("insertions and removals out of order keep it sorted across chunk splits; descending reads honour until and since")
    func sortedAcrossChunks() throws {
        let key = SecretKey.generate()
        var order = EventOrder()
        var events = (0..<3_000).map { EventTemplate(kind: 1, content: "\($0)", createdAt: Timestamp($0 % 700)).sign(with: key) }
        events.shuffle()
        for e in events { order.insert(EventOrder.Key(e)) }
        for e in events.prefix(1_000) { order.remove(EventOrder.Key(e)) }
        let left = Array(events.dropFirst(1_000)).sorted(by: Event.queryOrder)
        #expect(order.chunks.count > 2)
        #expect(Array(order.descending(from: nil, to: nil)).map(\.id) == left.map(\.id))
        #expect(Array(order.ascending()).map(\.id) == left.reversed().map(\.id))
        for (until, since) in [(Timestamp(350), Timestamp(100)), (0, 0), (699, 699), (10_000, 690), (5, 6)] {
            let expected = left.filter { $0.createdAt <= until && $0.createdAt >= since }.map(\.id)
            #expect(Array(order.descending(from: until, to: since)).map(\.id) == expected, "\(until) \(since)")
        }
    }
}

@Suite("SQLiteEventStore")
struct SQLiteEventStoreTests {
    /// A temporary directory, removed when `body` returns or throws.
    func withDirectory(_ body: (URL) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("switchboard-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try await body(directory)
    }

    @Test("answers random filters exactly as the in-memory store does")
    func agreesWithMemoryStore() async throws {
        try await withDirectory { directory in
            var rng = SystemRandomNumberGenerator()
            let keys = (0..<3).map { _ in SecretKey.generate() }
            let values = ["a", "b", "c", "d"]
            let memory = MemoryEventStore()
            let sqlite = try SQLiteEventStore(path: directory.appendingPathComponent("e.sqlite").path)
            var saved = [Event]()
            for i in 0..<400 {
                let kind: Kind = [1, 7, 0, 30023, 5][Int.random(in: 0..<5, using: &rng)]
                var tags: [Tag] = []
                for name in ["p", "t", "d"] where Bool.random(using: &rng) {
                    tags.append([name, values.randomElement(using: &rng) ?? "a"])
                }
                if kind == 5, let target = saved.randomElement(using: &rng) { tags.append(["e", target.id.hex]) }
                if Int.random(in: 0..<10, using: &rng) == 0 { tags.append(["expiration", "\(Int.random(in: 900..<1100, using: &rng))"]) }
                let key = keys[Int.random(in: 0..<keys.count, using: &rng)]
                let event = EventTemplate(kind: kind, content: "\(i)", tags: tags, createdAt: Timestamp.random(in: 0..<50, using: &rng))
                    .sign(with: key)
                saved.append(event)
                let (a, b) = (try await memory.save(event, now: 1000), try await sqlite.save(event, now: 1000))
                #expect(a == b, "save outcome of event \(i)")
            }
            for _ in 0..<300 {
                var filter = Filter()
                if Bool.random(using: &rng) { filter.authors = Set(keys.filter { _ in Bool.random(using: &rng) }.map(\.publicKey)) }
                if Bool.random(using: &rng) { filter.kinds = Set([1, 7, 0, 30023, 5].filter { _ in Bool.random(using: &rng) }.map { Kind($0) }) }
                if Int.random(in: 0..<4, using: &rng) == 0 { filter.ids = Set(saved.shuffled(using: &rng).prefix(5).map(\.id)) }
                if Bool.random(using: &rng) { filter.tags["p"] = Set(values.filter { _ in Bool.random(using: &rng) }) }
                if Int.random(in: 0..<3, using: &rng) == 0 { filter.tags["t"] = [values.randomElement(using: &rng) ?? "a"] }
                if Bool.random(using: &rng) { filter.since = Timestamp.random(in: 0..<50, using: &rng) }
                if Bool.random(using: &rng) { filter.until = Timestamp.random(in: 0..<50, using: &rng) }
                if Bool.random(using: &rng) { filter.limit = Int.random(in: 0..<20, using: &rng) }
                let filters = [filter, Filter(kinds: [7], limit: 3)].prefix(Int.random(in: 1...2, using: &rng))
                let now = Timestamp.random(in: 950..<1050, using: &rng)
                let expected = try await memory.query(Array(filters), now: now).map(\.id)
                #expect(try await sqlite.query(Array(filters), now: now).map(\.id) == expected, "\(filters)")
                #expect(try await sqlite.count(Array(filters), now: now) == memory.count(Array(filters), now: now), "\(filters)")
            }
        }
    }

    @Test("events, deletions and replacements survive reopening the file")
    func persistence() async throws {
        try await withDirectory { directory in
            let path = directory.appendingPathComponent("e.sqlite").path
            let alice = SecretKey.generate()
            let note = EventTemplate(kind: 1, content: "kept", tags: [["t", "x"]], createdAt: 10).sign(with: alice)
            let gone = EventTemplate(kind: 1, content: "gone", createdAt: 11).sign(with: alice)
            let profile = EventTemplate(kind: 0, content: "v2", createdAt: 20).sign(with: alice)
            let deletion = EventTemplate(kind: 5, tags: [["e", gone.id.hex]], createdAt: 30).sign(with: alice)
            do {
                let store = try SQLiteEventStore(path: path)
                for e in [note, gone, profile, deletion] { #expect(try await store.save(e, now: 100) == .stored) }
            }
            let reopened = try SQLiteEventStore(path: path)
            #expect(try await reopened.query([Filter(tags: ["t": ["x"]])], now: 100).map(\.content) == ["kept"])
            #expect(try await reopened.save(gone, now: 100) == .deleted)
            #expect(try await reopened.save(EventTemplate(kind: 0, content: "v1", createdAt: 15).sign(with: alice), now: 100) == .superseded)
            let all = try await reopened.query([Filter()], now: 100)
            #expect(Set(all.map(\.id)) == [note.id, profile.id, deletion.id])
            #expect(all.allSatisfy { $0.isValid })
        }
    }

    @Test("an unwritable path is an error, not a crash")
    func unwritable() {
        #expect(throws: (any Error).self) { try SQLiteEventStore(path: "/proc/switchboard/nope.sqlite") }
    }
}
