import CSecp256k1
import Foundation
import Synchronization
import Logging
import NostrCore
import NostrCrypto
import NostrRelay
import WSClient

// `switchboard-bench relay`: the transport's figures, each beside a baseline from the same run.
// - pool receive: events/s one pool connection receives *and verifies* from the embedded relay, against the
//   raw libsecp256k1 verify rate of one core (the receive path should be bound by verification);
// - relay ingest: signed events/s the embedded relay verifies, stores and acknowledges;
// - fan-out: deliveries/s from the embedded relay to 100 subscribed pool connections in this process;
// - RSS per idle connection, on the relay (a `switchboard relay` process) and on the client side.

/// Prints a line at once (stdout is a pipe under `make bench`; `print` would hold it back).
func say(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

let quiet = Logger(label: "bench") { _ in SwiftLogNoOpLogHandler() }

func signedNotes(_ count: Int, tag: String) -> [Event] {
    let key = SecretKey.generate()
    let base = Timestamp.now - Timestamp(count) - 10
    return (0..<count).map { i in
        EventTemplate(kind: 1, content: "benchmark note \(i) with a little text in it", tags: [["t", tag]], createdAt: base + Timestamp(i))
            .sign(with: key)
    }
}

/// Runs an embedded relay (limits raised for bulk work) while `body` runs.
func withBenchRelay<R: Sendable>(_ body: (RelayURL) async throws -> R) async throws -> R {
    var configuration = EmbeddedRelay.Configuration()
    configuration.policy.maximumLimit = 100_000
    configuration.outboxCapacity = 200_000
    configuration.policy.messagesPerSecond = 1_000_000
    configuration.policy.messageBurst = 1_000_000
    configuration.policy.maximumSubscriptions = 1000
    let (ready, readyContinuation) = AsyncStream<String>.makeStream()
    let relay = EmbeddedRelay(configuration: configuration, logger: quiet) { readyContinuation.yield($0) }
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await relay.run() }
        defer { group.cancelAll() }
        guard let url = await ready.first(where: { _ in true }) else { throw BenchFailure("relay did not start") }
        return try await body(try RelayURL(url))
    }
}

struct BenchFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Publishes `events` with up to `window` awaiting their OK at once; returns events/s.
func publishAll(_ events: [Event], through pool: RelayPool, window: Int = 256) async throws -> Double {
    let start = now()
    try await withThrowingTaskGroup(of: Bool.self) { group in
        var next = 0
        func launch() {
            let event = events[next]
            next += 1
            group.addTask { await pool.publish(event, timeout: .seconds(60)).values.allSatisfy(\.isAccepted) }
        }
        while next < min(window, events.count) { launch() }
        while let accepted = try await group.next() {
            guard accepted else { throw BenchFailure("an event was not accepted") }
            if next < events.count { launch() }
        }
    }
    return Double(events.count) / (now() - start)
}

/// Waits until `subscription` has delivered `count` events; returns the time taken.
func drain(_ subscription: RelaySubscription, count: Int) async -> Int {
    var received = 0
    for await item in subscription {
        if case .event = item { received += 1 }
        if received == count { break }
    }
    return received
}

