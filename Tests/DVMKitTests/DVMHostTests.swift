import DVMExamples
@testable import DVMKit
import Foundation
import Hummingbird
import Logging
import NostrCore
import NostrCrypto
import NostrRelay
import NostrService
import NostrServicePostgres
import NostrServiceTesting
import Synchronization
import Testing
import WalletKit

let quiet = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

/// Records every run: how often each job ran and the most running at once.
final class Recorder: JobHandler {
    let delay: Duration
    private let state = Mutex<(runs: [EventID: Int], running: Int, most: Int)>(([:], 0, 0))

    init(delay: Duration = .zero) { self.delay = delay }

    var runs: [EventID: Int] { state.withLock { $0.runs } }
    var most: Int { state.withLock { $0.most } }

    func run(_ job: Job, context: JobContext) async throws -> JobOutput {
        state.withLock { state in
            state.runs[job.id, default: 0] += 1
            state.running += 1
            state.most = max(state.most, state.running)
        }
        defer { state.withLock { $0.running -= 1 } }
        if delay > .zero { try await Task.sleep(for: delay) }
        return JobOutput("done: \(job.text ?? "")")
    }
}

struct TestHost {
    let host: DVMHost
    let relays: [RelayURL]
    let client: DVMClient
    var pool: RelayPool { client.pool }
    var key: PublicKey { host.publicKey }

    /// The events answering `request` on the relays: feedback and results.
    func answers(to request: Event) async throws -> [Event] {
        try await pool.fetch([Filter(tags: ["e": [request.id.hex]])], timeout: .seconds(3))
    }
}

func runtimeConfiguration(_ relays: [RelayURL]) -> ServiceRuntime.Configuration {
    var configuration = ServiceRuntime.Configuration(relays: relays)
    configuration.pool.reconnectDelay = .milliseconds(50)
    configuration.publishTimeout = .seconds(2)
    configuration.catchUpMargin = 5
    // One test customer sends many jobs at once.
    configuration.policy.rate = 10_000
    configuration.policy.burst = 10_000
    configuration.policy.maximumConcurrentPerSender = 10_000
    return configuration
}

func privateInputs() -> InputResolver.Configuration {
    var inputs = InputResolver.Configuration()
    inputs.allowsPrivateAddresses = true
    inputs.jobTimeout = .seconds(10)
    return inputs
}

/// Runs `hosts` job hosts on one key (each with its store from `stores`) over `relayCount` test relays, with a
/// customer's pool on the same relays; stops everything however `body` ends.
func withHosts<R: Sendable>(
    relays relayCount: Int = 1, hosts: Int = 1, key: SecretKey = .generate(), handler: any JobHandler,
    service configure: @Sendable (inout DVMService.Configuration) -> Void = { _ in },
    runtime configureRuntime: @Sendable (inout ServiceRuntime.Configuration) -> Void = { _ in },
    inputs: InputResolver.Configuration = privateInputs(), wallet: WalletConnectURI? = nil,
    stores: [any ServiceStore]? = nil, existingRelays: [RelayURL]? = nil,
    _ body: @escaping @Sendable ([TestHost]) async throws -> R
) async throws -> R {
    func run(_ urls: [RelayURL]) async throws -> R {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("dvm-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let stores = try stores ?? [try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path)]
        var service = DVMService.Configuration(kinds: [5050])
        service.concurrency = 2
        service.jobTimeout = .seconds(5)
        configure(&service)
        var runtime = runtimeConfiguration(urls)
        configureRuntime(&runtime)
        let started = (0..<hosts).map { index in
            DVMHost(
                key: LocalServiceKey(key), handler: handler, store: stores[index % stores.count], service: service,
                runtime: runtime, inputs: inputs, wallet: wallet, logger: quiet)
        }
        let pool = RelayPool(relays: urls, logger: quiet)
        return try await pool.withRunning {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for host in started { group.addTask { try await host.run() } }
                defer { group.cancelAll() }
                try await withTimeout(.seconds(30), "the hosts to be ready") {
                    while !started.allSatisfy(\.isReady) { try await Task.sleep(for: .milliseconds(20)) }
                }
                let client = DVMClient(secret: .generate(), pool: pool)
                return try await body(started.map { TestHost(host: $0, relays: urls, client: client) })
            }
        }
    }
    if let existingRelays { return try await run(existingRelays) }
    return try await withTestRelays(relayCount) { relays in try await run(relays.compactMap(\.url)) }
}

