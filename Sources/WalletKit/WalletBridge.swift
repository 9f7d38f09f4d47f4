public import Logging
import NostrCore
public import NostrCrypto
import NostrRelay
public import NostrService

/// The keys of a wallet-bridge: one master key (kept in the data directory), from which each connection's
/// wallet key and the ledger's node key are derived (HMAC-SHA256 of the master key over a label), so a data
/// directory backup holds them all and connections stay unlinkable.
public struct WalletKeys: Sendable {
    public let master: SecretKey

    public init(master: SecretKey) { self.master = master }

    /// The wallet key of connection `index`.
    public func walletKey(_ index: Int64) throws -> SecretKey {
        try derive("switchboard/nip47/wallet/\(index)")
    }

    /// The key that signs the ledger's invoices.
    public func ledgerNodeKey() throws -> SecretKey {
        try derive("switchboard/nip47/ledger-node")
    }

    private func derive(_ label: String) throws -> SecretKey {
        // An HMAC output is a valid secret key except with probability ~2^-128; try a counter if not.
        for attempt in 0..<8 {
            let digest = HMAC.sha256(key: master, message: Array("\(label)/\(attempt)".utf8))
            if let key = try? digest.withUnsafeBytes({ try SecretKey(bytes: $0) }) { return key }
        }
        throw WalletStoreError.inconsistent("no valid key derives from the master key for \(label)")
    }
}

/// A running wallet service: the runtime listening for every live connection's wallet key, the backend's
/// watchers turned into notifications, and the connections kept in step with the store (a connection made
/// or revoked by the CLI is served or dropped without a restart).
public final class WalletBridge: Sendable {
    public let runtime: ServiceRuntime
    public let service: WalletService
    public let store: any WalletStore
    public let backend: any LightningBackend
    let keys: WalletKeys
    let baseRelays: [RelayURL]
    let logger: Logger
    /// How often the store is checked for new or revoked connections.
    let pollInterval: Duration

    /// - Parameters:
    ///   - configuration: the runtime's; its relays are the service's own, to which each live connection's
    ///     relays are added.
    public init(
        keys: WalletKeys, store: any WalletStore, backend: any LightningBackend, serviceStore: any ServiceStore,
        configuration: ServiceRuntime.Configuration, service: WalletService.Configuration = WalletService.Configuration(),
        pollInterval: Duration = .milliseconds(250), logger: Logger
    ) async throws {
        self.keys = keys
        self.store = store
        self.backend = backend
        self.baseRelays = configuration.relays
        self.pollInterval = pollInterval
        self.logger = logger
        let all = try await store.connections()
        var runtimeConfiguration = configuration
        runtimeConfiguration.relays = Self.relays(base: configuration.relays, connections: all.filter { $0.isServed(at: .now) })
        // Wallet keys are per connection; a relay list for each adds nothing clients use.
        runtimeConfiguration.announcesRelayList = false
        var service = service
        service.metricsFactory = configuration.metricsFactory
        self.service = WalletService(store: store, backend: backend, configuration: service)
        // Revoked and expired connections keep their keys, so their requests are answered UNAUTHORIZED rather
        // than ignored.
        let signers: [any ServiceSigner] = try [LocalServiceKey(keys.master)] + all.map { LocalServiceKey(try keys.walletKey($0.walletIndex)) }
        self.runtime = ServiceRuntime(
            keys: signers, handlers: [self.service], store: serviceStore, configuration: runtimeConfiguration, logger: logger)
    }

    /// The service's own public key (it answers relays' authentication; wallet keys are per connection).
    public var publicKey: PublicKey { keys.master.publicKey }

    /// Subscribed on at least one relay, and every info event confirmed by a relay.
    public var isReady: Bool { runtime.isReady && runtime.isAnnounced }

