// An example service on the Switchboard runtime: NIP-44 encrypted "uppercase" RPC on ephemeral kinds.
//
//   uppercase-service --data-dir DIR --relay ws://127.0.0.1:7777 [--relay ...] [--http 127.0.0.1:PORT]
//                     [--sender-rate R --sender-burst B --sender-concurrency N]
//
// A request is a kind 25910 event p-tagging the service, its content NIP-44 encrypted (NIP-04 works too);
// the reply is a kind 25911 event p-tagging the requester and e-tagging the request, with the text
// upper-cased and encrypted back. Kinds 20000–29999 are ephemeral: relays pass them on without storing them.
// The service key is created on first run in DIR/service.key (mode 0600); the journal is DIR/service.sqlite.
// Prints "ready <service public key hex>" once it listens; stops on SIGTERM/SIGINT. With --http, serves
// GET /metrics (Prometheus) and GET /health there and also prints "http HOST:PORT" (port 0 = a free one).
// --sender-rate and --sender-burst change the per-sender rate limit (default 10/s, bursts of 30), and
// --sender-concurrency the requests of one sender handled at once (default 8); the load benchmark
// (`switchboard-bench service`) raises them, since it sends from few keys.
import Foundation
import Logging
import Metrics
import NostrCore
import NostrCrypto
import NostrRelay
import NostrService
import Prometheus
import ServiceLifecycle

struct Uppercase: RequestHandler {
    static let requestKind: Kind = 25_910
    static let replyKind: Kind = 25_911

    var kinds: Set<Kind> { [Self.requestKind] }

    func handle(_ request: ServiceRequest, context: RequestContext) async throws -> [ServiceReply] {
        guard request.content.utf8.count <= 4096 else { throw ServiceError(.badRequest, "at most 4096 bytes") }
        return [request.reply(kind: Self.replyKind, content: request.content.uppercased())]
    }

    func errorReply(to request: ServiceRequest, error: ServiceError) -> ServiceReply? {
        request.reply(kind: Self.replyKind, content: "error: \(error.message)")
    }
}

/// Reads DIR/service.key, or creates it (0600) with a new key.
func loadOrCreateKey(in directory: URL) throws -> SecretKey {
    let file = directory.appendingPathComponent("service.key")
    if let text = try? String(contentsOf: file, encoding: .utf8) {
        return try SecretKey(hex: text.trimmingCharacters(in: .whitespacesAndNewlines))
    }
    let key = SecretKey.generate()
    guard FileManager.default.createFile(atPath: file.path, contents: Data(key.exportHex().utf8), attributes: [.posixPermissions: 0o600]) else {
        throw ServiceError(.internal, "cannot write \(file.path)")
    }
    return key
}

struct Arguments {
    var directory: URL
    var relays: [RelayURL]
    var http: (String, Int)?
    var policy = RequestPolicy.Configuration()
}

func arguments() -> Arguments? {
    var directory: URL?
    var relays: [RelayURL] = []
    var http: (String, Int)?
    var policy = RequestPolicy.Configuration()
    var iterator = CommandLine.arguments.dropFirst().makeIterator()
    while let argument = iterator.next() {
        switch argument {
        case "--data-dir": directory = iterator.next().map { URL(fileURLWithPath: $0) }
        case "--relay": if let text = iterator.next(), let url = try? RelayURL(text) { relays.append(url) } else { return nil }
        case "--http":
            guard let text = iterator.next(), let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...])
            else { return nil }
            http = (String(text[..<colon]), port)
        case "--sender-rate":
            guard let rate = iterator.next().flatMap(Double.init), rate > 0 else { return nil }
            policy.rate = rate
        case "--sender-burst":
            guard let burst = iterator.next().flatMap(Double.init), burst >= 1 else { return nil }
            policy.burst = burst
        case "--sender-concurrency":
            guard let limit = iterator.next().flatMap(Int.init), limit >= 1 else { return nil }
            policy.maximumConcurrentPerSender = limit
        default: return nil
        }
    }
    guard let directory, !relays.isEmpty else { return nil }
    return Arguments(directory: directory, relays: relays, http: http, policy: policy)
}

guard let options = arguments() else {
    FileHandle.standardError.write(Data("""
        usage: uppercase-service --data-dir DIR --relay URL [--relay URL]... [--http HOST:PORT]
                                 [--sender-rate R] [--sender-burst B] [--sender-concurrency N]\n
        """.utf8))
    exit(64)
}
let (directory, relays, http) = (options.directory, options.relays, options.http)
LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
let registry = PrometheusCollectorRegistry()
MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
var logger = Logger(label: "uppercase")
logger.logLevel = .notice
try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
let key = LocalServiceKey(try loadOrCreateKey(in: directory))
let store = try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path)
var configuration = ServiceRuntime.Configuration(relays: relays)
configuration.policy = options.policy
let runtime = ServiceRuntime(keys: [key], handlers: [Uppercase()], store: store, configuration: configuration, logger: logger)

/// Prints the ready line once the runtime listens.
struct ReadyLine: Service {
    let runtime: ServiceRuntime
    let key: PublicKey
    func run() async throws {
        while !runtime.isReady {
            try await Task.sleep(for: .milliseconds(20))
        }
        FileHandle.standardOutput.write(Data("ready \(key.hex)\n".utf8))
        try? await gracefulShutdown()
    }
}

var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
    .init(service: runtime), .init(service: ReadyLine(runtime: runtime, key: key.publicKey)),
]
if let (host, port) = http {
    services.append(.init(service: OperationsServer(host: host, port: port, registry: registry, runtime: runtime, logger: logger) { host, port in
        FileHandle.standardOutput.write(Data("http \(host):\(port)\n".utf8))
    }))
}
let group = ServiceGroup(
    configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
try await group.run()
