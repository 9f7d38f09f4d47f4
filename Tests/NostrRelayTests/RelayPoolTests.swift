import Logging
import MetricsTestKit
import NostrCore
import NostrCrypto
import NostrServiceTesting
import Synchronization
import Testing
@testable import NostrRelay

/// Runs an embedded relay on 127.0.0.1 while `body` runs; it is stopped when `body` returns or throws.
func withEmbeddedRelay<R: Sendable>(
    port: Int = 0, store: any EventStore = MemoryEventStore(), authRequired: Bool = false,
    _ body: (RelayURL) async throws -> R
) async throws -> R {
    let runner = RelayRunner(store: store, authRequired: authRequired)
    let url = try await runner.start(port: port)
    do {
        let result = try await body(url)
        await runner.stop()
        return result
    } catch {
        await runner.stop()
        throw error
    }
}

/// An embedded relay that a test starts and stops at will (to restart it on the same port).
final class RelayRunner: Sendable {
    let store: any EventStore
    let authRequired: Bool
    private let task = Mutex<Task<Void, any Error>?>(nil)

    init(store: any EventStore, authRequired: Bool = false) {
        self.store = store
        self.authRequired = authRequired
    }

    func start(port: Int = 0) async throws -> RelayURL {
        let (ready, readyContinuation) = AsyncStream<String>.makeStream()
        var configuration = EmbeddedRelay.Configuration()
        configuration.port = port
        configuration.policy.authRequired = authRequired
        let relay = EmbeddedRelay(configuration: configuration, store: store, logger: Logger(label: "test.relay") { _ in SwiftLogNoOpLogHandler() }) {
            readyContinuation.yield($0)
        }
        task.withLock { $0 = Task { try await relay.run() } }
        let url = try await withTimeout(.seconds(30), "relay start") { await ready.first { _ in true } }
        guard let url else { throw TestFailure("the relay did not start") }
        return try RelayURL(url)
    }

