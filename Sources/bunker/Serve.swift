import ArgumentParser
import BunkerKit
import Foundation
import Logging
import NostrCore
import NostrCrypto
import NostrRelay
import NostrService
import Prometheus
import ServiceLifecycle

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Unlock the keys, connect to the relays and sign for connected clients until SIGTERM or SIGINT.",
        discussion: """
            Once subscribed it prints one bunker:// URI per user key, each with a fresh single-use secret. \
            Without --relay it starts the embedded relay on 127.0.0.1 (development mode).
            """)

    @OptionGroup var directory: DataDirectory
    @Option(help: "A relay to serve on (repeat for several).") var relay: [String] = []
    @Option(help: "Serve GET /metrics, GET /health and the approval pages on HOST:PORT (port 0 = a free one). With it, requests outside a client's grant get an auth_url challenge; without it they are refused.")
    var http: String?
    @Option(help: "The address approval links use, when the listener is reached through a proxy (default http://HOST:PORT).")
    var approvalURL: String?
    @Option(help: "Seconds an auth challenge waits for the operator's decision.") var approvalTimeout: Int = 300
    @Option(help: "Days the audit log is kept.") var auditDays: Int = 90
    @Option(help: "Requests per second each client may send (sustained).") var clientRate: Double = 20
    @Option(help: "Requests each client may send in a burst.") var clientBurst: Double = 60
    @Option(help: "Requests of one client handled at once (more wait their turn, up to 10 s, or get a \"too many requests\" error).") var clientConcurrency = 8
    @Option(help: "Kinds a client's blanket sign_event grant does not cover, comma-separated, or 'none': signing them takes sign_event:<kind>, granted or approved. Default: profile, follow list, deletion, request to vanish, relay list.")
    var sensitiveKinds = NIP46.sensitiveKinds.map(\.rawValue).sorted().map(String.init).joined(separator: ",")
    @Option(name: .customLong("max-future-skew"), help: "Seconds into the future an event to sign may be dated (0: no limit). A replaceable event dated far ahead would override every later version.")
    var maxFutureSkew: Int64 = 900
    @Option(name: .customLong("uri-valid-for"), help: "Seconds the bunker:// secrets printed at start can be used to connect (0: no limit).")
    var uriValidFor: Int64 = defaultSecretLifetime
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel = "notice"

    /// `--sensitive-kinds` as a set.
    static func kinds(_ text: String) throws -> Set<Kind> {
        guard text.trimmingCharacters(in: .whitespaces) != "none" else { return [] }
        return Set(try text.split(separator: ",").map { part in
            guard let kind = UInt16(part.trimmingCharacters(in: .whitespaces)) else {
                throw ValidationError("--sensitive-kinds: \"\(part)\" is not a kind number (or use 'none')")
            }
            return Kind(rawValue: kind)
        })
    }

    func run() async throws {
        let registry = OperationsServer.bootstrapObservability(logLevel: logLevel)
        let relays = try relay.map { try RelayURL($0) }
        let sensitive = try Self.kinds(sensitiveKinds)
        let listener = try http.map(OperationsServer.listenAddress)
        let state = try directory.openState()
        let operatorToken = try listener.map { _ in try directory.approvalToken() }
        // One serve per data directory: a second would answer the same clients too, and clear the first one's
        // pending approvals.
        try await ServeLock.holding(in: directory.url, exclusive: true) {
            let identities = try directory.keys.unlock(passphrase: try passphrase())
            guard !identities.isEmpty else { throw ValidationError("no keys in \(directory.path); run `bunker init` first") }
            var policy = RequestPolicy.Configuration()
            policy.rate = clientRate
            policy.burst = max(1, clientBurst)
            policy.maximumConcurrentPerSender = max(1, clientConcurrency)
            let daemon = BunkerDaemon(
                directory: directory, identities: identities, state: state, relays: relays,
                http: listener,
                approvals: operatorToken.map {
                    // Below the client's concurrency, so a client waiting on the operator still gets its granted requests answered.
                    Approvals(timeout: .seconds(max(1, approvalTimeout)), capacityPerClient: min(4, clientConcurrency - 1), operatorToken: $0)
                },
                approvalURL: approvalURL, auditDays: max(1, auditDays), sensitiveKinds: sensitive,
                maximumFutureSkew: maxFutureSkew > 0 ? maxFutureSkew : nil, policy: policy,
                uriLifetime: max(0, uriValidFor), registry: registry, logger: Logger(label: "bunker"))
            let group = ServiceGroup(
                configuration: .init(services: [.init(service: daemon)], gracefulShutdownSignals: [.sigterm, .sigint], logger: Logger(label: "bunker")))
            try await group.run()
        }
    }
}

