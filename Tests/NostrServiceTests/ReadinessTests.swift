import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import NostrCore
import NostrCrypto
import NostrRelay
import NostrServiceTesting
import Synchronization
import Testing
@testable import NostrService

/// A scripted relay on 127.0.0.1 that accepts every event (`OK`) and holds back its answer (`EOSE`) to every
/// subscription request while it is held (from the start until `release()`, and again after `hold()`): a
/// slow relay, whose subscriptions are not yet registered.
final class HeldRelay: Sendable {
    private struct State {
        var released = false
        var requests = 0
        var authors: [PublicKey] = []
    }

    /// A connection's subscriptions waiting for their answer.
    private final class Held: Sendable {
        let ids = Mutex<[String]>([])
    }

    private let state = Mutex(State())

    /// `REQ`s received so far, on every connection.
    var requests: Int { state.withLock(\.requests) }

    /// The authors of the events received so far, in order.
    var authors: [PublicKey] { state.withLock(\.authors) }

    func release() { state.withLock { $0.released = true } }

    func hold() { state.withLock { $0.released = false } }

    func run<R: Sendable>(_ body: (RelayURL) async throws -> R) async throws -> R {
        let (ready, announce) = AsyncStream<Int>.makeStream()
        let app = Application(
            router: Router(),
            server: .http1WebSocketUpgrade(configuration: .init(ws: .init(maxFrameSize: 1 << 20))) { _, _, _ in
                .upgrade([:]) { inbound, outbound, _ in try await self.serve(inbound, outbound) }
            },
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { announce.yield($0.localAddress?.port ?? 0) },
            logger: quiet)
        let server = Task { try await app.run() }
        defer { server.cancel() }
        guard let port = try await withTimeout(.seconds(30), "the held relay to start", { await ready.first { _ in true } }) else {
            throw TestKitError("the held relay did not start")
        }
        return try await body(try RelayURL("ws://127.0.0.1:\(port)"))
    }

    private func serve(_ inbound: WebSocketInboundStream, _ outbound: WebSocketOutboundWriter) async throws {
        // One writer; the reader and the release watch queue what to send.
        let (outgoing, send) = AsyncStream<String>.makeStream()
        let held = Held()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await text in outgoing { try await outbound.writeTextMessage(text) }
            }
            group.addTask {
                while true {
                    try await Task.sleep(for: .milliseconds(10))
                    guard self.state.withLock(\.released) else { continue }
                    for id in held.ids.withLock({ ids in defer { ids = [] }; return ids }) {
                        send.yield(RelayMessage.endOfStoredEvents(subscriptionID: id).json)
                    }
                }
            }
            for try await message in inbound.messages(maxSize: 1 << 20) {
                guard case .text(let text) = message, let parsed = try? ClientMessage(json: text) else { continue }
                switch parsed {
                case .event(let event):
                    state.withLock { $0.authors.append(event.pubkey) }
                    send.yield(RelayMessage.ok(eventID: event.id, accepted: true, message: "").json)
                case .request(let id, _):
                    // Decided under the connection's lock, which the release watch takes after it sees the
                    // release: a request is either held before it looks, or answered here.
                    let answerNow = held.ids.withLock { ids in
                        let released = state.withLock { state in
                            state.requests += 1
                            return state.released
                        }
                        if !released { ids.append(id) }
                        return released
                    }
                    if answerNow { send.yield(RelayMessage.endOfStoredEvents(subscriptionID: id).json) }
                default:
                    break
                }
            }
            send.finish()
            group.cancelAll()
        }
    }
}

@Suite("Readiness: a service is ready once a relay has registered its subscription")
struct ReadinessTests {
    let key = LocalServiceKey(SecretKey.generate())