/// Collects the statuses of `request`'s feedback, in order, while it runs.
final class Statuses: Sendable {
    let list = Mutex<[String]>([])
    var all: [String] { list.withLock { $0 } }
    func add(_ feedback: DVMClient.Feedback) { list.withLock { $0.append(feedback.status) } }
}

@Suite("dvm-host end to end: jobs over test relays")
struct DVMHostTests {
    @Test("a plain job on two relays runs once; result and feedback carry the request, e, p and i tags")
    func plainJob() async throws {
        let recorder = Recorder()
        try await withHosts(relays: 2, handler: recorder) { hosts in
            let test = hosts[0]
            let request = try test.client.request(kind: 5050, inputs: [JobInput(data: "hello", type: .text)], output: "text/plain")
            let statuses = Statuses()
            let result = try await test.client.run(request, timeout: .seconds(10)) { statuses.add($0) }
            #expect(result.content == "done: hello")
            #expect(result.event.kind == 6050 && result.event.pubkey == test.key)
            #expect(result.event.firstTagValue("request") == request.json)
            #expect(result.event.firstTagValue("e") == request.id.hex && result.event.firstTagValue("p") == request.pubkey.hex)
            #expect(result.event.tags.contains(["i", "hello", "text"]))
            #expect(!result.event.tags.contains { $0.name == "encrypted" })
            #expect(statuses.all == ["processing"])
            // Both relays have the result, and the success feedback follows it.
            for relay in test.relays {
                let stored = try await withTimeout(.seconds(20), "the success feedback on \(relay)") {
                    while true {
                        let stored = try await test.pool.fetch([Filter(kinds: [6050, 7000], tags: ["e": [request.id.hex]])], from: [relay], timeout: .seconds(3))
                        if stored.contains(where: { $0.kind == 7000 && $0.firstTagValue("status") == "success" }) { return stored }
                        try await Task.sleep(for: .milliseconds(50))
                    }
                }
                #expect(stored.contains { $0.id == result.event.id }, "\(relay)")
            }
            // The copy from the other relay, there long before the job's last feedback, did not run it again.
            #expect(recorder.runs[request.id] == 1)
        }
    }

    @Test("encrypted jobs (NIP-44 and NIP-04) are answered in the same scheme, with no clear inputs", arguments: [PayloadEncryption.nip44, .nip04])
    func encrypted(_ scheme: PayloadEncryption) async throws {
        try await withHosts(handler: Uppercase()) { hosts in
            let test = hosts[0]
            let request = try test.client.request(
                kind: 5050, inputs: [JobInput(data: "secret words", type: .text)], provider: test.key, encryption: scheme)
            #expect(!request.content.contains("secret"))
            let result = try await test.client.run(request, timeout: .seconds(10))
            #expect(result.content == "SECRET WORDS")
            #expect(result.event.tags.contains(["encrypted"]))
            #expect(!result.event.tags.contains { $0.name == "i" })
            #expect(NIP04.isNIP04Payload(result.event.content) == (scheme == .nip04))
            let feedback = try await test.answers(to: request).filter { $0.kind == 7000 }
            #expect(!feedback.isEmpty)
            for event in feedback {
                #expect(event.firstTagValue("status") == nil && event.tags.contains(["encrypted"]))
                let status = try test.client.decode(feedback: event).status
                #expect(["processing", "success"].contains(status))
            }
        }
    }

