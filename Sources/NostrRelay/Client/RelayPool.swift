public import CoreMetrics
public import Logging
public import NostrCore
import NostrCrypto
public import ServiceLifecycle
import Synchronization

/// Connections to several relays, used as one: subscriptions that span them (deduplicated, verified,
/// resumed after reconnects) and publishing with a result per relay.
///
/// Run it as a swift-service-lifecycle `Service` (or call ``run()`` in a task): connections exist only while
/// it runs; relays can be added and removed at any time. Each relay has its own loop, so a slow or dead relay
/// never delays the others.
///
/// ```swift
/// let pool = RelayPool(relays: [try RelayURL("wss://relay.example")], signer: KeySigner(key), logger: logger)
/// try await withThrowingDiscardingTaskGroup { group in
///     group.addTask { try await pool.run() }
///     try await pool.withSubscription([Filter(kinds: [1])]) { subscription in
///         for try await item in subscription { … }
///     }
/// }
/// ```
public final class RelayPool: Service, Sendable {
    public struct Configuration: Sendable {
        /// Largest WebSocket message (and frame) accepted from a relay.
        public var maximumMessageSize = 1 << 20
        /// A ping is sent this often; no pong within the next period closes the connection as dead.
        public var pingInterval: Duration = .seconds(20)
        /// Reconnect back-off: the first delay and the cap (doubled per failure, with jitter).
        public var reconnectDelay: Duration = .milliseconds(500)
        public var maximumReconnectDelay: Duration = .seconds(30)
        /// A resumed subscription asks for events from this many seconds before the newest one seen.
        public var resumeMargin: Int64 = 60
        /// How long ``RelayPool/publish(_:to:timeout:)`` waits for relays by default.
        public var publishTimeout: Duration = .seconds(10)
        /// Items a subscription buffers before its relays stop being read.
        public var subscriptionBufferSize = 256
        /// Messages waiting to be written to one relay at most. A relay that stops reading (its TCP window
        /// full) would otherwise make them pile up without bound; past this the connection is dropped and made
        /// again, and what still needs sending (subscriptions, publishes waiting for `OK`) is sent anew.
        public var outboxCapacity = 10_000
        /// Event ids a subscription remembers to drop copies arriving from other relays.
        public var deduplicationCapacity = 10_000
        /// A PEM file of certificate authorities trusted for `wss://` relays besides the system's trust roots
        /// (for relays behind a private CA).
        public var additionalTrustRootsFile: String?
        /// Whether relays whose host is, or resolves to, a loopback, private, link-local or reserved address are
        /// refused (checked before every connection attempt; the refusal is the relay's
        /// ``RelayStatus/lastError``). For pools that connect to relays a requester named, which must not lead
        /// into the host's own network. The check and the connection look the name up separately, moments
        /// apart: a DNS answer that changes in between is not caught.
        public var refusesPrivateAddresses = false
        /// Whether ``RelayPool/run()`` ends on swift-service-lifecycle's graceful shutdown. An owner that still
        /// needs the pool while it winds down (to publish the answers of requests in flight) sets it to false
        /// and cancels `run()` itself when done.
        public var stopsOnGracefulShutdown = true
        /// Where the per-relay metrics go (the global swift-metrics factory by default).
        public var metricsFactory: any MetricsFactory = MetricsSystem.factory
        /// Dimensions added to every per-relay metric besides `relay`, telling apart pools that connect to the
        /// same relays (a service's listening and publishing connections, say).
        public var metricsDimensions: [(String, String)] = []

        public init() {}
    }

    struct Registry {
        var connections: [RelayURL: RelayConnection] = [:]
        var subscriptions: [String: PoolSubscription] = [:]
        /// Connections added and not yet handed to ``run()``.
        var starts: AsyncStream<RelayConnection>.Continuation
    }

    public let configuration: Configuration
    private let authenticator: (any RelayAuthenticator)?
    private let logger: Logger
    private let registry: Mutex<Registry>
    private let starts: AsyncStream<RelayConnection>

    /// A pool for `relays`; `signer` answers NIP-42 challenges (without one, `auth-required:` refusals are
    /// reported as they are).
    public convenience init(
        relays: [RelayURL] = [], signer: (any EventSigner)? = nil, configuration: Configuration = Configuration(), logger: Logger
    ) {
        self.init(relays: relays, authenticator: signer.map(SingleKeyAuthenticator.init), configuration: configuration, logger: logger)
    }

