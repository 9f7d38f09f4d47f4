import Foundation
public import Logging
public import CoreMetrics
import NostrCore
public import NostrCrypto
public import NostrRelay
public import ServiceLifecycle
import Synchronization

/// Runs a keyed service over relays: subscribes to its request kinds on every relay, checks, deduplicates and
/// rate-limits each request, decrypts it, calls its ``RequestHandler``, and publishes the encrypted, signed
/// replies, confirmed by the relays' `OK`.
///
/// The pipeline, per request event:
/// 1. Ingress: id and signature (checked by the pool), size cap, age window, NIP-40 `expiration`, NIP-13
///    minimum proof of work, a handler for the kind and one of the service's keys in its `p` tags.
/// 2. Dedup: a claim in the ``ServiceStore`` journal before the handler runs. A copy from another relay or a
///    replay after a restart never runs the handler again; the recorded replies are re-sent instead.
/// 3. Policy: allow and deny lists, a token bucket per sender, in-flight caps per sender and overall; refusals
///    get the handler's error reply (at most one per second per sender).
/// 4. Decrypt (NIP-44, or NIP-04 when the content has `?iv=`), handle within the handler's timeout, encrypt in
///    the same scheme, sign with the key the request addressed.
/// 5. Publish to the relay the request came from, the service's relays and any the reply names, retrying
///    relays that time out; the outcome goes to the journal.
/// 6. On start, subscriptions begin at the journal's checkpoint minus a margin (within the age window), so
///    requests stored by relays while the service was down are answered.
///
/// Run it as a swift-service-lifecycle `Service`: graceful shutdown stops taking requests, lets the ones in
/// flight finish (up to ``Configuration/shutdownGracePeriod``), records the checkpoint and closes connections.
public final class ServiceRuntime: Service, Sendable {
    public struct Configuration: Sendable {
        /// The relays the service listens on and answers through.
        public var relays: [RelayURL] = []
        /// Largest request event accepted, in bytes of its JSON.
        public var maximumRequestSize = 128 * 1024
        /// Requests created longer ago than this are not answered (also bounds the catch-up after downtime).
        public var maximumAge: Int64 = 3600
        /// Requests dated further than this into the future are not answered.
        public var maximumClockSkew: Int64 = 300
        /// NIP-13 proof of work each request must carry (0 = none).
        public var minimumProofOfWork = 0
        /// The catch-up subscription starts this many seconds before the checkpoint.
        public var catchUpMargin: Int64 = 60
        /// How long checkpoints wait, after subscribing, for every relay's stored requests (its `EOSE`). Relays
        /// send stored events newest first, so a checkpoint moved on before a relay's `EOSE` would let a
        /// restart skip the older ones; a relay silent for longer is taken to be down (its backlog comes when it
        /// reconnects, from the subscription's own start).
        public var catchUpTimeout: Duration = .seconds(60)
        /// Requests handled at the same time, over all senders; more wait (and the relays are read slower).
        /// A request's slot is free again once its reply is signed and recorded: waiting for the relays to
        /// confirm the reply is not handling.
        public var maximumConcurrentRequests = 64
        /// Replies waiting for their relays' `OK` at the same time; more wait before their request's slot is
        /// freed. A relay that never confirms costs each reply its ``publishTimeout`` × ``publishAttempts``
        /// here, not a handler slot.
        public var maximumPendingDeliveries = 1_024
        /// How long a claim on a request holds without renewal, in seconds. The runtime renews its claims every
        /// third of this while it handles them, however long its handler runs; a request whose runtime stopped
        /// (a crash, a killed replica) is taken over this long after the last renewal. At least 3. The lease is
        /// recorded with each claim, so replicas sharing a store may use different values: a claim is judged by
        /// its holder's. At most 86,400 (a day).
        public var claimLease: Int64 = 30
        /// Copies of requests another runtime is handling that are kept, to be checked again when its claim
        /// would lapse: the runtime may have stopped (this service before a restart, or a replica), and then the
        /// request is taken over. Copies beyond this many are counted as duplicates and left to their owner.
        public var maximumDeferredRequests = 1_024
        /// Per-sender limits and lists.
        public var policy = RequestPolicy.Configuration()
        /// How long the relays get to confirm a reply, per attempt, and how many attempts a relay that did not
        /// answer gets.
        public var publishTimeout: Duration = .seconds(5)
        public var publishAttempts = 3
        /// Relays outside ``relays`` (named by replies) kept connected at most; the least recently used goes.
        public var maximumExtraRelays = 32
        /// Whether those relays (a reply's ``ServiceReply/relays``, the requester's inbox relays: chosen by the
        /// requester) may be loopback, private, link-local or reserved addresses. Off, such a relay is not
        /// connected and its delivery is recorded as unreachable, so that a requester cannot make the service
        /// open connections into its own host or network. On for development and for relays on a LAN.
        public var allowsPrivateReplyRelays = false
        /// Above this many keys, the subscription asks for the request kinds without a `p` filter and picks
        /// out the requests addressed to its keys itself: a `REQ` naming thousands of keys exceeds what relays
        /// accept (message size, values per filter). On a dedicated relay this costs nothing; on a shared one,
        /// it reads everyone's requests of those kinds.
        public var maximumKeysInFilter = 1_000
        /// How long ``addKeys(_:)`` waits for the relays to register the new subscription before it announces
        /// the new keys anyway.
        public var listenTimeout: Duration = .seconds(10)
        /// On graceful shutdown, how long requests in flight may take to finish before they are cancelled.
        public var shutdownGracePeriod: Duration = .seconds(10)
        /// How long a handler that has not returned when cancelled (at its ``RequestHandler/timeout``, or at the
        /// end of the grace period) is still waited for. After that its request is answered as timed out (or cut
        /// off by shutdown) and its handling slot is free; the handler is left running, counted in
        /// `switchboard_handlers_abandoned_total`, and what it returns is discarded.
        public var handlerOverdueLimit: Duration = .seconds(10)
        /// Whether the service publishes its relay list (NIP-65 kind 10002: the relays it reads and writes).
        public var announcesRelayList = true
        /// How often announcements (the relay list, handlers' ``RequestHandler/announcements(_:)``) are
        /// published again; after a round some relay did not confirm, the next comes after
        /// ``announcementRetryDelay`` instead.
        public var announcementInterval: Duration = .seconds(3600)
        public var announcementRetryDelay: Duration = .seconds(30)
        /// Requesters' inbox relays remembered (for handlers that reply to them), for how long, how many per
        /// requester at most, and how long a lookup may take.
        public var inboxCacheSize = 10_000
        public var inboxCacheLifetime: Int64 = 3600
        public var maximumInboxRelays = 4
        public var inboxLookupTimeout: Duration = .seconds(3)
        /// The relay pool's settings (its metrics factory is the runtime's).
        public var pool = RelayPool.Configuration()
        /// Where the runtime's metrics go (the global swift-metrics factory by default).
        public var metricsFactory: any MetricsFactory = MetricsSystem.factory

        public init(relays: [RelayURL] = []) {
            self.relays = relays
        }
    }

    public let configuration: Configuration
    /// The service's relays, for everything but listening: replies, announcements, and handlers' fetches and
    /// publishes. The request subscription has connections of its own, so requests waiting for a free slot
    /// (which slows reading them) never hold up the relays' answers (`OK`, `EOSE`) to this pool.
    public let pool: RelayPool
    /// The connections carrying the request subscription, and nothing else.
    let listener: RelayPool
    /// The store holding the journal and handlers' state.
    public let store: any ServiceStore
    /// The keys requests may address (``addKeys(_:)`` adds to them while it runs).
    let keyring: SharedKeyring
    let handlers: [Kind: any RequestHandler]
    let handlerList: [any RequestHandler]
    /// The handlers' watches, fixed at start.
    let watches: [EventWatch]
    /// Relays outside the service's own set that replies must reach (a request's `relays` tag, the requester's
    /// inbox relays), for publishing only: they never receive the service's subscriptions, so a requester
    /// cannot make the service listen on relays of its choosing.
    private let extraRelays: OnDemandRelays
    /// Held while the relay set changes, and while relays removed from it leave ``pool``.
    let relayChanges = Mutex<Void>(())
    private let inboxRelays: InboxRelays
    let logger: Logger
    let metrics: ServiceMetrics
    private let owner = Hex.encode(SecureMemory.randomBytes(8))
    let state: Mutex<RuntimeState>
    /// Wakes the announcement loop (start, timer, relay changes); coalesces.
    let announcementSignal = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    /// Serialises replacing the request subscription's filters.
    let resubscribing = AsyncSemaphore(1)

