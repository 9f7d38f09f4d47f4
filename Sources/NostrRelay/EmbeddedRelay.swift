import Hummingbird
import HummingbirdCore
import HummingbirdWebSocket
public import Logging
import NIOCore
import NostrCore
import NostrCrypto
public import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A NIP-01 relay that runs in-process: for development, tests and `switchboard relay`.
///
/// One HTTP/1.1 listener serves WebSocket upgrades (the Nostr protocol) and, for a plain GET with
/// `Accept: application/nostr+json`, the NIP-11 document. Each connection runs one ordered loop: a message
/// is handled (stored, queried, answered) before the next is read, so replies keep NIP-01's order.
public final class EmbeddedRelay: Service, Sendable {
    public struct Configuration: Sendable {
        /// Interface to bind; loopback by default.
        public var host = "127.0.0.1"
        /// Port to bind; 0 picks a free one (see `onReady`).
        public var port = 0
        /// Limits and access rules. `relayURL` is filled in once the port is known.
        public var policy = RelayPolicy(relayURL: "")
        /// Outgoing messages, and their bytes, a connection may have queued before it is closed as too slow.
        public var outboxCapacity = 10_000
        public var outboxByteCapacity = 64 << 20
        public var information = RelayInformation()

        public init() {}
    }

    let configuration: Configuration
    let store: any EventStore
    let logger: Logger
    let onReady: @Sendable (String) async -> Void
    let hub = RelayHub()
    let url = Mutex<String>("")

    /// - Parameter onReady: called with `ws://HOST:PORT` once the listener accepts connections.
    public init(
        configuration: Configuration = Configuration(), store: any EventStore = MemoryEventStore(),
        logger: Logger = Logger(label: "switchboard.relay"), onReady: @escaping @Sendable (String) async -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.store = store
        self.logger = logger
        self.onReady = onReady
    }