    /// A pool for `relays` whose NIP-42 answers come from `authenticator`: a service with several keys
    /// authenticates as each key a refused subscription or publish needs.
    public init(
        relays: [RelayURL] = [], authenticator: (any RelayAuthenticator)?, configuration: Configuration = Configuration(), logger: Logger
    ) {
        self.configuration = configuration
        self.authenticator = authenticator
        self.logger = logger
        let (stream, continuation) = AsyncStream<RelayConnection>.makeStream()
        self.starts = stream
        self.registry = Mutex(Registry(starts: continuation))
        for url in relays { add(url) }
    }

    /// The relays in the pool.
    public var relays: [RelayURL] { registry.withLock { $0.connections.keys.sorted() } }

    /// Each relay's connection state and counters.
    public func status() -> [RelayStatus] {
        registry.withLock { Array($0.connections.values) }.map(\.status).sorted { $0.url < $1.url }
    }

    /// Adds a relay (connected while the pool runs). Subscriptions that span all relays are opened on it.
    /// Returns false if it is already in the pool.
    @discardableResult
    public func add(_ url: RelayURL) -> Bool {
        let delegate = Delegate(pool: self)
        return registry.withLock { registry in
            guard registry.connections[url] == nil else { return false }
            let connection = RelayConnection(url: url, configuration: configuration, authenticator: authenticator, delegate: delegate, logger: logger)
            registry.connections[url] = connection
            for (id, subscription) in registry.subscriptions where subscription.relays == nil {
                connection.subscribe(id, filters: subscription.filters.withLock { $0 })
            }
            registry.starts.yield(connection)
            return true
        }
    }

    /// Closes and forgets a relay; its pending publishes end as unreachable.
    public func remove(_ url: RelayURL) {
        let connection = registry.withLock { $0.connections.removeValue(forKey: url) }
        connection?.stop()
    }

    /// Runs every relay's connection until cancelled or, as a `Service`, until graceful shutdown.
    public func run() async throws {
        let connections: @Sendable () async -> Void = {
            await withDiscardingTaskGroup { group in
                for await connection in self.starts {
                    group.addTask { await connection.run() }
                }
            }
        }
        if configuration.stopsOnGracefulShutdown {
            await cancelWhenGracefulShutdown { await connections() }
        } else {
            await connections()
        }
        let subscriptions = registry.withLock { registry in
            registry.starts.finish()
            return Array(registry.subscriptions.values)
        }
        for subscription in subscriptions { subscription.finish() }
    }