    struct Keyring {
        var byKey: [PublicKey: any ServiceSigner]
        /// In the order given; the first key is the service's own (NIP-42, untargeted requests).
        var order: [PublicKey]
        /// Keys added while running whose requests the relays may not deliver yet: left out of announcements
        /// until ``ServiceRuntime/addKeys(_:)`` has waited for the relays.
        var unannounced: Set<PublicKey> = []
    }

    /// The keys, shared with the relay pools, which authenticate (NIP-42) as the first key and as each key a
    /// refused subscription or publish needs.
    final class SharedKeyring: RelayAuthenticator {
        private let state: Mutex<Keyring>

        init(_ keyring: Keyring) {
            state = Mutex(keyring)
        }

        func withLock<Result: Sendable>(_ body: (inout Keyring) -> Result) -> Result {
            state.withLock { body(&$0) }
        }

        func signers(for keys: Set<PublicKey>) -> [any EventSigner] {
            state.withLock { keyring in
                guard let first = keyring.order.first, let own = keyring.byKey[first] else { return [] }
                return [own] + keyring.order.dropFirst().filter(keys.contains).compactMap { keyring.byKey[$0] }
            }
        }
    }

    struct RuntimeState {
        var policy: RequestPolicy
        /// Requests waiting for their sender's slot, by the policy's ticket.
        var turnWaiters: [UInt64: CheckedContinuation<Bool, Never>] = [:]
        var checkpoints: [PublicKey: Timestamp] = [:]
        /// The `created_at` of each request being handled, per key: the checkpoint does not pass the oldest,
        /// so a restart's catch-up delivers it again.
        var inFlight: [PublicKey: [EventID: Timestamp]] = [:]
        /// The oldest request per key that could not be claimed (the journal failed) or was left for the relays
        /// at shutdown: the checkpoint stays before it for as long as this process runs.
        var unjournaled: [PublicKey: Timestamp] = [:]
        /// Requests set aside until another runtime's claim on them would lapse.
        var deferred = 0
        var subscribed = false
        var stopping = false
        var subscription: RelaySubscription?
        /// The intake's wait for a free slot (every one taken), which stopping ends.
        var slotWait: Task<Void, any Error>?
        /// Until every relay has sent its stored requests: the relays still to send `EOSE`, and when checkpoints
        /// move on regardless (``Configuration/catchUpTimeout`` after the subscription, or after the last event
        /// one of them delivered, whichever is later: a relay still sending is slow, not silent; but never
        /// later than `limit`, ten timeouts after the subscription). Nil once caught up.
        var catchUp: (relays: Set<RelayURL>, until: ContinuousClock.Instant, limit: ContinuousClock.Instant)?
        /// Per relay, the connection (its ``RelayStatus/reconnects`` count) whose `EOSE` was last taken in.
        var caughtUpOn: [RelayURL: Int] = [:]
        /// Relays on a connection whose `EOSE` has not been taken in yet (a reconnect: the relay sends what it
        /// stored meanwhile, newest first), each with that connection and when it was first seen or its last
        /// event arrived, whichever is later: checkpoints wait for them, as for the first catch-up, until one
        /// sends nothing for ``Configuration/catchUpTimeout`` (then it is given up on for that connection).
        /// `began`: when that connection was first seen (the wait for one connection is bounded by ten timeouts).
        var resuming: [RelayURL: (connection: Int, began: ContinuousClock.Instant, since: ContinuousClock.Instant, givenUp: Bool)] = [:]
        /// Relays the next announcement round also goes to (ones just removed from the service's set; they
        /// stay in ``ServiceRuntime/pool`` until then).
        var formerRelays: Set<RelayURL> = []
        /// Whether the last announcement round was confirmed, every event by at least one relay.
        var announced = false
        /// The `created_at` of the last announcement round. Replaceable events need a strictly newer time to
        /// replace the previous version, so a round within the same second as the last one moves a second on.
        var lastAnnouncementTime: Timestamp = 0
    }

    /// - Parameters:
    ///   - keys: the keys requests may address; the first also answers relays' NIP-42 challenges.
    ///   - handlers: one per request kind (a kind claimed twice is a programming error).
    ///   - store: the journal and handlers' state (``SQLiteServiceStore``, or a PostgreSQL store for replicas).
    ///   - configuration: relays, limits and timing.
    ///   - logger: where the runtime logs (event ids, kinds and public keys; never content).
    public init(
        keys: [any ServiceSigner], handlers: [any RequestHandler], store: any ServiceStore,
        configuration: Configuration, logger: Logger
    ) {
        precondition(!keys.isEmpty, "a service needs at least one key")
        self.configuration = configuration
        self.store = store
        var order: [PublicKey] = []
        for key in keys where !order.contains(key.publicKey) { order.append(key.publicKey) }
        let keyring = SharedKeyring(Keyring(byKey: Dictionary(keys.map { ($0.publicKey, $0) }, uniquingKeysWith: { first, _ in first }), order: order))
        self.keyring = keyring
        var byKind: [Kind: any RequestHandler] = [:]
        for handler in handlers {
            for kind in handler.kinds {
                precondition(byKind[kind] == nil, "two handlers for kind \(kind)")
                byKind[kind] = handler
            }
        }
        self.handlers = byKind
        self.handlerList = handlers
        self.watches = handlers.flatMap(\.watches)
        self.logger = logger
        func poolConfiguration(_ role: String) -> RelayPool.Configuration {
            var poolConfiguration = configuration.pool
            poolConfiguration.stopsOnGracefulShutdown = false
            poolConfiguration.metricsFactory = configuration.metricsFactory
            poolConfiguration.metricsDimensions.append(("connection", role))
            return poolConfiguration
        }
        self.listener = RelayPool(
            relays: configuration.relays, authenticator: keyring, configuration: poolConfiguration("listen"), logger: logger)
        self.pool = RelayPool(
            relays: configuration.relays, authenticator: keyring, configuration: poolConfiguration("work"), logger: logger)
        var extraConfiguration = poolConfiguration("extra")
        extraConfiguration.refusesPrivateAddresses = !configuration.allowsPrivateReplyRelays
        self.extraRelays = OnDemandRelays(capacity: configuration.maximumExtraRelays, configuration: extraConfiguration, logger: logger)
        self.inboxRelays = InboxRelays(
            pool: pool, capacity: configuration.inboxCacheSize, lifetime: configuration.inboxCacheLifetime,
            maximumPerUser: configuration.maximumInboxRelays, timeout: configuration.inboxLookupTimeout)
        self.metrics = ServiceMetrics(factory: configuration.metricsFactory)
        self.state = Mutex(RuntimeState(policy: RequestPolicy(configuration: configuration.policy)))
    }

    /// True once the request subscription has been sent to the relays (readiness for health checks is this
    /// plus at least one relay listening).
    public var isSubscribed: Bool { state.withLock { $0.subscribed } }

    /// Ready to serve: subscribed and not stopping, and at least one relay connected that has answered the
    /// subscription with `EOSE` on this connection (``RelayStatus/isListening``). A relay that has not yet
    /// registered the subscription would let an ephemeral request (NIP-46's, NIP-47's) pass unseen; one that
    /// closed it is asked again after a back-off.
    public var isReady: Bool {
        state.withLock { $0.subscribed && !$0.stopping } && listener.status().contains(where: \.isListening)
    }

    /// The listening connections' states (what ``isReady`` looks at).
    public func relayStatus() -> [RelayStatus] { listener.status() }

    // MARK: Running

    public func run() async throws {
        let filters = try await requestFilters()
        try await withThrowingTaskGroup(of: Void.self) { connections in
            connections.addTask { try await self.listener.run() }
            connections.addTask { try await self.pool.run() }
            connections.addTask { try await self.extraRelays.pool.run() }
            connections.addTask { await self.flushCheckpointsPeriodically() }
            connections.addTask { await self.renewClaimsPeriodically() }
            connections.addTask { await self.announceWhenAsked() }
            connections.addTask { await self.askForAnnouncementsPeriodically() }
            connections.addTask { await self.watch() }
            defer { connections.cancelAll() }
            let deadline = try await listener.withSubscription(filters) { subscription in
                let stopping = state.withLock { state in
                    state.subscription = subscription
                    state.subscribed = true
                    state.catchUp = (Set(listener.relays), .now + configuration.catchUpTimeout, .now + configuration.catchUpTimeout * 10)
                    return state.stopping
                }
                // Asked to stop before there was a subscription to stop.
                if stopping { subscription.stop() }
                announcementSignal.continuation.yield()
                logger.info("listening", metadata: [
                    "nostr.kinds": "\(handlers.keys.map(\.rawValue).sorted())", "nostr.relays": "\(configuration.relays.count)",
                ])
                return await withGracefulShutdownHandler {
                    await intake(subscription)
                } onGracefulShutdown: {
                    self.stopIntake()
                }
            }
            await flushCheckpoints()
            await flushJournal(until: deadline)
        }
        logger.info("stopped")
    }

