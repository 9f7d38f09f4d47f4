import CoreMetrics
public import Logging
public import NostrCrypto
public import NostrService
public import WalletKit

/// A running job host: the service runtime with a ``DVMService``, the input resolver's connections, and (for
/// priced jobs) the wallet session.
public final class DVMHost: Sendable {
    public let runtime: ServiceRuntime
    public let service: DVMService
    public let resolver: InputResolver
    public let payments: JobPayments?
    public let publicKey: PublicKey
    private let logger: Logger

    /// - Parameters:
    ///   - key: the host's key (requests are addressed to it, results signed with it).
    ///   - store: the journal (``SQLiteServiceStore``, or a PostgreSQL store shared by workers on one key).
    ///   - wallet: the NIP-47 wallet that makes and checks invoices; required when the service is priced.
    public init(
        key: any ServiceSigner, handler: any JobHandler, store: any ServiceStore, service: DVMService.Configuration,
        runtime: ServiceRuntime.Configuration, inputs: InputResolver.Configuration = InputResolver.Configuration(),
        wallet: WalletConnectURI? = nil, invoiceLifetime: Int64 = 600, logger: Logger
    ) {
        publicKey = key.publicKey
        resolver = InputResolver(configuration: inputs, logger: logger)
        payments = wallet.map { JobPayments(wallet: $0, invoiceLifetime: invoiceLifetime, logger: logger) }
        self.service = DVMService(
            handler: handler, configuration: service, resolver: resolver, payments: payments, metricsFactory: runtime.metricsFactory)
        var runtime = runtime
        // Jobs waiting for a payment, an input or a worker hold no handling slot; the running ones do, so the
        // intake takes more requests than run at once for the short steps around them (decrypt, reply).
        runtime.maximumConcurrentRequests = max(runtime.maximumConcurrentRequests, 4 * service.concurrency)
        self.runtime = ServiceRuntime(keys: [key], handlers: [self.service, DVMPing()], store: store, configuration: runtime, logger: logger)
        self.logger = logger
    }

    /// Subscribed on at least one relay and the announcement confirmed.
    public var isReady: Bool { runtime.isReady && runtime.isAnnounced }

    /// Publishes the heartbeat every ``DVMService/Configuration/heartbeatInterval`` once the host is ready
    /// (and soon after a round that no relay accepted), until cancelled.
    private func beat() async {
        let interval = service.configuration.heartbeatInterval
        while !Task.isCancelled {
            guard isReady else {
                try? await Task.sleep(for: .milliseconds(250))
                continue
            }
            let results = (try? await runtime.send(service.heartbeat(), from: publicKey)) ?? [:]
            let accepted = results.values.contains(where: \.isAccepted)
            if !accepted { logger.warning("no relay accepted the heartbeat") }
            try? await Task.sleep(for: accepted ? interval : min(interval, .seconds(30)))
        }
    }

    /// Runs until cancelled or until the runtime stops (graceful shutdown, after the jobs in flight finish
    /// within its grace period); the wallet and the input relays stay connected until then.
    public func run() async throws {
        // The runtime's end is the host's; a part that fails ends it too.
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await self.runtime.run()
                return true
            }
            group.addTask {
                try await self.resolver.run()
                return false
            }
            if let payments {
                group.addTask {
                    try await payments.run()
                    return false
                }
            }
            group.addTask {
                await self.beat()
                return false
            }
            defer { group.cancelAll() }
            while let isRuntime = try await group.next(), !isRuntime {}
        }
    }
}