    /// Runs the pool while `body` runs and stops it when `body` returns or throws: for tools and tests that
    /// use a pool for one job (a service runs it as a `Service` instead).
    public func withRunning<Result: Sendable>(_ body: () async throws -> Result) async throws -> Result {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.run() }
            defer { group.cancelAll() }
            return try await body()
        }
    }

    // MARK: Publishing

    /// Publishes `event` to `relays` (all by default) and waits for each relay's answer, at most `timeout`.
    ///
    /// A relay that is down gets the event when it comes back, within the timeout; `auth-required:` and
    /// `rate-limited:` refusals are retried after authenticating or backing off.
    public func publish(_ event: Event, to relays: [RelayURL]? = nil, timeout: Duration? = nil) async -> [RelayURL: PublishResult] {
        let targets = registry.withLock { registry in
            relays.map { $0.compactMap { registry.connections[$0] } } ?? Array(registry.connections.values)
        }
        let timeout = timeout ?? configuration.publishTimeout
        var results = [RelayURL: PublishResult]()
        if targets.count == 1 {
            // No child task for the common case of one relay.
            results[targets[0].url] = await targets[0].publish(event, timeout: timeout)
        } else {
            await withTaskGroup(of: (RelayURL, PublishResult).self) { group in
                for connection in targets {
                    group.addTask { (connection.url, await connection.publish(event, timeout: timeout)) }
                }
                for await (url, result) in group { results[url] = result }
            }
        }
        for url in relays ?? [] where results[url] == nil {
            results[url] = .unreachable(reason: "not in the pool")
        }
        return results
    }

    // MARK: Subscriptions

    /// Opens a subscription on `relays` (every relay in the pool, now and later, by default), runs `body` with
    /// its items, and closes it on every relay when `body` returns or throws.
    ///
    /// Events are verified before they are delivered and deduplicated across relays. After a reconnect the
    /// subscription is resumed from the newest event seen (minus ``Configuration/resumeMargin``). When the
    /// consumer falls ``Configuration/subscriptionBufferSize`` items behind, the relays feeding it are not read
    /// until it catches up.
    public func withSubscription<Result>(
        _ filters: [Filter], on relays: [RelayURL]? = nil,
        _ body: (RelaySubscription) async throws -> Result
    ) async throws -> Result {
        let id = Hex.encode(SecureMemory.randomBytes(8))
        let subscription = PoolSubscription(
            filters: filters, relays: relays.map(Set.init), bufferSize: configuration.subscriptionBufferSize,
            deduplicationCapacity: configuration.deduplicationCapacity)
        let connections = registry.withLock { registry in
            registry.subscriptions[id] = subscription
            return registry.connections.values.filter { relays?.contains($0.url) ?? true }
        }
        for connection in connections { connection.subscribe(id, filters: filters) }
        defer {
            let connections = registry.withLock { registry in
                registry.subscriptions[id] = nil
                return Array(registry.connections.values)
            }
            for connection in connections { connection.unsubscribe(id) }
            subscription.finish()
        }
        return try await body(RelaySubscription(id: id, channel: subscription.channel, endOfStoredEventsConnections: subscription.endOfStoredEventsConnections))
    }

    /// Replaces the filters of an open subscription on every relay it spans. Each relay gets the new filters
    /// under a new subscription id and keeps serving the old ones until it answers them (`EOSE`); see
    /// ``RelayStatus/isListeningToLatestFilters``. Events already delivered are not delivered again.
    public func updateFilters(_ filters: [Filter], of subscription: RelaySubscription) {
        let connections: [RelayConnection] = registry.withLock { registry in
            guard let shared = registry.subscriptions[subscription.id] else { return [] }
            shared.filters.withLock { $0 = filters }
            return registry.connections.values.filter { shared.relays?.contains($0.url) ?? true }
        }
        for connection in connections { connection.subscribe(subscription.id, filters: filters) }
    }

    /// Stored events matching `filters` from `relays` (all by default): collected until every relay has sent
    /// `EOSE` or closed the request, or `timeout` passes; deduplicated, newest first.
    public func fetch(_ filters: [Filter], from relays: [RelayURL]? = nil, timeout: Duration = .seconds(10)) async throws -> [Event] {
        let expected = Set(relays ?? self.relays)
        let collected = try await withSubscription(filters, on: relays) { subscription in
            let timer = Deadlines.shared.schedule(at: .now + timeout) { subscription.stop() }
            defer { Deadlines.shared.cancel(timer) }
            var events: [Event] = []
            var pending = expected
            for await item in subscription {
                switch item {
                case .event(let event, _): events.append(event)
                case .endOfStoredEvents(let relay), .closed(let relay, _): pending.remove(relay)
                }
                if pending.isEmpty { break }
            }
            return events
        }
        return collected.sorted(by: Event.queryOrder)
    }

    fileprivate func subscription(_ id: String) -> PoolSubscription? {
        registry.withLock { $0.subscriptions[id] }
    }

    /// Forwards what connections receive to the pool's subscriptions (holds the pool weakly: connections
    /// must not keep a removed pool alive).
    struct Delegate: RelayConnectionDelegate {
        weak let pool: RelayPool?

        func deliver(_ event: Event, subscriptionID: String, from relay: RelayURL) async {
            await pool?.subscription(subscriptionID)?.deliver(event, from: relay)
        }

        func endOfStoredEvents(subscriptionID: String, from relay: RelayURL, connection: Int) async {
            await pool?.subscription(subscriptionID)?.endOfStoredEvents(from: relay, connection: connection)
        }

        func subscriptionClosed(subscriptionID: String, by relay: RelayURL, message: String) async {
            await pool?.subscription(subscriptionID)?.channel.send(.closed(relay: relay, message: message))
        }
    }
}

/// A pool subscription's shared state: its filters, the relays it spans, the channel its items go through
/// and the ids already delivered.
final class PoolSubscription: Sendable {
    let filters: Mutex<[Filter]>
    let relays: Set<RelayURL>?
    let channel: BoundedChannel<SubscriptionItem>
    private let seen: Mutex<RecentEventIDs>

    init(filters: [Filter], relays: Set<RelayURL>?, bufferSize: Int, deduplicationCapacity: Int) {
        self.channel = BoundedChannel(capacity: bufferSize)
        self.filters = Mutex(filters)
        self.relays = relays
        self.seen = Mutex(RecentEventIDs(capacity: deduplicationCapacity))
    }

    /// Which connection sent each `EOSE` still in the channel, per relay, oldest first.
    let endOfStoredEventsConnections = EndOfStoredEventsConnections()

