import Foundation
import GRDB
import Logging
import Metrics
import MetricsTestKit
import NostrCore
import NostrCrypto
import NostrRelay
import NostrServiceTesting
import ServiceLifecycleTestKit
import Synchronization
import Testing
@testable import NostrService

typealias Tag = NostrCore.Tag

let requestKind: Kind = 5910  // a regular (stored) kind, so relays keep requests for the catch-up
let replyKind: Kind = 6910

/// Upper-cases the request; counts executions per request id. `sleep:N` waits N ms first, `fail` throws a
/// ServiceError, `crash` throws another error, `hang` outlives the timeout, `stubborn` outlives it without
/// stopping when cancelled and then succeeds, `empty` answers with empty content (which NIP-44 cannot carry).
final class Uppercase: RequestHandler {
    let executions = Mutex<[EventID: Int]>([:])
    let timeout: Duration
    let kind: Kind
    let isIdempotent: Bool
    let unstick = DispatchSemaphore(value: 0)
    /// `sleep:` requests running now, and the most at once.
    private let sleeping = Mutex((now: 0, most: 0))
    var kinds: Set<Kind> { [kind] }

    init(timeout: Duration = .seconds(2), kind: Kind = requestKind, idempotent: Bool = false) {
        self.timeout = timeout
        self.kind = kind
        self.isIdempotent = idempotent
    }

    func handle(_ request: ServiceRequest, context: RequestContext) async throws -> [ServiceReply] {
        executions.withLock { $0[request.event.id, default: 0] += 1 }
        if request.content.hasPrefix("sleep:"), let ms = Int(request.content.dropFirst(6)) {
            sleeping.withLock { $0.now += 1; $0.most = max($0.most, $0.now) }
            defer { sleeping.withLock { $0.now -= 1 } }
            try await Task.sleep(for: .milliseconds(ms))
        }
        switch request.content {
        case "fail": throw ServiceError(.unauthorized, "not for you")
        case "crash": throw CocoaError(.fileNoSuchFile)
        case "hang": try await Task.sleep(for: .seconds(60))
        case "stubborn":
            // A wait that cancellation does not end.
            await withCheckedContinuation { continuation in
                let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18 + 0.5
                DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { continuation.resume() }
            }
        case "stuck":
            await stuck()
        case "stuck-waiting":
            // The same, waiting on something outside the service (without its handling slot).
            await context.withoutHandlingSlot { await stuck() }
        case "empty": return [request.reply(kind: replyKind, content: "")]
        default: break
        }
        return [request.reply(kind: replyKind, content: request.content.uppercased())]
    }

    func errorReply(to request: ServiceRequest, error: ServiceError) -> ServiceReply? {
        request.reply(kind: replyKind, content: "error \(error.code): \(error.message)")
    }

    /// A wait that cancellation does not end, until ``unstick`` is signalled (or two minutes pass).
    private func stuck() async {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                _ = self.unstick.wait(timeout: .now() + 120)
                continuation.resume()
            }
        }
    }

    var mostSleeping: Int { sleeping.withLock { $0.most } }
    var total: Int { executions.withLock { $0.values.reduce(0, +) } }
    func count(_ id: EventID) -> Int { executions.withLock { $0[id] ?? 0 } }
}

/// Upper-cases the request after 30 ms; records the most requests it handled at once.
final class Paced: RequestHandler {
    private let counts = Mutex((now: 0, most: 0, total: 0))
    var kinds: Set<Kind> { [requestKind] }

    func handle(_ request: ServiceRequest, context: RequestContext) async throws -> [ServiceReply] {
        counts.withLock { $0.now += 1; $0.most = max($0.most, $0.now); $0.total += 1 }
        defer { counts.withLock { $0.now -= 1 } }
        try await Task.sleep(for: .milliseconds(30))
        return [request.reply(kind: replyKind, content: request.content.uppercased())]
    }

    var mostAtOnce: Int { counts.withLock { $0.most } }
    var total: Int { counts.withLock { $0.total } }
}

/// Holds each request (and its handling slot) for five minutes; records the deletions addressed to `service`
/// that it watches.
final class Holding: RequestHandler {
    let service: PublicKey
    private let seen = Mutex((started: 0, observed: Set<EventID>()))
    var kinds: Set<Kind> { [requestKind] }
    var timeout: Duration { .seconds(300) }

    init(watching service: PublicKey) {
        self.service = service
    }

    var watches: [EventWatch] {
        [EventWatch(filter: Filter(kinds: [5], tags: ["p": [service.hex]])) { event, _ in self.seen.withLock { _ = $0.observed.insert(event.id) } }]
    }

    func handle(_ request: ServiceRequest, context: RequestContext) async throws -> [ServiceReply] {
        seen.withLock { $0.started += 1 }
        try await Task.sleep(for: .seconds(300))
        return []
    }

    var started: Int { seen.withLock { $0.started } }
    func observed(_ id: EventID) -> Bool { seen.withLock { $0.observed.contains(id) } }
}

let quiet = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

/// A runtime for `handler` over `relays` with `store` (by default an SQLite file in `directory`), running while
/// `body` runs.
func withRuntime<R: Sendable>(
    _ relays: [RelayURL], handler: any RequestHandler, key: LocalServiceKey, directory: URL? = nil,
    store: (any ServiceStore)? = nil,
    metrics: TestMetrics = TestMetrics(), configure: (inout ServiceRuntime.Configuration) -> Void = { _ in },
    _ body: (ServiceRuntime) async throws -> R
) async throws -> R {
    var configuration = ServiceRuntime.Configuration(relays: relays)
    configuration.metricsFactory = metrics
    configuration.pool.reconnectDelay = .milliseconds(50)
    configuration.publishTimeout = .seconds(2)
    configure(&configuration)
    guard let store = try store ?? directory.map({ try SQLiteServiceStore(path: $0.appendingPathComponent("service.sqlite").path) }) else {
        throw TestKitError("withRuntime needs a store or a directory")
    }
    let runtime = ServiceRuntime(keys: [key], handlers: [handler], store: store, configuration: configuration, logger: quiet)
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await runtime.run() }
        defer { group.cancelAll() }
        try await withDeadline(.seconds(30), "the runtime to be ready") {
            while !runtime.isReady { try await Task.sleep(for: .milliseconds(20)) }
        }
        return try await body(runtime)
    }
}

/// A runtime for `handler` that a test stops (a grace period of 300 ms), with its SQLite store in `directory`.
func stoppableRuntime(
    _ relays: [RelayURL], handler: any RequestHandler, key: LocalServiceKey, directory: URL,
    configure: (inout ServiceRuntime.Configuration) -> Void = { _ in }
) throws -> (ServiceRuntime, SQLiteServiceStore) {
    var configuration = ServiceRuntime.Configuration(relays: relays)
    configuration.pool.reconnectDelay = .milliseconds(50)
    configuration.shutdownGracePeriod = .milliseconds(300)
    configure(&configuration)
    let store = try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path)
    return (ServiceRuntime(keys: [key], handlers: [handler], store: store, configuration: configuration, logger: quiet), store)
}

/// Waits for `runtime` to be ready, publishes `request` through `pool`, and returns once `handler` has started
/// on it (its first execution).
func startRequest(
    _ request: Event, on relays: [RelayURL], through pool: RelayPool, runtime: ServiceRuntime, handler: Uppercase
) async throws {
    try await withDeadline(.seconds(30), "ready") { while !runtime.isReady { try await Task.sleep(for: .milliseconds(20)) } }
    try await publish(request, on: relays, through: pool)
    try await withDeadline(.seconds(20), "the handler to start") {
        while handler.total == 0 { try await Task.sleep(for: .milliseconds(10)) }
    }
}

