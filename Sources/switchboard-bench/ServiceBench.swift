import Foundation
import Histogram
import NostrCore
import NostrCrypto
import NostrRelay
import Synchronization

// `switchboard-bench service`: the load generator. It drives the example RPC service (the release
// `uppercase-service`, a separate process, SQLite journal) through an embedded relay in this process on
// loopback, with N distinct client keys, and reports:
// - closed loop (a window of requests in flight) for N = 10, 100, 1,000 and 10,000 clients: requests/s,
//   latency p50/p99 (HdrHistogram, publish → reply received), the service process's CPU per request and its RSS;
// - open loop at a fixed rate (default 1,000 requests/s): latency p50/p99/max, measured from each request's
//   scheduled send time, so a stall is not hidden by sending less (coordinated omission);
// - the crypto floor per request in this process (verify the request, NIP-44 decrypt, encrypt, sign the
//   reply: what the service cannot avoid), as the baseline the service's CPU per request is compared with.
// Requests are signed and encrypted before each timed run; replies are verified (by the pool) and decrypted.
// BENCH_REQUESTS (default 40,000) sets the closed-loop run length, BENCH_RATE and BENCH_SECONDS the open loop.

let replyKindBench: Kind = 25_911
let requestKindBench: Kind = 25_910

/// A process's CPU seconds (user + system) and resident memory, from /proc.
struct ProcessUsage {
    let cpuSeconds: Double
    let residentKiB: Int
    let peakResidentKiB: Int

    init(pid: Int32) {
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        var cpu = 0.0
        if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        {
            // Fields after the command name: state is field 3; utime and stime are fields 14 and 15.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) {
                cpu = (user + system) / ticks
            }
        }
        cpuSeconds = cpu
        residentKiB = residentKiBField("VmRSS:", pid: pid)
        peakResidentKiB = residentKiBField("VmHWM:", pid: pid)
    }
}

/// A memory figure (`VmRSS:`, `VmHWM:`) of a process, in KiB.
func residentKiBField(_ field: String, pid: Int32) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
        let line = text.split(separator: "\n").first(where: { $0.hasPrefix(field) })
    else { return 0 }
    return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
}

/// Clients with their conversation keys (computed up front: the generator's ECDH is not what is measured).
struct BenchClients {
    let keys: [SecretKey]
    let conversations: [ConversationKey]
    let byPublicKey: [PublicKey: Int]

    init(count: Int, service: PublicKey) throws {
        keys = (0..<count).map { _ in SecretKey.generate() }
        conversations = try keys.map { try ConversationKey(secretKey: $0, publicKey: service) }
        byPublicKey = Dictionary(uniqueKeysWithValues: keys.enumerated().map { ($1.publicKey, $0) })
    }

    /// `count` requests, round-robin over the clients.
    func requests(_ count: Int, service: PublicKey, label: String) throws -> [Event] {
        let createdAt = Timestamp.now
        return try (0..<count).map { i in
            let client = i % keys.count
            let content = try NIP44.encrypt("\(label) request \(i)", conversationKey: conversations[client])
            return EventTemplate(kind: requestKindBench, content: content, tags: [["p", service.hex]], createdAt: createdAt)
                .sign(with: keys[client])
        }
    }
}

/// Requests awaiting their reply: send time by request key, latencies, and how the replies read.
final class Outstanding: Sendable {
    struct State {
        var sent: [String: UInt64] = [:]
        var histogram = Histogram<UInt64>(highestTrackableValue: 120_000_000_000, numberOfSignificantValueDigits: .three)
        var answered = 0
        var wrong = 0
    }
    let state = Mutex(State())
    let completions: AsyncStream<Void>
    private let signal: AsyncStream<Void>.Continuation
    let reading: ReplyReader

    init(reading: ReplyReader) {
        self.reading = reading
        (completions, signal) = AsyncStream<Void>.makeStream()
    }

    func sending(_ request: Event, at nanoseconds: UInt64) {
        let key = reading.key(request)
        state.withLock { $0.sent[key] = nanoseconds }
    }