    /// Runs a runtime on `url` (the uppercase handler, a journal in a temporary directory) while `body` runs.
    func withRuntime(
        on url: RelayURL, listenTimeout: Duration = .seconds(10), _ body: @Sendable (ServiceRuntime) async throws -> Void
    ) async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        var configuration = ServiceRuntime.Configuration(relays: [url])
        configuration.pool.reconnectDelay = .milliseconds(50)
        configuration.listenTimeout = listenTimeout
        let store = try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path)
        let runtime = ServiceRuntime(keys: [key], handlers: [Uppercase()], store: store, configuration: configuration, logger: quiet)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await runtime.run() }
            defer { group.cancelAll() }
            try await body(runtime)
        }
    }

    @Test("until the relay answers the request subscription with EOSE, the runtime is subscribed and connected but not ready (nor its relay listening); after it, ready until it stops")
    func readyAfterEndOfStoredEvents() async throws {
        let relay = HeldRelay()
        try await relay.run { url in
            try await withRuntime(on: url) { runtime in
                try await withDeadline(.seconds(30), "the request subscription to reach the relay") {
                    while !(runtime.isSubscribed && relay.requests >= 1 && runtime.relayStatus().allSatisfy(\.isConnected)) {
                        try await Task.sleep(for: .milliseconds(20))
                    }
                }
                // Long enough for a wrong verdict to show.
                try await Task.sleep(for: .milliseconds(300))
                #expect(!runtime.isReady)
                let waiting = try #require(runtime.relayStatus().first)
                #expect(waiting.isConnected && waiting.unansweredSubscriptions == 1 && !waiting.isListening)
                #expect(waiting.closedSubscriptions == 0)

                relay.release()
                try await withDeadline(.seconds(30), "the runtime to be ready") {
                    while !runtime.isReady { try await Task.sleep(for: .milliseconds(20)) }
                }
                let answered = try #require(runtime.relayStatus().first)
                #expect(answered.isListening && answered.unansweredSubscriptions == 0)
                // Stopping: not ready from the moment intake stops.
                runtime.stopIntake()
                #expect(!runtime.isReady)
            }
        }
    }

    @Test("a key added while running is announced only once the relay has registered the subscription's new filters (so a client that sees the announcement may send an ephemeral request at once), or after the listen timeout")
    func addedKeyAnnouncedOnceListening() async throws {
        let relay = HeldRelay()
        relay.release()
        try await relay.run { url in
            // Longer than the held phase below takes, even on a loaded machine.
            try await withRuntime(on: url, listenTimeout: .seconds(15)) { runtime in
                try await withDeadline(.seconds(30), "the runtime to be ready") {
                    while !runtime.isReady { try await Task.sleep(for: .milliseconds(20)) }
                }
                relay.hold()
                let requestsBefore = relay.requests
                let added = LocalServiceKey(SecretKey.generate())
                let finished = Mutex(false)
                let adding = Task {
                    try await runtime.addKeys([added])
                    finished.withLock { $0 = true }
                }
                try await withDeadline(.seconds(30), "the new filters to reach the relay") {
                    while relay.requests == requestsBefore { try await Task.sleep(for: .milliseconds(20)) }
                }
                // Long enough for a wrong verdict to show.
                try await Task.sleep(for: .milliseconds(300))
                let replacing = try #require(runtime.relayStatus().first)
                #expect(replacing.isListening && !replacing.isListeningToLatestFilters, "the old filters are served meanwhile")
                #expect(runtime.isReady)
                #expect(!relay.authors.contains(added.publicKey), "announced before the relay listens for the key")
                // A round asked for meanwhile (a relay change, the timer) waits for the relays too.
                let announcedBefore = relay.authors.count
                runtime.announce()
                try await Task.sleep(for: .milliseconds(300))
                #expect(relay.authors.count == announcedBefore, "an announcement round did not wait for the relays")
                // One whose wait ran out leaves the key out.
                _ = await runtime.announce(alsoTo: [])
                #expect(relay.authors.count > announcedBefore && !relay.authors.contains(added.publicKey))

                #expect(!finished.withLock { $0 }, "addKeys gave up waiting while the relay held the request")
                relay.release()
                try await withDeadline(.seconds(30), "addKeys to return") { try await adding.value }
                #expect(try #require(runtime.relayStatus().first).isListeningToLatestFilters)
                try await withDeadline(.seconds(30), "the new key's announcement") {
                    while !relay.authors.contains(added.publicKey) { try await Task.sleep(for: .milliseconds(20)) }
                }

                // A relay that never answers holds the announcement back for the listen timeout only.
                relay.hold()
                let another = LocalServiceKey(SecretKey.generate())
                let started = ContinuousClock.now
                try await withDeadline(.seconds(40), "addKeys to give up waiting") { try await runtime.addKeys([another]) }
                #expect(ContinuousClock.now - started >= .seconds(15))
                try await withDeadline(.seconds(30), "the other key's announcement") {
                    while !relay.authors.contains(another.publicKey) { try await Task.sleep(for: .milliseconds(20)) }
                }
            }
        }
    }
}
