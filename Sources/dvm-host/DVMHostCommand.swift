import ArgumentParser
import DVMExamples
import DVMKit
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

@main
struct DVMHostCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dvm-host",
        abstract: "A NIP-90 job host: takes jobs over relays (no open port needed) and runs them with a Swift handler or any command.",
        discussion: """
            The host's key is DIR/service.key (NIP-49 ncryptsec when DVM_HOST_PASSPHRASE is set, else hex; mode \
            0600). The request journal is DIR/service.sqlite, or a PostgreSQL database (--postgres) that several \
            workers on the same key share: each job then runs on exactly one of them.
            """,
        subcommands: [Serve.self, Init.self, Handlers.self])
}

struct DataDirectory: ParsableArguments {
    @Option(name: .customLong("data-dir"), help: "The host's data directory.") var path = "./dvm-data"

    var url: URL { URL(fileURLWithPath: path) }
    var keyFile: KeyFile { KeyFile(url: url.appendingPathComponent("service.key"), passphraseVariable: "DVM_HOST_PASSPHRASE") }

    /// Creates the directory (0700) if needed.
    func create() throws {
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    }
}

/// Prints a line at once, with control characters escaped: it may carry text a client chose.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line.escapingControlCharacters + "\n").utf8))
}

struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create the data directory and the host's key (generated, or imported: to run several workers on one key).")
    @OptionGroup var directory: DataDirectory
    @Option(help: "Import this key (nsec or hex) instead of generating one.") var `import`: String?

    func run() throws {
        try directory.create()
        let file = directory.keyFile
        guard !file.exists else { throw ValidationError("\(file.url.path) exists already") }
        let key: SecretKey
        if let text = `import` {
            key = text.hasPrefix("nsec1") ? try SecretKey(nsec: text) : try SecretKey(hex: text)
        } else {
            key = SecretKey.generate()
        }
        try file.store(key)
        say(NIP19Entity.npub(key.publicKey).bech32)
    }
}