    /// Notifications being sent at once: each waits for its relays' `OK` (a relay that never answers costs
    /// one its publish timeout and retries), so they go out side by side, not one after another.
    static let concurrentNotifications = 64
    /// Notifications waiting to be sent; beyond, the oldest are dropped (logged): clients that need the truth
    /// look payments up.
    static let queuedNotifications = 10_000

    /// Runs until cancelled or until the runtime stops (graceful shutdown).
    public func run() async throws {
        let (events, queue) = AsyncStream<WalletEvent>.makeStream(bufferingPolicy: .bufferingNewest(Self.queuedNotifications))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.runtime.run() }
            group.addTask {
                defer { queue.finish() }
                try await self.backend.run { event in
                    if case .dropped = queue.yield(event) {
                        self.logger.warning("notifications are queued faster than relays take them; the oldest was dropped")
                    }
                }
            }
            group.addTask { await self.notifyAll(events) }
            group.addTask { await self.followConnections() }
            _ = try await group.next()
            group.cancelAll()
        }
    }

    /// Sends the notifications of `events`, at most ``concurrentNotifications`` at once.
    private func notifyAll(_ events: AsyncStream<WalletEvent>) async {
        let sending = AsyncSemaphore(Self.concurrentNotifications)
        await withDiscardingTaskGroup { group in
            for await event in events {
                guard (try? await sending.acquireUnlessCancelled()) != nil else { break }
                group.addTask {
                    defer { sending.release() }
                    await self.notify(event)
                }
            }
        }
    }

    /// Sends a notification for `event` to its connection's client (both encryption schemes, side by side).
    func notify(_ event: WalletEvent) async {
        let prepared: (WalletConnection, [ServiceReply])?
        do {
            prepared = try await service.notifications(for: event)
        } catch {
            logger.error("could not send a notification", metadata: ["error": "\(error)"])
            return
        }
        guard let (connection, replies) = prepared else { return }
        switch event {
        case .received: service.metrics.notification("payment_received")
        case .sent: service.metrics.notification("payment_sent")
        }
        await withTaskGroup(of: Void.self) { group in
            for reply in replies {
                group.addTask {
                    do {
                        let results = try await self.runtime.send(reply, from: connection.walletKey)
                        if !results.values.contains(where: \.isAccepted) {
                            self.logger.warning("no relay accepted a notification", metadata: ["connection": "\(connection.id)"])
                        }
                    } catch {
                        self.logger.error("could not send a notification", metadata: ["error": "\(error)"])
                    }
                }
            }
        }
    }

    /// Serves connections added since the start and drops revoked ones, whenever the store's version moves.
    private func followConnections() async {
        var seen = (try? await store.connectionsVersion()) ?? 0
        while !Task.isCancelled {
            try? await Task.sleep(for: pollInterval)
            do {
                let version = try await store.connectionsVersion()
                guard version != seen else { continue }
                try await synchronize()
                seen = version
            } catch {
                logger.error("could not follow the connections", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Serves connections the store has and the runtime does not yet, and listens on the relays of the live
    /// ones and of those that ended in the last week (revoked connections keep their keys, so they are
    /// answered UNAUTHORIZED, and their info events' deletions go there).
    public func synchronize() async throws {
        let all = try await store.connections()
        let serving = Set(runtime.publicKeys)
        let added = try all.filter { !serving.contains($0.walletKey) }.map { LocalServiceKey(try keys.walletKey($0.walletIndex)) as any ServiceSigner }
        let live = all.filter { $0.isLive(at: .now) }
        runtime.setRelays(Self.relays(base: baseRelays, connections: all.filter { $0.isServed(at: .now) }))
        try await runtime.addKeys(added)
        // Revocations change the info events (none for revoked connections): announce again.
        runtime.announce()
        logger.info("connections changed", metadata: ["connections": "\(all.count)", "live": "\(live.count)", "added": "\(added.count)"])
    }

    static func relays(base: [RelayURL], connections: [WalletConnection]) -> [RelayURL] {
        Array(Set(base).union(connections.flatMap(\.relays))).sorted()
    }
}