    func endOfStoredEvents(from relay: RelayURL, connection: Int) async {
        // Noted before it is queued, so whoever reads the item finds its connection.
        endOfStoredEventsConnections.append(connection, for: relay)
        if !(await channel.send(.endOfStoredEvents(relay: relay))) { endOfStoredEventsConnections.dropLast(for: relay) }
    }

    func deliver(_ event: Event, from relay: RelayURL) async {
        guard seen.withLock({ $0.insert(event.id) }) else { return }
        // Not delivered (the sending connection was removed while the subscriber was full, say): a copy from
        // another relay must still get through.
        if !(await channel.send(.event(event, relay: relay))) { seen.withLock { $0.forget(event.id) } }
    }

    func finish() { channel.finish() }
}

/// The items of a pool subscription, in the order each relay sent them; see
/// ``RelayPool/withSubscription(_:on:_:)``. Iterating again after a `break` continues where it stopped.
public struct RelaySubscription: AsyncSequence, Sendable {
    public typealias Element = SubscriptionItem
    public typealias Failure = Never

    /// The subscription id sent to the relays.
    public let id: String
    let channel: BoundedChannel<SubscriptionItem>
    let endOfStoredEventsConnections: EndOfStoredEventsConnections

    /// Which of `relay`'s connections sent the ``SubscriptionItem/endOfStoredEvents(relay:)`` just read (its
    /// ``RelayStatus/reconnects`` count then): call it once for each such item, in order. Nil if unknown.
    package func connectionOfEndOfStoredEvents(from relay: RelayURL) -> Int? {
        endOfStoredEventsConnections.removeFirst(for: relay)
    }

    /// Items delivered to this subscription and not read yet.
    package var buffered: Int { channel.count }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let channel: BoundedChannel<SubscriptionItem>

        public mutating func next() async -> SubscriptionItem? {
            await channel.next()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(channel: channel)
    }

    /// Ends iteration (from any task): items already buffered are still read, then iteration ends. The relays
    /// are told to close the subscription when ``RelayPool/withSubscription(_:on:_:)`` returns.
    public func stop() {
        channel.finish()
    }
}

/// For each relay, the connections that sent the `EOSE` items still queued, in order.
final class EndOfStoredEventsConnections: Sendable {
    private let queues = Mutex<[RelayURL: [Int]]>([:])

    func append(_ connection: Int, for relay: RelayURL) {
        queues.withLock { queues in
            queues[relay, default: []].append(connection)
            // A subscriber that never asks (most do not) keeps only the latest few (one per connection).
            if let count = queues[relay]?.count, count > 64 { queues[relay]?.removeFirst(count - 64) }
        }
    }

    func dropLast(for relay: RelayURL) {
        queues.withLock { _ = $0[relay]?.popLast() }
    }

    func removeFirst(for relay: RelayURL) -> Int? {
        queues.withLock { queues in
            guard var queue = queues[relay], !queue.isEmpty else { return nil }
            let first = queue.removeFirst()
            queues[relay] = queue.isEmpty ? nil : queue
            return first
        }
    }
}

/// The most recent event ids seen, up to a capacity (oldest forgotten first).
struct RecentEventIDs {
    private var members = Set<EventID>()
    private var order: [EventID] = []
    private var next = 0
    let capacity: Int

    init(capacity: Int) {
        self.capacity = max(1, capacity)
        members.reserveCapacity(self.capacity)
    }

    /// Adds `id`; false if it was already there.
    mutating func insert(_ id: EventID) -> Bool {
        guard members.insert(id).inserted else { return false }
        if order.count < capacity {
            order.append(id)
        } else {
            members.remove(order[next])
            order[next] = id
            next = (next + 1) % capacity
        }
        return true
    }

    /// Takes `id` out, so that it counts as new again (rare: the order is rebuilt without it, oldest first).
    mutating func forget(_ id: EventID) {
        guard members.remove(id) != nil else { return }
        order = Array(order[next...] + order[..<next]).filter { $0 != id }
        next = 0
    }
}

/// Who a pool authenticates as on relays that ask (NIP-42).
public protocol RelayAuthenticator: Sendable {
    /// The signers to authenticate as when a relay refuses messages that need `keys` (the keys their
    /// filters `p`-tag, the authors of refused events): the default one first, then each of `keys` held.
    func signers(for keys: Set<PublicKey>) -> [any EventSigner]
}

/// Authenticates as one key, whatever the refused messages need.
struct SingleKeyAuthenticator: RelayAuthenticator {
    let signer: any EventSigner

    func signers(for keys: Set<PublicKey>) -> [any EventSigner] { [signer] }
}