struct Handlers: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the Swift handlers compiled in (for --handler).")

    func run() {
        for name in ExampleHandlers.all.keys.sorted() { say(name) }
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Take jobs of the given kinds until SIGTERM or SIGINT.",
        discussion: """
            Prints a ready line with the host's npub once subscribed and its NIP-89 announcement (kind 31990) \
            is confirmed by a relay. Without --relay it starts the embedded relay on 127.0.0.1 (development \
            mode).

            --exec runs COMMAND through /bin/sh for each job, with the job as JSON on standard input; its \
            standard output (at most --max-output bytes) is the result. A nonzero exit or a timeout becomes an \
            `error` feedback. --handler runs a Swift handler compiled in (`dvm-host handlers` lists them).

            With --price-msats, each job first gets a `payment-required` feedback with an invoice made by the \
            NIP-47 wallet of DVM_HOST_WALLET (or --wallet), and runs once it is paid.
            """)

    @OptionGroup var directory: DataDirectory
    @Option(help: "A relay to serve on (repeat for several).") var relay: [String] = []
    @Option(help: "A job kind to take, 5000–5999 (repeat for several).") var kind: [UInt16] = []
    @Option(help: "A shell command run for each job (the job as JSON on stdin, the result on stdout).") var exec: String?
    @Option(help: "A compiled-in Swift handler (see `dvm-host handlers`).") var handler: String?
    @Option(help: "The name in the NIP-89 announcement.") var name = "Switchboard DVM"
    @Option(help: "The about text in the NIP-89 announcement.") var about = ""
    @Option(name: .customLong("price-msats"), help: "The price of a job in msat (needs DVM_HOST_WALLET or --wallet).") var priceMsats: Int64?
    @Option(help: """
        The NIP-47 wallet that makes invoices: nostr+walletconnect://… (with make_invoice and lookup_invoice). \
        Better in the environment variable DVM_HOST_WALLET: its secret would be visible to every local user in \
        the process list.
        """)
    var wallet: String?
    @Option(help: "Jobs run at once.") var concurrency = 4
    @Option(help: "Seconds one job may run.") var timeout = 60
    @Option(name: .customLong("max-output"), help: "The most bytes an --exec command may write as its result.") var maxOutput = 64 * 1024
    @Option(help: "Serve GET /metrics and GET /health on HOST:PORT (port 0 = a free one).") var http: String?
    @Option(help: ArgumentHelp(
        "Keep the journal in this PostgreSQL database (postgres://user:pass@host:port/db), shared by workers on one key. Defaults to DVM_HOST_POSTGRES.",
        valueName: "URL"))
    var postgres: String?
    @Option(name: .customLong("claim-lease"), help: ArgumentHelp(
        "Seconds a claim on a job holds without renewal: a worker renews its claims every third of this while jobs run, and a job whose worker died (a crash, a kill) is taken over this long after the last renewal, by another worker or by this one after a restart.",
        valueName: "SECONDS"))
    var claimLease: Int64 = 30
    @Option(name: .customLong("max-age"), help: "Requests older than this many seconds are ignored; also the catch-up window after a restart.")
    var maxAge: Int64 = 3600
    @Flag(name: .customLong("allow-private-urls"), help: "Let url inputs, relay hints and reply relays (a request's relays tag, the customer's inbox relays) reach loopback and private addresses (development, or relays on a LAN).")
    var allowPrivateURLs = false
    @Option(help: "Job requests per second each customer may send (sustained); more wait their turn, up to 10 s, or get an error feedback.") var clientRate: Double = 10
    @Option(help: "Job requests each customer may send in a burst.") var clientBurst: Double = 30
    @Option(help: "Jobs of one customer in progress at once (paying, queued or running); more wait their turn, up to 10 s, or get an error feedback.")
    var clientConcurrency = 8
    @Option(help: ArgumentHelp("Serve only this customer (hex or npub; repeat for several).", valueName: "PUBKEY")) var allow: [String] = []
    @Option(help: ArgumentHelp("Ignore this customer's requests (hex or npub; repeat for several).", valueName: "PUBKEY")) var deny: [String] = []
    @Option(name: .customLong("min-pow"), help: "Ignore requests whose id has fewer leading zero bits than this (NIP-13 proof of work).")
    var minPow = 0
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel = "notice"

    /// A customer key from --allow or --deny.
    static func customer(_ text: String) throws -> PublicKey {
        guard let key = try? PublicKey(hexOrNpub: text), key.isOnCurve else {
            throw ValidationError("\"\(text.prefix(70))\" is not a public key (64 hex characters or an npub)")
        }
        return key
    }

    /// The wallet: `--wallet`, else `DVM_HOST_WALLET`.
    var walletText: String? { wallet ?? ProcessInfo.processInfo.environment["DVM_HOST_WALLET"] }

    func validate() throws {
        for text in allow + deny { _ = try Self.customer(text) }
        guard (0...256).contains(minPow) else { throw ValidationError("--min-pow is 0–256 bits") }
        guard !kind.isEmpty else { throw ValidationError("give at least one --kind (5000–5999)") }
        for value in kind where !NIP90.isRequestKind(Kind(value)) { throw ValidationError("--kind \(value) is not a job kind (5000–5999)") }
        guard (exec == nil) != (handler == nil) else { throw ValidationError("give exactly one of --exec and --handler") }
        if exec == nil { _ = try compiledHandler() }
        if let priceMsats {
            guard priceMsats > 0 else { throw ValidationError("--price-msats must be positive") }
            guard walletText != nil else { throw ValidationError("--price-msats needs DVM_HOST_WALLET or --wallet nostr+walletconnect://…") }
        }
        guard concurrency >= 1, timeout >= 1, maxOutput >= 1, (3...86_400).contains(claimLease) else {
            throw ValidationError("--concurrency, --timeout and --max-output must be positive, and --claim-lease 3 to 86400")
        }
    }

    func run() async throws {
        let registry = OperationsServer.bootstrapObservability(logLevel: logLevel)
        let relays = try relay.map { try RelayURL($0) }
        let listener = try http.map(OperationsServer.listenAddress)
        let walletURI = try walletText.map { try WalletConnectURI($0) }
        try directory.create()
        let key = try directory.keyFile.loadOrCreate()
        let logger = Logger(label: "dvm-host")
        let daemon = HostDaemon(command: self, key: key, relays: relays, wallet: walletURI, http: listener, registry: registry, logger: logger)
        let group = ServiceGroup(
            configuration: .init(services: [.init(service: daemon)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }

    /// The handler `--exec` or `--handler` names.
    func jobHandler(logger: Logger) throws -> any JobHandler {
        guard let exec else { return try compiledHandler() }
        // Jobs' files go in the data directory, where a worker killed mid-job leaves them behind: those are
        // cleared now. A job of any worker here lasts at most its timeout and 2 s more (SIGKILL).
        let jobs = directory.url.appendingPathComponent("jobs")
        try FileManager.default.createDirectory(at: jobs, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let removed = ExecHandler.removeLeftovers(in: jobs, olderThan: .seconds(timeout + 60))
        if removed > 0 { logger.info("removed the files of jobs cut off by an earlier stop", metadata: ["count": "\(removed)"]) }
        return ExecHandler(command: exec, maximumOutput: maxOutput, workDirectory: jobs)
    }

    /// The compiled-in handler `--handler` names.
    func compiledHandler() throws -> any JobHandler {
        guard let handler, let compiled = ExampleHandlers.all[handler] else {
            throw ValidationError("no handler \(handler ?? ""); compiled in: \(ExampleHandlers.all.keys.sorted().joined(separator: ", "))")
        }
        return compiled
    }
}

/// The running host: store, runtime, optional operations listener, and in development mode the embedded relay.
struct HostDaemon: Service {
    let command: Serve
    let key: SecretKey
    let relays: [RelayURL]
    let wallet: WalletConnectURI?
    let http: (String, Int)?
    let registry: PrometheusCollectorRegistry
    let logger: Logger

    func run() async throws {
        guard relays.isEmpty else { return try await serve(on: relays) }
        try await EmbeddedRelay.withLoopbackRelay(logger: Logger(label: "dvm-host.relay")) { url in
            say("development mode: embedded relay on \(url.string) (pass --relay for real relays)")
            try await serve(on: [url])
        }
    }

    private func serve(on relays: [RelayURL]) async throws {
        let (store, background) = try openStore()
        defer { background?.cancel() }
        var runtime = ServiceRuntime.Configuration(relays: relays)
        runtime.maximumAge = max(60, command.maxAge)
        runtime.policy.rate = command.clientRate
        runtime.policy.burst = max(1, command.clientBurst)
        runtime.policy.maximumConcurrentPerSender = max(1, command.clientConcurrency)
        // A refusal here is a public kind 7000 feedback: a flood gets a few, not one per request.
        runtime.policy.refusalRepliesPerSecond = 5
        if !command.allow.isEmpty { runtime.policy.allow = Set(try command.allow.map(Serve.customer)) }
        runtime.policy.deny = Set(try command.deny.map(Serve.customer))
        runtime.minimumProofOfWork = command.minPow
        runtime.claimLease = command.claimLease
        var service = DVMService.Configuration(kinds: Set(command.kind.map { Kind($0) }))
        service.name = command.name
        service.about = command.about
        service.priceMsat = command.priceMsats
        service.concurrency = command.concurrency
        service.jobTimeout = .seconds(command.timeout)
        // Everything a customer names (inputs, relay hints, reply relays) passes one address check.
        let allowsPrivate = command.allowPrivateURLs || self.relays.isEmpty
        runtime.allowsPrivateReplyRelays = allowsPrivate
        var inputs = InputResolver.Configuration()
        inputs.allowsPrivateAddresses = allowsPrivate
        let host = DVMHost(
            key: LocalServiceKey(key), handler: try command.jobHandler(logger: logger), store: store, service: service, runtime: runtime, inputs: inputs,
            wallet: command.priceMsats == nil ? nil : wallet, logger: logger)
        // The ready line waits beside the host, so that a host that fails, or is stopped, before it is ready ends
        // the command without it.
        var companions: [@Sendable () async throws -> Void] = [{
            while !host.isReady {
                try await Task.sleep(for: .milliseconds(20))
            }
            let kinds = command.kind.sorted().map(String.init).joined(separator: ",")
            let price = command.priceMsats.map { "\($0) msat" } ?? "free"
            say("dvm-host ready: \(NIP19Entity.npub(host.publicKey).bech32) (\(host.publicKey.hex)), kinds \(kinds), \(price), concurrency \(command.concurrency), relays \(host.runtime.relays.map(\.string).joined(separator: " "))")
        }]
        if let (address, port) = http {
            companions.append {
                try await OperationsServer(
                    host: address, port: port, registry: registry, runtime: host.runtime, logger: logger,
                    onListening: { address, port in say("http \(address):\(port)") }
                ).runUntilCancelled()
            }
        }
        // On SIGTERM/SIGINT the host returns after its grace period, in which jobs in flight finish on connections
        // that stay open (and `/health` says 503). Then the listener stops.
        try await whileRunning({ try await host.run() }, with: companions)
    }

    private func openStore() throws -> (any ServiceStore, Task<Void, Never>?) {
        if let url = command.postgres ?? ProcessInfo.processInfo.environment["DVM_HOST_POSTGRES"] {
            let store = try PostgresServiceStore(url: url, logger: Logger(label: "dvm-host.postgres"))
            return (store, Task { await store.run() })
        }
        let path = command.directory.url.appendingPathComponent("service.sqlite").path
        try PrivateFile.createIfMissing(atPath: path)
        return (try SQLiteServiceStore(path: path), nil)
    }
}
