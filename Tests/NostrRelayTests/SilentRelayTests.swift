import Hummingbird
import HummingbirdWebSocket
import Logging
import NostrCore
import NostrCrypto
import NostrServiceTesting
import Synchronization
import Testing
@testable import NostrRelay

/// Runs, while `body` runs, a WebSocket server on 127.0.0.1 that accepts connections and then never reads from
/// them: a relay whose TCP window stays full (a fault, not a relay).
func withSilentRelay<R: Sendable>(_ body: (RelayURL) async throws -> R) async throws -> R {
    let (ready, announce) = AsyncStream<Int>.makeStream()
    let app = Application(
        router: Router(),
        server: .http1WebSocketUpgrade(configuration: .init(ws: .init(maxFrameSize: 1 << 20))) { _, _, _ in
            .upgrade([:]) { _, _, _ in
                // The inbound stream is never iterated: NIO reads a few frames ahead, then stops reading.
                try await Task.sleep(for: .seconds(120))
            }
        },
        configuration: .init(address: .hostname("127.0.0.1", port: 0)),
        onServerRunning: { announce.yield($0.localAddress?.port ?? 0) },
        logger: Logger(label: "test.silent") { _ in SwiftLogNoOpLogHandler() })
    let server = Task { try await app.run() }
    defer { server.cancel() }
    guard let port = try await withTimeout(.seconds(30), "the silent relay to start", { await ready.first { _ in true } }) else {
        throw TestFailure("the silent relay did not start")
    }
    return try await body(try RelayURL("ws://127.0.0.1:\(port)"))
}

@Suite("A relay that stops reading")
struct SilentRelayTests {
    @Test("messages for it pile up only to the outbox's capacity; then the connection is dropped and made again")
    func boundedOutbox() async throws {
        try await withSilentRelay { url in
            var configuration = RelayPool.Configuration()
            configuration.outboxCapacity = 20
            configuration.reconnectDelay = .milliseconds(100)
            let pool = RelayPool(relays: [url], configuration: configuration, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
            try await pool.withRunning {
                try await withTimeout(.seconds(30), "the connection") { while !(pool.status().first?.isConnected ?? false) { try await Task.sleep(for: .milliseconds(20)) } }
                // 400 events of 60 KB (24 MB) are more than the kernel's socket buffers and NIO's hold.
                let key = SecretKey.generate()
                let filler = String(repeating: "x", count: 60_000)
                // Why the connection was dropped shows in the status until the next connection is up.
                let reasons = Mutex<Set<String>>([])
                let watcher = Task {
                    while !Task.isCancelled {
                        if let error = pool.status().first?.lastError { reasons.withLock { _ = $0.insert(error) } }
                        try? await Task.sleep(for: .milliseconds(2))
                    }
                }
                await withTaskGroup(of: Void.self) { group in
                    for i in 0..<400 {
                        let event = EventTemplate(kind: 1, content: "\(i) \(filler)").sign(with: key)
                        group.addTask { _ = await pool.publish(event, timeout: .seconds(2)) }
                    }
                }
                watcher.cancel()
                let status = try #require(pool.status().first)
                let seen = reasons.withLock { $0 }
                #expect(seen.contains { $0.contains("the relay stopped reading: 20 messages") }, "\(seen)")
                #expect(status.messagesSent < 400, "messages beyond the outbox were not counted as sent")
                #expect(status.reconnects >= 1)
            }
        }
    }
}