/// Runs `runtime` while `body` runs beside it; returns once `body` has asked it to stop (``ServiceRuntime/stopIntake()``
/// or a graceful shutdown) and `run()` has returned.
func run(_ runtime: ServiceRuntime, while body: @escaping @Sendable () async throws -> Void) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await body() }
        try await withDeadline(.seconds(60), "run() to return") { try await runtime.run() }
        try await group.waitForAll()
    }
}

/// Waits until `handler` has run `count` requests.
func awaitExecutions(_ handler: Uppercase, _ count: Int) async throws {
    try await withDeadline(.seconds(30), "\(count) requests handled") { while handler.total < count { try await Task.sleep(for: .milliseconds(20)) } }
}

/// A client-side pool on `relays` that collects replies to `client`.
func withReplies<R: Sendable>(
    _ relays: [RelayURL], for client: TestClient, _ body: (RelayPool, RelaySubscription) async throws -> R
) async throws -> R {
    try await withClientPool(relays) { pool in
        try await pool.withSubscription([Filter(kinds: [replyKind], tags: ["p": [client.publicKey.hex]])]) { subscription in
            try await body(pool, subscription)
        }
    }
}

/// Reads `subscription` until `done` holds for the replies seen (by relay), or fails after `limit`.
func awaitReplies(
    _ subscription: RelaySubscription, limit: Duration = .seconds(30),
    until done: @escaping @Sendable ([(Event, RelayURL)]) -> Bool
) async throws -> [(Event, RelayURL)] {
    let box = Mutex<[(Event, RelayURL)]>([])
    do {
        try await withDeadline(limit, "replies") {
            for await item in subscription {
                if case .event(let event, let relay) = item {
                    box.withLock { $0.append((event, relay)) }
                    if done(box.withLock { $0 }) { return }
                }
            }
        }
    } catch {
        let seen = box.withLock { $0 }
        throw TestKitError("\(error); saw \(seen.count) replies: \(seen.map(\.0.content))")
    }
    return box.withLock { $0 }
}

func publish(_ event: Event, on relays: [RelayURL], through pool: RelayPool) async throws {
    let results = await pool.publish(event, to: relays, timeout: .seconds(5))
    guard results.count == relays.count, results.values.allSatisfy(\.isAccepted) else {
        throw TestKitError("publishing \(event.id.hex) failed: \(results)")
    }
}

func counter(_ metrics: TestMetrics, _ label: String, _ dimensions: [(String, String)]) -> Int64 {
    (try? metrics.expectCounter(label, dimensions))?.totalValue ?? 0
}

/// A meter's current level; nil before anything was recorded.
func level(_ metrics: TestMetrics, _ label: String, _ dimensions: [(String, String)]) -> Double? {
    (try? metrics.expectMeter(label, dimensions))?.lastValue
}

/// `count` test relays and a fresh data directory, both gone when `body` ends.
func withRelaysAndDirectory(_ count: Int, _ body: ([RelayURL], URL) async throws -> Void) async throws {
    let directory = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(at: directory) }
    try await withTestRelays(count) { relays in try await body(relays.compactMap(\.url), directory) }
}

@Suite("ServiceRuntime end to end over embedded relays", .timeLimit(.minutes(2)))
struct ServiceRuntimeTests {
    let key = LocalServiceKey(SecretKey.generate())
    let client = TestClient()

    @Test("the same request on three relays runs once; the reply reaches all three")
    func threeRelaysOneExecution() async throws {
        try await withRelaysAndDirectory(3) { urls, directory in
            let handler = Uppercase()
            let metrics = TestMetrics()
            try await withRuntime(urls, handler: handler, key: key, directory: directory, metrics: metrics) { _ in
                try await withReplies(urls, for: client) { pool, replies in
                    let request = try client.request(kind: requestKind, content: "hello", to: key.publicKey)
                    // Publish the same event to each relay separately, a little apart.
                    for url in urls {
                        try await publish(request, on: [url], through: pool)
                        try await Task.sleep(for: .milliseconds(30))
                    }
                    let seen = try await awaitReplies(replies) { $0.count >= 1 }
                    let reply = seen[0].0
                    #expect(try client.read(reply) == "HELLO")
                    #expect(reply.pubkey == key.publicKey)
                    #expect(reply.tagValues("e") == [request.id.hex])
                    #expect(reply.tagValues("p") == [client.publicKey.hex])
                    // On every relay (the publishes to the three go out side by side): ask each one directly.
                    for url in urls {
                        try await eventually("the reply on \(url)") {
                            try await pool.fetch([Filter(ids: [reply.id])], from: [url], timeout: .seconds(5)).map(\.id) == [reply.id]
                        }
                    }
                }
            }
            #expect(handler.total == 1)
            #expect(counter(metrics, "switchboard_requests_total", [("kind", "5910"), ("outcome", "answered")]) == 1)
        }
    }

