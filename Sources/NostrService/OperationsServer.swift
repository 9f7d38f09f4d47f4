public import Hummingbird
public import Logging
import NostrCore
import NostrRelay
import Metrics
public import Prometheus
public import ServiceLifecycle

/// The operator's HTTP listener for a service: `GET /metrics` (Prometheus text exposition of `registry`) and
/// `GET /health` (200 when the runtime is ready: subscribed, and at least one relay connected that has answered
/// the subscription with `EOSE`; 503 otherwise, with each relay's state as JSON). Binds to 127.0.0.1 unless told otherwise: it is not meant for the internet.
public struct OperationsServer: Service {
    let host: String
    let port: Int
    let registry: PrometheusCollectorRegistry
    let runtime: ServiceRuntime
    let logger: Logger
    let onListening: @Sendable (String, Int) async -> Void
    let routes: @Sendable (Router<BasicRequestContext>) -> Void

    /// - Parameters:
    ///   - onListening: called with the bound host and port once it accepts connections.
    ///   - routes: adds a service's own routes (the bunker's approval pages, say).
    public init(
        host: String = "127.0.0.1", port: Int, registry: PrometheusCollectorRegistry, runtime: ServiceRuntime,
        logger: Logger, onListening: @escaping @Sendable (String, Int) async -> Void = { _, _ in },
        routes: @escaping @Sendable (Router<BasicRequestContext>) -> Void = { _ in }
    ) {
        self.host = host
        self.port = port
        self.registry = registry
        self.runtime = runtime
        self.logger = logger
        self.routes = routes
        self.onListening = onListening
    }

    /// Serves until graceful shutdown (as a `Service` in a `ServiceGroup`) or SIGTERM/SIGINT.
    public func run() async throws {
        try await application().runService()
    }

    /// Serves until cancelled, through graceful shutdown and signals: `/health` answers 503 while the runtime
    /// drains. For a daemon that cancels it once its runtime has returned.
    public func runUntilCancelled() async throws {
        var configuration = ServiceGroupConfiguration(services: [application()], gracefulShutdownSignals: [], logger: logger)
        // Requests being answered then get this long before they are cut off.
        configuration.maximumGracefulShutdownDuration = .seconds(2)
        let group = ServiceGroup(configuration: configuration)
        // Hummingbird stops on graceful shutdown and on signals: in a task of its own (no shutdown context) and
        // with no signals, only cancellation ends it. It is then shut down gracefully: cancelling Hummingbird's
        // server logs errors for what it was waiting on. (A shutdown triggered before the group runs is remembered
        // and carried out as soon as it starts from swift-service-lifecycle 2.13 on, the minimum the package asks
        // for; earlier versions threw.)
        let serving = Task.detached { try await group.run() }
        try await withTaskCancellationHandler { try await serving.value } onCancel: {
            Task { await group.triggerGracefulShutdown() }
        }
    }

    private func application() -> some ApplicationProtocol {
        let router = Router()
        routes(router)
        let registry = self.registry
        let runtime = self.runtime
        router.get("/metrics") { _, _ -> Response in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
        }
        router.get("/health") { _, _ -> Response in
            let ready = runtime.isReady
            let relays = runtime.relayStatus().map { status in
                var url = JSONWriter()
                url.string(status.url.string)
                return "{\"url\":\(url.text),\"connected\":\(status.isConnected),\"subscribed\":\(status.isListening),\"reconnects\":\(status.reconnects)}"
            }
            let body = "{\"ready\":\(ready),\"subscribed\":\(runtime.isSubscribed),\"relays\":[\(relays.joined(separator: ","))]}\n"
            return Response(
                status: ready ? .ok : .serviceUnavailable, headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: body)))
        }
        let onListening = self.onListening
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: nil),
            onServerRunning: { channel in
                await onListening(channel.localAddress?.ipAddress ?? "", channel.localAddress?.port ?? 0)
            },
            logger: logger)
        return app
    }
}

extension OperationsServer {
    /// A daemon's process-wide set-up: logs to standard error at `logLevel` (trace … critical; `notice` when
    /// unknown) with control characters escaped, and swift-metrics into the Prometheus registry returned, for
    /// `/metrics`.
    public static func bootstrapObservability(logLevel: String) -> PrometheusCollectorRegistry {
        let level = Logger.Level(rawValue: logLevel) ?? .notice
        LoggingSystem.bootstrap { label in
            var handler = EscapingLogHandler(base: StreamLogHandler.standardError(label: label))
            handler.logLevel = level
            return handler
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return registry
    }

    /// `HOST:PORT` (as a daemon's `--http` takes it) split into host and port.
    public static func listenAddress(_ text: String) throws -> (host: String, port: Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65_535).contains(port) else {
            throw ServiceError(.badRequest, "--http takes HOST:PORT")
        }
        return (String(text[..<colon]), port)
    }
}
