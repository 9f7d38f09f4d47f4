import ArgumentParser
import Logging
import NostrRelay
import ServiceLifecycle

struct RelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Run the embedded NIP-01 relay until SIGTERM or SIGINT.",
        discussion: "Prints ws://HOST:PORT on stdout once it accepts connections. Port 0 picks a free port.")

    @Option(help: "Interface to bind.") var host = "127.0.0.1"
    @Option(help: "Port to bind (0 = any free port).") var port = 0
    @Flag(help: "Require NIP-42 authentication to publish (as the author) and to read events that p-tag a pubkey (as that pubkey).")
    var authRequired = false
    @Option(help: "SQLite database file for events (created if missing); without it, events are kept in memory.")
    var db: String?
    @Option(help: "Largest accepted message in bytes.") var maxMessageLength = 512 * 1024
    @Option(help: "Messages per second per connection (sustained).") var rateLimit: Double = 100
    @Option(help: "Most stored events one REQ is answered with (a filter's limit is capped to it).") var maxLimit = 5_000

    func run() async throws {
        LoggingSystem.bootstrap { label in
            var handler = EscapingLogHandler(base: StreamLogHandler.standardError(label: label))
            handler.logLevel = .info
            return handler
        }
        var configuration = EmbeddedRelay.Configuration()
        configuration.host = host
        configuration.port = port
        configuration.policy.authRequired = authRequired
        configuration.policy.maximumMessageLength = maxMessageLength
        configuration.policy.messagesPerSecond = rateLimit
        configuration.policy.messageBurst = rateLimit * 2
        configuration.policy.maximumLimit = maxLimit
        // A connection's outbox must hold a whole REQ answer.
        configuration.outboxCapacity = max(configuration.outboxCapacity, 2 * maxLimit)
        let logger = Logger(label: "switchboard.relay")
        let store: any EventStore
        if let db {
            do {
                store = try SQLiteEventStore(path: db)
            } catch {
                throw ValidationError("cannot open the database \(db): \(error)")
            }
        } else {
            store = MemoryEventStore()
        }
        let relay = EmbeddedRelay(configuration: configuration, store: store, logger: logger) { url in
            IO.writeLine(url)
        }
        let group = ServiceGroup(
            configuration: .init(services: [.init(service: relay)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}