/// The running bunker: the runtime with the remote signer, the optional operations listener, and in
/// development mode the embedded relay.
struct BunkerDaemon: Service {
    let directory: DataDirectory
    let identities: [BunkerIdentity]
    let state: BunkerState
    let relays: [RelayURL]
    let http: (String, Int)?
    let approvals: Approvals?
    let approvalURL: String?
    let auditDays: Int
    let sensitiveKinds: Set<Kind>
    let maximumFutureSkew: Int64?
    let policy: RequestPolicy.Configuration
    let uriLifetime: Int64
    let registry: PrometheusCollectorRegistry
    let logger: Logger

    func run() async throws {
        guard relays.isEmpty else { return try await serve(on: relays) }
        try await EmbeddedRelay.withLoopbackRelay(logger: Logger(label: "bunker.relay")) { url in
            say("development mode: embedded relay on \(url.string) (pass --relay for real relays)")
            try directory.recordDevelopmentRelay(url)
            try await serve(on: [url])
        }
    }

    private func serve(on relays: [RelayURL]) async throws {
        try directory.recordRelays(relays)
        let signer = RemoteSigner(
            identities: identities, state: state, approvals: approvals, sensitiveKinds: sensitiveKinds,
            maximumFutureSkew: maximumFutureSkew, relays: { relays })
        // nostrconnect clients are served on their own relays as well, and clients given relays the bunker no longer
        // uses are served there until they ask `switch_relays` (then they move; those relays go at a later
        // restart). Not in development mode, and not the embedded relays of earlier development runs: their
        // addresses change with every start.
        let former = self.relays.isEmpty ? [] : try await state.formerSessionRelays(besides: relays, ignoring: directory.developmentRelays())
        if !former.isEmpty {
            logger.notice("also listening on relays clients were given before, until they switch", metadata: [
                "relays": "\(former.map(\.string))"
            ])
        }
        var configuration = ServiceRuntime.Configuration(relays: Array(Set(relays).union(try await state.clientRelays()).union(former)).sorted())
        configuration.policy = policy
        let runtime = ServiceRuntime(
            keys: identities.map { LocalServiceKey($0.signer) }, handlers: [signer], store: state.store,
            configuration: configuration, logger: logger)
        // Challenges recorded by an earlier run can no longer be answered.
        try await state.clearApprovals()
        // Stopping, requests waiting for the operator are answered at once ("send it again"): the operator may be
        // away for minutes, and the grace period is for work that ends by itself.
        try await withGracefulShutdownHandler {
            try await serve(runtime: runtime, signer: signer, relays: relays)
        } onGracefulShutdown: { [approvals] in
            approvals?.stop()
        }
    }