    func received(_ reply: Event) {
        let arrival = DispatchTime.now().uptimeNanoseconds
        guard let (key, correct) = reading.read(reply) else { return }
        let matched = state.withLock { state -> Bool in
            guard let sent = state.sent.removeValue(forKey: key) else { return false }
            _ = state.histogram.record(arrival > sent ? arrival - sent : 0)
            state.answered += 1
            if !correct { state.wrong += 1 }
            return true
        }
        if matched { signal.yield() }
    }
}

/// How a benchmark pairs replies with requests: the key a request is known by, and a reply's key and whether
/// it is the right answer (nil: not a reply to us).
struct ReplyReader: Sendable {
    let key: @Sendable (Event) -> String
    let read: @Sendable (Event) -> (key: String, correct: Bool)?

    /// The uppercase service: replies `e`-tag their request and carry its text upper-cased.
    static func uppercase(_ clients: BenchClients) -> ReplyReader {
        ReplyReader(key: { $0.id.hex }) { reply in
            guard let requestID = reply.tagValues("e").first, let recipient = reply.tagValues("p").first,
                let client = (try? PublicKey(hex: recipient)).flatMap({ clients.byPublicKey[$0] })
            else { return nil }
            let text = try? NIP44.decrypt(reply.content, conversationKey: clients.conversations[client])
            return (requestID, text?.contains(" REQUEST ") == true)
        }
    }
}

struct RunResult {
    let requests: Int
    let seconds: Double
    let histogram: Histogram<UInt64>
    let wrong: Int
    let serviceCPU: Double
    /// This process's CPU: the relay and the load generator.
    let benchCPU: Double

    var rate: Double { Double(requests) / seconds }
    func milliseconds(_ percentile: Double) -> String { String(format: "%.2f", Double(histogram.valueAtPercentile(percentile)) / 1e6) }
    var maximum: String { String(format: "%.1f", Double(histogram.max) / 1e6) }
    var cpuPerRequest: Double { serviceCPU / Double(requests) * 1e6 }
    var benchCPUPerRequest: Double { benchCPU / Double(requests) * 1e6 }
}

/// Publishes `requests`, keeping `window` awaiting replies (closed loop), or at `rate` per second (open loop,
/// latency from each request's scheduled time); returns once every one is answered.
func drive(
    _ requests: [Event], window: Int? = nil, rate: Double? = nil, reading: ReplyReader, pool: RelayPool,
    replies: RelaySubscription, service: Int32
) async throws -> RunResult {
    let outstanding = Outstanding(reading: reading)
    let before = ProcessUsage(pid: service), benchBefore = ProcessUsage(pid: getpid())
    let start = DispatchTime.now().uptimeNanoseconds
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask {
            for await item in replies {
                if case .event(let reply, _) = item { outstanding.received(reply) }
                if outstanding.state.withLock({ $0.answered }) == requests.count { return }
            }
        }
        group.addTask {
            try await Task.sleep(for: .seconds(300))
            throw BenchFailure("not every request was answered within 300 s")
        }
        let (queue, enqueue) = AsyncStream<Event>.makeStream()
        group.addTask {
            await withDiscardingTaskGroup { publishes in
                for await request in queue {
                    publishes.addTask { _ = await pool.publish(request, timeout: .seconds(60)) }
                }
            }
        }
        func send(_ request: Event, at nanoseconds: UInt64) {
            outstanding.sending(request, at: nanoseconds)
            enqueue.yield(request)
        }
        if let window {
            var next = 0
            while next < min(window, requests.count) {
                send(requests[next], at: DispatchTime.now().uptimeNanoseconds)
                next += 1
            }
            for await _ in outstanding.completions {
                guard next < requests.count else { break }
                send(requests[next], at: DispatchTime.now().uptimeNanoseconds)
                next += 1
            }
        } else if let rate {
            let interval = 1e9 / rate
            for (i, request) in requests.enumerated() {
                let scheduled = start + UInt64(Double(i) * interval)
                let current = DispatchTime.now().uptimeNanoseconds
                if scheduled > current { try await Task.sleep(for: .nanoseconds(Int(scheduled - current))) }
                send(request, at: scheduled)
            }
        }
        enqueue.finish()
        // The reply reader ends the run; the timer and publishes are not waited for.
        while let _ = try await group.next() {
            if outstanding.state.withLock({ $0.answered }) == requests.count { break }
        }
        group.cancelAll()
    }
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    let after = ProcessUsage(pid: service), benchAfter = ProcessUsage(pid: getpid())
    let state = outstanding.state.withLock { $0 }
    return RunResult(
        requests: requests.count, seconds: seconds, histogram: state.histogram, wrong: state.wrong,
        serviceCPU: after.cpuSeconds - before.cpuSeconds, benchCPU: benchAfter.cpuSeconds - benchBefore.cpuSeconds)
}