    @Test("an encrypted job with an empty result gets it (NIP-44 cannot encrypt nothing), not an internal error", arguments: [PayloadEncryption.nip44, .nip04])
    func emptyEncryptedResult(_ scheme: PayloadEncryption) async throws {
        try await withHosts(handler: EmptyOutput()) { hosts in
            let test = hosts[0]
            let request = try test.client.request(
                kind: 5050, inputs: [JobInput(data: "secret words", type: .text)], provider: test.key, encryption: scheme)
            let result = try await test.client.run(request, timeout: .seconds(10))
            #expect(result.content == "")
            #expect(!result.event.tags.contains { $0.name == "i" })
            // The `success` feedback follows the result.
            let statuses = try await withTimeout(.seconds(20), "the last feedback") { () async throws -> [String] in
                while true {
                    let statuses = try await test.answers(to: request).filter { $0.kind == 7000 }.map { try test.client.decode(feedback: $0).status }
                    if statuses.contains("success") || statuses.contains("error") { return statuses }
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
            #expect(statuses.contains("success") && !statuses.contains("error"))
        }
    }

    @Test("a result too large for relays goes without its copies of the request and inputs; one too large even then is an error, not a lost result")
    func resultSize() async throws {
        try await withHosts(handler: Sized()) { hosts in
            let client = hosts[0].client
            func request(input: Int, output: Int) throws -> Event {
                try client.request(
                    kind: 5050, inputs: [JobInput(data: String(repeating: "i", count: input), type: .text)],
                    parameters: [JobParameter(name: "size", values: ["\(output)"])])
            }
            let small = try await client.run(try request(input: 10, output: 10), timeout: .seconds(10))
            #expect(small.content.count == 10 && small.event.tags.contains { $0.name == "request" } && small.event.tags.contains { $0.name == "i" })
            let large = try await client.run(try request(input: 20_000, output: 40_000), timeout: .seconds(10))
            #expect(large.content.count == 40_000)
            #expect(!large.event.tags.contains { $0.name == "request" || $0.name == "i" })
            #expect(large.event.tags.contains { $0.name == "e" } && large.event.tags.contains { $0.name == "p" })
            #expect(large.event.json.utf8.count <= 64 * 1024)
            do {
                _ = try await client.run(try request(input: 10, output: 70_000), timeout: .seconds(10))
                Issue.record("a result larger than relays accept was sent")
            } catch let error as JobError {
                #expect(error.reason.contains("larger than relays accept"), "\(error)")
            }
        }
    }

    @Test("requests p-tagged to another provider are ignored; untargeted ones are taken")
    func targeting() async throws {
        let recorder = Recorder()
        try await withHosts(handler: recorder) { hosts in
            let test = hosts[0]
            let elsewhere = try test.client.request(kind: 5050, inputs: [JobInput(data: "x", type: .text)], provider: SecretKey.generate().publicKey)
            _ = await test.pool.publish(elsewhere)
            let untargeted = try test.client.request(kind: 5050, inputs: [JobInput(data: "y", type: .text)])
            _ = try await test.client.run(untargeted, timeout: .seconds(10))
            #expect(recorder.runs[elsewhere.id] == nil)
            #expect(try await test.answers(to: elsewhere).isEmpty)
        }
    }

    @Test("bad requests get an error feedback with the reason")
    func badRequests() async throws {
        try await withHosts(handler: Uppercase()) { hosts in
            let test = hosts[0]
            let unknownType = EventTemplate(kind: 5050, tags: [["i", "x", "prompt"]]).sign(with: test.client.secret)
            await #expect(throws: JobError("unsupported input type \"prompt\" (text, url, event and job are)")) {
                try await test.client.run(unknownType, timeout: .seconds(10))
            }
            let garbage = EventTemplate(kind: 5050, content: "not encrypted at all", tags: [["p", test.key.hex], ["encrypted"]])
                .sign(with: test.client.secret)
            await #expect(throws: JobError.self) { try await test.client.run(garbage, timeout: .seconds(10)) }
            // A handler's own refusal.
            let empty = try test.client.request(kind: 5050, inputs: [])
            await #expect(throws: JobError("send at least one input with text")) { try await test.client.run(empty, timeout: .seconds(10)) }
        }
    }

    @Test("event and job inputs: a note is fetched, and a chained job waits for the first job's result")
    func eventAndChainedInputs() async throws {
        let hostKey = SecretKey.generate()
        // The chained job's input wait covers the first job's whole run.
        var inputs = privateInputs()
        inputs.jobTimeout = .seconds(40)
        try await withHosts(key: hostKey, handler: Uppercase(), inputs: inputs) { hosts in
            let test = hosts[0]
            let note = EventTemplate(kind: 1, content: "a note to shout").sign(with: SecretKey.generate())
            _ = await test.pool.publish(note)
            let fromNote = try test.client.request(kind: 5050, inputs: [JobInput(data: note.id.hex, type: .event, relay: test.relays[0].string)])
            #expect(try await test.client.run(fromNote, timeout: .seconds(10)).content == "A NOTE TO SHOUT")

            // The second job is published first: it waits for the first one's result.
            let first = try test.client.request(kind: 5050, inputs: [JobInput(data: "chain me", type: .text)], provider: test.key)
            let second = try test.client.request(kind: 5050, inputs: [JobInput(data: first.id.hex, type: .job, relay: test.relays[0].string)])
            async let chained = test.client.run(second, timeout: .seconds(60))
            try await Task.sleep(for: .milliseconds(300))
            // Results anyone can publish: by someone the first job was not addressed to (with a true copy of its
            // request), and of another kind. Neither is taken.
            let stranger = SecretKey.generate()
            let forged = EventTemplate(kind: 6050, content: "FORGED", tags: [["request", first.json], ["e", first.id.hex], ["p", first.pubkey.hex]])
                .sign(with: stranger)
            let wrongKind = EventTemplate(kind: 6051, content: "WRONG KIND", tags: [["e", first.id.hex]]).sign(with: hostKey)
            _ = await test.pool.publish(forged)
            _ = await test.pool.publish(wrongKind)
            try await Task.sleep(for: .milliseconds(300))
            _ = try await test.client.run(first, timeout: .seconds(30))
            #expect(try await chained.content == "CHAIN ME")

            let missing = try test.client.request(kind: 5050, inputs: [JobInput(data: String(repeating: "0", count: 64), type: .event)])
            await #expect(throws: JobError.self) { try await test.client.run(missing, timeout: .seconds(60)) }
        }
    }

    @Test("url inputs pointing at private addresses are refused unless allowed")
    func privateURLs() async throws {
        var inputs = InputResolver.Configuration()
        inputs.allowsPrivateAddresses = false
        try await withHosts(handler: Uppercase(), inputs: inputs) { hosts in
            let test = hosts[0]
            for url in ["http://127.0.0.1:9/x", "http://localhost/x", "http://[::1]/x", "http://10.1.2.3/x", "file:///etc/passwd"] {
                let request = try test.client.request(kind: 5050, inputs: [JobInput(data: url, type: .url)])
                do {
                    _ = try await test.client.run(request, timeout: .seconds(10))
                    Issue.record("\(url) was fetched")
                } catch let error as JobError {
                    #expect(error.reason.contains("private address") || error.reason.contains("not an http(s) URL"), "\(url): \(error.reason)")
                }
            }
        }
    }

    @Test("--exec: the job as JSON on stdin, stdout as the result; a failure, a timeout and too much output become error feedback; no job leaves files behind")
    func exec() async throws {
        let work = try temporaryDirectory("dvm-exec")
        defer { try? FileManager.default.removeItem(at: work) }
        func exec(_ command: String, maximumOutput: Int = 64 * 1024) -> ExecHandler {
            ExecHandler(command: command, maximumOutput: maximumOutput, workDirectory: work)
        }
        let script = """
            python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["kind"], j["params"]["lang"], j["inputs"][0]["content"], end="")'
            """
        try await withHosts(handler: exec(script)) { hosts in
            let test = hosts[0]
            let request = try test.client.request(
                kind: 5050, inputs: [JobInput(data: "hi there", type: .text)], parameters: [JobParameter(name: "lang", values: ["es"])])
            #expect(try await test.client.run(request, timeout: .seconds(10)).content == "5050 es hi there")
        }
        // The host's secrets are not in the command's environment; the rest of it is.
        setenv("DVM_HOST_PASSPHRASE", "the host's passphrase", 1)
        defer { unsetenv("DVM_HOST_PASSPHRASE") }
        try await withHosts(handler: exec(#"printf '%s|%s' "${DVM_HOST_PASSPHRASE-withheld}" "$HOME""#)) { hosts in
            let request = try hosts[0].client.request(kind: 5050, inputs: [])
            let home = ProcessInfo.processInfo.environment["HOME"] ?? ""
            #expect(try await hosts[0].client.run(request, timeout: .seconds(10)).content == "withheld|\(home)")
        }
        try await withHosts(handler: exec("echo starting; echo 'no model loaded' >&2; exit 3")) { hosts in
            let request = try hosts[0].client.request(kind: 5050, inputs: [])
            await #expect(throws: JobError("the command exited with status 3: no model loaded")) {
                try await hosts[0].client.run(request, timeout: .seconds(10))
            }
        }
        // The command would sleep ten minutes; the client gives up after one: the error comes from the timeout.
        try await withHosts(handler: exec("sleep 600"), service: { $0.jobTimeout = .seconds(1) }) { hosts in
            let request = try hosts[0].client.request(kind: 5050, inputs: [])
            await #expect(throws: JobError("the job took longer than 1 s")) { try await hosts[0].client.run(request, timeout: .seconds(60)) }
        }
        // What the command leaves behind is killed when the job ends: a child that ignores SIGTERM (the shell
        // itself dies of it at the timeout), and a process left in the background by a job that succeeded.
        let pids = try temporaryDirectory("dvm-exec-pids")
        defer { try? FileManager.default.removeItem(at: pids) }
        func gone(_ name: String) async throws -> Bool {
            let text = try String(contentsOf: pids.appendingPathComponent(name), encoding: .utf8)
            let pid = try #require(pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)))
            for _ in 0..<40 {
                if kill(pid, 0) != 0 && errno == ESRCH { return true }
                // Dead, and not yet reaped by whichever process adopted it (a PID 1 that does not reap orphans).
                let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
                if let state = stat.split(separator: ")").last?.split(separator: " ").first, state == "Z" { return true }
                try await Task.sleep(for: .milliseconds(50))
            }
            return false
        }
        // 3 s: time for the shells to start and write the pid file on a loaded machine.
        let stubborn = "sh -c 'trap \"\" TERM; echo $$ > \(pids.path)/stubborn; exec sleep 30'"
        try await withHosts(handler: exec(stubborn), service: { $0.jobTimeout = .seconds(3) }) { hosts in
            let request = try hosts[0].client.request(kind: 5050, inputs: [])
            await #expect(throws: JobError("the job took longer than 3 s")) { try await hosts[0].client.run(request, timeout: .seconds(30)) }
        }
        #expect(try await gone("stubborn"), "a child that ignores SIGTERM outlived its job")
        let background = "(trap '' TERM; exec sleep 30) & echo $! > \(pids.path)/background; echo done"
        try await withHosts(handler: exec(background)) { hosts in
            let request = try hosts[0].client.request(kind: 5050, inputs: [])
            #expect(try await hosts[0].client.run(request, timeout: .seconds(10)).content == "done\n")
        }
        #expect(try await gone("background"), "a background process outlived its job")
        try await withHosts(handler: exec("head -c 5000 /dev/zero", maximumOutput: 1000)) { hosts in
            let request = try hosts[0].client.request(kind: 5050, inputs: [])
            await #expect(throws: JobError("the command wrote more than 1000 bytes")) { try await hosts[0].client.run(request, timeout: .seconds(10)) }
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: work.path) == [])
    }

