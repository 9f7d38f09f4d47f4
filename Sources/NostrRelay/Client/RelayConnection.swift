import Foundation
import Logging
import CoreMetrics
import NostrCore
import NostrCrypto
import NIOSSL
import Synchronization
import WSClient

/// Where a connection hands what its relay sent for the pool's subscriptions.
protocol RelayConnectionDelegate: Sendable {
    func deliver(_ event: Event, subscriptionID: String, from relay: RelayURL) async
    /// `connection`: which of the relay's connections sent it (``RelayStatus/reconnects`` then).
    func endOfStoredEvents(subscriptionID: String, from relay: RelayURL, connection: Int) async
    func subscriptionClosed(subscriptionID: String, by relay: RelayURL, message: String) async
}

/// A snapshot of one relay connection's health, for status pages and health checks.
public struct RelayStatus: Hashable, Sendable {
    public var url: RelayURL
    public var isConnected: Bool
    /// Connections opened after the first.
    public var reconnects: Int
    public var messagesReceived: Int
    public var messagesSent: Int
    /// Events dropped because their id or signature was wrong, or they did not match the subscription.
    public var invalidEvents: Int
    /// Why the last connection attempt or connection ended.
    public var lastError: String?
    /// The first connection attempt has succeeded or failed (until then, the relay is neither up nor down).
    public var hasAttemptedConnection = false
    /// Subscriptions the relay closed (`CLOSED`) that are waiting to be asked for again or answered.
    public var closedSubscriptions = 0
    /// Subscriptions the relay has not yet answered with `EOSE` on this connection: sent and not yet
    /// registered there, waiting to be sent again, or closed. Events published meanwhile may not reach them.
    public var unansweredSubscriptions = 0
    /// Subscriptions whose latest filters the relay has not yet answered with `EOSE` on this connection: the
    /// unanswered ones, and those whose new filters (``RelayPool/updateFilters(_:of:)``) are not yet registered.
    public var unconfirmedSubscriptions = 0

    /// Connected, and every subscription on the connection answered (`EOSE`): events published from now on
    /// reach them (an earlier version of their filters, while a replacement is in flight).
    public var isListening: Bool { isConnected && unansweredSubscriptions == 0 }

    /// Connected, and the relay has registered every subscription's latest filters: events published from
    /// now on that match them reach them.
    public var isListeningToLatestFilters: Bool { isConnected && unconfirmedSubscriptions == 0 }
}

/// One relay: connects, keeps the connection alive, reconnects with capped exponential back-off and jitter
/// for as long as it runs, and re-sends live subscriptions and unconfirmed publishes on every new connection.
///
/// All messages from the relay are read and handled in one loop, in order; delivering an event waits while
/// the subscriber's buffer is full, which stops reading from this relay (and only this relay).
final class RelayConnection: Sendable {
    struct Shared {
        var machine: RelayClientState
        var outbox: Outbox?
        /// The current session's received messages, ended early when its outbox overflows.
        var received: BoundedChannel<WebSocketMessage>?
        var overflowed = false
        /// The task running the current connection (swift-websocket's `connect`).
        var connection: Task<Void, any Error>?
        var waiters: [EventID: [UInt64: OneShot<PublishResult>]] = [:]
        var nextWaiter: UInt64 = 0
        var status: RelayStatus
        var connections = 0
    }

    let url: RelayURL
    private let shared: Mutex<Shared>
    private let configuration: RelayPool.Configuration
    private let authenticator: (any RelayAuthenticator)?
    private let delegate: any RelayConnectionDelegate
    private let logger: Logger
    private let stopSignal = AsyncStream<Never>.makeStream()
    private let metrics: Instruments
    private let messageLimits: MessageLimits

    struct Instruments {
        let connected: Gauge
        let reconnects: Counter
        let messagesIn: Counter
        let messagesOut: Counter
        let invalid: Counter
        let publishDuration: CoreMetrics.Timer