    func stop() async {
        let running = task.withLock { task in
            defer { task = nil }
            return task
        }
        running?.cancel()
        _ = await running?.result
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Collects a subscription's items until `done` says so (or fails after `limit`).
func collect(
    _ subscription: RelaySubscription, limit: Duration = .seconds(15), until done: @escaping @Sendable ([SubscriptionItem]) -> Bool
) async throws -> [SubscriptionItem] {
    try await withTimeout(limit, "subscription items") {
        var items = [SubscriptionItem]()
        for await item in subscription {
            items.append(item)
            if done(items) { return items }
        }
        return items
    }
}

extension [SubscriptionItem] {
    var events: [Event] { compactMap { if case .event(let e, _) = $0 { return e } else { return nil } } }
    var endOfStoredEventsCount: Int { filter { if case .endOfStoredEvents = $0 { return true } else { return false } }.count }
}

@Suite("RelayPool against the embedded relay", .timeLimit(.minutes(1)))
struct RelayPoolTests {
    let author = SecretKey.generate()
    let logger = Logger(label: "test.pool") { _ in SwiftLogNoOpLogHandler() }

    func notes(_ count: Int, from start: Timestamp = Timestamp.now - 100, tag: String) -> [Event] {
        (0..<count).map { EventTemplate(kind: 1, content: "\(tag) \($0)", tags: [["t", tag]], createdAt: start + Timestamp($0)).sign(with: author) }
    }

    @Test("publish reports per relay; a subscription over two relays delivers each event once, then EOSE from each")
    func publishAndSubscribe() async throws {
        let metrics = TestMetrics()
        var configuration = RelayPool.Configuration()
        configuration.metricsFactory = metrics
        try await withEmbeddedRelay { a in
            try await withEmbeddedRelay { b in
                let pool = RelayPool(relays: [a, b], configuration: configuration, logger: logger)
                try await pool.withRunning {
                    let stored = notes(5, tag: "x")
                    for event in stored {
                        let results = await pool.publish(event, timeout: .seconds(5))
                        #expect(results == [a: .accepted(message: ""), b: .accepted(message: "")])
                    }
                    let again = await pool.publish(stored[0], to: [a], timeout: .seconds(5))
                    #expect(again[a]?.isAccepted == true)
                    if case .accepted(let message) = again[a] { #expect(message.hasPrefix("duplicate:")) }

                    try await pool.withSubscription([Filter(tags: ["t": ["x"]])]) { subscription in
                        let initial = try await collect(subscription) { $0.endOfStoredEventsCount == 2 }
                        #expect(Set(initial.events.map(\.id)) == Set(stored.map(\.id)))
                        #expect(initial.events.count == stored.count, "each event once although both relays sent it")
                        let live = notes(3, from: .now, tag: "x")
                        for event in live { _ = await pool.publish(event, timeout: .seconds(5)) }
                        let rest = try await collect(subscription) { $0.events.count == live.count }
                        #expect(rest.events.map(\.id) == live.map(\.id))
                    }
                    #expect(try await pool.fetch([Filter(tags: ["t": ["x"]])], timeout: .seconds(5)).count == 8)
                    let status = pool.status()
                    #expect(status.map(\.url) == [a, b].sorted())
                    #expect(status.allSatisfy { $0.isConnected && $0.messagesReceived > 0 && $0.reconnects == 0 })
                }
                // Connected while the pool ran, disconnected once it stopped.
                #expect(try metrics.expectGauge("nostr_relay_connected", [("relay", a.string)]).values == [1, 0])
                #expect(try metrics.expectCounter("nostr_relay_messages_received_total", [("relay", b.string)]).totalValue > 8)
                #expect(try metrics.expectTimer("nostr_relay_publish_duration", [("relay", a.string)]).values.count == 9, "5 + 1 duplicate + 3 live publishes")
            }
        }
    }

    @Test("a relay restarted on its port: the subscription resumes and every event arrives exactly once")
    func reconnectResumes() async throws {
        let storeA = MemoryEventStore()
        var configuration = RelayPool.Configuration()
        configuration.reconnectDelay = .milliseconds(100)
        configuration.maximumReconnectDelay = .milliseconds(400)
        let metrics = TestMetrics()
        configuration.metricsFactory = metrics
        let relayA = RelayRunner(store: storeA)
        try await withEmbeddedRelay { b in
            let a = try await relayA.start()
            let port = Int(a.string.split(separator: ":").last ?? "") ?? 0
            let pool = RelayPool(relays: [a, b], configuration: configuration, logger: logger)
            do {
                try await pool.withRunning {
                    try await pool.withSubscription([Filter(authors: [author.publicKey])]) { subscription in
                        let before = notes(2, from: .now - 10, tag: "before")
                        for event in before { #expect(await pool.publish(event, timeout: .seconds(5)).values.allSatisfy { $0.isAccepted }) }
                        var items = try await collect(subscription) { $0.events.count == 2 && $0.endOfStoredEventsCount == 2 }
                        await relayA.stop()
                        // A is down: the pool keeps retrying it; B serves.
                        let whileDown = notes(3, from: .now, tag: "down")
                        for event in whileDown {
                            let results = await pool.publish(event, to: [b], timeout: .seconds(5))
                            #expect(results[b]?.isAccepted == true, "\(results)")
                        }
                        let unreachable = await pool.publish(whileDown[0], to: [a], timeout: .milliseconds(300))
                        guard case .unreachable = unreachable[a] else {
                            Issue.record("expected unreachable, got \(String(describing: unreachable[a]))")
                            return
                        }
                        items += try await collect(subscription) { $0.events.count == 3 }
                        // A comes back on the same port with events nobody has seen yet (published during the gap).
                        let gap = notes(4, from: .now, tag: "gap")
                        for event in gap { _ = try await storeA.save(event, now: .now) }
                        _ = try await relayA.start(port: port)
                        items += try await collect(subscription) { $0.events.count == 4 }
                        let live = notes(2, from: .now, tag: "live")
                        for event in live {
                            let results = await pool.publish(event, timeout: .seconds(5))
                            #expect(results.values.allSatisfy { $0.isAccepted }, "\(results)")
                        }
                        items += try await collect(subscription) { $0.events.count == 2 }
                        // Nothing more (no copies) arrives.
                        let extra = try? await collect(subscription, limit: .milliseconds(500)) { _ in false }
                        #expect(extra?.events ?? [] == [])
                        let expected = before + whileDown + gap + live
                        #expect(items.events.count == expected.count)
                        #expect(Set(items.events.map(\.id)) == Set(expected.map(\.id)))
                        let statusA = pool.status().first { $0.url == a }
                        #expect(statusA?.isConnected == true)
                        #expect(statusA?.reconnects == 1)
                        // Each EOSE says which connection sent it: A's first and, after the restart, its second.
                        #expect(items.endOfStoredEventsCount == 3)
                        #expect(subscription.connectionOfEndOfStoredEvents(from: a) == 0)
                        #expect(subscription.connectionOfEndOfStoredEvents(from: a) == 1)
                        #expect(subscription.connectionOfEndOfStoredEvents(from: b) == 0)
                        #expect(subscription.connectionOfEndOfStoredEvents(from: b) == nil)
                    }
                }
            } catch {
                await relayA.stop()
                throw error
            }
            await relayA.stop()
            #expect(try metrics.expectCounter("nostr_relay_reconnects_total", [("relay", a.string)]).totalValue == 1)
        }
    }

    @Test("a slow subscriber holds the relay back instead of buffering without bound")
    func backpressure() async throws {
        var configuration = RelayPool.Configuration()
        configuration.subscriptionBufferSize = 4
        try await withEmbeddedRelay { a in
            let pool = RelayPool(relays: [a], configuration: configuration, logger: logger)
            try await pool.withRunning {
                let stored = notes(60, from: .now - 1000, tag: "bp")
                for event in stored { _ = await pool.publish(event, timeout: .seconds(5)) }
                let received = pool.status()[0].messagesReceived
                try await pool.withSubscription([Filter(tags: ["t": ["bp"]])]) { subscription in
                    try await Task.sleep(for: .milliseconds(300))
                    // 4 buffered + 1 waiting to be buffered + the one being read.
                    let whileStalled = pool.status()[0].messagesReceived - received
                    #expect(whileStalled <= 6, "read \(whileStalled) messages while the subscriber was stalled")
                    let items = try await collect(subscription) { $0.endOfStoredEventsCount == 1 }
                    #expect(items.events.map(\.id) == stored.sorted(by: Event.queryOrder).map(\.id))
                }
            }
        }
    }

    @Test("relays can be added and removed while the pool runs")
    func addAndRemove() async throws {
        try await withEmbeddedRelay { a in
            try await withEmbeddedRelay { b in
                let pool = RelayPool(relays: [a], logger: logger)
                try await pool.withRunning {
                    let event = notes(1, tag: "dyn")[0]
                    #expect(pool.add(b))
                    #expect(!pool.add(b))
                    let results = await pool.publish(event, timeout: .seconds(5))
                    #expect(results == [a: .accepted(message: ""), b: .accepted(message: "")])
                    pool.remove(a)
                    #expect(pool.relays == [b])
                    let second = notes(1, from: .now, tag: "dyn2")[0]
                    #expect(await pool.publish(second, timeout: .seconds(5)) == [b: .accepted(message: "")])
                    #expect(await pool.publish(second, to: [a], timeout: .seconds(1)) == [a: .unreachable(reason: "not in the pool")])
                }
            }
        }
    }

    @Test("the relay answers a REQ with at most maximumReplyBytes of stored events, newest first, then EOSE; older ones by paging with until")
    func replyByteBudget() async throws {
        var configuration = EmbeddedRelay.Configuration()
        configuration.policy.maximumReplyBytes = 3_000
        try await withTestRelays(1, configuration: configuration) { relays in
            let url = try #require(relays[0].url)
            let pool = RelayPool(relays: [url], logger: logger)
            try await pool.withRunning {
                let events = (0..<10).map { index in
                    EventTemplate(kind: 1, content: String(repeating: "x", count: 1_000), tags: [["t", "budget"]], createdAt: Timestamp.now - 100 + Timestamp(index)).sign(with: author)
                }
                for event in events { #expect(await pool.publish(event, timeout: .seconds(5))[url]?.isAccepted == true) }
                let first = try await pool.fetch([Filter(tags: ["t": ["budget"]])], timeout: .seconds(5))
                // Each message is ~1.4 KB: two fit in 3,000 bytes, and they are the newest.
                #expect(first.map(\.id) == events.suffix(2).reversed().map(\.id))
                let older = try await pool.fetch([Filter(tags: ["t": ["budget"]], until: events[7].createdAt - 1)], timeout: .seconds(5))
                #expect(older.map(\.id) == events[5...6].reversed().map(\.id))
            }
        }
    }

    @Test("a pool that refuses private addresses never connects to a loopback relay, and says why")
    func refusesPrivateAddresses() async throws {
        try await withEmbeddedRelay { url in
            var configuration = RelayPool.Configuration()
            configuration.refusesPrivateAddresses = true
            configuration.reconnectDelay = .milliseconds(20)
            let pool = RelayPool(relays: [url], configuration: configuration, logger: logger)
            try await pool.withRunning {
                try await withTimeout(.seconds(30), "a refused attempt") {
                    while pool.status().first?.lastError == nil { try await Task.sleep(for: .milliseconds(10)) }
                }
                let status = try #require(pool.status().first)
                #expect(status.lastError?.contains("private address") == true, "\(status.lastError ?? "")")
                #expect(!status.isConnected)
                #expect(await pool.publish(notes(1, tag: "refused")[0], timeout: .milliseconds(300)).values.allSatisfy { !$0.isAccepted })
            }
        }
    }

    @Test("NIP-42: the pool authenticates with its signer when a relay requires it")
    func authentication() async throws {
        try await withEmbeddedRelay(authRequired: true) { url in
            let event = notes(1, tag: "auth")[0]
            let anonymous = RelayPool(relays: [url], logger: logger)
            try await anonymous.withRunning {
                let result = await anonymous.publish(event, timeout: .seconds(5))
                #expect(result[url]?.rejectionPrefix == .authRequired)
            }
            let signed = RelayPool(relays: [url], signer: KeySigner(author), logger: logger)
            try await signed.withRunning {
                #expect(await signed.publish(event, timeout: .seconds(5))[url]?.isAccepted == true)
            }
        }
    }
}