    @Test("a relay that never confirms replies holds up their delivery, not the requests behind them")
    func silentRelay() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let silent = TestRelay(store: SilentStore(silencing: replyKind))
        let silentURL = try await silent.start()
        do {
            try await withTestRelays(1) { relays in
                let good = try #require(relays[0].url)
                let handler = Uppercase()
                // Two handler slots; each reply waits 5 s × 3 attempts (and the back-off) for the silent relay.
                try await withRuntime([good, silentURL], handler: handler, key: key, directory: directory, configure: {
                    $0.maximumConcurrentRequests = 2
                    $0.publishTimeout = .seconds(5)
                }) { _ in
                    try await withReplies([good], for: client) { pool, replies in
                        let requests = try (0..<6).map { try client.request(kind: requestKind, content: "r\($0)", to: key.publicKey) }
                        for request in requests { try await publish(request, on: [good], through: pool) }
                        // Were slots held until the silent relay gave up, six requests would take ~54 s.
                        let seen = try await awaitReplies(replies, limit: .seconds(30)) { $0.count >= requests.count }
                        #expect(Set(try seen.map { try client.read($0.0) }) == Set((0..<6).map { "R\($0)" }))
                    }
                }
                #expect(handler.total == 6)
            }
        } catch {
            await silent.stop()
            throw error
        }
        await silent.stop()
    }

    @Test("two runtimes on one key sharing PostgreSQL: 1,000 requests delivered to both, each executed exactly once")
    func replicasSharingPostgres() async throws {
        // A thousand requests and replies per connection: more than a public relay's rate limit allows.
        var relayConfiguration = EmbeddedRelay.Configuration()
        relayConfiguration.policy.messagesPerSecond = 100_000
        relayConfiguration.policy.messageBurst = 100_000
        try await withTestRelays(2, configuration: relayConfiguration) { relays in
            let urls = relays.compactMap(\.url)
            try await withStores(.postgres, count: 2) { stores in
                let handlers = [Uppercase(), Uppercase()]
                let clients = (0..<20).map { _ in TestClient() }
                let requests = try (0..<1000).map { try clients[$0 % 20].request(kind: requestKind, content: "r\($0)", to: key.publicKey) }
                let generous: (inout ServiceRuntime.Configuration) -> Void = {
                    $0.policy.rate = 10_000
                    $0.policy.burst = 10_000
                    $0.policy.maximumConcurrentPerSender = 64
                }
                try await withRuntime(urls, handler: handlers[0], key: key, store: stores[0], configure: generous) { _ in
                    try await withRuntime(urls, handler: handlers[1], key: key, store: stores[1], configure: generous) { _ in
                        try await withClientPool(urls) { pool in
                            let filter = Filter(kinds: [replyKind], tags: ["p": Set(clients.map(\.publicKey.hex))])
                            try await pool.withSubscription([filter]) { replies in
                                // Every request goes to both relays, so both runtimes receive every one. Replies are
                                // read while publishing: an unread subscription holds up its connection (backpressure).
                                let seen = try await withThrowingTaskGroup(of: Void.self) { group in
                                    group.addTask {
                                        for chunk in stride(from: 0, to: requests.count, by: 100) {
                                            try await withThrowingTaskGroup(of: Void.self) { group in
                                                for request in requests[chunk..<min(chunk + 100, requests.count)] {
                                                    group.addTask { try await publish(request, on: urls, through: pool) }
                                                }
                                                try await group.waitForAll()
                                            }
                                        }
                                    }
                                    let seen = try await awaitReplies(replies, limit: .seconds(60)) { seen in
                                        Set(seen.flatMap { $0.0.tagValues("e") }).count == requests.count
                                    }
                                    try await group.waitForAll()
                                    return seen
                                }
                                let answered = Set(seen.flatMap { $0.0.tagValues("e") })
                                #expect(answered == Set(requests.map(\.id.hex)))
                            }
                        }
                    }
                }
                let twice = requests.filter { handlers[0].count($0.id) + handlers[1].count($0.id) != 1 }
                #expect(twice.isEmpty, "\(twice.count) requests were not executed exactly once")
                #expect(handlers[0].total + handlers[1].total == requests.count)
            }
        }
    }

    @Test("requests stored while the service was down are answered once after a restart; old ones are re-sent, not re-run")
    func catchUpAfterRestart() async throws {
        try await withRelaysAndDirectory(2) { urls, directory in
            let handler = Uppercase()
            let first = try client.request(kind: requestKind, content: "before", to: key.publicKey)
            try await withReplies(urls, for: client) { pool, replies in
                try await withRuntime(urls, handler: handler, key: key, directory: directory) { _ in
                    try await publish(first, on: urls, through: pool)
                    _ = try await awaitReplies(replies) { $0.contains { $0.0.tagValues("e") == [first.id.hex] } }
                }
                // Down: three requests land on the relays.
                let missed = try (0..<3).map { try client.request(kind: requestKind, content: "missed \($0)", to: key.publicKey) }
                for request in missed { try await publish(request, on: urls, through: pool) }
                let metrics = TestMetrics()
                try await withRuntime(urls, handler: handler, key: key, directory: directory, metrics: metrics) { _ in
                    let seen = try await awaitReplies(replies) { seen in
                        missed.allSatisfy { request in seen.contains { $0.0.tagValues("e") == [request.id.hex] } }
                    }
                    let texts = try Set(seen.filter { $0.0.tagValues("e") != [first.id.hex] }.map { try client.read($0.0) })
                    #expect(texts == ["MISSED 0", "MISSED 1", "MISSED 2"])
                    // The catch-up (from 60 s before the checkpoint) brings the first request too: the journal has
                    // its answer, so it is a duplicate (re-sent, not run again).
                    try await eventually("the first request to be taken as a duplicate") {
                        counter(metrics, "switchboard_duplicates_suppressed_total", [("kind", "\(requestKind.rawValue)")]) >= 1
                    }
                }
            }
            #expect(handler.count(first.id) == 1)
            #expect(handler.total == 4)
        }
    }

    @Test(
        "a restart in the middle of a catch-up still answers the older stored requests (relays send them newest first), also when the catch-up outlasts its timeout while the relay keeps sending",
        arguments: [Duration.seconds(60), .seconds(5)])
    func restartDuringCatchUp(catchUpTimeout: Duration) async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let handler = Uppercase(timeout: .seconds(30))
            let now = Timestamp.now
            let stored = try (0..<40).map {
                try client.request(kind: requestKind, content: "sleep:400", to: key.publicKey, createdAt: now - 600 + Timestamp($0 * 10))
            }
            try await withReplies(urls, for: client) { pool, replies in
                for request in stored { try await publish(request, on: urls, through: pool) }
                let store = try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path)
                // One at a time, so the catch-up is still going when intake stops (after a checkpoint flush).
                var configuration = ServiceRuntime.Configuration(relays: urls)
                configuration.maximumConcurrentRequests = 1
                // A short timeout: the catch-up (40 requests of 400 ms one after another) outlasts it, but the relay
                // never stops delivering meanwhile, so it is not taken for silent. Intake stops after the timeout
                // has passed and well before the catch-up could end.
                configuration.catchUpTimeout = catchUpTimeout
                let runtime = ServiceRuntime(keys: [key], handlers: [handler], store: store, configuration: configuration, logger: quiet)
                try await run(runtime) {
                    try await awaitExecutions(handler, 3)
                    try await Task.sleep(for: .seconds(6))
                    runtime.stopIntake()
                }
                #expect(handler.total < 40)
                let checkpoint = try await store.checkpoint(for: key.publicKey)
                #expect(checkpoint == nil || checkpoint ?? 0 <= stored[0].createdAt, "not past requests never delivered")
                try await withRuntime(urls, handler: handler, key: key, store: store) { _ in
                    _ = try await awaitReplies(replies, limit: .seconds(90)) { seen in
                        stored.allSatisfy { request in seen.contains { $0.0.tagValues("e") == [request.id.hex] } }
                    }
                }
            }
            #expect(stored.allSatisfy { handler.count($0.id) == 1 })
        }
    }

    @Test("requests a relay stored while its connection was down are all answered once, also after a restart in the middle of their re-sending")
    func restartDuringResume() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try await withTestRelays(1) { relays in
            let relay = relays[0]
            let urls = relays.compactMap(\.url)
            let handler = Uppercase(timeout: .seconds(30))
            let now = Timestamp.now
            // Within the relay client's resume window (60 s before what it last saw), older than the
            // checkpoint's margin (5 s) apart.
            let stored = try (0..<20).map {
                try client.request(kind: requestKind, content: "sleep:500", to: key.publicKey, createdAt: now - 50 + Timestamp($0 * 2))
            }
            let store = try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path)
            var configuration = ServiceRuntime.Configuration(relays: urls)
            configuration.pool.reconnectDelay = .milliseconds(50)
            configuration.maximumConcurrentRequests = 1
            configuration.catchUpMargin = 5
            let runtime = ServiceRuntime(keys: [key], handlers: [handler], store: store, configuration: configuration, logger: quiet)
            try await run(runtime) {
                try await withDeadline(.seconds(30), "ready") { while !runtime.isReady { try await Task.sleep(for: .milliseconds(20)) } }
                try await Task.sleep(for: .milliseconds(300))
                // The connection goes down; the relay takes requests meanwhile (from other connections).
                await relay.stop()
                for request in stored { _ = try await relay.store.save(request, now: .now) }
                try await relay.restart()
                // The relay re-sends them newest first, one taken in per 500 ms; stop after a checkpoint flush.
                try await awaitExecutions(handler, 3)
                try await Task.sleep(for: .milliseconds(1_200))
                runtime.stopIntake()
            }
            #expect(handler.total < 20)
            let checkpoint = try await store.checkpoint(for: key.publicKey)
            #expect(checkpoint == nil || checkpoint ?? 0 <= stored[0].createdAt, "not past requests not yet taken in")
            try await withReplies(urls, for: client) { _, replies in
                try await withRuntime(urls, handler: handler, key: key, store: store) { _ in
                    _ = try await awaitReplies(replies, limit: .seconds(90)) { seen in
                        stored.allSatisfy { request in seen.contains { $0.0.tagValues("e") == [request.id.hex] } }
                    }
                }
            }
            #expect(stored.allSatisfy { handler.count($0.id) == 1 })
        }
    }

    @Test("past its rate a sender gets the handler's error reply, not silence")
    func rateLimited() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let metrics = TestMetrics()
            let handler = Uppercase()
            try await withRuntime(urls, handler: handler, key: key, directory: directory, metrics: metrics, configure: {
                $0.policy.burst = 2
                $0.policy.rate = 0.01
            }) { _ in
                try await withReplies(urls, for: client) { pool, replies in
                    let requests = try (0..<3).map { try client.request(kind: requestKind, content: "r\($0)", to: key.publicKey) }
                    for request in requests { try await publish(request, on: urls, through: pool) }
                    let seen = try await awaitReplies(replies) { $0.count >= 3 }
                    let texts = try seen.map { try client.read($0.0) }
                    #expect(texts.filter { $0.hasPrefix("R") }.count == 2)
                    #expect(texts.filter { $0.hasPrefix("error rate-limited") }.count == 1, "\(texts)")
                }
            }
            #expect(handler.total == 2)
            #expect(counter(metrics, "switchboard_requests_total", [("kind", "5910"), ("outcome", "rate-limited")]) == 1)
        }
    }

    @Test("a burst past a sender's rate and its cap on requests in flight is served in turn, not refused")
    func burstServedInTurn() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let metrics = TestMetrics()
            let handler = Paced()
            try await withRuntime(urls, handler: handler, key: key, directory: directory, metrics: metrics, configure: {
                $0.policy.burst = 4
                $0.policy.rate = 40
                $0.policy.maximumConcurrentPerSender = 2
                // Waiting their turn is the point; a loaded machine must not turn it into refusals.
                $0.policy.maximumQueueWait = 120
            }) { _ in
                try await withReplies(urls, for: client) { pool, replies in
                    let requests = try (0..<20).map { try client.request(kind: requestKind, content: "r\($0)", to: key.publicKey) }
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for request in requests { group.addTask { try await publish(request, on: urls, through: pool) } }
                        try await group.waitForAll()
                    }
                    let seen = try await awaitReplies(replies) { $0.count >= 20 }
                    let texts = try Set(seen.map { try client.read($0.0) })
                    #expect(texts == Set((0..<20).map { "R\($0)" }))
                }
            }
            #expect(handler.total == 20)
            #expect(handler.mostAtOnce == 2)
            // The burst of 4 (2 at once) and 16 more over the rate: at least those 16 waited their turn.
            #expect(counter(metrics, "switchboard_requests_queued_total", [("kind", "5910")]) >= 16)
            #expect(counter(metrics, "switchboard_requests_total", [("kind", "5910"), ("outcome", "answered")]) == 20)
        }
    }

    @Test("a request that waits for its sender's slot longer than the policy allows gets a too-many-requests reply")
    func waitedTooLong() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            // The first request runs 5 s, so that the second arrives while it runs even on a loaded machine (with
            // 1.5 s, a fresh clone's test run once read the second only after the first was done).
            let handler = Uppercase(timeout: .seconds(10))
            try await withRuntime(urls, handler: handler, key: key, directory: directory, configure: {
                $0.policy.maximumConcurrentPerSender = 1
                $0.policy.maximumQueueWait = 0.3
            }) { _ in
                try await withReplies(urls, for: client) { pool, replies in
                    try await publish(try client.request(kind: requestKind, content: "sleep:5000", to: key.publicKey), on: urls, through: pool)
                    try await withDeadline(.seconds(20), "the first request to start") {
                        while handler.total == 0 { try await Task.sleep(for: .milliseconds(10)) }
                    }
                    let waiting = try client.request(kind: requestKind, content: "second", to: key.publicKey)
                    try await publish(waiting, on: urls, through: pool)
                    let seen = try await awaitReplies(replies, limit: .seconds(20)) { $0.count >= 2 }
                    // Either may arrive first on a loaded machine (the second request can reach the service late).
                    let texts = try seen.map { try client.read($0.0) }
                    #expect(texts.filter { $0.hasPrefix("error too-many-requests") }.count == 1, "\(texts)")
                    #expect(texts.filter { $0 == "SLEEP:5000" }.count == 1, "\(texts)")
                    #expect(handler.count(waiting.id) == 0)
                }
            }
        }
    }

    @Test("a request cut off at shutdown keeps the checkpoint before it, so the catch-up after a restart brings it back")
    func cutOffKeepsCheckpoint() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            // Timing out would answer it: on a loaded machine the newer request's reply can take longer than the
            // default 2 s, so the handler's timeout must outlast the test.
            let handler = Uppercase(timeout: .seconds(60))
            let (runtime, store) = try stoppableRuntime(urls, handler: handler, key: key, directory: directory)
            // Stored while the service was down, and cut off by the shutdown; a newer one is answered.
            let cutOff = try client.request(kind: requestKind, content: "hang", to: key.publicKey, createdAt: .now - 100)
            let newer = try client.request(kind: requestKind, content: "newer", to: key.publicKey)
            try await withReplies(urls, for: client) { pool, replies in
                try await run(runtime) {
                    try await startRequest(cutOff, on: urls, through: pool, runtime: runtime, handler: handler)
                    try await publish(newer, on: urls, through: pool)
                    _ = try await awaitReplies(replies) { $0.contains { $0.0.tagValues("e") == [newer.id.hex] } }
                    runtime.stopIntake()
                }
            }
            let checkpoint = try #require(try await store.checkpoint(for: key.publicKey))
            #expect(checkpoint <= cutOff.createdAt, "the checkpoint moved past the request cut off: \(checkpoint) > \(cutOff.createdAt)")
        }
    }

    @Test("at the end of the grace period a request still waiting its turn is released, so a restart runs it")
    func queuedReleasedAtShutdown() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            // The hanging request must still be running at the shutdown: with the default 2 s timeout a loaded
            // machine answered it first, and the waiting one ran.
            let handler = Uppercase(timeout: .seconds(60))
            let metrics = TestMetrics()
            let (runtime, store) = try stoppableRuntime(urls, handler: handler, key: key, directory: directory) {
                $0.metricsFactory = metrics
                $0.policy.maximumConcurrentPerSender = 1
            }
            let running = try client.request(kind: requestKind, content: "hang", to: key.publicKey)
            let waiting = try client.request(kind: requestKind, content: "later", to: key.publicKey)
            try await withClientPool(urls) { pool in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        try await startRequest(running, on: urls, through: pool, runtime: runtime, handler: handler)
                        try await publish(waiting, on: urls, through: pool)
                        try await withDeadline(.seconds(20), "the second request to wait") {
                            while counter(metrics, "switchboard_requests_queued_total", [("kind", "5910")]) == 0 {
                                try await Task.sleep(for: .milliseconds(10))
                            }
                        }
                        runtime.stopIntake()
                    }
                    try await withDeadline(.seconds(60), "run() to return") { try await runtime.run() }
                    try await group.waitForAll()
                }
            }
            #expect(handler.count(waiting.id) == 0)
            // The waiting request is claimed afresh (it never ran); the one cut off while running is not.
            #expect(try await store.claim(JournalEntry(waiting, service: key.publicKey), owner: "next", now: .now, lease: 60) == .claimed)
            let stillOpen = try await store.claim(JournalEntry(running, service: key.publicKey), owner: "next", now: .now, lease: 60)
            #expect({ if case .inProgress = stillOpen { true } else { false } }(), "\(stillOpen)")
        }
    }

    @Test(
        "ephemeral requests cut off at shutdown are answered at once, since relays do not keep them for the restart: the running one as interrupted (or to be sent again, when its handler may run twice), the waiting one to be sent again",
        arguments: [false, true])
    func ephemeralCutOffAnswered(idempotent: Bool) async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let handler = Uppercase(timeout: .seconds(60), kind: 25910, idempotent: idempotent)
            let metrics = TestMetrics()
            let (runtime, store) = try stoppableRuntime(urls, handler: handler, key: key, directory: directory) {
                $0.metricsFactory = metrics
                $0.policy.maximumConcurrentPerSender = 1
            }
            let running = try client.request(kind: 25910, content: "hang", to: key.publicKey)
            let waiting = try client.request(kind: 25910, content: "later", to: key.publicKey)
            try await withReplies(urls, for: client) { pool, replies in
                try await run(runtime) {
                    try await startRequest(running, on: urls, through: pool, runtime: runtime, handler: handler)
                    try await publish(waiting, on: urls, through: pool)
                    try await withDeadline(.seconds(20), "the second request to wait") {
                        while counter(metrics, "switchboard_requests_queued_total", [("kind", "25910")]) == 0 {
                            try await Task.sleep(for: .milliseconds(10))
                        }
                    }
                    runtime.stopIntake()
                }
                let seen = try await awaitReplies(replies) { $0.count >= 2 }
                func answer(to request: Event) throws -> String? {
                    try seen.first { $0.0.tagValues("e") == [request.id.hex] }.map { try client.read($0.0) }
                }
                let sendAgain = "error unavailable: the service is shutting down; send the request again"
                #expect(try answer(to: running) == (idempotent ? sendAgain : "error interrupted: the service stopped while handling this request; send it again"))
                #expect(try answer(to: waiting) == sendAgain)
            }
            #expect(handler.count(waiting.id) == 0)
            // Both are finished in the journal with those answers: a copy arriving later gets them again.
            for request in [running, waiting] {
                let claim = try await store.claim(JournalEntry(request, service: key.publicKey), owner: "next", now: .now, lease: 60)
                #expect({ if case .finished(let replies) = claim { replies.count == 1 } else { false } }(), "\(claim)")
            }
        }
    }

    @Test("ephemeral requests read but not started when intake stops (every slot busy) are answered at once, to be sent again, and never run; the busy handler does not hold up the stop")
    func unstartedAtStopAnswered() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let handler = Uppercase(timeout: .seconds(600), kind: 25910)
            let metrics = TestMetrics()
            let (runtime, store) = try stoppableRuntime(urls, handler: handler, key: key, directory: directory) {
                $0.metricsFactory = metrics
                $0.maximumConcurrentRequests = 1
            }
            let running = try client.request(kind: 25910, content: "hang", to: key.publicKey)
            let unstarted = try (0..<5).map { try client.request(kind: 25910, content: "later \($0)", to: key.publicKey) }
            try await withReplies(urls, for: client) { pool, replies in
                try await run(runtime) {
                    try await startRequest(running, on: urls, through: pool, runtime: runtime, handler: handler)
                    for request in unstarted { try await publish(request, on: urls, through: pool) }
                    // The first goes straight to the intake, which waits with it for the only slot; the others
                    // stay in the subscription's buffer.
                    try await withDeadline(.seconds(20), "the requests to reach the service") {
                        while runtime.bufferedRequests < 4 { try await Task.sleep(for: .milliseconds(10)) }
                    }
                    runtime.stopIntake()
                }
                let seen = try await awaitReplies(replies) { $0.count >= 6 }
                func answer(to request: Event) throws -> String? {
                    try seen.first { $0.0.tagValues("e") == [request.id.hex] }.map { try client.read($0.0) }
                }
                #expect(try answer(to: running) == "error interrupted: the service stopped while handling this request; send it again")
                for request in unstarted {
                    #expect(try answer(to: request) == "error unavailable: the service is shutting down; send the request again")
                }
            }
            #expect(counter(metrics, "switchboard_requests_total", [("kind", "25910"), ("outcome", "unavailable")]) == 5)
            for request in unstarted {
                #expect(handler.count(request.id) == 0)
                // Finished in the journal with that answer: a copy arriving later gets it again.
                let claim = try await store.claim(JournalEntry(request, service: key.publicKey), owner: "next", now: .now, lease: 60)
                #expect({ if case .finished(let replies) = claim { replies.count == 1 } else { false } }(), "\(claim)")
            }
        }
    }

    @Test("a handler that finishes with an answer after the grace period's cancellation is answered as usual, not run again")
    func answeredAfterCancellation() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            // "stubborn" ignores cancellation and answers after its timeout (2 s) and half a second.
            let handler = Uppercase()
            let (runtime, store) = try stoppableRuntime(urls, handler: handler, key: key, directory: directory)
            let stubborn = try client.request(kind: requestKind, content: "stubborn", to: key.publicKey)
            try await withReplies(urls, for: client) { pool, replies in
                try await run(runtime) {
                    try await startRequest(stubborn, on: urls, through: pool, runtime: runtime, handler: handler)
                    runtime.stopIntake()
                }
                let seen = try await awaitReplies(replies) { !$0.isEmpty }
                #expect(try seen.map { try client.read($0.0) } == ["STUBBORN"])
            }
            let claim = try await store.claim(JournalEntry(stubborn, service: key.publicKey), owner: "next", now: .now, lease: 60)
            #expect({ if case .finished(let replies) = claim { replies.count == 1 } else { false } }(), "\(claim)")
        }
    }

    @Test(
        "a handler that does not stop when cancelled is given up on after the overdue limit: its request is answered as timed out, it is counted and no longer counted as running, and its slot — even given up on while it waited without it — serves one request at a time",
        arguments: ["stuck", "stuck-waiting"])
    func abandonedHandler(content: String) async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let handler = Uppercase(timeout: .seconds(3))
            defer { handler.unstick.signal() }
            let metrics = TestMetrics()
            try await withRuntime(urls, handler: handler, key: key, directory: directory, metrics: metrics, configure: {
                $0.maximumConcurrentRequests = 1
                $0.handlerOverdueLimit = .seconds(1)
            }) { _ in
                try await withReplies(urls, for: client) { pool, replies in
                    try await publish(try client.request(kind: requestKind, content: content, to: key.publicKey), on: urls, through: pool)
                    try await withDeadline(.seconds(20), "the handler to start") {
                        while handler.total == 0 { try await Task.sleep(for: .milliseconds(10)) }
                    }
                    #expect(level(metrics, "switchboard_handlers_running", [("kind", "5910")]) == 1)
                    let first = try await awaitReplies(replies) { !$0.isEmpty }
                    #expect(try first.map { try client.read($0.0) } == ["error timeout: no answer within 3.0 seconds; it may still have taken effect: check before sending it again"])
                    #expect(counter(metrics, "switchboard_handlers_abandoned_total", [("kind", "5910")]) == 1)
                    // Still running, but given up on: its request is answered, so it no longer counts.
                    #expect(level(metrics, "switchboard_handlers_running", [("kind", "5910")]) == 0)
                    // Two requests of 1.5 s at once: the freed slot runs them, one after the other. Given back twice
                    // (once by the wait, once when the request was answered), it would run both together.
                    let slow = try (0..<2).map { _ in try client.request(kind: requestKind, content: "sleep:1500", to: key.publicKey) }
                    for request in slow { try await publish(request, on: urls, through: pool) }
                    let seen = try await awaitReplies(replies) { $0.count >= 2 }
                    #expect(try seen.map { try client.read($0.0) } == ["SLEEP:1500", "SLEEP:1500"])
                    #expect(handler.mostSleeping == 1)
                }
            }
        }
    }

    @Test("shutdown is not held up by a handler that does not stop: run() returns once the grace period and the overdue limit have passed")
    func shutdownPastStuckHandler() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let handler = Uppercase(timeout: .seconds(600))
            defer { handler.unstick.signal() }
            let (runtime, store) = try stoppableRuntime(urls, handler: handler, key: key, directory: directory) {
                $0.handlerOverdueLimit = .milliseconds(500)
            }
            let stuck = try client.request(kind: requestKind, content: "stuck", to: key.publicKey)
            // run() must return well before the handler's own 2 minutes are up.
            try await withClientPool(urls) { pool in
                try await run(runtime) {
                    try await startRequest(stuck, on: urls, through: pool, runtime: runtime, handler: handler)
                    runtime.stopIntake()
                }
            }
            // Cut off, not answered: the claim stays open, so the request is answered as interrupted if it comes back.
            let claim = try await store.claim(JournalEntry(stuck, service: key.publicKey), owner: "next", now: .now, lease: 60)
            #expect({ if case .inProgress = claim { true } else { false } }(), "\(claim)")
        }
    }

    @Test("a watched event (a cancellation, say) arrives while the intake is full and its connections are not read")
    func watchedThroughFullIntake() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let handler = Holding(watching: key.publicKey)
            try await withRuntime(urls, handler: handler, key: key, directory: directory, configure: {
                $0.maximumConcurrentRequests = 1
                $0.pool.subscriptionBufferSize = 2
                $0.shutdownGracePeriod = .milliseconds(300)
            }) { _ in
                try await withClientPool(urls) { pool in
                    // The first request holds the only slot; the next ones fill the intake's buffer, and the
                    // rest wait unread on the listener's connection.
                    for i in 0..<40 {
                        try await publish(try client.request(kind: requestKind, content: "r\(i)", to: key.publicKey), on: urls, through: pool)
                    }
                    try await withDeadline(.seconds(20), "the first request to start") {
                        while handler.started == 0 { try await Task.sleep(for: .milliseconds(10)) }
                    }
                    let deletion = EventTemplate(kind: 5, tags: [["p", key.publicKey.hex], ["k", "\(requestKind.rawValue)"]]).sign(with: client.key)
                    try await publish(deletion, on: urls, through: pool)
                    try await withDeadline(.seconds(20), "the deletion to be observed") {
                        while !handler.observed(deletion.id) { try await Task.sleep(for: .milliseconds(10)) }
                    }
                    #expect(handler.started == 1, "the intake was not full")
                }
            }
        }
    }

    @Test("on a relay that shows p-tagged events only to their recipient (NIP-42), a service with two keys authenticates as both and answers requests to either")
    func authenticatesAsEachKey() async throws {
        var relayConfiguration = EmbeddedRelay.Configuration()
        relayConfiguration.policy.authRequired = true
        try await withTestRelays(1, configuration: relayConfiguration) { relays in
            let urls = relays.compactMap(\.url)
            let directory = try temporaryDirectory()
            defer { try? FileManager.default.removeItem(at: directory) }
            let second = LocalServiceKey(SecretKey.generate())
            var configuration = ServiceRuntime.Configuration(relays: urls)
            configuration.pool.reconnectDelay = .milliseconds(50)
            let store = try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path)
            let runtime = ServiceRuntime(keys: [key, second], handlers: [Uppercase()], store: store, configuration: configuration, logger: quiet)
            var clientConfiguration = RelayPool.Configuration()
            clientConfiguration.reconnectDelay = .milliseconds(50)
            // The relay takes events only from authenticated authors: the client authenticates as itself.
            let pool = RelayPool(relays: urls, signer: KeySigner(client.key), configuration: clientConfiguration, logger: quiet)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await runtime.run() }
                defer { group.cancelAll() }
                try await withDeadline(.seconds(30), "the runtime to be ready") {
                    while !runtime.isReady { try await Task.sleep(for: .milliseconds(20)) }
                }
                try await pool.withRunning {
                    try await pool.withSubscription([Filter(kinds: [replyKind], tags: ["p": [client.publicKey.hex]])]) { replies in
                        for target in [key.publicKey, second.publicKey] {
                            try await publish(try client.request(kind: requestKind, content: "to \(target.hex.prefix(8))", to: target), on: urls, through: pool)
                        }
                        let seen = try await awaitReplies(replies) { $0.count >= 2 }
                        #expect(Set(seen.map(\.0.pubkey)) == [key.publicKey, second.publicKey])
                        #expect(Set(try seen.map { try client.read($0.0) }) == Set([key.publicKey, second.publicKey].map { "TO \($0.hex.prefix(8).uppercased())" }))
                    }
                }
                #expect(runtime.isReady)
                #expect(runtime.relayStatus().allSatisfy { $0.closedSubscriptions == 0 })
            }
        }
    }

    @Test("oversize and future requests arriving through a relay are dropped and counted; the handler never sees them")
    func ingressDrops() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let metrics = TestMetrics()
            let handler = Uppercase()
            try await withRuntime(urls, handler: handler, key: key, directory: directory, metrics: metrics, configure: {
                $0.maximumRequestSize = 4096
                $0.maximumAge = 600
                $0.maximumClockSkew = 300
            }) { _ in
                try await withReplies(urls, for: client) { pool, replies in
                    let now = Timestamp.now
                    let bad = [
                        try client.request(kind: requestKind, content: String(repeating: "x", count: 5000), to: key.publicKey),
                        try client.request(kind: requestKind, content: "future", to: key.publicKey, createdAt: now + 600),
                    ]
                    for request in bad { try await publish(request, on: urls, through: pool) }
                    let good = try client.request(kind: requestKind, content: "fine", to: key.publicKey)
                    try await publish(good, on: urls, through: pool)
                    let seen = try await awaitReplies(replies) { $0.count >= 1 }
                    #expect(try seen.map { try client.read($0.0) } == ["FINE"])
                    try await Task.sleep(for: .milliseconds(300))
                }
            }
            #expect(handler.total == 1)
            for reason in ["oversize", "future"] {
                #expect(counter(metrics, "switchboard_requests_dropped_total", [("reason", reason)]) == 1, "\(reason)")
            }
        }
    }

    @Test(
        "NIP-04 requests are answered in NIP-04; handler errors, failures, timeouts (with a warning when the handler may not run twice) and unsendable replies get error replies; a late success stands",
        arguments: [false, true])
    func schemesAndErrors(idempotent: Bool) async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            // Long enough for a failing handler to fail before its timeout on a loaded machine.
            let handler = Uppercase(timeout: .seconds(5), idempotent: idempotent)
            try await withRuntime(urls, handler: handler, key: key, directory: directory) { _ in
                try await withReplies(urls, for: client) { pool, replies in
                    let legacy = try client.request(kind: requestKind, content: "legacy", to: key.publicKey, encryption: .nip04)
                    let failing = try client.request(kind: requestKind, content: "fail", to: key.publicKey)
                    let crashing = try client.request(kind: requestKind, content: "crash", to: key.publicKey)
                    let hanging = try client.request(kind: requestKind, content: "hang", to: key.publicKey)
                    let garbage = EventTemplate(kind: requestKind, content: "not a payload", tags: [["p", key.publicKey.hex]]).sign(with: client.key)
                    let empty = try client.request(kind: requestKind, content: "empty", to: key.publicKey)
                    let stubborn = try client.request(kind: requestKind, content: "stubborn", to: key.publicKey)
                    let all = [legacy, failing, crashing, hanging, garbage, empty, stubborn]
                    for request in all { try await publish(request, on: urls, through: pool) }
                    let seen = try await awaitReplies(replies) { $0.count >= all.count }
                    func reply(to request: Event) throws -> Event {
                        guard let found = seen.first(where: { $0.0.tagValues("e") == [request.id.hex] }) else {
                            throw TestKitError("no reply to \(request.content)")
                        }
                        return found.0
                    }
                    let legacyReply = try reply(to: legacy)
                    #expect(NIP04.isNIP04Payload(legacyReply.content))
                    #expect(try client.read(legacyReply) == "LEGACY")
                    #expect(try client.read(reply(to: failing)) == "error unauthorized: not for you")
                    #expect(try client.read(reply(to: crashing)) == "error internal: internal error")
                    let warning = idempotent ? "" : "; it may still have taken effect: check before sending it again"
                    #expect(try client.read(reply(to: hanging)) == "error timeout: no answer within 5.0 seconds\(warning)")
                    #expect(try client.read(reply(to: garbage)) == "error bad-request: the content could not be decrypted")
                    #expect(try client.read(reply(to: empty)) == "error internal: internal error")
                    // It did what was asked after its deadline: the client is told so, not "timeout".
                    #expect(try client.read(reply(to: stubborn)) == "STUBBORN")
                }
            }
        }
    }

    /// How a test asks the runtime to stop.
    enum Shutdown: CaseIterable, Sendable {
        /// ``ServiceRuntime/stopIntake()``.
        case stopIntake
        /// swift-service-lifecycle's graceful shutdown, as SIGTERM in a `ServiceGroup` triggers it.
        case gracefulShutdown
    }

    @Test(
        "stopping lets a request in flight finish and publish its reply before run() returns, on connections that stay open",
        arguments: Shutdown.allCases)
    func shutdownFinishesInFlight(shutdown: Shutdown) async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let handler = Uppercase(timeout: .seconds(30))
            var configuration = ServiceRuntime.Configuration(relays: urls)
            configuration.pool.reconnectDelay = .milliseconds(50)
            let store = try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path)
            let runtime = ServiceRuntime(keys: [key], handlers: [handler], store: store, configuration: configuration, logger: quiet)
            try await withReplies(urls, for: client) { pool, replies in
                let request = try client.request(kind: requestKind, content: "sleep:1500", to: key.publicKey)
                // Runs the runtime, and calls `stop` once the request's handler has started.
                let run = { @Sendable (stop: @escaping @Sendable () -> Void) async throws in
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask {
                            try await startRequest(request, on: urls, through: pool, runtime: runtime, handler: handler)
                            stop()
                        }
                        // run() returns by itself once the request in flight is answered.
                        try await withDeadline(.seconds(60), "run() to return") { try await runtime.run() }
                        try await group.waitForAll()
                    }
                }
                switch shutdown {
                case .stopIntake:
                    try await run { runtime.stopIntake() }
                case .gracefulShutdown:
                    try await testGracefulShutdown { trigger in try await run { trigger.triggerGracefulShutdown() } }
                }
                let seen = try await awaitReplies(replies) { $0.count >= 1 }
                #expect(try client.read(seen[0].0) == "SLEEP:1500")
                #expect(try await store.claim(JournalEntry(request, service: key.publicKey), owner: "x", now: .now, lease: 60)
                    == .finished(replies: [seen[0].0]))
                // Not dropped and made again while the request finished.
                #expect(runtime.relayStatus().map(\.reconnects) == [0])
            }
        }
    }

    @Test("stopping waits for the journal's queued writes, retries included: when run() returns, the answer and its delivery are on disk")
    func shutdownFlushesJournal() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let handler = Uppercase(timeout: .seconds(30))
            let path = directory.appendingPathComponent("service.sqlite").path
            let metrics = TestMetrics()
            // Retried for 22 s, so that a loaded machine drops the trigger in time.
            let store = try SQLiteServiceStore(
                path: path, commitDelay: .milliseconds(3), busyGroup: 16, fullGroup: 256, metricsFactory: metrics,
                retryDelays: [.milliseconds(200), .seconds(1), .seconds(3), .seconds(6), .seconds(12)])
            var configuration = ServiceRuntime.Configuration(relays: urls)
            configuration.pool.reconnectDelay = .milliseconds(50)
            let runtime = ServiceRuntime(keys: [key], handlers: [handler], store: store, configuration: configuration, logger: quiet)
            // Another connection to the same file: it makes the database refuse answers for a while (as a full
            // disk would), and reads what is on disk.
            let other = try secondConnection(path)
            let request = try client.request(kind: requestKind, content: "sleep:300", to: key.publicKey)
            try await withReplies(urls, for: client) { pool, replies in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        try await refuseAnswers(through: other)
                        try await startRequest(request, on: urls, through: pool, runtime: runtime, handler: handler)
                        runtime.stopIntake()
                        // The answer's first attempt fails; the database takes a later one.
                        try await withDeadline(.seconds(30), "the first failure") {
                            while counter(metrics, "switchboard_journal_errors_total", [("operation", "finish")]) == 0 {
                                try await Task.sleep(for: .milliseconds(10))
                            }
                        }
                        try await other.write { try $0.execute(sql: "DROP TRIGGER refuse_answers") }
                    }
                    try await withDeadline(.seconds(60), "run() to return") { try await runtime.run() }
                    let row = try other.read { try Row.fetchOne($0, sql: "SELECT outcome, delivery FROM journal") }
                    #expect(row?["outcome"] as String? == "answered")
                    #expect(row?["delivery"] as String? == "accepted 1 of 1")
                    try await group.waitForAll()
                }
                _ = try await awaitReplies(replies) { $0.count >= 1 }
            }
        }
    }

    @Test("stopIntake() before run() has subscribed still stops it, with no request ever arriving")
    func stopBeforeSubscribing() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let store = try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path)
            let runtime = ServiceRuntime(keys: [key], handlers: [Uppercase()], store: store, configuration: .init(relays: urls), logger: quiet)
            runtime.stopIntake()
            try await withDeadline(.seconds(30), "run() to return") { try await runtime.run() }
        }
    }

    @Test("a request interrupted by a crash is answered with an error, not run again")
    func interruptedRequest() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let handler = Uppercase()
            let request = try client.request(kind: requestKind, content: "was running", to: key.publicKey)
            // A previous process claimed it long ago and died.
            let store = try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path)
            _ = try await store.claim(JournalEntry(request, service: key.publicKey), owner: "dead", now: .now - 600, lease: 62)
            try await withRuntime(urls, handler: handler, key: key, directory: directory) { _ in
                try await withReplies(urls, for: client) { pool, replies in
                    try await publish(request, on: urls, through: pool)
                    let seen = try await awaitReplies(replies) { $0.count >= 1 }
                    #expect(try client.read(seen[0].0).hasPrefix("error interrupted:"))
                }
            }
            #expect(handler.total == 0)
        }
    }

    @Test("a copy of a request claimed by a runtime that stopped moments ago is set aside and taken over when the claim lapses")
    func takenOverAfterLease() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let handler = Uppercase()
            let metrics = TestMetrics()
            let request = try client.request(kind: requestKind, content: "was running", to: key.publicKey)
            // The process before a restart claimed it a moment ago and died; no one renews its claim.
            let store = try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path)
            // A lease of 20 s: the runtime must start and see the copy within it (19–20 s, in whole seconds), which a
            // loaded machine running the whole suite did not always manage in 6.
            #expect(try await store.claim(JournalEntry(request, service: key.publicKey), owner: "dead", now: .now, lease: 20) == .claimed)
            try await withRuntime(urls, handler: handler, key: key, store: store, metrics: metrics, configure: { $0.claimLease = 20 }) { _ in
                try await withReplies(urls, for: client) { pool, replies in
                    try await publish(request, on: urls, through: pool)
                    let seen = try await awaitReplies(replies, limit: .seconds(60)) { $0.count >= 1 }
                    #expect(try client.read(seen[0].0).hasPrefix("error interrupted:"))
                }
            }
            #expect(handler.total == 0)
            #expect(counter(metrics, "switchboard_requests_deferred_total", [("kind", "5910")]) == 1)
        }
    }

    @Test("a deferred copy whose holder recorded replies and stopped before publishing them re-sends them")
    func deferredCopyResends() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let handler = Uppercase()
            let metrics = TestMetrics()
            let request = try client.request(kind: requestKind, content: "answered, never sent", to: key.publicKey)
            let store = try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path)
            // A lease long enough for the runtime to start and defer the copy before it lapses (as above).
            #expect(try await store.claim(JournalEntry(request, service: key.publicKey), owner: "gone", now: .now, lease: 20) == .claimed)
            let recorded = EventTemplate(kind: replyKind, content: "recorded", tags: [["p", client.publicKey.hex]]).sign(with: SecretKey.generate())
            try await withRuntime(urls, handler: handler, key: key, store: store, metrics: metrics, configure: { $0.claimLease = 20 }) { _ in
                try await withReplies(urls, for: client) { pool, replies in
                    try await publish(request, on: urls, through: pool)
                    try await withDeadline(.seconds(15), "the copy to be deferred") {
                        while counter(metrics, "switchboard_requests_deferred_total", [("kind", "5910")]) == 0 {
                            try await Task.sleep(for: .milliseconds(10))
                        }
                    }
                    // The holder records its answer, then stops before publishing it.
                    try await store.finish(request.id, owner: "gone", outcome: "answered", replies: [recorded], now: .now)
                    let seen = try await awaitReplies(replies, limit: .seconds(60)) { $0.count >= 1 }
                    #expect(seen.map(\.0.id) == [recorded.id])
                }
            }
            #expect(handler.total == 0)
        }
    }

    @Test("two runtimes on one store: the one handling a request renews its claim past the lease, so the other, holding a copy, never takes it over")
    func renewedWhileRunning() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let path = directory.appendingPathComponent("service.sqlite").path
            let handlers = [Uppercase(timeout: .seconds(60)), Uppercase(timeout: .seconds(60))]
            let metrics = [TestMetrics(), TestMetrics()]
            // Renewed every 3 s: a renewal can be 6 s late before the claim lapses.
            let request = try client.request(kind: requestKind, content: "sleep:14000", to: key.publicKey)
            let configure: (inout ServiceRuntime.Configuration) -> Void = { $0.claimLease = 9 }
            try await withRuntime(urls, handler: handlers[0], key: key, store: try SQLiteServiceStore(path: path), metrics: metrics[0], configure: configure) { _ in
                try await withRuntime(urls, handler: handlers[1], key: key, store: try SQLiteServiceStore(path: path), metrics: metrics[1], configure: configure) { _ in
                    try await withReplies(urls, for: client) { pool, replies in
                        try await publish(request, on: urls, through: pool)
                        // Without renewals the copy's holder would find the claim lapsed after ~9 s and answer
                        // it as interrupted before the handler's answer at 14 s.
                        let seen = try await awaitReplies(replies, limit: .seconds(90)) { $0.count >= 1 }
                        #expect(try client.read(seen[0].0) == "SLEEP:14000")
                    }
                }
            }
            #expect(handlers.map(\.total).reduce(0, +) == 1)
            #expect(metrics.map { counter($0, "switchboard_requests_deferred_total", [("kind", "5910")]) }.reduce(0, +) == 1)
            #expect(metrics.map { counter($0, "switchboard_requests_total", [("kind", "5910"), ("outcome", "interrupted")]) }.reduce(0, +) == 0)
        }
    }

    @Test("ingress: every check drops with its own counted reason; a proper request passes", arguments: [
        "expired", "too_old", "insufficient_pow", "not_addressed", "unknown_kind", "denied", "untargeted", "proper",
    ])
    func ingress(reason: String) throws {
        let metrics = TestMetrics()
        var configuration = ServiceRuntime.Configuration(relays: [])
        configuration.metricsFactory = metrics
        configuration.minimumProofOfWork = reason == "insufficient_pow" ? 12 : 0
        let stranger = TestClient()
        configuration.policy.deny = [stranger.publicKey]
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let store = try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path)
        let runtime = ServiceRuntime(keys: [key], handlers: [Uppercase()], store: store, configuration: configuration, logger: quiet)
        let someoneElse = SecretKey.generate().publicKey
        let event: Event = switch reason {
        case "expired": try client.request(kind: requestKind, content: "x", to: key.publicKey, tags: [["expiration", "\(Timestamp.now - 1)"]])
        // Relays do not send these to a fresh subscription (its `since` is within the window), but a
        // subscription that has run for longer than the window gets them live.
        case "too_old": try client.request(kind: requestKind, content: "x", to: key.publicKey, createdAt: .now - configuration.maximumAge - 10)
        case "insufficient_pow": try client.request(kind: requestKind, content: "x", to: key.publicKey)
        case "not_addressed": try client.request(kind: requestKind, content: "x", to: someoneElse)
        case "unknown_kind": try client.request(kind: 5911, content: "x", to: key.publicKey)
        case "denied": try stranger.request(kind: requestKind, content: "x", to: key.publicKey)
        case "untargeted": EventTemplate(kind: requestKind, content: "no p tag").sign(with: client.key)
        default: try client.request(kind: requestKind, content: "x", to: key.publicKey)
        }
        let route = runtime.admit(event)
        if reason == "proper" {
            #expect(route?.key.publicKey == key.publicKey)
            #expect(metrics.counters.isEmpty)
        } else {
            #expect(route == nil)
            // Untargeted requests count as not addressed unless the handler accepts them.
            let expected = reason == "untargeted" ? "not_addressed" : reason
            #expect(counter(metrics, "switchboard_requests_dropped_total", [("reason", expected)]) == 1)
        }
    }
}

/// An event store that never answers for events of one kind (until cancelled), so a relay over it never sends
/// `OK` for them: a relay that has stopped confirming, while still connected.
struct SilentStore: EventStore {
    let kind: Kind
    let stored = MemoryEventStore()

    init(silencing kind: Kind) { self.kind = kind }

    func save(_ event: Event, now: Timestamp) async throws -> StoreOutcome {
        if event.kind == kind { try await Task.sleep(for: .seconds(3600)) }
        return try await stored.save(event, now: now)
    }

    func query(_ filters: [Filter], now: Timestamp) async throws -> [Event] { try await stored.query(filters, now: now) }

    func count(_ filters: [Filter], now: Timestamp) async throws -> Int { try await stored.count(filters, now: now) }
}