        init(url: RelayURL, factory: any MetricsFactory, dimensions extra: [(String, String)]) {
            let dimensions = [("relay", url.string)] + extra
            connected = Gauge(label: "nostr_relay_connected", dimensions: dimensions, factory: factory)
            reconnects = Counter(label: "nostr_relay_reconnects_total", dimensions: dimensions, factory: factory)
            messagesIn = Counter(label: "nostr_relay_messages_received_total", dimensions: dimensions, factory: factory)
            messagesOut = Counter(label: "nostr_relay_messages_sent_total", dimensions: dimensions, factory: factory)
            invalid = Counter(label: "nostr_relay_invalid_events_total", dimensions: dimensions, factory: factory)
            publishDuration = CoreMetrics.Timer(label: "nostr_relay_publish_duration", dimensions: dimensions, factory: factory)
        }
    }

    init(
        url: RelayURL, configuration: RelayPool.Configuration, authenticator: (any RelayAuthenticator)?,
        delegate: any RelayConnectionDelegate, logger: Logger
    ) {
        self.url = url
        self.configuration = configuration
        self.authenticator = authenticator
        self.delegate = delegate
        var logger = logger
        logger[metadataKey: "nostr.relay"] = "\(url)"
        self.logger = logger
        var machineConfiguration = RelayClientState.Configuration()
        machineConfiguration.resumeMargin = configuration.resumeMargin
        machineConfiguration.canAuthenticate = authenticator != nil
        self.messageLimits = machineConfiguration.messageLimits
        self.shared = Mutex(Shared(
            machine: RelayClientState(configuration: machineConfiguration),
            status: RelayStatus(url: url, isConnected: false, reconnects: 0, messagesReceived: 0, messagesSent: 0, invalidEvents: 0)))
        self.metrics = Instruments(url: url, factory: configuration.metricsFactory, dimensions: configuration.metricsDimensions)
    }

    var status: RelayStatus {
        shared.withLock { shared in
            var status = shared.status
            status.closedSubscriptions = shared.machine.closedSubscriptions
            status.unansweredSubscriptions = shared.machine.unansweredSubscriptions
            status.unconfirmedSubscriptions = shared.machine.unconfirmedSubscriptions
            return status
        }
    }

    /// Ends ``run()``: the connection closes and is not reopened.
    func stop() { stopSignal.continuation.finish() }

