import Foundation
import NostrCore
import NostrCrypto
import NostrRelay
import Synchronization
import WalletKit

// `switchboard-bench wallet`: NIP-47 requests through the release `wallet-bridge serve` (a separate process
// with the ledger backend and its SQLite files) over an embedded relay in this process on loopback:
// - get_balance and ledger pay_invoice (payer → payee, one invoice per request, made beforehand in the
//   ledger), closed loop with 256 in flight: requests/s, p50/p99 (publish → response), the service's CPU per
//   request against the crypto floor (verify, NIP-44 decrypt and encrypt, sign; one core, in this process);
// - open loop for BENCH_SECONDS (10): get_balance at BENCH_RATE (default 1,000)/s, pay_invoice at half that:
//   p50/p99;
// - 10,000 connections added while it runs (the newest must be answered), then RSS of a fresh process on the
//   same data directory serving them (the figure without the allocator's memory of the load runs).
// Connections are added to the service's store as `wallet-bridge connect` does; the running service picks
// them up. Every response is decrypted and must carry a result (a preimage for payments).

/// NWC clients of connections: their secrets and conversation keys with the wallet keys.
struct WalletClients: Sendable {
    let secrets: [SecretKey]
    let wallets: [PublicKey]
    let conversations: [PublicKey: ConversationKey]

    init(_ connections: [(secret: SecretKey, wallet: PublicKey)]) throws {
        secrets = connections.map(\.secret)
        wallets = connections.map(\.wallet)
        conversations = Dictionary(
            try connections.map { ($0.wallet, try ConversationKey(secretKey: $0.secret, publicKey: $0.wallet)) }, uniquingKeysWith: { a, _ in a })
    }

    /// Request events: `params(i)` for request i, from connection i mod count.
    func requests(_ count: Int, method: String, params: (Int) -> [String: JSONValue]) throws -> [Event] {
        try (0..<count).map { i in
            let client = i % secrets.count
            let content = try NIP44.encrypt(
                NIP47.Request(method: method, params: params(i)).json, conversationKey: conversations[wallets[client]]!)
            return EventTemplate(
                kind: NIP47.requestKind, content: content, tags: [["p", wallets[client].hex], ["encryption", "nip44_v2"]]
            ).sign(with: secrets[client])
        }
    }

    /// Responses are keyed by the request id they `e`-tag; right when they carry a result with `field`.
    func reader(expecting field: String) -> ReplyReader {
        ReplyReader(key: { $0.id.hex }) { reply in
            guard reply.kind == NIP47.responseKind, let request = reply.tagValues("e").first,
                let conversation = conversations[reply.pubkey]
            else { return nil }
            guard let text = try? NIP44.decrypt(reply.content, conversationKey: conversation),
                case .object(let response)? = try? JSON.parse(text), case .object(let result)? = response["result"]
            else { return (request, false) }
            return (request, result[field] != nil)
        }
    }
}

/// Starts the release `wallet-bridge serve` (beside this binary) on `relay` with data directory `data`, and
/// returns once it has printed its ready line.
func launchWalletBridge(data: URL, relay: RelayURL) throws -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("wallet-bridge")
    process.arguments = [
        "serve", "--data-dir", data.path, "--relay", relay.string,
        "--client-rate", "1000000", "--client-burst", "1000000", "--client-concurrency", "1000",
    ]
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try process.run()
    var printed = ""
    while !printed.contains("wallet-bridge ready") {
        let chunk = output.fileHandleForReading.availableData
        guard !chunk.isEmpty else {
            process.terminate()
            throw BenchFailure("wallet-bridge serve stopped before its ready line")
        }
        printed += String(decoding: chunk, as: UTF8.self)
    }
    return process
}

func stop(_ process: Process) {
    guard process.isRunning else { return }
    process.terminate()
    process.waitUntilExit()
}