    /// Stops taking requests: ``run()`` then waits for those in flight and returns. Graceful shutdown does
    /// the same.
    public func stopIntake() {
        let (subscription, slotWait) = state.withLock { state in
            state.stopping = true
            return (state.subscription, state.slotWait)
        }
        subscription?.stop()
        slotWait?.cancel()
    }

    /// The public keys requests may address, the service's own first.
    public var publicKeys: [PublicKey] { keyring.withLock(\.order) }

    /// Starts answering requests addressed to `keys` (one per connection, say) without a restart: the
    /// subscription is replaced on every relay, and once the relays have registered it (or after
    /// ``Configuration/listenTimeout``) the new keys' announcements are published, so a client that sees them
    /// may send its first request at once, even an ephemeral one.
    public func addKeys(_ keys: [any ServiceSigner]) async throws {
        let added = keyring.withLock { keyring in
            var added: Set<PublicKey> = []
            for key in keys where keyring.byKey[key.publicKey] == nil {
                keyring.byKey[key.publicKey] = key
                keyring.order.append(key.publicKey)
                added.insert(key.publicKey)
            }
            keyring.unannounced.formUnion(added)
            return added
        }
        guard !added.isEmpty else { return }
        let subscribed: Bool
        do {
            subscribed = try await resubscribe()
        } catch {
            // Not listening for them: taken out again, so that a later call adds them anew.
            keyring.withLock { keyring in
                for key in added { keyring.byKey[key] = nil }
                keyring.order.removeAll(where: added.contains)
                keyring.unannounced.subtract(added)
            }
            throw error
        }
        defer {
            keyring.withLock { $0.unannounced.subtract(added) }
            announcementSignal.continuation.yield()
        }
        if subscribed, !(await waitUntilListening(timeout: configuration.listenTimeout)) {
            logger.warning("not every relay registered the subscription for the new keys in time; announcing them anyway", metadata: [
                "nostr.relays": "\(relayStatus().map { "\($0.url.string): \($0.isListeningToLatestFilters ? "listening" : $0.isConnected ? "connected" : "down")" }.joined(separator: ", "))",
            ])
        }
    }

    /// Sends the request subscription's current filters to the relays, replacing the old ones. False if there
    /// is no subscription yet (``run()`` subscribes with the current keys). One at a time, so that filters
    /// made from an older keyring never replace newer ones.
    private func resubscribe() async throws -> Bool {
        await resubscribing.acquire()
        defer { resubscribing.release() }
        let filters = try await requestFilters()
        guard let subscription = state.withLock({ $0.subscription }) else { return false }
        listener.updateFilters(filters, of: subscription)
        return true
    }