    private func serve(runtime: ServiceRuntime, signer: RemoteSigner, relays: [RelayURL]) async throws {
        var companions: [@Sendable () async throws -> Void] = [
            { await pruneAuditDaily() },
            { await answerConnectRequests(signer: signer, runtime: runtime) },
            // The URIs wait beside the runtime, so that a runtime that fails, or is stopped, before it is ready ends
            // the command without them.
            {
                while !runtime.isReady {
                    try await Task.sleep(for: .milliseconds(20))
                }
                // Secrets printed by earlier starts that expired unused go; this start prints fresh ones.
                let pruned = try await state.pruneExpiredSecrets(before: Int64(Date().timeIntervalSince1970))
                if pruned > 0 { logger.info("expired connection secrets removed", metadata: ["count": "\(pruned)"]) }
                for identity in identities {
                    let uri = try await mintURI(
                        for: identity.signer.publicKey, relays: relays, permissions: .all, label: nil, lifetime: uriLifetime, state: state)
                    say(uri.description)
                }
            },
        ]
        if let approvals { companions.append { await approvals.followDecisions(in: state) } }
        if let (host, port) = http {
            let approvals = self.approvals
            let approvalURL = self.approvalURL
            companions.append {
                try await OperationsServer(
                    host: host, port: port, registry: registry, runtime: runtime, logger: logger,
                    onListening: { host, port in
                        approvals?.baseURL = approvalURL ?? "http://\(host.contains(":") ? "[\(host)]" : host):\(port)"
                        say("http \(host):\(port)")
                        if approvals != nil {
                            say("approval pages: sign in with the token in \(directory.url.appendingPathComponent("approval.token").path)")
                        }
                    },
                    routes: { router in approvals?.addRoutes(to: router) }
                ).runUntilCancelled()
            }
        }
        // On SIGTERM/SIGINT the runtime returns after its grace period, in which requests in flight are answered
        // on connections that stay open (and `/health` says 503). Then the listener and the background loops stop.
        try await whileRunning({ try await runtime.run() }, with: companions)
    }

    /// Forgets audit records older than ``auditDays``, now and once a day.
    private func pruneAuditDaily() async {
        while !Task.isCancelled {
            do {
                let removed = try await state.pruneAudit(before: Int64(Date().timeIntervalSince1970) - Int64(auditDays) * 86_400)
                if removed > 0 { logger.info("audit log pruned", metadata: ["removed": "\(removed)"]) }
            } catch {
                logger.error("could not prune the audit log", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: .seconds(86_400))
        }
    }

    /// Serves the `bunker connect` requests the CLI leaves in the store: listens on the client's relays, then
    /// sends the connect response there, and records the outcome for the CLI to report.
    private func answerConnectRequests(signer: RemoteSigner, runtime: ServiceRuntime) async {
        while !Task.isCancelled {
            do {
                let now = Int64(Date().timeIntervalSince1970)
                for (client, request) in try await state.connectRequests() {
                    guard let clientKey = try? PublicKey(hex: client) else { continue }
                    guard request.outcome == nil else {
                        // Reported long ago and never collected (the CLI was interrupted).
                        if now - request.createdAt > 3600 { try await state.removeConnectRequest(for: clientKey) }
                        continue
                    }
                    let outcome = await accept(request, signer: signer, runtime: runtime)
                    if try await state.answerConnectRequest(for: clientKey, outcome: outcome) {
                        logger.notice("nostrconnect", metadata: ["nostr.pubkey": "\(client)", "outcome": "\(outcome)"])
                    } else if outcome == "connected" {
                        // The operator was told it failed (the CLI stopped waiting): no session stays behind.
                        try await state.remove(signer: request.signer, client: client)
                        logger.warning("nostrconnect answered after `bunker connect` gave up; the session is removed", metadata: [
                            "nostr.pubkey": "\(client)"
                        ])
                    }
                }
            } catch {
                logger.error("could not read connect requests", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: .milliseconds(250))
        }
    }

    private func accept(_ request: PendingConnect, signer: RemoteSigner, runtime: ServiceRuntime) async -> String {
        guard let uri = try? NostrConnectURI(request.uri) else { return "failed: not a nostrconnect URI" }
        runtime.setRelays(Array(Set(runtime.relays).union(uri.relays)).sorted())
        // Requests are ephemeral events: the client's relays must have registered the subscription before the
        // client is told to send any.
        if !(await runtime.waitUntilListening(on: Set(uri.relays), timeout: .seconds(10))) {
            logger.warning("no relay of a nostrconnect client registered the subscription in time; answering it anyway", metadata: [
                "nostr.pubkey": "\(uri.client.hex)",
            ])
        }
        return await signer.accept(request, through: runtime.pool)
    }
}