    /// Runs until ``stop()`` or cancellation.
    func run() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.connectLoop() }
            group.addTask { await self.tickLoop() }
            for await _ in stopSignal.stream {}
            group.cancelAll()
        }
        shared.withLock { shared in
            shared.status.isConnected = false
            for waiter in shared.waiters.values.flatMap(\.values) { waiter.fulfil(.unreachable(reason: "relay removed")) }
            shared.waiters = [:]
        }
    }

    // MARK: Requests

    func subscribe(_ id: String, filters: [Filter]) {
        _ = withMachine { $0.subscribe(id, filters: filters) }
    }

    func unsubscribe(_ id: String) {
        _ = withMachine { $0.unsubscribe(id) }
    }

    /// Sends `event` (now, or as soon as connected) and waits for the relay's `OK`, re-sending after a
    /// reconnect, NIP-42 authentication or a rate-limit back-off, until `timeout`.
    func publish(_ event: Event, timeout: Duration) async -> PublishResult {
        let started = ContinuousClock.now
        let waiter = OneShot<PublishResult>()
        let token = shared.withLock { shared in
            let token = shared.nextWaiter
            shared.nextWaiter += 1
            shared.waiters[event.id, default: [:]][token] = waiter
            return token
        }
        _ = withMachine { $0.publish(event) }
        let timer = Deadlines.shared.schedule(at: started + timeout) { waiter.expire() }
        let result = await waiter.wait()
        Deadlines.shared.cancel(timer)
        if let result {
            metrics.publishDuration.recordNanoseconds((ContinuousClock.now - started).nanoseconds)
            return result
        }
        return shared.withLock { shared in
            shared.waiters[event.id]?[token] = nil
            if shared.waiters[event.id]?.isEmpty == true {
                shared.waiters[event.id] = nil
                shared.machine.abandonPublish(event.id)
            }
            return shared.status.isConnected ? .timedOut : .unreachable(reason: shared.status.lastError ?? "not connected")
        }
    }

    // MARK: The loops

    private func connectLoop() async {
        var failures = 0
        var client = WebSocketClientConfiguration(
            maxFrameSize: configuration.maximumMessageSize, closeTimeout: Self.closeTimeout,
            autoPing: .enabled(timePeriod: configuration.pingInterval))
        client.additionalHeaders[.userAgent] = "switchboard"
        // wss:// verifies the relay's certificate and host name against the system's trust roots (and the
        // configured extra ones); ws:// ignores this.
        var tls = TLSConfiguration.makeClientConfiguration()
        if let file = configuration.additionalTrustRootsFile { tls.additionalTrustRoots = [.file(file)] }
        while !Task.isCancelled {
            let opened = ContinuousClock.now
            var reason = "closed by the relay"
            do {
                if configuration.refusesPrivateAddresses { _ = try await AddressPolicy.checked(url.host) }
                // swift-websocket closes its connections as soon as swift-service-lifecycle's graceful shutdown
                // begins (and every new one at once after that). A service's connections must outlast it: the
                // replies of requests still in flight go out on them during the grace period, and the pool's
                // owner ends them (`stopsOnGracefulShutdown`). So the connection runs in a task that does not
                // inherit the shutdown context; cancelling this one still cancels it.
                let (url, client, logger) = (url.string, client, logger)
                let connection = Task.detached {
                    _ = try await WebSocketClient.connect(url: url, configuration: client, tlsConfiguration: tls, logger: logger) {
                        inbound, outbound, _ in
                        try await self.session(inbound: inbound, outbound: outbound)
                    }
                }
                shared.withLock { $0.connection = connection }
                try await withTaskCancellationHandler {
                    try await connection.value
                } onCancel: {
                    connection.cancel()
                }
            } catch {
                // An overflow may end in the cancellation of a close that did not finish: its reason is the overflow.
                reason = shared.withLock(\.overflowed) ? overflowReason : Self.describe(error)
            }
            let wasConnected = shared.withLock { shared in
                let was = shared.status.isConnected
                shared.outbox?.finish()
                shared.outbox = nil
                shared.machine.disconnected()
                shared.status.isConnected = false
                shared.status.lastError = reason
                shared.status.hasAttemptedConnection = true
                return was
            }
            metrics.connected.record(0)
            if Task.isCancelled { return }
            if wasConnected {
                logger.warning("disconnected", metadata: ["reason": "\(reason)"])
            } else {
                logger.debug("connection failed", metadata: ["reason": "\(reason)"])
            }
            // A connection that stayed up a while starts the back-off over.
            if ContinuousClock.now - opened > .seconds(10) { failures = 0 }
            let delay = Self.backoff(failures, base: configuration.reconnectDelay, cap: configuration.maximumReconnectDelay)
            failures += 1
            try? await Task.sleep(for: delay)
        }
    }

    /// Capped exponential back-off with jitter: a delay between half and all of `base · 2^failures`.
    static func backoff(_ failures: Int, base: Duration, cap: Duration) -> Duration {
        let ceiling = min(cap, base * (1 << min(failures, 20)))
        return ceiling * Double.random(in: 0.5...1)
    }

    private func session(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter) async throws {
        let outbox = Outbox(capacity: configuration.outboxCapacity)
        // Reading and handling are two stages joined by a small bounded channel: while one batch of messages
        // is parsed and verified (on several cores when it is large) and handled in order, the next is read.
        // A full channel stops the reading, so backpressure still reaches the relay.
        let received = BoundedChannel<WebSocketMessage>(capacity: Self.readAhead)
        let actions = shared.withLock { shared in
            shared.outbox = outbox
            shared.received = received
            shared.overflowed = false
            shared.connections += 1
            if shared.connections > 1 { shared.status.reconnects += 1 }
            shared.status.isConnected = true
            shared.status.hasAttemptedConnection = true
            shared.status.lastError = nil
            let actions = shared.machine.connected()
            Self.sendAll(actions, &shared)
            return actions
        }
        if actions.isEmpty || status.reconnects > 0 { logger.info("connected") }
        if status.reconnects > 0 { metrics.reconnects.increment() }
        metrics.connected.record(1)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while case let batch = await outbox.takeAll(), !batch.isEmpty {
                    for text in batch { try await outbound.writeTextMessage(text) }
                    self.metrics.messagesOut.increment(by: batch.count)
                }
            }
            group.addTask {
                defer { received.finish() }
                for try await message in inbound.messages(maxSize: self.configuration.maximumMessageSize) {
                    await received.send(message)
                }
            }
            await execute(actions)
            while case let batch = await received.nextBatch(maximum: Self.readAhead), !batch.isEmpty {
                metrics.messagesIn.increment(by: batch.count)
                for message in await Self.prepare(batch, limits: messageLimits) {
                    let now = Timestamp.now, monotonic = monotonicSeconds()
                    await execute(withMachine(countingReceived: true) { $0.receive(message, now: now, monotonic: monotonic) })
                }
            }
            // Ended early because the relay stopped reading: the writer may be stuck in a write, so the session's
            // tasks are cancelled rather than waited for.
            if let connection = shared.withLock({ $0.overflowed ? $0.connection : nil }) {
                // swift-websocket then closes the connection politely, with a close frame the relay will not read:
                // on a loaded machine it was seen waiting for that write until the pool stopped. It is given its
                // close timeout, then the connection is cut.
                _ = Deadlines.shared.schedule(at: .now + Self.closeTimeout) { connection.cancel() }
                throw RelayConnectionError(overflowReason)
            }
            // The reader has ended: its error (or the writer's), if any, ends the session.
            try await group.next()
            group.cancelAll()
        }
    }

    private var overflowReason: String {
        "the relay stopped reading: \(configuration.outboxCapacity) messages were waiting to be written"
    }

    /// How long a closing connection waits for the relay's close frame.
    static let closeTimeout = Duration.seconds(2)

    /// Messages read ahead of the one being handled.
    static let readAhead = 64

    /// The cores batches are split across (read once: Foundation reads cgroup files to answer).
    static let cores = ProcessInfo.processInfo.activeProcessorCount

    /// Parses and checks `messages`; a batch large enough to be worth it is split across the cores.
    static func prepare(_ messages: [WebSocketMessage], limits: MessageLimits) async -> [RelayClientState.Received] {
        func prepare(_ message: WebSocketMessage) -> RelayClientState.Received {
            guard case .text(let text) = message else { return .unreadable(reason: "binary message") }
            return RelayClientState.Received(text, limits: limits)
        }
        let parts = min(Self.cores, messages.count / 4)
        guard parts > 1 else { return messages.map(prepare) }
        let size = (messages.count + parts - 1) / parts
        return await withTaskGroup(of: (Int, [RelayClientState.Received]).self) { group in
            for start in stride(from: 0, to: messages.count, by: size) {
                let slice = messages[start..<min(start + size, messages.count)]
                group.addTask { (start, slice.map(prepare)) }
            }
            var prepared = [[RelayClientState.Received]](repeating: [], count: parts)
            for await (start, part) in group { prepared[start / size] = part }
            return prepared.flatMap { $0 }
        }
    }

    private func tickLoop() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(250))
            let monotonic = monotonicSeconds()
            await execute(withMachine { $0.tick(monotonic: monotonic) })
        }
    }

    // MARK: Actions

    /// Runs `body` on the state machine and queues its sends in order (under the same lock, so two callers'
    /// messages never interleave out of order); returns all its actions for ``execute(_:)``. A message read
    /// from the relay is counted under the same lock.
    private func withMachine(
        countingReceived: Bool = false, _ body: (inout RelayClientState) -> [RelayClientState.Action]
    ) -> [RelayClientState.Action] {
        shared.withLock { shared in
            if countingReceived { shared.status.messagesReceived += 1 }
            let actions = body(&shared.machine)
            Self.sendAll(actions, &shared)
            return actions
        }
    }

    private static func sendAll(_ actions: [RelayClientState.Action], _ shared: inout Shared) {
        for case .send(let text) in actions {
            guard let outbox = shared.outbox, !shared.overflowed else { continue }
            guard outbox.send(text) else {
                shared.overflowed = true
                outbox.finish()
                shared.received?.finish()
                continue
            }
            shared.status.messagesSent += 1
        }
    }

    private func execute(_ actions: [RelayClientState.Action]) async {
        for action in actions {
            switch action {
            case .send:
                continue  // queued by withMachine
            case .deliver(let id, let event):
                await delegate.deliver(event, subscriptionID: id, from: url)
            case .endOfStoredEvents(let id):
                let connection = shared.withLock { $0.status.reconnects }
                await delegate.endOfStoredEvents(subscriptionID: id, from: url, connection: connection)
            case .subscriptionClosed(let id, let message):
                logger.info("subscription closed by the relay", metadata: ["nostr.subscription": "\(id)", "message": "\(message)"])
                await delegate.subscriptionClosed(subscriptionID: id, by: url, message: message)
            case .publishFinished(let id, let result):
                finish(id, result)
            case .authenticate(let challenge, let keys):
                await authenticate(challenge, as: keys)
            case .notice(let text):
                logger.notice("NOTICE from relay", metadata: ["message": "\(text.prefix(500))"])
            case .dropped(let reason):
                shared.withLock { $0.status.invalidEvents += 1 }
                metrics.invalid.increment()
                logger.debug("dropped a message from the relay", metadata: ["reason": "\(reason.prefix(300))"])
            }
        }
    }

    private func finish(_ id: EventID, _ result: PublishResult) {
        let waiters = shared.withLock { $0.waiters.removeValue(forKey: id) } ?? [:]
        for waiter in waiters.values { waiter.fulfil(result) }
    }

    private func authenticate(_ challenge: String, as keys: Set<PublicKey>) async {
        guard let authenticator else { return }
        let template = EventTemplate(kind: .clientAuthentication, tags: [["relay", url.string], ["challenge", challenge]])
        var events: [Event] = []
        var seen = Set<PublicKey>()
        for signer in authenticator.signers(for: keys) where seen.insert(signer.publicKey).inserted {
            do {
                events.append(try await signer.sign(template))
            } catch {
                logger.error("could not sign the NIP-42 event", metadata: ["nostr.pubkey": "\(signer.publicKey.hex)", "error": "\(error)"])
            }
        }
        logger.debug("authenticating (NIP-42)", metadata: ["keys": "\(events.count)"])
        let monotonic = monotonicSeconds()
        await execute(withMachine { machine in
            events.isEmpty ? machine.authenticationFailed("auth-required: signing failed", monotonic: monotonic) : machine.authenticationSigned(events)
        })
    }

    static func describe(_ error: any Error) -> String {
        let text = String(describing: error)
        return text.count > 200 ? String(text.prefix(200)) + "…" : text
    }

}