/// Runs the release `uppercase-service` (beside this binary) on `relay` while `body` runs.
func withUppercaseService<R>(_ relay: RelayURL, _ body: (PublicKey, Process) async throws -> R) async throws -> R {
    let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("uppercase-service")
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("switchboard-bench-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: directory) }
    let process = Process()
    process.executableURL = binary
    process.arguments = [
        "--data-dir", directory.path, "--relay", relay.string, "--sender-rate", "1000000", "--sender-burst", "1000000",
        "--sender-concurrency", "1000",
    ]
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try process.run()
    defer {
        process.terminate()
        process.waitUntilExit()
    }
    guard let line = String(data: output.fileHandleForReading.availableData, encoding: .utf8)?.split(separator: "\n").first,
        line.hasPrefix("ready "), let key = try? PublicKey(hex: line.dropFirst(6))
    else { throw BenchFailure("uppercase-service did not print its ready line") }
    return try await body(key, process)
}

/// Whether `event`'s id and signature check out, verifying the signature even if this process already has
/// (`Event.verify()` remembers verified signatures, and the floors repeat their requests).
func verifiedAfresh(_ event: Event) -> Bool {
    Event.computeID(pubkey: event.pubkey, createdAt: event.createdAt, kind: event.kind, tags: event.tags, content: event.content) == event.id
        && event.pubkey.isValidSignature(event.sig, for: event.id.bytes32)
}

/// What the service must do per request at the least, in this process: verify, decrypt, encrypt, sign.
func cryptoFloorMicroseconds(service: SecretKey, clients: BenchClients, requests: [Event]) throws -> Double {
    let conversation = try ConversationKey(secretKey: service, publicKey: clients.keys[0].publicKey)
    var index = 0
    let perSecond = measure(seconds: 1) {
        let request = requests[index % requests.count]
        index += 1
        blackHole(verifiedAfresh(request))
        let text = (try? NIP44.decrypt(request.content, conversationKey: conversation)) ?? ""
        let reply = (try? NIP44.encrypt(text.uppercased(), conversationKey: conversation)) ?? ""
        blackHole(EventTemplate(kind: replyKindBench, content: reply, tags: [["p", request.pubkey.hex], ["e", request.id.hex]]).sign(with: service))
    }
    return 1e6 / perSecond
}

/// The load benchmarks' settings: BENCH_REQUESTS (closed-loop run length), BENCH_CLIENTS (the closed-loop client
/// counts, comma-separated, where the benchmark has several), BENCH_RATE and BENCH_SECONDS (the open loop, default
/// 1,000/s for 10 s; 0 seconds skips it); 256 requests in flight in the closed loop.
struct LoadSettings {
    let perRun: Int
    let clientCounts: [Int]
    let rate: Double
    let openSeconds: Double
    let window = 256

    init(defaultRequests: Int, defaultClients: [Int] = []) {
        let environment = ProcessInfo.processInfo.environment
        perRun = Int(environment["BENCH_REQUESTS"] ?? "") ?? defaultRequests
        let counts = (environment["BENCH_CLIENTS"] ?? "").split(separator: ",").compactMap { Int($0) }.filter { $0 > 0 }
        clientCounts = counts.isEmpty ? defaultClients : counts
        rate = Double(environment["BENCH_RATE"] ?? "") ?? 1000
        openSeconds = Double(environment["BENCH_SECONDS"] ?? "") ?? 10
    }
}

func runService() async throws {
    let settings = LoadSettings(defaultRequests: 40_000, defaultClients: [10, 100, 1000, 10_000])
    let (perRun, rate, openSeconds, window) = (settings.perRun, settings.rate, settings.openSeconds, settings.window)
    try await withBenchRelay { url in
        try await withUppercaseService(url) { service, process in
            var configuration = RelayPool.Configuration()
            configuration.subscriptionBufferSize = 4096
            let pool = RelayPool(relays: [url], configuration: configuration, logger: quiet)
            say("uppercase-service started: RSS \(ProcessUsage(pid: process.processIdentifier).residentKiB / 1024) MiB")
            try await pool.withRunning {
                let filter = Filter(authors: [service], kinds: [replyKindBench], since: .now - 5)
                try await pool.withSubscription([filter]) { replies in
                    // Warm-up: connections, caches, the journal file.
                    let warm = try BenchClients(count: 10, service: service)
                    _ = try await drive(try warm.requests(5000, service: service, label: "warm"), window: window, reading: .uppercase(warm), pool: pool, replies: replies, service: process.processIdentifier)

                    let floorClients = try BenchClients(count: 1, service: service)
                    let floor = try cryptoFloorMicroseconds(
                        service: SecretKey.generate(), clients: floorClients,
                        requests: try floorClients.requests(2000, service: service, label: "floor"))
                    say(String(format: "crypto floor per request (verify, NIP-44 decrypt+encrypt, sign; one core): %.1f µs", floor))
                    say("closed loop, \(window) in flight, \(perRun) requests per run; service CPU and RSS from /proc:")
                    var costs: [Int: Double] = [:]
                    for count in settings.clientCounts {
                        let clients = try BenchClients(count: count, service: service)
                        let requests = try clients.requests(perRun, service: service, label: "c\(count)")
                        let result = try await drive(requests, window: window, reading: .uppercase(clients), pool: pool, replies: replies, service: process.processIdentifier)
                        let usage = ProcessUsage(pid: process.processIdentifier)
                        costs[count] = result.cpuPerRequest
                        say("  \(padLeft("\(count)", 6)) clients: \(padLeft(format(result.rate), 8)) requests/s  p50 \(result.milliseconds(50)) ms  p99 \(result.milliseconds(99)) ms  service CPU \(String(format: "%.0f", result.cpuPerRequest)) µs/request (\(String(format: "%.1f", result.cpuPerRequest / floor))× the floor)  relay+generator CPU \(String(format: "%.0f", result.benchCPUPerRequest)) µs/request  RSS \(usage.residentKiB / 1024) MiB (peak \(usage.peakResidentKiB / 1024))\(result.wrong > 0 ? "  WRONG REPLIES \(result.wrong)" : "")")
                    }
                    if let small = costs[10], let large = costs[10_000] {
                        say(String(format: "  service CPU per request, 10,000 vs 10 clients: %.2f×", large / small))
                    }

                    guard openSeconds > 0 else { return }
                    let clients = try BenchClients(count: 1000, service: service)
                    let requests = try clients.requests(Int(rate * openSeconds), service: service, label: "open")
                    let result = try await drive(requests, rate: rate, reading: .uppercase(clients), pool: pool, replies: replies, service: process.processIdentifier)
                    say("open loop at \(format(rate)) requests/s for \(Int(openSeconds)) s, 1,000 clients: p50 \(result.milliseconds(50)) ms  p99 \(result.milliseconds(99)) ms  max \(result.maximum) ms  (answered \(format(result.rate))/s)  service CPU \(String(format: "%.0f", result.cpuPerRequest)) µs/request  relay+generator CPU \(String(format: "%.0f", result.benchCPUPerRequest)) µs/request\(result.wrong > 0 ? "  WRONG REPLIES \(result.wrong)" : "")")
                }
            }
        }
    }
}