/// Runs `wallet-bridge serve` on `relay` with a fresh data directory while `body` runs; gives it the process,
/// the data directory, the service's store and its keys (to add connections and invoices).
func withWalletProcess<R>(_ relay: RelayURL, _ body: (Process, URL, SQLiteWalletStore, WalletKeys) async throws -> R) async throws -> R {
    let data = FileManager.default.temporaryDirectory.appendingPathComponent("switchboard-bench-wallet-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: data) }
    let process = try launchWalletBridge(data: data, relay: relay)
    defer { stop(process) }
    let master = try String(contentsOf: data.appendingPathComponent("master.key"), encoding: .utf8)
    let keys = WalletKeys(master: try SecretKey(hex: master.trimmingCharacters(in: .whitespacesAndNewlines)))
    return try await body(process, data, try SQLiteWalletStore(path: data.appendingPathComponent("wallet.sqlite").path), keys)
}

/// A new connection with every core method, funded with `balance`; returns its client secret and wallet key.
func addConnection(_ name: String, balance: Int64, store: SQLiteWalletStore, keys: WalletKeys, relay: RelayURL) async throws -> (secret: SecretKey, wallet: PublicKey) {
    let secret = SecretKey.generate()
    let connection = try await store.addConnection(
        name: name, clientKey: secret.publicKey, methods: Set(NIP47.coreMethods), budget: nil, expiresAt: nil, relays: [relay], now: .now,
        walletKey: { try keys.walletKey($0).publicKey })
    if balance > 0 { _ = try await store.credit(connection: connection.id, msat: balance) }
    return (secret, connection.walletKey)
}

func runWallet() async throws {
    let settings = LoadSettings(defaultRequests: 10_000)
    let (perRun, rate, openSeconds, window) = (settings.perRun, settings.rate, settings.openSeconds, settings.window)
    let openCount = Int(rate * openSeconds)
    try await withBenchRelay { url in
        try await withWalletProcess(url) { process, data, store, keys in
            let pid = process.processIdentifier
            say("wallet-bridge serve started: RSS \(ProcessUsage(pid: pid).residentKiB / 1024) MiB")
            let payments = perRun + openCount + 1_000
            let payer = try await addConnection("payer", balance: Int64(payments) * 1_000, store: store, keys: keys, relay: url)
            _ = try await addConnection("payee", balance: 0, store: store, keys: keys, relay: url)
            let clients = try WalletClients([payer])
            let ledger = LedgerBackend(store: store, nodeKey: try keys.ledgerNodeKey())
            guard let payeeConnection = try await store.connection(idOrName: "payee") else { throw BenchFailure("no payee connection") }
            var invoices: [String] = []
            for _ in 0..<payments {
                let made = try await ledger.makeInvoice(
                    InvoiceRequest(amountMsat: 1_000, description: "bench", descriptionHash: nil, expiry: 3600, metadata: nil),
                    for: payeeConnection, now: .now)
                invoices.append(made.invoice ?? "")
            }
            // The service polls its store for new connections four times a second.
            try await Task.sleep(for: .seconds(1))

            var configuration = RelayPool.Configuration()
            configuration.subscriptionBufferSize = 4096
            let pool = RelayPool(relays: [url], configuration: configuration, logger: quiet)
            try await pool.withRunning {
                let filter = Filter(kinds: [NIP47.responseKind], since: .now - 5)
                try await pool.withSubscription([filter]) { replies in
                    let balance = clients.reader(expecting: "balance")
                    let paid = clients.reader(expecting: "preimage")
                    var next = 0
                    func payRequests(_ count: Int) throws -> [Event] {
                        defer { next += count }
                        let start = next
                        return try clients.requests(count, method: "pay_invoice") { ["invoice": .string(invoices[start + $0])] }
                    }
                    // Warm-up: connections, caches, the journal and wallet files.
                    _ = try await drive(try clients.requests(2_000, method: "get_balance") { _ in [:] }, window: window, reading: balance, pool: pool, replies: replies, service: pid)
                    _ = try await drive(try payRequests(1_000), window: window, reading: paid, pool: pool, replies: replies, service: pid)

                    let floorRequests = try clients.requests(1_000, method: "get_balance") { _ in [:] }
                    let floor = try walletFloorMicroseconds(requests: floorRequests, clients: clients)
                    say(String(format: "crypto floor per request (verify, NIP-44 decrypt+encrypt, sign; one core): %.1f µs", floor))
                    say("closed loop, \(window) in flight, \(perRun) requests per run; wallet-bridge CPU and RSS from /proc:")
                    for (method, requests, reader) in [
                        ("get_balance", try clients.requests(perRun, method: "get_balance") { _ in [:] }, balance),
                        ("pay_invoice", try payRequests(perRun), paid),
                    ] {
                        let result = try await drive(requests, window: window, reading: reader, pool: pool, replies: replies, service: pid)
                        let usage = ProcessUsage(pid: pid)
                        say("  \(method): \(padLeft(format(result.rate), 7)) requests/s  p50 \(result.milliseconds(50)) ms  p99 \(result.milliseconds(99)) ms  wallet-bridge CPU \(String(format: "%.0f", result.cpuPerRequest)) µs/request (\(String(format: "%.1f", result.cpuPerRequest / floor))× the floor)  RSS \(usage.residentKiB / 1024) MiB\(result.wrong > 0 ? "  WRONG RESPONSES \(result.wrong)" : "")")
                    }
                    // Payments are slower (each is a synced write transaction): their open loop runs at half the rate.
                    for (method, requests, reader, offered) in openSeconds > 0 ? [
                        ("get_balance", try clients.requests(openCount, method: "get_balance") { _ in [:] }, balance, rate),
                        ("pay_invoice", try payRequests(openCount / 2), paid, rate / 2),
                    ] : [] {
                        let result = try await drive(requests, rate: offered, reading: reader, pool: pool, replies: replies, service: pid)
                        say("open loop at \(format(offered))/s for \(Int(openSeconds)) s, \(method): p50 \(result.milliseconds(50)) ms  p99 \(result.milliseconds(99)) ms  max \(result.maximum) ms  (answered \(format(result.rate))/s)\(result.wrong > 0 ? "  WRONG RESPONSES \(result.wrong)" : "")")
                    }

                    // 10,000 connections: added while it runs (each with its own wallet key), then a fresh process
                    // on the same data directory (RSS without the allocator's memory of the runs above).
                    let added = ContinuousClock.now
                    var newest = payer
                    for i in 0..<10_000 { newest = try await addConnection("c\(i)", balance: 0, store: store, keys: keys, relay: url) }
                    let stored = ContinuousClock.now - added
                    var client = NIP47Client(uri: WalletConnectURI(wallet: newest.wallet, relays: [url], secret: newest.secret))
                    client.timeout = .seconds(2)
                    func served(within limit: Duration) async -> Duration? {
                        let start = ContinuousClock.now
                        while ContinuousClock.now - start < limit {
                            if (try? await client.run({ try await $0.call("get_balance") }))?.object?["balance"] != nil { return ContinuousClock.now - start }
                        }
                        return nil
                    }
                    guard let pickedUp = await served(within: .seconds(120)) else { throw BenchFailure("the 10,000th connection was not served within 120 s") }
                    say("10,000 connections added to the store in \(stored) while it runs; the newest served \(pickedUp) later; RSS \(ProcessUsage(pid: pid).residentKiB / 1024) MiB")
                    stop(process)
                    let launched = ContinuousClock.now
                    let fresh = try launchWalletBridge(data: data, relay: url)
                    defer { stop(fresh) }
                    let ready = ContinuousClock.now - launched
                    guard await served(within: .seconds(60)) != nil else { throw BenchFailure("the restarted service did not answer") }
                    let probe = try WalletClients([newest])
                    let result = try await drive(
                        try probe.requests(perRun / 5, method: "get_balance") { _ in [:] }, window: window, reading: probe.reader(expecting: "balance"),
                        pool: pool, replies: replies, service: fresh.processIdentifier)
                    let usage = ProcessUsage(pid: fresh.processIdentifier)
                    say("restarted with 10,002 connections: ready (subscribed, 10,002 info events confirmed) in \(ready); get_balance \(format(result.rate)) requests/s  p50 \(result.milliseconds(50)) ms  p99 \(result.milliseconds(99)) ms; RSS \(usage.residentKiB / 1024) MiB (peak \(usage.peakResidentKiB / 1024))\(result.wrong > 0 ? "  WRONG RESPONSES \(result.wrong)" : "")")
                }
            }
        }
    }
}

/// What the service must do per request at the least, in this process.
func walletFloorMicroseconds(requests: [Event], clients: WalletClients) throws -> Double {
    // The conversation key is symmetric: the client's serves for the wallet's side; signing uses a fresh key.
    let conversation = clients.conversations[clients.wallets[0]]!
    let secret = SecretKey.generate()
    var index = 0
    let perSecond = measure(seconds: 1) {
        let request = requests[index % requests.count]
        index += 1
        blackHole(verifiedAfresh(request))
        blackHole(try? NIP44.decrypt(request.content, conversationKey: conversation))
        let response = NIP47.response("get_balance", result: .object(["balance": .number("1000")]))
        let content = (try? NIP44.encrypt(response, conversationKey: conversation)) ?? ""
        blackHole(EventTemplate(kind: NIP47.responseKind, content: content, tags: [["p", request.pubkey.hex], ["e", request.id.hex]]).sign(with: secret))
    }
    return 1e6 / perSecond
}
