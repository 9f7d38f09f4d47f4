import ArgumentParser
import Foundation
import Logging
import NostrCore
import NostrCrypto
import NostrRelay

/// Options shared by the commands that talk to relays through a ``RelayPool``.
struct PoolOptions: ParsableArguments {
    @Option(name: .customLong("relay"), help: "A relay URL (ws:// or wss://); repeat for several.")
    var relays: [String] = []

    @Option(name: .customLong("auth-sec"), help: "Secret key (hex or nsec) for NIP-42 authentication; or SWITCHBOARD_AUTH_SECRET_KEY.")
    var authSecret: String?

    @Option(help: "PEM file of certificate authorities to trust for wss:// relays, besides the system's.")
    var caFile: String?

    @Flag(help: "Log the pool's connection events on stderr.") var verbose = false

    func validate() throws {
        guard !relays.isEmpty else { throw ValidationError("name at least one --relay") }
        for relay in relays {
            do { _ = try RelayURL(relay) } catch { throw ValidationError("invalid relay URL: \(relay)") }
        }
        if let caFile, !FileManager.default.isReadableFile(atPath: caFile) {
            throw ValidationError("cannot read --ca-file \(caFile)")
        }
    }

    func makePool() throws -> RelayPool {
        var signer: (any EventSigner)?
        if let text = authSecret ?? ProcessInfo.processInfo.environment["SWITCHBOARD_AUTH_SECRET_KEY"] {
            do {
                signer = KeySigner(try SecretKey(hexOrNsec: text.trimmingCharacters(in: .whitespacesAndNewlines)))
            } catch {
                throw ValidationError("invalid --auth-sec (expected 64 hex characters or an nsec)")
            }
        }
        var logger = Logger(label: "switchboard.pool") { EscapingLogHandler(base: StreamLogHandler.standardError(label: $0)) }
        logger.logLevel = verbose ? .debug : .error
        var configuration = RelayPool.Configuration()
        configuration.additionalTrustRootsFile = caFile
        return RelayPool(relays: try relays.map(RelayURL.init), signer: signer, configuration: configuration, logger: logger)
    }
}

struct PublishCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Publish signed events (one JSON object per line on stdin) to relays.",
        discussion: """
            Prints one JSON line per event: {"id": ..., "results": {"<relay>": "accepted" | "rejected: <message>" | \
            "timed out" | "unreachable: <reason>"}}. Exits with 1 if some event was accepted by no relay.
            """)

    @OptionGroup var pool: PoolOptions
    @Option(help: "Seconds to wait for each relay's OK.") var timeout: Double = 10

    func run() async throws {
        var events = [Event]()
        try reportingErrors {
            let text = try IO.readStandardInputText("events")
            for line in text.split(whereSeparator: \.isNewline) where !line.allSatisfy(\.isWhitespace) {
                let event = try Event(json: String(line))
                try event.verify()
                events.append(event)
            }
        }
        let relayPool = try pool.makePool()
        let timeout = Duration.milliseconds(Int64(max(0, timeout) * 1000))
        // Every event is in flight at once (up to a window), so a dead relay costs one timeout, not one per event.
        let allAccepted = try await relayPool.withRunning {
            try await withThrowingTaskGroup(of: (Int, [RelayURL: PublishResult]).self) { group in
                var results = [Int: [RelayURL: PublishResult]]()
                var launched = 0, printed = 0
                var allAccepted = true
                while printed < events.count {
                    while launched < events.count && launched - printed < 256 {
                        let index = launched, event = events[index]
                        group.addTask { (index, await relayPool.publish(event, timeout: timeout)) }
                        launched += 1
                    }
                    guard let (index, outcome) = try await group.next() else { break }
                    results[index] = outcome
                    // Print in input order.
                    while let outcome = results.removeValue(forKey: printed) {
                        IO.writeLine(Self.line(events[printed], outcome))
                        if !outcome.values.contains(where: \.isAccepted) { allAccepted = false }
                        printed += 1
                    }
                }
                return allAccepted
            }
        }
        if !allAccepted { throw ExitCode(1) }
    }

    static func line(_ event: Event, _ results: [RelayURL: PublishResult]) -> String {
        var writer = JSONWriter()
        writer.raw("{\"id\":")
        writer.string(event.id.hex)
        writer.raw(",\"results\":{")
        for (index, (relay, result)) in results.sorted(by: { $0.key < $1.key }).enumerated() {
            if index > 0 { writer.raw(",") }
            writer.string(relay.string)
            writer.raw(":")
            writer.string(describe(result))
        }
        writer.raw("}}")
        return writer.text
    }

    static func describe(_ result: PublishResult) -> String {
        switch result {
        case .accepted: return "accepted"
        case .rejected(let message): return "rejected: \(message)"
        case .timedOut: return "timed out"
        case .unreachable(let reason): return "unreachable: \(reason)"
        }
    }
}

struct SubscribeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "subscribe",
        abstract: "Subscribe on relays and print what arrives, one JSON line per item, until interrupted.",
        discussion: """
            Lines: {"relay": ..., "event": {...}} for each verified event (once, whichever relay sends it \
            first), {"relay": ..., "eose": true} and {"relay": ..., "closed": "<message>"}. The subscription \
            survives relay restarts: it is resumed from the newest event seen.
            """)

    @OptionGroup var pool: PoolOptions
    @Option(name: .customLong("filter"), help: "A NIP-01 filter as JSON; repeat for several.") var filters: [String] = []
    @Flag(help: "Exit once every relay has sent EOSE (or closed the subscription), or after --timeout.") var closeOnEose = false
    @Option(help: "With --close-on-eose: seconds to wait for relays that have not sent EOSE (unreachable ones included).")
    var timeout: Double = 10

    func run() async throws {
        var parsed = [Filter]()
        try reportingErrors {
            for text in filters.isEmpty ? ["{}"] : filters { parsed.append(try Filter(jsonValue: JSON.parse(text))) }
        }
        let relayPool = try pool.makePool()
        let relays = Set(relayPool.relays)
        let closeOnEose = self.closeOnEose
        let deadline = ContinuousClock.now + .milliseconds(Int64(max(0, timeout) * 1000))
        try await relayPool.withRunning {
            try await relayPool.withSubscription(parsed) { subscription in
                await withTaskGroup(of: Void.self) { group in
                    group.addTask { await Self.print(subscription, relays: relays, closeOnEose: closeOnEose) }
                    if closeOnEose {
                        group.addTask { try? await Task.sleep(until: deadline) }
                    }
                    await group.next()
                    group.cancelAll()
                }
            }
        }
    }

    /// Prints items until every relay in `relays` has sent EOSE or closed (with `closeOnEose`), or forever.
    static func print(_ subscription: RelaySubscription, relays: Set<RelayURL>, closeOnEose: Bool) async {
        var pending = relays
        for await item in subscription {
            var writer = JSONWriter()
            writer.raw("{\"relay\":")
            switch item {
            case .event(let event, let relay):
                writer.string(relay.string)
                writer.raw(",\"event\":")
                event.write(to: &writer)
            case .endOfStoredEvents(let relay):
                writer.string(relay.string)
                writer.raw(",\"eose\":true")
                pending.remove(relay)
            case .closed(let relay, let message):
                writer.string(relay.string)
                writer.raw(",\"closed\":")
                writer.string(message)
                pending.remove(relay)
            }
            writer.raw("}")
            IO.writeLine(writer.text)
            if closeOnEose && pending.isEmpty { return }
        }
    }
}