/// Why this side ended a session with a relay.
struct RelayConnectionError: Error, CustomStringConvertible {
    let description: String

    init(_ description: String) {
        self.description = description
    }
}

/// A value delivered once to one waiter; waiting ends early (with `nil`) if the waiting task is cancelled or the
/// wait is expired.
final class OneShot<Value: Sendable>: Sendable {
    private struct State {
        var value: Value?
        var continuation: CheckedContinuation<Value?, Never>?
        var cancelled = false
    }

    private let state = Mutex(State())

    func fulfil(_ value: Value) {
        let continuation = state.withLock { state -> CheckedContinuation<Value?, Never>? in
            guard state.value == nil else { return nil }
            state.value = value
            defer { state.continuation = nil }
            return state.continuation
        }
        continuation?.resume(returning: value)
    }

    func wait() async -> Value? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let immediate: Value?? = state.withLock { state in
                    if let value = state.value { return .some(value) }
                    if state.cancelled { return .some(nil) }
                    state.continuation = continuation
                    return .none
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            expire()
        }
    }

    /// Whether the wait ended without a value: nobody needs one any more.
    var isExpired: Bool { state.withLock { $0.cancelled && $0.value == nil } }

    /// Ends the wait without a value (a timeout or cancellation), unless a value came first.
    func expire() {
        let continuation = state.withLock { state -> CheckedContinuation<Value?, Never>? in
            state.cancelled = true
            defer { state.continuation = nil }
            return state.continuation
        }
        continuation?.resume(returning: nil)
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