    public func run() async throws {
        let router = Router()
        let information = configuration.information
        let relay = self
        router.get("/") { request, _ -> Response in
            let accept = request.headers[.accept] ?? ""
            guard accept.contains("application/nostr+json") else {
                return Response(
                    status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
                    body: .init(byteBuffer: ByteBuffer(string: "This is a Nostr relay: connect with a WebSocket client.\n")))
            }
            var headers = EmbeddedRelay.corsHeaders
            headers[.contentType] = "application/nostr+json"
            return Response(
                status: .ok, headers: headers,
                body: .init(byteBuffer: ByteBuffer(string: information.json(policy: relay.policy))))
        }
        router.on("/", method: .options) { _, _ -> Response in
            Response(status: .noContent, headers: EmbeddedRelay.corsHeaders)
        }
        let frameSize = max(configuration.policy.maximumMessageLength + 1024, 1 << 16)
        // A peer that never answers the closing handshake holds up shutdown for at most closeTimeout.
        let webSocket = WebSocketServerConfiguration(maxFrameSize: frameSize, closeTimeout: .seconds(2))
        let app = Application(
            router: router,
            server: HTTPServerBuilder { responder in
                RelayChildChannel(
                    base: HTTP1WebSocketUpgradeChannel(responder: responder, configuration: .init(ws: webSocket)) { _, _, _ in
                        .upgrade([:]) { inbound, outbound, _ in
                            try await relay.serve(inbound: inbound, outbound: outbound, frameSize: frameSize)
                        }
                    })
            },
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: nil),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? relay.configuration.port
                let address = "ws://\(relay.configuration.host):\(port)"
                relay.url.withLock { $0 = address }
                relay.logger.info("relay listening", metadata: ["nostr.relay": "\(address)"])
                await relay.onReady(address)
            },
            logger: logger
        )
        try await app.run()
    }

    static let corsHeaders: HTTPFields = [
        .accessControlAllowOrigin: "*", .accessControlAllowHeaders: "*", .accessControlAllowMethods: "GET, OPTIONS",
    ]

    var policy: RelayPolicy {
        var policy = configuration.policy
        policy.relayURL = url.withLock { $0 }
        return policy
    }

    func serve(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, frameSize: Int) async throws {
        let outbox = Outbox(capacity: configuration.outboxCapacity, byteCapacity: configuration.outboxByteCapacity)
        // The session belongs to this task: messages are parsed and verified here, outside any lock, and
        // the hub gets a copy whenever what the connection receives changes.
        var session = RelaySession(policy: policy, challenge: Self.newChallenge(), now: monotonicSeconds())
        let channel = ConnectionChannel.current
        let connection = hub.register(session, outbox: outbox) { channel?.close(promise: nil) }
        defer { hub.remove(connection) }
        for action in session.greeting { try await execute(action, on: connection, session: &session) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while case let batch = await outbox.takeAll(), !batch.isEmpty {
                    for text in batch { try await outbound.write(.text(text)) }
                }
                // The outbox ends when the connection closes or when it overflowed (a client too slow to read).
                try? await outbound.close(.normalClosure, reason: nil)
            }
            do {
                for try await message in inbound.messages(maxSize: frameSize) {
                    guard case .text(let text) = message else {
                        connection.send(.notice("error: binary messages are not supported"))
                        continue
                    }
                    let revision = session.revision
                    let actions = session.receive(text, clock: .now, monotonic: monotonicSeconds())
                    if session.revision != revision {
                        var opening: [String] = []
                        for case .query(let subscriptionID, _) in actions { opening.append(subscriptionID) }
                        connection.update(session, opening: opening)
                    }
                    for action in actions { try await execute(action, on: connection, session: &session) }
                }
            } catch {
                logger.debug("connection ended", metadata: ["error": "\(error)"])
            }
            hub.remove(connection)
            try await group.waitForAll()
        }
    }

    func execute(_ action: RelaySession.Action, on connection: RelayHub.Connection, session: inout RelaySession) async throws {
        switch action {
        case .send(let message):
            connection.send(message)
        case .store(let event):
            let outcome: StoreOutcome
            do {
                outcome = try await store.save(event, now: .now)
            } catch {
                logger.error("store failed", metadata: ["nostr.event.id": "\(event.id.hex)", "error": "\(error)"])
                connection.send(.ok(eventID: event.id, accepted: false, message: MachineReadablePrefix.error.message("could not store the event")))
                return
            }
            let reply = outcome.okReply
            connection.send(.ok(eventID: event.id, accepted: reply.accepted, message: reply.message))
            if outcome.shouldBroadcast { hub.broadcast(event) }
        case .query(let subscriptionID, let filters):
            do {
                // One REQ gets at most `maximumLimit` stored events in all (newest first), whatever its number of
                // filters, so a reply always fits the connection's outbox.
                let stored = try await store.query(filters, now: .now).prefix(configuration.policy.maximumLimit)
                connection.finishQuery(subscriptionID, stored: Array(stored), maximumBytes: configuration.policy.maximumReplyBytes)
            } catch {
                logger.error("query failed", metadata: ["error": "\(error)"])
                session.dropSubscription(subscriptionID)
                connection.failQuery(subscriptionID, session: session, message: MachineReadablePrefix.error.message("query failed"))
            }
        case .count(let subscriptionID, let filters):
            do {
                connection.send(.count(subscriptionID: subscriptionID, count: try await store.count(filters, now: .now)))
            } catch {
                connection.send(.closed(subscriptionID: subscriptionID, message: MachineReadablePrefix.error.message("count failed")))
            }
        }
    }

    static func newChallenge() -> String { Hex.encode(SecureMemory.randomBytes(16)) }

}

extension EmbeddedRelay {
    /// Runs an embedded relay (in memory) on 127.0.0.1 and a free port while `body` runs with its URL, then
    /// stops it gracefully: the daemons' development mode, when no relay is given. The relay outlives the
    /// daemon's graceful shutdown (it runs in a task without that shutdown context): the daemon's replies during
    /// its grace period go through it, and it stops once `body` has returned.
    public static func withLoopbackRelay(logger: Logger, _ body: (RelayURL) async throws -> Void) async throws {
        let (ready, announce) = AsyncStream<String>.makeStream()
        var configuration = Configuration()
        configuration.host = "127.0.0.1"
        configuration.port = 0
        let relay = EmbeddedRelay(configuration: configuration, logger: logger) { url in announce.yield(url) }
        let services = ServiceGroup(configuration: .init(services: [relay], logger: logger))
        let serving = Task.detached {
            // A relay that could not start ends the wait for its URL.
            defer { announce.finish() }
            try await services.run()
        }
        try await withTaskCancellationHandler {
            var urls = ready.makeAsyncIterator()
            guard let text = await urls.next() else { return try await serving.value }
            var failure: (any Error)?
            do { try await body(try RelayURL(text)) } catch { failure = error }
            await services.triggerGracefulShutdown()
            _ = try? await serving.value
            if let failure { throw failure }
        } onCancel: {
            serving.cancel()
        }
    }
}