    /// Waits until the relays in `relays` (all the service listens on, by default) have registered the
    /// request subscription's latest filters: at least one of them, and every one that is connected (or still
    /// making its first connection) and has not refused the subscription. Requests sent from then on reach the
    /// service there, ephemeral ones included. False after `timeout`.
    public func waitUntilListening(on relays: Set<RelayURL>? = nil, timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            let statuses = relayStatus().filter { relays?.contains($0.url) ?? true }
            let awaited = statuses.filter { ($0.isConnected && $0.closedSubscriptions == 0) || !$0.hasAttemptedConnection }
            if statuses.contains(where: \.isListeningToLatestFilters), awaited.allSatisfy(\.isListeningToLatestFilters) {
                return true
            }
            guard ContinuousClock.now < deadline, !Task.isCancelled else { return false }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Publishes an event that answers no request (a notification): `reply.content` is encrypted from `key`
    /// (one of the service's keys) to `reply.recipient` in `reply.encryption`, signed by `key`, and sent to the
    /// service's relays and `reply.relays`, retrying relays that do not answer.
    @discardableResult
    public func send(_ reply: ServiceReply, from key: PublicKey) async throws -> [RelayURL: PublishResult] {
        guard let signer = keyring.withLock({ $0.byKey[key] }) else {
            throw ServiceError(.unauthorized, "\(key.hex) is not one of this service's keys")
        }
        let content: String
        switch reply.encryption {
        case .plaintext: content = reply.content
        case .nip44, .nip04:
            guard let recipient = reply.recipient else { throw ServiceError(.badRequest, "an encrypted event needs a recipient") }
            content = try reply.encryption == .nip44
                ? signer.nip44Encrypt(reply.content, to: recipient) : signer.nip04Encrypt(reply.content, to: recipient)
        }
        let event = try await signer.sign(EventTemplate(kind: reply.kind, content: content, tags: reply.tags))
        return await publishConfirmed(event, to: Set(pool.relays).union(reply.relays))
    }

    /// Where the subscriptions start: the checkpoint minus the margin, but not before the age window.
    func catchUpStart() async throws -> Timestamp {
        var since = Timestamp.now - configuration.maximumAge
        let keyOrder = keyring.withLock(\.order)
        var checkpoints: [Timestamp] = []
        for key in keyOrder {
            if let checkpoint = try await store.checkpoint(for: key) { checkpoints.append(checkpoint) }
        }
        if checkpoints.count == keyOrder.count, let oldest = checkpoints.min() {
            since = max(since, oldest - configuration.catchUpMargin)
        }
        return since
    }

    /// The request subscription: every handled kind `p`-tagged to one of the keys, plus the untargeted kinds,
    /// from the catch-up start.
    func requestFilters() async throws -> [Filter] {
        let since = try await catchUpStart()
        let keyOrder = keyring.withLock(\.order)
        let targeted = Set(handlers.keys)
        let untargeted = Set(handlers.filter { $0.value.acceptsUntargeted }.map(\.key))
        var filters = keyOrder.count > configuration.maximumKeysInFilter
            ? [Filter(kinds: targeted, since: since)]
            : [Filter(kinds: targeted, tags: ["p": Set(keyOrder.map(\.hex))], since: since)]
        if !untargeted.isEmpty { filters.append(Filter(kinds: untargeted, since: since)) }
        return filters
    }

    /// The handlers' watches, on the work pool's connections: a full intake stops the listener's connections
    /// from being read (backpressure), and what is watched (a cancellation, say) must still arrive then.
    private func watch() async {
        guard !watches.isEmpty else { return }
        let since: Timestamp
        do {
            since = try await catchUpStart()
        } catch {
            // Without the checkpoint, from the start of the age window: more than needed, nothing missed.
            logger.warning("could not read the checkpoints; watching from the start of the age window", metadata: ["error": "\(error)"])
            since = .now - configuration.maximumAge
        }
        let filters = watches.map { watch in
            var filter = watch.filter
            filter.since = since
            return filter
        }
        try? await pool.withSubscription(filters) { subscription in
            for await item in subscription {
                guard case .event(let event, let relay) = item else { continue }
                for watch in watches where watch.filter.matches(event) { await watch.observe(event, relay) }
            }
        }
    }

    /// Takes requests until the subscription ends, then lets those in flight finish; returns the end of their
    /// grace period.
    private func intake(_ subscription: RelaySubscription) async -> ContinuousClock.Instant {
        let slots = AsyncSemaphore(configuration.maximumConcurrentRequests)
        // Requests waiting for their sender's turn hold no slot; they are counted here (for the shutdown).
        let waiting = AsyncSemaphore(Int(Int32.max))
        let deliveries = AsyncSemaphore(configuration.maximumPendingDeliveries)
        var deadline = ContinuousClock.now
        await withDiscardingTaskGroup { group in
            for await item in subscription {
                if case .endOfStoredEvents(let relay) = item {
                    caughtUp(relay, connection: subscription.connectionOfEndOfStoredEvents(from: relay))
                }
                guard case .event(let event, let relay) = item else { continue }
                let stopping = state.withLock { state in
                    // A relay still sending stored requests is making progress: its catch-up is not over.
                    if state.catchUp?.relays.contains(relay) == true, let catchUp = state.catchUp {
                        // Bounded: a relay that sends live events but never `EOSE` does not hold checkpoints forever.
                        state.catchUp?.until = min(.now + configuration.catchUpTimeout, catchUp.limit)
                    }
                    if state.resuming[relay]?.givenUp == false { state.resuming[relay]?.since = .now }
                    return state.stopping
                }
                guard let route = admit(event) else { continue }
                // Once intake stops, what the subscription had buffered is still read, but not run: relays keep a
                // regular request, so the restart's catch-up brings it back; an ephemeral one they do not, so it
                // is answered now, counted as waiting meanwhile (no slot: those may all be busy).
                var cutOff = stopping
                if !cutOff { cutOff = await !takeSlot(slots) }
                if cutOff && !event.kind.isEphemeral {
                    pinCheckpoint(before: event, route: route)
                    continue
                }
                let slot = cutOff ? Slot(waitingIn: waiting, slots: slots) : Slot(slots: slots, waiting: waiting)
                group.addTask {
                    guard let delivery = await self.process(event, relay: relay, route: route, slot: slot, cutOff: cutOff) else {
                        slot.finish()
                        return
                    }
                    // The reply is recorded: the request's slot passes to its delivery.
                    await deliveries.acquire()
                    slot.finish()
                    defer { deliveries.release() }
                    await self.deliver(delivery)
                }
            }
            // Intake has stopped: let what is in flight finish and its replies reach the relays, within the
            // grace period (counted from when the buffered requests have been read, which takes no longer than
            // their claims).
            deadline = ContinuousClock.now + configuration.shutdownGracePeriod
            // A request moves from waiting to a slot, or (when its sender is over its limits) from a slot to
            // waiting: both must be idle at once.
            var finished = false
            repeat {
                finished = await waiting.waitUntilIdle(timeout: deadline - ContinuousClock.now)
                if finished { finished = await slots.waitUntilIdle(timeout: deadline - ContinuousClock.now) }
            } while finished && !waiting.isIdle && ContinuousClock.now < deadline
            finished = finished && waiting.isIdle
            if finished { finished = await deliveries.waitUntilIdle(timeout: deadline - ContinuousClock.now) }
            if !finished {
                logger.warning("requests still running or delivering after the grace period; cancelling them")
            }
            // What is left, when all finished, is requests set aside for another runtime's lease: they stay in
            // flight, so the last checkpoint stays before them.
            group.cancelAll()
        }
        return deadline
    }

    /// Takes a slot for the next request, waiting while every one is taken; false, and none taken, once intake
    /// stops (before, during or just after the wait), so that a stop is never held up by busy handlers and no
    /// request starts after it.
    private func takeSlot(_ slots: AsyncSemaphore) async -> Bool {
        if !slots.tryAcquire() {
            let wait = Task { try await slots.acquireUnlessCancelled() }
            let stopping = state.withLock { state in
                if !state.stopping { state.slotWait = wait }
                return state.stopping
            }
            if stopping { wait.cancel() }
            let taken = await withTaskCancellationHandler { (try? await wait.value) != nil } onCancel: { wait.cancel() }
            state.withLock { $0.slotWait = nil }
            guard taken else { return false }
        }
        guard !state.withLock(\.stopping) else {
            slots.release()
            return false
        }
        return true
    }

    /// Requests the relays delivered that the intake has not read yet (for tests).
    package var bufferedRequests: Int { state.withLock { $0.subscription?.buffered ?? 0 } }

    // MARK: The pipeline

    struct Route {
        let handler: any RequestHandler
        let key: any ServiceSigner
    }

    /// Ingress checks that need no storage; nil (counted) when the request is dropped.
    func admit(_ event: Event) -> Route? {
        let now = Timestamp.now
        func drop(_ reason: String) -> Route? {
            metrics.dropped(reason)
            logger.debug("request dropped", metadata: ["nostr.event.id": "\(event.id.hex)", "reason": "\(reason)"])
            return nil
        }
        guard let handler = handlers[event.kind] else { return drop("unknown_kind") }
        let addressed = event.tagValues("p")
        let key: (any ServiceSigner)? = keyring.withLock { keyring in
            if addressed.isEmpty {
                return handler.acceptsUntargeted ? keyring.byKey[keyring.order[0]] : nil
            }
            for value in addressed {
                if let publicKey = try? PublicKey(hex: value), let key = keyring.byKey[publicKey] { return key }
            }
            return nil
        }
        guard let key else { return drop("not_addressed") }
        if event.createdAt < now - configuration.maximumAge { return drop("too_old") }
        if event.createdAt > now + configuration.maximumClockSkew { return drop("future") }
        if let expiration = event.expiration, expiration <= now { return drop("expired") }
        if configuration.minimumProofOfWork > 0 && event.id.difficulty < configuration.minimumProofOfWork {
            return drop("insufficient_pow")
        }
        if event.maximumJSONLength > configuration.maximumRequestSize && event.json.utf8.count > configuration.maximumRequestSize {
            return drop("oversize")
        }
        if !state.withLock({ $0.policy.permits(event.pubkey) }) { return drop("denied") }
        return Route(handler: handler, key: key)
    }

    /// Replies recorded in the journal that are still to be published to their relays.
    struct Delivery: Sendable {
        let request: Event
        let replies: [Event]
        /// The relay the request arrived on.
        let relay: RelayURL
        let handler: any RequestHandler
        /// Relays the replies name.
        let named: [RelayURL]
        /// Whether the outcome goes to the journal (not for replies re-sent to a duplicate).
        let recorded: Bool
    }

    /// A request's handling slot: held from intake until ``finish()`` (its reply recorded), but given back while
    /// the request waits for its sender's turn or on something outside the service. A handler given up on
    /// (``Configuration/handlerOverdueLimit``) may still leave and retake it after ``finish()``: that does
    /// nothing, so the runtime's count of slots stays right.
    final class Slot: Sendable {
        private enum State {
            /// Holding one of `slots`.
            case held
            /// Counted in `waiting` instead.
            case left
            /// Counted in `waiting`, and waiting for one of `slots`.
            case retaking
            /// Given back: nothing held.
            case done
        }

        let slots: AsyncSemaphore
        let waiting: AsyncSemaphore
        private let state: Mutex<State>

        /// A slot taken from `slots`.
        init(slots: AsyncSemaphore, waiting: AsyncSemaphore) {
            self.slots = slots
            self.waiting = waiting
            state = Mutex(.held)
        }

        /// No slot, counted in `waiting` instead: for a request answered without running.
        init(waitingIn waiting: AsyncSemaphore, slots: AsyncSemaphore) {
            self.slots = slots
            self.waiting = waiting
            // `waiting` has room for every request: taking a place in it never fails.
            state = Mutex(waiting.tryAcquire() ? .left : .done)
        }

        /// Runs `wait` without the slot and uncounted (shutdown does not wait for it), and takes a slot again
        /// afterwards. Only before the handler runs.
        func aside<T>(_ wait: () async -> T) async -> T {
            slots.release()
            let result = await wait()
            await slots.acquire()
            return result
        }

        /// Runs `wait` without the slot, counted as waiting instead, and takes a slot again afterwards.
        func without<T>(_ wait: () async -> T) async -> T {
            leave()
            let result = await wait()
            await retake()
            return result
        }

        /// Gives the slot back, counted as waiting instead (``retake()`` undoes it).
        func leave() {
            // `waiting` has room for every request: taking a place in it never fails.
            let left = state.withLock { state in
                guard case .held = state, waiting.tryAcquire() else { return false }
                state = .left
                return true
            }
            if left { slots.release() }
        }

        /// Takes a slot again after ``leave()``, waiting for one; not when the task is cancelled (its request
        /// is ending: ``finish()`` gives back what it holds).
        func retake() async {
            guard !Task.isCancelled else { return }
            let retaking = state.withLock { state in
                guard case .left = state else { return false }
                state = .retaking
                return true
            }
            guard retaking else { return }
            await slots.acquire()
            let kept = state.withLock { state in
                guard case .retaking = state else { return false }
                state = .held
                return true
            }
            // Finished meanwhile: the place in `waiting` was given back then, and the slot is not needed.
            if kept { waiting.release() } else { slots.release() }
        }

        /// The request is done with its slot: gives back what it holds.
        func finish() {
            let was = state.withLock { state in
                defer { state = .done }
                return state
            }
            switch was {
            case .held: slots.release()
            case .left, .retaking: waiting.release()
            case .done: break
            }
        }
    }

    /// `claimLease` within its bounds (3 s to a day: other runtimes add it to timestamps).
    static func lease(_ configuration: Configuration) -> Int64 {
        min(max(configuration.claimLease, 3), 86_400)
    }

    /// The waits between attempts of a journal write.
    private static let journalRetryDelays: [Duration] = [.milliseconds(200), .seconds(1), .seconds(3)]

    /// Runs a journal operation, trying again after each of ``journalRetryDelays``; nil once every attempt has
    /// failed. Each failure is counted and logged. `body` is told whether an earlier attempt failed: a write
    /// whose error hid its success (a connection lost after the commit) finds its own result on the next try.
    ///
    /// Once the calling task is cancelled (shutdown, past the grace period) each attempt runs in a task of its
    /// own, so that the write still happens: the store's client may refuse work for a cancelled task.
    private func retryingJournal<T: Sendable>(
        _ operation: String, logger: Logger, _ body: @escaping @Sendable (_ retried: Bool) async throws -> T
    ) async -> T? {
        var retried = false
        for delay in Self.journalRetryDelays + [.zero] {
            do {
                if Task.isCancelled {
                    let attempt = retried
                    return try await Task { try await body(attempt) }.value
                }
                return try await body(retried)
            } catch {
                metrics.journalError(operation)
                guard delay > .zero else {
                    logger.error("journal write failed; giving up", metadata: ["operation": "\(operation)", "error": "\(error)"])
                    return nil
                }
                logger.warning("journal write failed; trying again", metadata: ["operation": "\(operation)", "error": "\(error)"])
                retried = true
                try? await Task.sleep(for: delay)
            }
        }
        return nil
    }

    /// Claims `event` in the journal, trying again a few times; nil (counted, and the checkpoint pinned before
    /// it) if the journal keeps failing. `uncertain` when a retry found the request claimed by this runtime:
    /// most likely the failed attempt's claim, which did land, but possibly that of an earlier copy whose answer
    /// the journal failed to record, so it may have been answered already.
    private func claimRetrying(_ event: Event, route: Route, lease: Int64, logger: Logger) async -> (claim: ClaimResult, uncertain: Bool)? {
        let entry = JournalEntry(event, service: route.key.publicKey)
        let (store, owner) = (self.store, self.owner)
        let claim = await retryingJournal("claim", logger: logger) { retried -> (claim: ClaimResult, uncertain: Bool) in
            let claim = try await store.claim(entry, owner: owner, now: .now, lease: lease)
            if retried, case .inProgress(let holder, _) = claim, holder == owner { return (.claimed, true) }
            return (claim, false)
        }
        if let claim { return claim }
        metrics.request(kind: "\(event.kind.rawValue)", outcome: "store_error")
        // Not run without a claim. The checkpoint stays before it, so the next start's catch-up brings it back.
        pinCheckpoint(before: event, route: route)
        logger.error("could not claim the request in the journal; not handled until a restart")
        return nil
    }

    /// Takes over an interrupted request; false if another runtime took it first, nil if the journal kept
    /// failing.
    private func reclaimRetrying(_ event: Event, route: Route, lease: Int64, logger: Logger) async -> Bool? {
        let entry = JournalEntry(event, service: route.key.publicKey)
        let (store, owner) = (self.store, self.owner)
        return await retryingJournal("reclaim", logger: logger) { retried -> Bool in
            if try await store.reclaim(entry.id, owner: owner, now: .now, lease: lease) { return true }
            guard retried else { return false }
            // A failed attempt may have taken it over after all: then the claim is this runtime's.
            if case .inProgress(let holder, _) = try await store.claim(entry, owner: owner, now: .now, lease: lease), holder == owner {
                return true
            }
            return false
        }
    }

    /// Records a request's outcome and replies, trying again a few times. Until it is recorded the claim stays
    /// open, and renewed (the request is still in flight here), so no other runtime takes the request over
    /// meanwhile. Recorded, a copy arriving later is answered with these replies instead of being run again.
    private func finishRetrying(_ id: EventID, outcome: String, replies: [Event], logger: Logger) async {
        let (store, owner) = (self.store, self.owner)
        let recorded: Void? = await retryingJournal("finish", logger: logger) { _ in
            try await store.finish(id, owner: owner, outcome: outcome, replies: replies, now: .now)
        }
        if recorded == nil {
            // The claim lapses after its lease: a copy arriving after that (a replica's, or after a restart) is
            // taken over as interrupted.
            logger.error("could not record the answer in the journal")
        }
    }

    /// Gives a claim up (shutdown cut the request off before it ran), so the request runs after the restart.
    private func releaseRetrying(_ id: EventID, logger: Logger) async {
        let (store, owner) = (self.store, self.owner)
        _ = await retryingJournal("release", logger: logger) { _ in try await store.release(id, owner: owner) }
    }

    /// Keeps the checkpoint before `event` for as long as this process runs: the journal failed it, so the next
    /// start's catch-up must bring it back.
    private func pinCheckpoint(before event: Event, route: Route) {
        state.withLock { state in
            state.unjournaled[route.key.publicKey] = min(state.unjournaled[route.key.publicKey] ?? event.createdAt, event.createdAt)
        }
    }

    /// How a queued request's wait ended.
    enum Turn {
        case started, timedOut, cancelled
    }

    /// Claims, checks, decrypts and runs a request and records its replies; returns them for delivery. `cutOff`:
    /// read after intake stopped, so only claimed and answered (the service is shutting down), never run.
    private func process(_ event: Event, relay: RelayURL, route: Route, slot: Slot, cutOff: Bool) async -> Delivery? {
        var logger = self.logger
        // Set in one assignment: some handlers (swift-log's StreamLogHandler) render all metadata on each change.
        var metadata = logger.handler.metadata
        metadata["nostr.event.id"] = .stringConvertible(event.id)
        metadata["nostr.kind"] = .stringConvertible(event.kind.rawValue)
        metadata["nostr.pubkey"] = .stringConvertible(event.pubkey)
        logger.handler.metadata = metadata
        let kind = "\(event.kind.rawValue)"
        let handler = route.handler
        let lease = Self.lease(configuration)
        // In flight from before its claim (which may take a few tries), so no checkpoint flush passes it
        // meanwhile. A request released at shutdown stays in flight, so the last flush does not pass it either.
        let handledHere = state.withLock { state in
            guard state.inFlight[route.key.publicKey]?[event.id] == nil else { return true }
            state.inFlight[route.key.publicKey, default: [:]][event.id] = event.createdAt
            return false
        }
        if handledHere {
            metrics.duplicate(kind: kind)
            return nil
        }
        var released = false
        defer { if !released { state.withLock { _ = $0.inFlight[route.key.publicKey]?.removeValue(forKey: event.id) } } }
        // Whether this copy holds one of the deferred places (kept until it is done, so a copy waiting again is
        // not crowded out).
        var deferred = false
        defer { if deferred { state.withLock { $0.deferred -= 1 } } }
        var claim: ClaimResult
        var uncertain = false
        while true {
            guard let claimed = await claimRetrying(event, route: route, lease: lease, logger: logger) else { return nil }
            claim = claimed.claim
            uncertain = claimed.uncertain
            guard case .inProgress(let holder, let leaseEnds) = claim, holder != owner, !cutOff else { break }
            // Another runtime holds it: a replica, or this service before a crash or restart. Checked again when
            // that claim would lapse; still unfinished then, it was interrupted and is taken over.
            if !deferred {
                deferred = state.withLock { state in
                    guard state.deferred < configuration.maximumDeferredRequests else { return false }
                    state.deferred += 1
                    return true
                }
                guard deferred else { break }
                metrics.deferred(kind: kind)
            }
            let waited = await slot.aside {
                // Checked again when the claim lapses, or after a lease at most (a journal row can say anything).
                let wait = min(max(leaseEnds - Timestamp.now, 0), lease) + 1
                return (try? await Task.sleep(for: .seconds(wait))) != nil
            }
            if !waited || state.withLock({ $0.stopping }) {
                // Cut off by shutdown (no new work starts during the drain): still in flight, so the checkpoint
                // stays before it and a restart's catch-up brings it back.
                released = true
                return nil
            }
        }
        switch claim {
        case .inProgress:
            metrics.duplicate(kind: kind)
            return nil
        case .finished(let replies):
            metrics.duplicate(kind: kind)
            // Re-sent, for a deferred copy too: its owner may have recorded them and stopped before publishing.
            guard !replies.isEmpty else { return nil }
            logger.debug("duplicate request; re-sending its replies")
            return Delivery(request: event, replies: replies, relay: relay, handler: handler, named: [], recorded: false)
        case .interrupted:
            // Taken over first, whether it is run again or answered as interrupted: of several replicas that
            // find it interrupted, only the one that takes it answers.
            guard let taken = await reclaimRetrying(event, route: route, lease: lease, logger: logger) else {
                metrics.request(kind: kind, outcome: "store_error")
                // As for a failed claim: the checkpoint stays before it, so the next start brings it back.
                pinCheckpoint(before: event, route: route)
                logger.error("could not take over an interrupted request in the journal; not handled until a restart")
                return nil
            }
            guard taken else {
                metrics.duplicate(kind: kind)
                return nil
            }
            if !handler.isIdempotent {
                metrics.request(kind: kind, outcome: "interrupted")
                logger.warning("request was interrupted earlier; answering with an error instead of running it again")
                return await refuse(event, relay: relay, route: route, with: Self.interrupted, logger: logger)
            }
        case .claimed:
            if uncertain && !handler.isIdempotent {
                // It may have run already: answered as interrupted, like a request whose process died, so
                // nothing is signed or paid twice.
                metrics.request(kind: kind, outcome: "interrupted")
                return await refuse(event, relay: relay, route: route, with: ServiceError(.interrupted, "the journal failed while accepting this request; send it again"), logger: logger)
            }
        }
        noteCheckpoint(route.key.publicKey, event.createdAt)
        if cutOff {
            metrics.request(kind: kind, outcome: Self.shuttingDown.code.rawValue)
            return await refuse(event, relay: relay, route: route, with: Self.shuttingDown, logger: logger)
        }

        let decision = state.withLock { $0.policy.admit(event.pubkey, now: monotonicSeconds()) }
        switch decision {
        case .admit:
            break
        case .queue(let ticket, let delay):
            metrics.queued(kind: kind)
            switch await slot.without({ await turn(of: event.pubkey, ticket: ticket, delay: delay) }) {
            case .started:
                break
            case .timedOut:
                let error = ServiceError(.tooManyRequests, "too many requests in progress; waited \(Int(configuration.policy.maximumQueueWait)) s for a turn")
                metrics.request(kind: kind, outcome: error.code.rawValue)
                if state.withLock({ $0.policy.refusal(event.pubkey, now: monotonicSeconds()) }) {
                    return await refuse(event, relay: relay, route: route, with: error, logger: logger)
                }
                await finishRetrying(event.id, outcome: "error:\(error.code)", replies: [], logger: logger)
                return nil
            case .cancelled:
                if event.kind.isEphemeral {
                    // Cut off by shutdown before it ran, and relays do not keep it for the restart: answered now.
                    metrics.request(kind: kind, outcome: Self.shuttingDown.code.rawValue)
                    return await refuse(event, relay: relay, route: route, with: Self.shuttingDown, logger: logger)
                }
                // Cut off by shutdown before it ran: released, so it runs after the restart.
                metrics.request(kind: kind, outcome: "cancelled")
                await releaseRetrying(event.id, logger: logger)
                released = true
                return nil
            }
        case .drop:
            metrics.dropped("denied")
            await finishRetrying(event.id, outcome: "dropped:denied", replies: [], logger: logger)
            return nil
        case .refuse(let error, let reply):
            metrics.request(kind: kind, outcome: error.code.rawValue)
            if reply {
                return await refuse(event, relay: relay, route: route, with: error, logger: logger)
            } else {
                await finishRetrying(event.id, outcome: "error:\(error.code)", replies: [], logger: logger)
            }
            return nil
        }
        defer { finished(event.pubkey) }

        let request: ServiceRequest
        do {
            request = try decrypt(event, relay: relay, route: route)
        } catch let error as ServiceError {
            metrics.request(kind: kind, outcome: error.code.rawValue)
            return await refuse(event, relay: relay, route: route, with: error, logger: logger)
        } catch {
            metrics.request(kind: kind, outcome: ServiceError.Code.badRequest.rawValue)
            return await refuse(event, relay: relay, route: route, with: ServiceError(.badRequest, "the content could not be decrypted"), logger: logger)
        }

        let started = ContinuousClock.now
        let running = metrics.running(kind: kind)
        running.increment()
        let (outcome, cutOff) = await run(handler, request, kind: kind, key: route.key, slot: slot, logger: logger)
        running.decrement()
        metrics.handlerDuration(kind: kind, ContinuousClock.now - started)
        var replies: [ServiceReply]
        var outcomeName: String
        switch outcome {
        case .success(let returned):
            replies = returned
            outcomeName = "answered"
        case .failure(let error):
            if error.code == .internal { logger.error("handler failed", metadata: ["error": "\(error.message)"]) }
            replies = handler.errorReply(to: request, error: error).map { [$0] } ?? []
            outcomeName = "error:\(error.code)"
        }
        if cutOff, case .failure = outcome {
            // Cut off by shutdown (a handler that finished all the same is answered as usual).
            if event.kind.isEphemeral {
                // Relays do not keep it, so it will not come back after a restart: answered now. A handler that
                // may run twice says to send it again; any other says it was interrupted, as after a crash.
                let error = handler.isIdempotent ? Self.shuttingDown : Self.interrupted
                replies = handler.errorReply(to: request, error: error).map { [$0] } ?? []
                outcomeName = "error:\(error.code)"
            } else {
                // A handler that may run twice gets its claim released, so the request runs again when it comes
                // back; otherwise the claim stays open and the request is answered as interrupted then. Either
                // way it stays in flight, so the final checkpoint stays before it and the catch-up after a
                // restart brings it back.
                metrics.request(kind: kind, outcome: "cancelled")
                if handler.isIdempotent { await releaseRetrying(event.id, logger: logger) }
                released = true
                return nil
            }
        }
        var events: [Event]
        var unsigned = false
        do {
            events = try await sign(replies, for: request, key: route.key)
        } catch {
            logger.error("could not encrypt or sign the reply", metadata: ["error": "\(error)"])
            unsigned = true
            outcomeName = "error:\(ServiceError.Code.internal)"
            // The client still gets an answer: the protocol's internal error, if that can be signed.
            replies = handler.errorReply(to: request, error: ServiceError(.internal, "internal error")).map { [$0] } ?? []
            events = (try? await sign(replies, for: request, key: route.key)) ?? []
        }
        metrics.request(kind: kind, outcome: unsigned ? "internal" : outcomeName.hasPrefix("error") ? "error" : "answered")
        await finishRetrying(event.id, outcome: outcomeName, replies: events, logger: logger)
        guard !events.isEmpty else { return nil }
        return Delivery(request: event, replies: events, relay: relay, handler: handler, named: replies.flatMap(\.relays), recorded: true)
    }

    /// The answer to a request cut off by shutdown that is not run again (its handler may not run twice).
    static let interrupted = ServiceError(.interrupted, "the service stopped while handling this request; send it again")
    /// The answer to an ephemeral request cut off by shutdown that may be sent again (it did not run, or its
    /// handler may run twice).
    static let shuttingDown = ServiceError(.unavailable, "the service is shutting down; send the request again")

    /// Waits `delay` seconds, then for one of the sender's slots, within the policy's longest wait.
    private func turn(of sender: PublicKey, ticket: UInt64, delay: Double) async -> Turn {
        if delay > 0 {
            do {
                try await Task.sleep(for: .seconds(delay))
            } catch {
                state.withLock { $0.policy.abandon(sender) }
                return .cancelled
            }
        }
        if state.withLock({ $0.policy.startIfFree(sender) }) { return .started }
        let remaining = max(0, configuration.policy.maximumQueueWait - delay)
        return await withTaskGroup(of: Bool?.self) { group in
            group.addTask {
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                        let started: Bool? = self.state.withLock { state in
                            // Cancelled before it could wait (the cancellation handler found nothing to withdraw).
                            if Task.isCancelled {
                                state.policy.abandon(sender)
                                return false
                            }
                            if state.policy.start(sender, ticket: ticket) { return true }
                            state.turnWaiters[ticket] = continuation
                            return nil
                        }
                        if let started { continuation.resume(returning: started) }
                    }
                } onCancel: {
                    let waiter = self.state.withLock { state in
                        state.policy.withdraw(sender, ticket: ticket) ? state.turnWaiters.removeValue(forKey: ticket) : nil
                    }
                    waiter?.resume(returning: false)
                }
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(remaining))
                return nil
            }
            // The first to finish decides, but a slot that came up meanwhile is the request's either way.
            let first = await group.next() ?? nil
            group.cancelAll()
            var started = first == true
            while let next = await group.next() { if next == true { started = true } }
            if started { return .started }
            return Task.isCancelled ? .cancelled : .timedOut
        }
    }

    /// A request of `sender` is done with its slot: it passes to the sender's next waiting request, if any.
    private func finished(_ sender: PublicKey) {
        let next = state.withLock { state in
            state.policy.finished(sender).flatMap { state.turnWaiters.removeValue(forKey: $0) }
        }
        next?.resume(returning: true)
    }

    /// Answers `event` with the handler's error reply for `error` (if its protocol has one) and records it.
    private func refuse(_ event: Event, relay: RelayURL, route: Route, with error: ServiceError, logger: Logger) async -> Delivery? {
        let request = (try? decrypt(event, relay: relay, route: route))
            ?? ServiceRequest(event: event, content: "", encryption: route.handler.payloadEncryption(of: event), recipient: route.key.publicKey, relay: relay)
        let reply = route.handler.errorReply(to: request, error: error)
        var events: [Event] = []
        if let reply { events = (try? await sign([reply], for: request, key: route.key)) ?? [] }
        await finishRetrying(event.id, outcome: "error:\(error.code)", replies: events, logger: logger)
        guard !events.isEmpty else { return nil }
        // To the relays the reply names too (a DVM request's `relays`), as a handler's replies go.
        return Delivery(request: event, replies: events, relay: relay, handler: route.handler, named: reply?.relays ?? [], recorded: true)
    }

    /// Publishes a request's replies (retrying relays that do not confirm) and records the outcome.
    private func deliver(_ delivery: Delivery) async {
        let extra = await replyRelays(delivery.request, handler: delivery.handler, named: delivery.named)
        let outcome = await publish(delivery.replies, arrivedOn: delivery.relay, extra: extra)
        if delivery.recorded {
            let (store, id) = (self.store, delivery.request.id)
            _ = await retryingJournal("record_delivery", logger: logger) { _ in try await store.recordDelivery(id, outcome) }
        }
    }

    func decrypt(_ event: Event, relay: RelayURL, route: Route) throws -> ServiceRequest {
        let encryption = route.handler.payloadEncryption(of: event)
        guard route.handler.encryptions.contains(encryption) else {
            throw ServiceError(.unsupportedEncryption, "\(encryption.rawValue) is not accepted here")
        }
        let content: String
        switch encryption {
        case .plaintext: content = event.content
        case .nip44: content = try route.key.nip44Decrypt(event.content, from: event.pubkey)
        case .nip04: content = try route.key.nip04Decrypt(event.content, from: event.pubkey)
        }
        return ServiceRequest(event: event, content: content, encryption: encryption, recipient: route.key.publicKey, relay: relay)
    }

    /// Runs the handler with its timeout; any error that is not a ``ServiceError`` becomes an internal one.
    /// `cutOff`: shutdown's cancellation came before the handler's answer.
    private func run(
        _ handler: any RequestHandler, _ request: ServiceRequest, kind: String, key: any ServiceSigner, slot: Slot, logger: Logger
    ) async -> (outcome: HandlerAnswer.Outcome, cutOff: Bool) {
        let deadline = ContinuousClock.now + handler.timeout
        let answer = HandlerAnswer()
        let context = RequestContext(
            logger: logger, store: store, pool: pool, deadline: deadline, slot: slot
        ) { reply in
            // A handler given up on says nothing more: its request has had its answer.
            guard !answer.isGivenUp, let events = try? await self.sign([reply], for: request, key: key) else { return [:] }
            let extra = await self.replyRelays(request.event, handler: handler, named: reply.relays)
            var results: [RelayURL: PublishResult] = [:]
            for event in events {
                results = await self.publishOnce(event, to: self.targets(arrivedOn: request.relay, extra: extra)).results
            }
            return results
        }
        // The handler runs as its own task so the shared deadline timer can cancel it; the caller's
        // cancellation (shutdown) is passed on. Once cancelled, it is waited for `handlerOverdueLimit` more.
        let metrics = self.metrics
        let work = Task {
            let result: HandlerAnswer.Outcome
            do {
                result = .success(try await handler.handle(request, context: context))
            } catch let error as ServiceError {
                result = .failure(error)
            } catch {
                if Task.isCancelled {
                    result = .failure(ServiceError(.unavailable, "the service is shutting down"))
                } else {
                    logger.error("handler threw", metadata: ["error": "\(error)"])
                    result = .failure(ServiceError(.internal, "internal error"))
                }
            }
            if !answer.fulfil(result) { logger.warning("a handler given up on returned; what it returned is discarded") }
        }
        let overdue = configuration.handlerOverdueLimit
        let giveUp = { @Sendable in
            work.cancel()
            _ = Deadlines.shared.schedule(at: .now + overdue) {
                guard answer.giveUp() else { return }
                metrics.abandoned(kind: kind)
                logger.warning("a handler did not stop when cancelled; its request is answered without it", metadata: ["overdue": "\(overdue)"])
            }
        }
        let timer = Deadlines.shared.schedule(at: deadline, giveUp)
        let result = await withTaskCancellationHandler { await answer.wait() } onCancel: {
            answer.cutOff()
            giveUp()
        }
        let cutOff = answer.wasCutOff
        // A timer that can still be cancelled has not fired: the handler answered in time (or shutdown gave up on
        // it). A handler that succeeded all the same (it did not stop when cancelled) did what was asked: its
        // answer stands.
        if Deadlines.shared.cancel(timer) {
            return (result ?? .failure(ServiceError(.unavailable, "the service is shutting down")), cutOff)
        }
        if let result, case .success = result { return (result, cutOff) }
        // A handler that may not run twice may have done its work, or be doing it still (given up on): the
        // client is told, so that it checks before it sends the request again.
        let hint = handler.isIdempotent ? "" : "; it may still have taken effect: check before sending it again"
        return (.failure(ServiceError(.timeout, "no answer within \(handler.timeout)\(hint)")), cutOff)
    }

    /// Encrypts each reply's content for its recipient in its scheme and signs it with `key`.
    func sign(_ replies: [ServiceReply], for request: ServiceRequest, key: any ServiceSigner) async throws -> [Event] {
        var events: [Event] = []
        for reply in replies {
            let recipient = reply.recipient ?? request.sender
            let content: String
            switch reply.encryption {
            case .plaintext: content = reply.content
            case .nip44: content = try key.nip44Encrypt(reply.content, to: recipient)
            case .nip04: content = try key.nip04Encrypt(reply.content, to: recipient)
            }
            events.append(try await key.sign(EventTemplate(kind: reply.kind, content: content, tags: reply.tags)))
        }
        return events
    }

    // MARK: Publishing

    func targets(arrivedOn relay: RelayURL, extra: [RelayURL]) -> Set<RelayURL> {
        Set(pool.relays).union([relay]).union(extra)
    }

    /// Publishes `events`, retrying relays that did not answer; returns a summary for the journal.
    private func publish(_ events: [Event], arrivedOn relay: RelayURL, extra: [RelayURL]) async -> String {
        let targets = targets(arrivedOn: relay, extra: extra)
        var accepted = 0, total = 0
        for event in events {
            let results = await publishConfirmed(event, to: targets)
            let ok = results.values.filter(\.isAccepted).count
            metrics.replyPublished(accepted: ok > 0)
            accepted += ok
            total += results.count
        }
        return "accepted \(accepted) of \(total)"
    }

    /// Publishes `event` to `targets`, trying relays that did not answer again (after 1 s, 2 s, ...).
    func publishConfirmed(_ event: Event, to targets: Set<RelayURL>) async -> [RelayURL: PublishResult] {
        var pending = targets
        var results: [RelayURL: PublishResult] = [:]
        for attempt in 0..<max(1, configuration.publishAttempts) {
            if attempt > 0 { try? await Task.sleep(for: .seconds(1 << (attempt - 1))) }
            let (round, refused) = await publishOnce(event, to: pending)
            results.merge(round) { _, new in new }
            pending = Set(round.filter { !$0.value.isFinal }.keys).subtracting(refused)
            if pending.isEmpty || Task.isCancelled { break }
        }
        return results
    }

    /// The relays replies to `request` go to besides the arrival relay and the service's: those the replies
    /// name and, for handlers that want it, the requester's inbox relays.
    private func replyRelays(_ request: Event, handler: any RequestHandler, named: [RelayURL]) async -> [RelayURL] {
        handler.repliesToInbox ? named + (await inboxRelays.relays(of: request.pubkey)) : named
    }

    /// One attempt at every relay of `targets`; `refused`: extra relays not tried for their address (not worth
    /// another attempt).
    private func publishOnce(_ event: Event, to targets: Set<RelayURL>) async -> (results: [RelayURL: PublishResult], refused: Set<RelayURL>) {
        let own = Set(pool.relays)
        let extra = targets.subtracting(own)
        if extra.isEmpty { return (await pool.publish(event, to: Array(targets), timeout: configuration.publishTimeout), []) }
        async let ownResults = pool.publish(event, to: Array(targets.intersection(own)), timeout: configuration.publishTimeout)
        let (extraResults, refused) = await extraRelays.withRelays(Array(extra)) { lease in
            var results = await extraRelays.pool.publish(event, to: lease.taken, timeout: configuration.publishTimeout)
            for (relay, reason) in lease.refused { results[relay] = .unreachable(reason: reason) }
            for relay in lease.full {
                results[relay] = .unreachable(reason: "more extra relays than the service connects to, all in use")
            }
            return (results, Set(lease.refused.keys))
        }
        return (await ownResults.merging(extraResults) { first, _ in first }, refused)
    }

    // MARK: Checkpoints

    private func noteCheckpoint(_ key: PublicKey, _ createdAt: Timestamp) {
        state.withLock { state in
            state.checkpoints[key] = max(state.checkpoints[key] ?? createdAt, createdAt)
        }
    }

    /// `relay` has sent the requests it stored, on `connection` (its reconnect count then): an `EOSE` read
    /// late, from a connection since replaced, does not end the newer connection's catch-up.
    private func caughtUp(_ relay: RelayURL, connection: Int?) {
        state.withLock { state in
            state.catchUp?.relays.remove(relay)
            if state.catchUp?.relays.isEmpty == true { state.catchUp = nil }
            guard let connection else { return }
            state.caughtUpOn[relay] = max(state.caughtUpOn[relay] ?? connection, connection)
            if let resuming = state.resuming[relay], resuming.connection <= connection { state.resuming[relay] = nil }
        }
    }

    /// Waits for the store's queued writes (answers, delivery outcomes, their retries) until the end of the
    /// grace period, or a second from now if that is later: writes that are not failing take milliseconds.
    private func flushJournal(until deadline: ContinuousClock.Instant) async {
        let flushed = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await self.store.flush()
                return true
            }
            group.addTask {
                try? await Task.sleep(until: max(deadline, .now + .seconds(1)))
                return false
            }
            defer { group.cancelAll() }
            return await group.next() ?? false
        }
        if !flushed && !Task.isCancelled { logger.error("journal writes still queued when the grace period ended; their records are lost") }
    }

    private func flushCheckpoints() async {
        // Relays on a new connection still sending what they stored meanwhile (newest first): a checkpoint moved
        // past their older requests before those are taken in would lose them on a restart.
        let statuses = listener.status()
        let (pending, silent) = state.withLock { state -> ([PublicKey: Timestamp], Set<RelayURL>) in
            var silent: Set<RelayURL> = []
            let now = ContinuousClock.now
            if let catchUp = state.catchUp {
                // Still catching up: older stored requests may yet come.
                guard now >= catchUp.until else { return ([:], []) }
                silent = catchUp.relays
                state.catchUp = nil
                // Given up on for their current connections: not waited for again below.
                for status in statuses where silent.contains(status.url) {
                    state.resuming[status.url] = (status.reconnects, now, now, true)
                }
            }
            let relays = Set(statuses.map(\.url))
            state.resuming = state.resuming.filter { relays.contains($0.key) }
            state.caughtUpOn = state.caughtUpOn.filter { relays.contains($0.key) }
            for status in statuses where status.isConnected && state.caughtUpOn[status.url] != status.reconnects
                && state.resuming[status.url]?.connection != status.reconnects
            {
                state.resuming[status.url] = (status.reconnects, now, now, false)
            }
            for (relay, resuming) in state.resuming where !resuming.givenUp
                && (now - resuming.since >= configuration.catchUpTimeout || now - resuming.began >= configuration.catchUpTimeout * 10)
            {
                // Sent nothing for the whole timeout: checkpoints move on without it (logged once).
                silent.insert(relay)
                state.resuming[relay]?.givenUp = true
            }
            if state.resuming.values.contains(where: { !$0.givenUp }) { return ([:], silent) }
            var due: [PublicKey: Timestamp] = [:]
            for (key, newest) in state.checkpoints {
                // Not past a request still being handled (or one that could not be journaled): kept for the
                // next flush.
                let inFlight = state.inFlight[key]?.values.min()
                if let oldest = [inFlight, state.unjournaled[key]].compactMap({ $0 }).min(), oldest < newest {
                    due[key] = oldest
                } else {
                    due[key] = newest
                    state.checkpoints[key] = nil
                }
            }
            return (due, silent)
        }
        if !silent.isEmpty {
            logger.notice("relays sent no end of stored requests in time; checkpoints move on without them", metadata: [
                "nostr.relays": "\(silent.map(\.string).sorted())"
            ])
        }
        for (key, createdAt) in pending {
            do {
                try await store.advanceCheckpoint(for: key, to: createdAt)
            } catch {
                metrics.journalError("checkpoint")
                logger.error("could not record the checkpoint", metadata: ["error": "\(error)"])
                noteCheckpoint(key, createdAt)
            }
        }
    }

    /// Renews the claims of the requests this runtime is handling, every third of the lease.
    private func renewClaimsPeriodically() async {
        let interval = Duration.seconds(Self.lease(configuration) / 3)
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            let ids = state.withLock { $0.inFlight.values.flatMap(\.keys) }
            guard !ids.isEmpty else { continue }
            do {
                try await store.renew(ids, owner: owner, now: .now)
            } catch {
                metrics.journalError("renew")
                logger.warning("could not renew the claims of the requests in flight", metadata: ["error": "\(error)"])
            }
        }
    }

    private func flushCheckpointsPeriodically() async {
        var sincePrune = 0
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            await flushCheckpoints()
            sincePrune += 1
            if sincePrune >= 3600 {
                sincePrune = 0
                // Requests older than the age window are refused at ingress, so their journal rows can go.
                let removed = (try? await store.pruneJournal(before: .now - configuration.maximumAge - 86_400)) ?? 0
                if removed > 0 { logger.info("pruned the journal", metadata: ["rows": "\(removed)"]) }
            }
        }
    }
}

