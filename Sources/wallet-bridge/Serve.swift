import ArgumentParser
import Foundation
import Logging
import NostrCore
import NostrCrypto
import NostrRelay
import NostrService
import NostrServicePostgres
import Prometheus
import ServiceLifecycle
import WalletKit
import WalletKitPostgres

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve every live connection over the relays until SIGTERM or SIGINT.",
        discussion: """
            Prints a ready line with the service's public key once subscribed and every connection's info \
            event (kind 13194) is confirmed by a relay. Without --relay it starts the embedded relay on \
            127.0.0.1 (development mode).

            --backend ledger (the default) is the built-in ledger: accounts per connection in the store, real \
            BOLT11 invoices (regtest, lnbcrt…) signed by a node key derived from the master key, instant \
            payment between its own invoices, PAYMENT_FAILED for any other invoice. It moves no real bitcoin. \
            --backend lnbits pays and receives through an LNbits wallet whose admin key is in the environment \
            variable named by --lnbits-key-env.
            """)

    @OptionGroup var directory: DataDirectory
    @Option(help: "A relay to serve on (repeat for several); each connection's own relays are added.") var relay: [String] = []
    @Option(help: "ledger or lnbits.") var backend = "ledger"
    @Option(name: .customLong("lnbits-url"), help: "The LNbits server (for --backend lnbits).") var lnbitsURL: String?
    @Option(name: .customLong("lnbits-key-env"), help: "The environment variable holding the LNbits wallet's admin key.")
    var lnbitsKeyEnv = "LNBITS_ADMIN_KEY"
    @Option(help: "Serve GET /metrics and GET /health on HOST:PORT (port 0 = a free one).") var http: String?
    @Option(name: .customLong("max-age"), help: "Requests older than this many seconds are refused (dropped and counted); also the catch-up window after a restart.")
    var maxAge: Int64 = 900
    @Option(name: .customLong("payment-timeout"), help: "Seconds pay_invoice waits for a payment in flight before answering that it is still pending (never as failed).")
    var paymentTimeout: Int = 60
    @Option(name: .customLong("max-unpaid-invoices"), help: "Unpaid, unexpired invoices one connection may have; make_invoice beyond is answered RATE_LIMITED.")
    var maxUnpaidInvoices = 100
    @Option(help: "Requests per second each client may send (sustained); more wait their turn, up to 10 s, or are answered RATE_LIMITED.") var clientRate: Double = 10
    @Option(help: "Requests each client may send in a burst.") var clientBurst: Double = 30
    @Option(help: "Requests of one client handled at once (more wait their turn, up to 10 s, or are answered RATE_LIMITED).") var clientConcurrency = 8
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel = "notice"

    func run() async throws {
        let registry = OperationsServer.bootstrapObservability(logLevel: logLevel)
        let relays = try relay.map { try RelayURL($0) }
        let listener = try http.map(OperationsServer.listenAddress)
        guard ["ledger", "lnbits"].contains(backend) else { throw ValidationError("--backend takes ledger or lnbits") }
        if backend == "lnbits" {
            guard lnbitsURL != nil else { throw ValidationError("--backend lnbits needs --lnbits-url") }
            guard ProcessInfo.processInfo.environment[lnbitsKeyEnv]?.isEmpty == false else {
                throw ValidationError("set \(lnbitsKeyEnv) to the LNbits wallet's admin key")
            }
        }
        let keys = try directory.masterKey()
        let logger = Logger(label: "wallet-bridge")
        let daemon = WalletDaemon(command: self, keys: keys, relays: relays, http: listener, registry: registry, logger: logger)
        let group = ServiceGroup(
            configuration: .init(services: [.init(service: daemon)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

/// The running service: stores, backend, the bridge, the optional operations listener, and in development
/// mode the embedded relay.
struct WalletDaemon: Service {
    let command: Serve
    let keys: WalletKeys
    let relays: [RelayURL]
    let http: (String, Int)?
    let registry: PrometheusCollectorRegistry
    let logger: Logger

    func run() async throws {
        guard relays.isEmpty else { return try await serve(on: relays) }
        try await EmbeddedRelay.withLoopbackRelay(logger: Logger(label: "wallet-bridge.relay")) { url in
            say("development mode: embedded relay on \(url.string) (pass --relay for real relays)")
            try await serve(on: [url])
        }
    }

    private func serve(on relays: [RelayURL]) async throws {
        try command.directory.recordRelays(relays)
        try await ServeLock.holding(in: command.directory.url) { try await serveLocked(on: relays) }
    }

    private func serveLocked(on relays: [RelayURL]) async throws {
        let stores = try await Stores.open(command.directory)
        defer { stores.close() }
        let backend: any LightningBackend
        switch command.backend {
        case "lnbits":
            backend = try LNbitsBackend(
                url: command.lnbitsURL ?? "", adminKey: ProcessInfo.processInfo.environment[command.lnbitsKeyEnv] ?? "",
                store: stores.wallet, logger: logger)
        default:
            backend = LedgerBackend(store: stores.wallet, nodeKey: try keys.ledgerNodeKey())
        }
        var configuration = ServiceRuntime.Configuration(relays: relays)
        configuration.maximumAge = max(60, command.maxAge)
        configuration.policy.rate = command.clientRate
        configuration.policy.burst = max(1, command.clientBurst)
        configuration.policy.maximumConcurrentPerSender = max(1, command.clientConcurrency)
        // A pay_invoice in flight at SIGTERM is answered before the bridge stops (paid, failed, or still in
        // flight after --payment-timeout): cut off, it would get no answer at all (kind 23194 is ephemeral, so
        // it never comes back to be answered as interrupted).
        configuration.shutdownGracePeriod = max(configuration.shutdownGracePeriod, .seconds(max(1, command.paymentTimeout) + 5))
        var service = WalletService.Configuration()
        service.paymentWait = .seconds(max(1, command.paymentTimeout))
        service.maximumUnpaidInvoices = max(1, command.maxUnpaidInvoices)
        let bridge = try await WalletBridge(
            keys: keys, store: stores.wallet, backend: backend, serviceStore: stores.service, configuration: configuration,
            service: service, logger: logger)
        // The ready line waits beside the bridge, so that a bridge that fails, or is stopped, before it is ready
        // ends the command without it.
        var companions: [@Sendable () async throws -> Void] = [{
            while !bridge.isReady {
                try await Task.sleep(for: .milliseconds(20))
            }
            let live = try await stores.wallet.connections().filter { $0.isLive(at: .now) }.count
            say("wallet-bridge ready: service \(bridge.publicKey.hex), \(live) connection\(live == 1 ? "" : "s"), backend \(command.backend), relays \(bridge.runtime.relays.map(\.string).joined(separator: " "))")
        }]
        if let (host, port) = http {
            companions.append {
                try await OperationsServer(
                    host: host, port: port, registry: registry, runtime: bridge.runtime, logger: logger,
                    onListening: { host, port in say("http \(host):\(port)") }
                ).runUntilCancelled()
            }
        }
        // On SIGTERM/SIGINT the bridge returns after its grace period, in which payments in flight are answered on
        // connections that stay open (and `/health` says 503). Then the listener stops.
        try await whileRunning({ try await bridge.run() }, with: companions)
    }
}

/// The wallet store and the runtime's journal: SQLite files in the data directory, or one PostgreSQL
/// database shared by replicas.
struct Stores {
    let wallet: any WalletStore
    let service: any ServiceStore
    private let background: Task<Void, Never>?

    static func open(_ directory: DataDirectory) async throws -> Stores {
        try directory.create()
        if let url = directory.postgresURL {
            let logger = Logger(label: "wallet-bridge.postgres")
            let service = try PostgresServiceStore(url: url, logger: logger)
            let wallet = PostgresWalletStore(client: service.client, logger: logger)
            let background = Task { await service.run() }
            return Stores(wallet: wallet, service: service, background: background)
        }
        func file(_ name: String) throws -> String {
            let path = directory.url.appendingPathComponent(name).path
            try PrivateFile.createIfMissing(atPath: path)
            return path
        }
        return Stores(
            wallet: try SQLiteWalletStore(path: try file("wallet.sqlite")), service: try SQLiteServiceStore(path: try file("service.sqlite")),
            background: nil)
    }

    func close() {
        background?.cancel()
    }
}
