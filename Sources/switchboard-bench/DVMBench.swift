import DVMKit
import Foundation
import NostrCore
import NostrCrypto
import NostrRelay

// switchboard-bench dvm: the release `dvm-host` (beside this binary) on the embedded relay, taking kind 5050
// jobs from a closed loop of 64 outstanding requests (from 64 customers): jobs/s and latency p50/p99 (publish →
// result received), with the compiled-in `uppercase` handler and with a trivial `--exec` command, each at
// concurrency 1 and 16. The `--exec` figures are set beside the cost of spawning the same command from this
// process (a sequential loop), the floor a process per job puts under them. BENCH_JOBS sets the run length.

func runDVM() async throws {
    let jobs = Int(ProcessInfo.processInfo.environment["BENCH_JOBS"] ?? "") ?? 2_000
    let window = 64
    let trivial = "cat >/dev/null; echo ok"
    let spawn = try spawnFloorMilliseconds(trivial, runs: 200)
    say("sequential spawn of /bin/sh -c '\(trivial)' from this process: \(String(format: "%.2f", spawn)) ms per run (\(format(1000 / spawn))/s)")
    say("| handler | concurrency | jobs/s | p50 ms | p99 ms | max ms | dvm-host CPU/job |")
    say("|---|---:|---:|---:|---:|---:|---:|")
    for (label, handler) in [("uppercase (Swift)", ["--handler", "uppercase"]), ("--exec '\(trivial)'", ["--exec", trivial])] {
        for concurrency in [1, 16] {
            let result = try await withBenchRelay { url in
                try await withDVMHost(url, handler + ["--concurrency", "\(concurrency)"]) { key, process in
                    let customers = (0..<window).map { _ in SecretKey.generate() }
                    let client = DVMClient(secret: customers[0], pool: RelayPool(logger: quiet))
                    let requests = try (0..<jobs).map { index in
                        try DVMClient(secret: customers[index % window], pool: client.pool)
                            .request(kind: 5050, inputs: [JobInput(data: "job \(index)", type: .text)], provider: key)
                    }
                    var configuration = RelayPool.Configuration()
                    configuration.subscriptionBufferSize = 4096
                    let pool = RelayPool(relays: [url], configuration: configuration, logger: quiet)
                    return try await pool.withRunning {
                        try await pool.withSubscription([Filter(kinds: [6050], since: .now - 5)]) { results in
                            let expected = handler[0] == "--handler" ? "JOB " : "ok"
                            let reading = ReplyReader(key: { $0.id.hex }) { reply in
                                guard let request = reply.tagValues("e").first else { return nil }
                                return (request, reply.content.hasPrefix(expected))
                            }
                            return try await drive(
                                requests, window: window, reading: reading, pool: pool, replies: results, service: process.processIdentifier)
                        }
                    }
                }
            }
            guard result.wrong == 0 else { throw BenchFailure("\(result.wrong) wrong results") }
            say("| \(label) | \(concurrency) | \(format(result.rate)) | \(result.milliseconds(50)) | \(result.milliseconds(99)) | \(result.maximum) | \(String(format: "%.0f", result.cpuPerRequest)) µs |")
        }
    }
}

/// Runs the release `dvm-host serve` for kind 5050 on `relay` with a fresh data directory while `body` runs.
func withDVMHost<R>(_ relay: RelayURL, _ arguments: [String], _ body: (PublicKey, Process) async throws -> R) async throws -> R {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("switchboard-bench-dvm-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: directory) }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("dvm-host")
    process.arguments = [
        "serve", "--data-dir", directory.path, "--relay", relay.string, "--kind", "5050",
        "--client-rate", "1000000", "--client-burst", "1000000", "--client-concurrency", "100000",
    ] + arguments
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try process.run()
    defer { stop(process) }
    var printed = ""
    while !printed.contains("dvm-host ready") {
        let chunk = output.fileHandleForReading.availableData
        guard !chunk.isEmpty else { throw BenchFailure("dvm-host serve stopped before its ready line") }
        printed += String(decoding: chunk, as: UTF8.self)
    }
    guard let open = printed.firstIndex(of: "("), let close = printed[open...].firstIndex(of: ")"),
        let key = try? PublicKey(hex: printed[printed.index(after: open)..<close])
    else { throw BenchFailure("no key in dvm-host's ready line") }
    return try await body(key, process)
}

/// Milliseconds to spawn `/bin/sh -c command` with a small stdin and wait for it, from this process.
func spawnFloorMilliseconds(_ command: String, runs: Int) throws -> Double {
    let start = now()
    for _ in 0..<runs {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", command]
        let input = Pipe()
        process.standardInput = input
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        input.fileHandleForWriting.write(Data("{\"id\":\"x\"}".utf8))
        try input.fileHandleForWriting.close()
        process.waitUntilExit()
    }
    return (now() - start) / Double(runs) * 1000
}