extension PublishResult {
    /// Whether trying again cannot change the answer (accepted or refused, as opposed to no answer).
    var isFinal: Bool {
        switch self {
        case .accepted, .rejected: true
        case .timedOut, .unreachable: false
        }
    }
}

/// A handler's answer, waited for until it comes or is given up on (``ServiceRuntime/Configuration/handlerOverdueLimit``).
final class HandlerAnswer: Sendable {
    typealias Outcome = Result<[ServiceReply], ServiceError>

    private struct State {
        var result: Outcome?
        var givenUp = false
        /// Shutdown's cancellation came before the answer.
        var cutOff = false
        var waiter: CheckedContinuation<Outcome?, Never>?
    }

    private let state = Mutex(State())

    /// Hands the answer over; false if it was given up on first.
    func fulfil(_ result: Outcome) -> Bool { end(with: result) }

    /// Ends the wait without an answer; false if the answer came first.
    func giveUp() -> Bool { end(with: nil) }

    /// Ends the wait once, with `result` (nil: given up); false if it had ended already.
    private func end(with result: Outcome?) -> Bool {
        let (waiter, ended) = state.withLock { state -> (CheckedContinuation<Outcome?, Never>?, Bool) in
            guard !state.givenUp, state.result == nil else { return (nil, false) }
            if let result { state.result = result } else { state.givenUp = true }
            defer { state.waiter = nil }
            return (state.waiter, true)
        }
        waiter?.resume(returning: result)
        return ended
    }

    /// Notes that shutdown cancels the handler: the answer, if it comes, comes after that.
    func cutOff() {
        state.withLock { state in if state.result == nil { state.cutOff = true } }
    }

    var wasCutOff: Bool { state.withLock(\.cutOff) }
    var isGivenUp: Bool { state.withLock(\.givenUp) }

    /// The answer, or nil once given up on. Not ended by cancellation: ``giveUp()`` ends it.
    func wait() async -> Outcome? {
        await withCheckedContinuation { continuation in
            let ready: Outcome?? = state.withLock { state in
                if let result = state.result { return .some(result) }
                if state.givenUp { return .some(nil) }
                state.waiter = continuation
                return .none
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}