    @Test("--exec: job directories left by a process that is gone, by an earlier process with this one's id, or older than the longest job, are removed; others are kept")
    func execLeftovers() throws {
        let work = try temporaryDirectory("dvm-leftovers")
        defer { try? FileManager.default.removeItem(at: work) }
        // A process that has ended: its id is free (until reused, which the age rule covers).
        let ended = Process()
        ended.executableURL = URL(fileURLWithPath: "/bin/true")
        try ended.run()
        ended.waitUntilExit()
        // Another live process (this one's parent), and this process: an earlier one with its id left that.
        let live = getppid()
        let names = (
            live: "dvm-job-\(live)-\(UUID().uuidString)", dead: "dvm-job-\(ended.processIdentifier)-\(UUID().uuidString)",
            liveButOld: "dvm-job-\(live)-\(UUID().uuidString)", own: "dvm-job-\(getpid())-\(UUID().uuidString)",
            other: "not-a-job")
        for name in [names.live, names.dead, names.liveButOld, names.own, names.other] {
            try FileManager.default.createDirectory(at: work.appendingPathComponent(name), withIntermediateDirectories: false)
            try Data("{}".utf8).write(to: work.appendingPathComponent(name).appendingPathComponent("job.json"))
        }
        try FileManager.default.setAttributes(
            [.modificationDate: Date().addingTimeInterval(-600)], ofItemAtPath: work.appendingPathComponent(names.liveButOld).path)
        #expect(ExecHandler.removeLeftovers(in: work, olderThan: .seconds(300)) == 3)
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: work.path)) == [names.live, names.other])
    }

    @Test("a customer's kind 5 deletion stops a running job on whichever of two workers runs it; it is answered with an error")
    func cancelRunning() async throws {
        let directory = try temporaryDirectory("dvm-cancel")
        defer { try? FileManager.default.removeItem(at: directory) }
        let shared = try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path)
        // The job would run ten minutes; the client gives up after one: the error comes from the cancellation.
        let recorder = Recorder(delay: .seconds(600))
        try await withHosts(hosts: 2, handler: recorder, service: { $0.jobTimeout = .seconds(900) }, stores: [shared]) { hosts in
            let client = hosts[0].client
            let request = try client.request(kind: 5050, inputs: [JobInput(data: "long", type: .text)])
            let statuses = Statuses()
            await #expect(throws: JobError("the customer cancelled the job (kind 5)")) {
                try await client.run(request, timeout: .seconds(60)) { feedback in
                    statuses.add(feedback)
                    if feedback.status == "processing" { await client.cancel(request) }
                }
            }
            #expect(statuses.all == ["processing", "error"])
            #expect(recorder.runs[request.id] == 1)
        }
    }

    @Test("a cancellation gets through while jobs queue for the only worker")
    func cancelUnderFullIntake() async throws {
        let recorder = Recorder(delay: .seconds(30))
        // One job runs at once; the others queue for it (holding no handling slot, so they are all read).
        try await withHosts(
            handler: recorder, service: { $0.concurrency = 1; $0.jobTimeout = .seconds(60) }, runtime: { $0.maximumConcurrentRequests = 1 }
        ) { hosts in
            let client = hosts[0].client
            let first = try client.request(kind: 5050, inputs: [JobInput(data: "first", type: .text)])
            await #expect(throws: JobError("the customer cancelled the job (kind 5)")) {
                try await client.run(first, timeout: .seconds(20)) { feedback in
                    guard feedback.status == "processing" else { return }
                    for index in 0..<5 {
                        _ = await client.pool.publish(try client.request(kind: 5050, inputs: [JobInput(data: "filler \(index)", type: .text)]))
                    }
                    try await Task.sleep(for: .milliseconds(500))
                    await client.cancel(first)
                }
            }
            #expect(recorder.runs[first.id] == 1)
        }
    }

    @Test("jobs waiting for a chained input hold no handling slot: with 4 slots and 5 such jobs waiting, another job is run")
    func waitingInputsHoldNoSlot() async throws {
        // The host takes in at least 4 × its concurrency: 4 here. The waiting inputs give up after 2 minutes.
        var inputs = privateInputs()
        inputs.jobTimeout = .seconds(120)
        try await withHosts(
            handler: Uppercase(), service: { $0.concurrency = 1 }, runtime: { $0.maximumConcurrentRequests = 1 }, inputs: inputs
        ) { hosts in
            let client = hosts[0].client
            for _ in 0..<5 {
                let parent = EventTemplate(kind: 5050, content: "never answered").sign(with: .generate())
                _ = await client.pool.publish(try client.request(kind: 5050, inputs: [JobInput(data: parent.id.hex, type: .job)]))
            }
            try await Task.sleep(for: .milliseconds(500))
            let plain = try client.request(kind: 5050, inputs: [JobInput(data: "still read", type: .text)])
            // The answer must come well before the waiting jobs give up.
            let result = try await client.run(plain, timeout: .seconds(60))
            #expect(result.content == "STILL READ")
        }
    }

    @Test("at most maximumPreparingJobs jobs fetch their inputs at once; the others wait before fetching, and all are answered")
    func preparingBound() async throws {
        // A URL whose answer waits until the test opens the gate; the server counts requests as they arrive.
        let arrived = Mutex(0)
        let open = Mutex(false)
        let router = Router()
        router.get("slow") { _, _ in
            arrived.withLock { $0 += 1 }
            for _ in 0..<3_000 where !open.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(10)) }
            return "fetched"
        }
        let (ports, announce) = AsyncStream<Int>.makeStream()
        let app = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in announce.yield(channel.localAddress?.port ?? 0) }, logger: quiet)
        try await withThrowingTaskGroup(of: Void.self) { server in
            server.addTask { try await app.run() }
            defer { server.cancelAll() }
            var iterator = ports.makeAsyncIterator()
            guard let port = await iterator.next(), port > 0 else { throw JobError("the test server did not start") }
            let recorder = Recorder()
            try await withHosts(
                handler: recorder, service: { $0.concurrency = 4; $0.maximumPreparingJobs = 2; $0.jobTimeout = .seconds(60) }
            ) { hosts in
                let client = hosts[0].client
                let requests = try (0..<5).map { index in
                    try client.request(kind: 5050, inputs: [JobInput(data: "http://127.0.0.1:\(port)/slow?job=\(index)", type: .url)])
                }
                try await withThrowingTaskGroup(of: String.self) { jobs in
                    for request in requests { jobs.addTask { try await client.run(request, timeout: .seconds(60)).content } }
                    try await withDeadline(.seconds(30), "two jobs to fetch their inputs") {
                        while arrived.withLock({ $0 }) < 2 { try await Task.sleep(for: .milliseconds(20)) }
                    }
                    // The other three have been read by now (they hold no handling slot while they wait).
                    try await Task.sleep(for: .seconds(1))
                    #expect(arrived.withLock { $0 } == 2)
                    open.withLock { $0 = true }
                    var contents: [String] = []
                    for try await content in jobs { contents.append(content) }
                    #expect(contents == Array(repeating: "done: fetched", count: 5))
                }
                #expect(arrived.withLock { $0 } == 5)
                #expect(recorder.runs.count == 5)
            }
        }
    }

    @Test("a deletion by someone else cancels nothing; one that comes before its job keeps the job from running")
    func cancelOthersAndEarly() async throws {
        let recorder = Recorder(delay: .milliseconds(500))
        try await withHosts(relays: 2, handler: recorder) { hosts in
            let client = hosts[0].client
            let stranger = DVMClient(secret: .generate(), pool: client.pool)
            let request = try client.request(kind: 5050, inputs: [JobInput(data: "mine", type: .text)])
            let result = try await client.run(request, timeout: .seconds(10)) { feedback in
                if feedback.status == "processing" { await stranger.cancel(request) }
            }
            #expect(result.content == "done: mine")

            // The deletion on the first relay only: that relay then refuses the request (NIP-09), the second
            // takes it, so the host sees the deletion first and the request after it.
            let early = try client.request(kind: 5050, inputs: [JobInput(data: "never", type: .text)])
            let published = await client.cancel(early, to: [hosts[0].relays[0]])
            #expect(published[hosts[0].relays[0]]?.isAccepted == true)
            try await withTimeout(.seconds(30), "the host to see the deletion") {
                while !hosts[0].host.service.cancellations.cancelledEarly(early.id, by: client.secret.publicKey) {
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
            await #expect(throws: JobError("the customer cancelled the job (kind 5)")) { try await client.run(early, timeout: .seconds(10)) }
            #expect(recorder.runs[early.id] == nil)
        }
    }

    @Test("jobs run concurrently up to the limit, and every one is answered")
    func concurrency() async throws {
        // Jobs of 2 s, so that three overlap even when they start seconds apart on a loaded machine.
        let recorder = Recorder(delay: .seconds(2))
        try await withHosts(handler: recorder, service: { $0.concurrency = 3; $0.jobTimeout = .seconds(30) }) { hosts in
            let test = hosts[0]
            try await withThrowingTaskGroup(of: String.self) { group in
                for index in 0..<9 {
                    group.addTask {
                        let request = try test.client.request(kind: 5050, inputs: [JobInput(data: "\(index)", type: .text)])
                        return try await test.client.run(request, timeout: .seconds(60)).content
                    }
                }
                var contents: Set<String> = []
                for try await content in group { contents.insert(content) }
                #expect(contents == Set((0..<9).map { "done: \($0)" }))
            }
            #expect(recorder.most == 3)
        }
    }

    @Test("the NIP-89 announcement names the kinds, encryption support and an expiration")
    func announcement() async throws {
        try await withHosts(handler: Uppercase(), service: { $0.kinds = [5050, 5051]; $0.name = "Shouter" }) { hosts in
            let test = hosts[0]
            let announced = try await test.pool.fetch([Filter(authors: [test.key], kinds: [31_990])], timeout: .seconds(3))
            let event = try #require(announced.first)
            #expect(Set(event.tagValues("k")) == ["5050", "5051"])
            #expect(event.content.contains("\"name\":\"Shouter\"") && event.content.contains("\"encryptionSupported\":true"))
            #expect(event.content.contains("\"supportsEncryption\":true"))
            let expiration = try #require(event.expiration)
            #expect(expiration > Timestamp.now + 3600)
        }
    }

    @Test("liveness: a ping (7007) p-tagged to the host is answered with pong; the heartbeat (11998) names the kinds, beats again, and expires")
    func liveness() async throws {
        try await withHosts(handler: Uppercase(), service: { $0.kinds = [5050, 5051]; $0.heartbeatInterval = .seconds(1) }) { hosts in
            let test = hosts[0]
            let customer = SecretKey.generate()
            let ping = EventTemplate(kind: NIP90.pingKind, content: "", tags: [["p", test.key.hex]]).sign(with: customer)
            let answers = Filter(authors: [test.key], kinds: [NIP90.feedbackKind], tags: ["e": [ping.id.hex]])
            let pong = try await test.pool.withSubscription([answers]) { subscription in
                #expect(await test.pool.publish(ping, timeout: .seconds(5)).values.allSatisfy(\.isAccepted))
                return try await withTimeout(.seconds(30), "the pong") { () async throws -> Event? in
                    for await item in subscription { if case .event(let event, _) = item { return event } }
                    return nil
                }
            }
            #expect(pong?.tags.contains(["status", "pong"]) == true)
            #expect(pong?.tagValues("p") == [customer.publicKey.hex])

            let beats = Filter(authors: [test.key], kinds: [NIP90.heartbeatKind])
            // The first goes out once the host is ready (it looks every 250 ms).
            let first = try await withTimeout(.seconds(30), "the first heartbeat") { () async throws -> Event in
                while true {
                    if let beat = try await test.pool.fetch([beats], timeout: .seconds(2)).first { return beat }
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
            #expect(Set(first.tagValues("k")) == ["5050", "5051"])
            #expect(first.tagValues("d") == ["switchboard-dvm"] && first.tags.contains(["status", "online"]))
            let expiration = try #require(first.expiration)
            #expect(expiration > first.createdAt && expiration <= first.createdAt + 120)
            // It beats again: a newer one replaces it.
            try await withTimeout(.seconds(30), "the next heartbeat") {
                while try await test.pool.fetch([beats], timeout: .seconds(2)).first.map({ $0.createdAt > first.createdAt }) != true {
                    try await Task.sleep(for: .milliseconds(200))
                }
            }
        }
    }

    @Test("requests published while the host was down are run once when it starts")
    func catchUp() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("dvm-catchup-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("service.sqlite").path
        let key = SecretKey.generate()
        let recorder = Recorder()
        try await withTestRelays(1) { relays in
            let urls = relays.compactMap(\.url)
            // A first run records the checkpoint.
            try await withHosts(key: key, handler: recorder, stores: [try SQLiteServiceStore(path: path)], existingRelays: urls) { hosts in
                let request = try hosts[0].client.request(kind: 5050, inputs: [JobInput(data: "before", type: .text)])
                _ = try await hosts[0].client.run(request, timeout: .seconds(10))
            }
            // Down: three requests arrive.
            let customer = SecretKey.generate()
            let pool = RelayPool(relays: urls, logger: quiet)
            let offline = try await pool.withRunning {
                let client = DVMClient(secret: customer, pool: pool)
                var requests: [Event] = []
                for index in 0..<3 {
                    let request = try client.request(kind: 5050, inputs: [JobInput(data: "while down \(index)", type: .text)], provider: key.publicKey)
                    _ = await pool.publish(request)
                    requests.append(request)
                }
                return requests
            }
            // Up again: each is run once.
            try await withHosts(key: key, handler: recorder, stores: [try SQLiteServiceStore(path: path)], existingRelays: urls) { hosts in
                try await withTimeout(.seconds(30), "the results") {
                    while true {
                        let results = try await hosts[0].pool.fetch([Filter(kinds: [6050], tags: ["p": [customer.publicKey.hex]])], timeout: .seconds(2))
                        if results.count == 3 { return }
                        try await Task.sleep(for: .milliseconds(100))
                    }
                }
            }
            for request in offline { #expect(recorder.runs[request.id] == 1) }
        }
    }

    @Test("two workers on one key sharing PostgreSQL: 300 jobs delivered to both run exactly once")
    func twoWorkers() async throws {
        let recorder = Recorder()
        try await withPostgresDatabase { configuration in
            let stores = (0..<2).map { _ in PostgresServiceStore(configuration: configuration, logger: quiet) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for store in stores { group.addTask { await store.run() } }
                defer { group.cancelAll() }
                try await withHosts(relays: 2, hosts: 2, handler: recorder, service: { $0.concurrency = 8 }, stores: stores) { hosts in
                    let test = hosts[0]
                    let customer = test.client.secret.publicKey
                    var requests: [Event] = []
                    for index in 0..<300 {
                        requests.append(try test.client.request(kind: 5050, inputs: [JobInput(data: "job \(index)", type: .text)], provider: test.key))
                    }
                    for request in requests { _ = await test.pool.publish(request) }
                    let results = try await withTimeout(.seconds(180), "300 results") {
                        while true {
                            let results = try await test.pool.fetch([Filter(kinds: [6050], tags: ["p": [customer.hex]])], timeout: .seconds(3))
                            if results.count >= 300 { return results }
                            try await Task.sleep(for: .milliseconds(200))
                        }
                    }
                    #expect(results.count == 300)
                    #expect(Set(results.compactMap { $0.firstTagValue("e") }) == Set(requests.map(\.id.hex)))
                    #expect(recorder.runs.count == 300 && recorder.runs.values.allSatisfy { $0 == 1 })
                }
            }
        }
    }
}

/// A handler whose result is empty.
struct EmptyOutput: JobHandler {
    func run(_ job: Job, context: JobContext) async throws -> JobOutput { JobOutput("") }
}

/// A handler whose result is as many bytes as its `size` parameter says.
struct Sized: JobHandler {
    func run(_ job: Job, context: JobContext) async throws -> JobOutput {
        let size = job.parameters.first { $0.name == "size" }?.values.first.flatMap { Int($0) } ?? 0
        return JobOutput(String(repeating: "o", count: size))
    }
}