/// Messages/s a bare WebSocket client receives for a REQ of every stored event tagged `tag` (no parsing).
func rawReceiveRate(_ url: RelayURL, tag: String, expected: Int) async throws -> Double {
    let result = Mutex<Double>(0)
    try await WebSocketClient.connect(url: url.string, configuration: .init(maxFrameSize: 1 << 20), logger: quiet) { inbound, outbound, _ in
        let start = now()
        try await outbound.writeTextMessage(##"["REQ","raw",{"#t":[""## + tag + ##""]}]"##)
        var count = 0
        for try await message in inbound.messages(maxSize: 1 << 20) {
            guard case .text(let text) = message else { continue }
            if text.hasPrefix(#"["EOSE""#) { break }
            if text.hasPrefix(#"["EVENT""#) { count += 1 }
        }
        guard count == expected else { throw BenchFailure("bare client got \(count) of \(expected)") }
        let rate = Double(count) / (now() - start)
        result.withLock { $0 = rate }
    }
    return result.withLock { $0 }
}

func rawVerifyRate(_ events: [Event]) -> Double {
    let ctx = secp256k1_context_create(UInt32(SECP256K1_CONTEXT_NONE))!
    defer { secp256k1_context_destroy(ctx) }
    let prepared = events.prefix(2000).map { ($0.pubkey.bytes32.bytes, $0.sig.bytes, $0.id.bytes32.bytes) }
    var index = 0
    return measure(seconds: 1) {
        let (pub, sig, msg) = prepared[index % prepared.count]
        index += 1
        var key = secp256k1_xonly_pubkey()
        _ = secp256k1_xonly_pubkey_parse(ctx, &key, pub)
        blackHole(secp256k1_schnorrsig_verify(ctx, sig, msg, 32, &key))
    }
}

func residentKiB(pid: Int32? = nil) -> Int {
    residentKiBField("VmRSS:", pid: pid ?? getpid())
}

func runRelay() async throws {
    say("switchboard-bench relay — release build, 2 cores shared by client and relay")
    let count = Int(ProcessInfo.processInfo.environment["BENCH_EVENTS"] ?? "") ?? 20_000
    let events = signedNotes(count, tag: "ingest")
    // The receive rounds read events of their own: this process remembers signatures it verified (the relay's
    // ingest, an earlier round), and a copy of one already verified is not verified again.
    let rounds = [signedNotes(count, tag: "bench1"), signedNotes(count, tag: "bench2")]

    // Reading an EVENT message, without the signature check: the direct reader, and the general reader over a
    // parsed JSON tree (how every other message is read, and how EVENT was before), interleaved.
    let sample = events.prefix(2000).map { RelayMessage.event(subscriptionID: "s", event: $0).json }
    var next = 0
    func readDirect() {
        blackHole(try? RelayMessage(json: sample[next % sample.count]))
        next += 1
    }
    func readTree() {
        blackHole(try? RelayMessage(jsonValue: JSON.parse(sample[next % sample.count])))
        next += 1
    }
    let tree = max(measure(body: readTree), measure(body: readTree))
    let direct = max(measure(body: readDirect), measure(body: readDirect))
    say("read an EVENT message (no verify) \(padLeft(format(direct), 10)) messages/s   through the JSON tree \(format(tree))/s   ratio \(String(format: "%.2f", direct / tree))")

    try await withBenchRelay { url in
        // Relay ingest: one pool connection, 256 publishes awaiting OK at a time.
        let publisher = RelayPool(relays: [url], logger: quiet)
        let ingest = try await publisher.withRunning { try await publishAll(events, through: publisher) }
        say("relay ingest (verify+store+OK)   \(padLeft(format(ingest), 10)) events/s   (\(count) events, one connection, 256 in flight)")
    }

    // Pool receive, from a `switchboard relay` process (so the relay's work is not on this process's threads,
    // as in a deployment): stored events streamed to one subscription, each verified before delivery.
    try await withRelayProcess(["--rate-limit", "1000000", "--max-limit", "\(count)"]) { url, _ in
        let loader = RelayPool(relays: [url], logger: quiet)
        _ = try await loader.withRunning { try await publishAll(rounds[0] + rounds[1], through: loader) }
        // The relay's send rate alone: a bare WebSocket client that counts messages up to EOSE.
        let sendRate = try await rawReceiveRate(url, tag: "bench1", expected: count)
        say("relay send (bare client, no parse) \(padLeft(format(sendRate), 10)) events/s")
        let messages = rounds[0].prefix(2000).map { RelayMessage.event(subscriptionID: "s", event: $0).json }
        for round in 1...2 {
            let raw = rawVerifyRate(rounds[round - 1])
            var index = 0
            let parseAndVerify = measure(seconds: 1) {
                let text = messages[index % messages.count]
                index += 1
                if case .event(_, let event) = try? RelayMessage(json: text) { blackHole(verifiedAfresh(event)) }
            }
            var configuration = RelayPool.Configuration()
            configuration.subscriptionBufferSize = 1024
            configuration.deduplicationCapacity = count
            let reader = RelayPool(relays: [url], configuration: configuration, logger: quiet)
            let (received, seconds) = try await reader.withRunning {
                try await reader.withSubscription([Filter(tags: ["t": ["bench\(round)"]])]) { subscription in
                    let start = now()
                    let received = await drain(subscription, count: count)
                    return (received, now() - start)
                }
            }
            guard received == count else { throw BenchFailure("received \(received) of \(count)") }
            let rate = Double(count) / seconds
            say("pool receive+verify (round \(round))   \(padLeft(format(rate), 10)) events/s   raw verify \(format(raw))/s   ratio \(String(format: "%.2f", rate / raw))   (parse+verify without I/O \(format(parseAndVerify))/s, \(String(format: "%.2f", parseAndVerify / raw)))")
        }
    }

    // Fan-out: 100 subscriber connections, events published by one more.
    try await withBenchRelay { url in
        let subscribers = 100, published = 200
        let pools = (0..<subscribers).map { _ in RelayPool(relays: [url], logger: quiet) }
        let publisher = RelayPool(relays: [url], logger: quiet)
        let live = signedNotes(published, tag: "fan")
        let seconds = try await withThrowingTaskGroup(of: Void.self) { group in
            for pool in pools + [publisher] { group.addTask { try await pool.run() } }
            defer { group.cancelAll() }
            return try await withThrowingTaskGroup(of: Int.self) { readers in
                let (subscribed, subscribedContinuation) = AsyncStream<Void>.makeStream()
                for pool in pools {
                    readers.addTask {
                        try await pool.withSubscription([Filter(tags: ["t": ["fan"]])]) { subscription in
                            for await item in subscription {
                                if case .endOfStoredEvents = item { break }
                            }
                            subscribedContinuation.yield()
                            return await drain(subscription, count: published)
                        }
                    }
                }
                var ready = 0
                for await _ in subscribed {
                    ready += 1
                    if ready == subscribers { break }
                }
                let start = now()
                _ = try await publishAll(live, through: publisher)
                var delivered = 0
                for try await received in readers { delivered += received }
                guard delivered == subscribers * published else { throw BenchFailure("delivered \(delivered)") }
                return now() - start
            }
        }
        let rate = Double(subscribers * published) / seconds
        say("fan-out to \(subscribers) subscribers        \(padLeft(format(rate), 10)) deliveries/s (\(published) events each; the subscribers share this process, so each signature is verified once, by the relay, and the subscribers find it among the signatures verified)")
    }

    try await idleConnectionMemory()
}

/// Runs the release `switchboard relay` (beside this binary) with `arguments` while `body` runs.
func withRelayProcess<R>(_ arguments: [String], _ body: (RelayURL, Process) async throws -> R) async throws -> R {
    let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("switchboard")
    let process = Process()
    process.executableURL = binary
    process.arguments = ["relay", "--port", "0"] + arguments
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try process.run()
    defer {
        process.terminate()
        process.waitUntilExit()
    }
    guard let line = String(data: output.fileHandleForReading.availableData, encoding: .utf8)?.split(separator: "\n").first else {
        throw BenchFailure("the relay process printed no URL")
    }
    return try await body(try RelayURL(String(line)), process)
}

/// RSS of a `switchboard relay` process and of this one, before and after opening idle pool connections.
func idleConnectionMemory() async throws {
    let connections = 500
    try await withRelayProcess([]) { url, process in
        try await Task.sleep(for: .milliseconds(300))
        let relayBefore = residentKiB(pid: process.processIdentifier), selfBefore = residentKiB()
        let pools = (0..<connections).map { _ in RelayPool(relays: [url], logger: quiet) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for pool in pools { group.addTask { try await pool.run() } }
            defer { group.cancelAll() }
            let deadline = now() + 30
            while pools.contains(where: { !($0.status().first?.isConnected ?? false) }) {
                guard now() < deadline else { throw BenchFailure("connections did not open") }
                try await Task.sleep(for: .milliseconds(100))
            }
            try await Task.sleep(for: .seconds(1))
            let relayAfter = residentKiB(pid: process.processIdentifier), selfAfter = residentKiB()
            let relayPer = Double(relayAfter - relayBefore) / Double(connections)
            let clientPer = Double(selfAfter - selfBefore) / Double(connections)
            say("idle connections: \(connections)        relay process \(String(format: "%.1f", relayPer)) KiB/connection (RSS \(relayBefore / 1024) → \(relayAfter / 1024) MiB); client pools \(String(format: "%.1f", clientPer)) KiB/connection")
        }
    }
}
