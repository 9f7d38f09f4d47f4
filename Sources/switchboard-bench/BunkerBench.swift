import BunkerKit
import Foundation
import NostrCore
import NostrCrypto
import NostrRelay
import NostrService
import Synchronization

// `switchboard-bench bunker`: sign_event through the release `bunker serve` (a separate process, its SQLite
// journal and audit log, NIP-49 keys) over an embedded relay in this process on loopback, with 1 and with
// 1,000 connected clients:
// - closed loop (256 requests in flight): requests/s, latency p50/p99 (publish → response received), the
//   bunker's CPU per request and RSS;
// - open loop at BENCH_RATE (default 1,000) requests/s for BENCH_SECONDS (10) with 1,000 clients: p50/p99/max
//   from each request's scheduled send time;
// - the crypto floor per request in this process: verify the request, NIP-44 decrypt, sign the user's event,
//   NIP-44 encrypt, sign the response.
// Clients connect over the protocol with secrets minted in the bunker's store (as `bunker uri` does). Every
// response is decrypted and must carry a result; one in 50 signed events is also verified here.
// BENCH_REQUESTS (default 20,000) sets the closed-loop run length.

/// Clients connected to the bunker, with their conversation keys.
struct BunkerClients {
    let keys: [SecretKey]
    let conversations: [ConversationKey]
    let byPublicKey: [PublicKey: Int]
    let signer: PublicKey

    init(count: Int, signer: PublicKey) throws {
        self.signer = signer
        keys = (0..<count).map { _ in SecretKey.generate() }
        conversations = try keys.map { try ConversationKey(secretKey: $0, publicKey: signer) }
        byPublicKey = Dictionary(uniqueKeysWithValues: keys.enumerated().map { ($1.publicKey, $0) })
    }

    /// One NIP-46 request event per message, round-robin over the clients; the message id is the key.
    func requests(_ messages: [(id: String, method: String, params: [String])], client clientFor: (Int) -> Int) throws -> (events: [Event], keys: [EventID: String]) {
        var events: [Event] = []
        var keys: [EventID: String] = [:]
        let createdAt = Timestamp.now
        for (i, message) in messages.enumerated() {
            let client = clientFor(i)
            let json = NIP46.Request(id: message.id, method: message.method, params: message.params).json
            let event = EventTemplate(
                kind: NIP46.kind, content: try NIP44.encrypt(json, conversationKey: conversations[client]),
                tags: [["p", signer.hex]], createdAt: createdAt
            ).sign(with: self.keys[client])
            events.append(event)
            keys[event.id] = message.id
        }
        return (events, keys)
    }

    /// `count` sign_event requests (kind 1 notes), round-robin over the clients.
    func signRequests(_ count: Int, label: String) throws -> (events: [Event], keys: [EventID: String]) {
        try requests(
            (0..<count).map { i in ("\(label)-\(i)", "sign_event", [EventTemplate(kind: 1, content: "\(label) note \(i)").json]) },
            client: { $0 % keys.count })
    }

    /// Pairs responses with requests by message id; a response is right when it has a result and no error,
    /// and (one in 50) its signed event verifies.
    func reader(keys: [EventID: String]) -> ReplyReader {
        let counter = Mutex(0)
        return ReplyReader(key: { keys[$0.id] ?? "" }) { reply in
            guard let recipient = reply.tagValues("p").first,
                let client = (try? PublicKey(hex: recipient)).flatMap({ byPublicKey[$0] }),
                let text = try? NIP44.decrypt(reply.content, conversationKey: conversations[client]),
                let response = try? NIP46.Response(json: text)
            else { return nil }
            guard response.error == nil, let result = response.result, !result.isEmpty else { return (response.id, false) }
            let check = counter.withLock { count -> Bool in
                count += 1
                return count % 50 == 0
            }
            if check, result.hasPrefix("{") { return (response.id, (try? Event(json: result))?.isValid == true) }
            return (response.id, true)
        }
    }
}

/// Runs the release `bunker serve` (beside this binary) on `relay` with a fresh data directory while `body`
/// runs; gives `body` the remote-signer key, the process, and the bunker's state (to mint secrets).
func withBunkerProcess<R>(_ relay: RelayURL, _ body: (PublicKey, Process, BunkerState) async throws -> R) async throws -> R {
    let directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let data = FileManager.default.temporaryDirectory.appendingPathComponent("switchboard-bench-bunker-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: data) }
    var environment = ProcessInfo.processInfo.environment
    environment["BUNKER_PASSPHRASE"] = "bench passphrase"

    let initialize = Process()
    initialize.executableURL = directory.appendingPathComponent("bunker")
    initialize.arguments = ["init", "--data-dir", data.path]
    initialize.environment = environment
    initialize.standardOutput = FileHandle.nullDevice
    try initialize.run()
    initialize.waitUntilExit()
    guard initialize.terminationStatus == 0 else { throw BenchFailure("bunker init failed") }

    let process = Process()
    process.executableURL = directory.appendingPathComponent("bunker")
    process.arguments = [
        "serve", "--data-dir", data.path, "--relay", relay.string,
        "--client-rate", "1000000", "--client-burst", "1000000", "--client-concurrency", "1000",
    ]
    process.environment = environment
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try process.run()
    defer {
        process.terminate()
        process.waitUntilExit()
    }
    guard let line = String(data: output.fileHandleForReading.availableData, encoding: .utf8)?.split(separator: "\n").first,
        let uri = try? BunkerURI(String(line))
    else { throw BenchFailure("bunker serve did not print its bunker:// URI") }
    let state = BunkerState(store: try SQLiteServiceStore(path: data.appendingPathComponent("bunker.sqlite").path))
    return try await body(uri.signer, process, state)
}

/// What the bunker must do per sign_event at the least, in this process.
func signFloorMicroseconds(requests: [Event], clients: BunkerClients) throws -> Double {
    let signerKey = SecretKey.generate(), user = SecretKey.generate()
    let conversation = try ConversationKey(secretKey: signerKey, publicKey: clients.keys[0].publicKey)
    let clientConversation = clients.conversations[0]
    var index = 0
    let perSecond = measure(seconds: 1) {
        let request = requests[index % requests.count]
        index += 1
        blackHole(verifiedAfresh(request))
        let text = (try? NIP44.decrypt(request.content, conversationKey: clientConversation)) ?? ""
        let message = try? NIP46.Request(json: text)
        let template = message.flatMap { try? EventTemplate(json: $0.params[0]) } ?? EventTemplate(kind: 1)
        let signed = template.sign(with: user)
        let response = NIP46.Response(id: message?.id ?? "", result: signed.json).json
        let content = (try? NIP44.encrypt(response, conversationKey: conversation)) ?? ""
        blackHole(EventTemplate(kind: NIP46.kind, content: content, tags: [["p", request.pubkey.hex]]).sign(with: signerKey))
    }
    return 1e6 / perSecond
}

func runBunker() async throws {
    let settings = LoadSettings(defaultRequests: 20_000, defaultClients: [1, 1000])
    let (perRun, rate, openSeconds, window) = (settings.perRun, settings.rate, settings.openSeconds, settings.window)
    try await withBenchRelay { url in
        try await withBunkerProcess(url) { signer, process, state in
            var configuration = RelayPool.Configuration()
            configuration.subscriptionBufferSize = 4096
            let pool = RelayPool(relays: [url], configuration: configuration, logger: quiet)
            let pid = process.processIdentifier
            say("bunker serve started: RSS \(ProcessUsage(pid: pid).residentKiB / 1024) MiB")
            try await pool.withRunning {
                let filter = Filter(authors: [signer], kinds: [NIP46.kind], since: .now - 5)
                try await pool.withSubscription([filter]) { replies in
                    /// Connects every client over the protocol, with a secret minted for each.
                    func connected(_ count: Int) async throws -> BunkerClients {
                        let clients = try BunkerClients(count: count, signer: signer)
                        var messages: [(id: String, method: String, params: [String])] = []
                        for i in 0..<count {
                            let secret = try await state.mintSecret(for: signer, permissions: .all, label: nil)
                            messages.append(("connect-\(i)", "connect", [signer.hex, secret]))
                        }
                        let (events, keys) = try clients.requests(messages, client: { $0 })
                        let result = try await drive(events, window: 64, reading: clients.reader(keys: keys), pool: pool, replies: replies, service: pid)
                        guard result.wrong == 0 else { throw BenchFailure("\(result.wrong) of \(count) connects failed") }
                        return clients
                    }
                    let warm = try await connected(10)
                    let (warmEvents, warmKeys) = try warm.signRequests(3000, label: "warm")
                    _ = try await drive(warmEvents, window: window, reading: warm.reader(keys: warmKeys), pool: pool, replies: replies, service: pid)

                    let floor = try signFloorMicroseconds(requests: try warm.signRequests(2000, label: "floor").events, clients: warm)
                    say(String(format: "crypto floor per sign_event (verify, NIP-44 decrypt, sign the event, NIP-44 encrypt, sign the response; one core): %.1f µs", floor))
                    say("closed loop, \(window) in flight, \(perRun) sign_event requests per run; bunker CPU and RSS from /proc:")
                    for count in settings.clientCounts {
                        let clients = try await connected(count)
                        let (events, keys) = try clients.signRequests(perRun, label: "c\(count)")
                        let result = try await drive(events, window: window, reading: clients.reader(keys: keys), pool: pool, replies: replies, service: pid)
                        let usage = ProcessUsage(pid: pid)
                        say("  \(padLeft("\(count)", 5)) client\(count == 1 ? " " : "s"): \(padLeft(format(result.rate), 8)) requests/s  p50 \(result.milliseconds(50)) ms  p99 \(result.milliseconds(99)) ms  bunker CPU \(String(format: "%.0f", result.cpuPerRequest)) µs/request (\(String(format: "%.1f", result.cpuPerRequest / floor))× the floor)  relay+generator CPU \(String(format: "%.0f", result.benchCPUPerRequest)) µs/request  RSS \(usage.residentKiB / 1024) MiB\(result.wrong > 0 ? "  WRONG RESPONSES \(result.wrong)" : "")")
                    }

                    guard openSeconds > 0 else { return }
                    let clients = try await connected(1000)
                    let (events, keys) = try clients.signRequests(Int(rate * openSeconds), label: "open")
                    let result = try await drive(events, rate: rate, reading: clients.reader(keys: keys), pool: pool, replies: replies, service: pid)
                    say("open loop at \(format(rate)) sign_event/s for \(Int(openSeconds)) s, 1,000 clients: p50 \(result.milliseconds(50)) ms  p99 \(result.milliseconds(99)) ms  max \(result.maximum) ms  (answered \(format(result.rate))/s)  bunker CPU \(String(format: "%.0f", result.cpuPerRequest)) µs/request  relay+generator CPU \(String(format: "%.0f", result.benchCPUPerRequest)) µs/request\(result.wrong > 0 ? "  WRONG RESPONSES \(result.wrong)" : "")")
                }
            }
        }
    }
}
