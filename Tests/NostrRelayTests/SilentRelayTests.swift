import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import NostrCore
import NostrCrypto
import NostrServiceTesting
import Synchronization
import Testing
@testable import NostrRelay

/// Runs, while `body` runs, a WebSocket server on 127.0.0.1 that accepts connections and then never reads from
/// them: a relay whose TCP window stays full (a fault, not a relay). Each connection's receive buffer is fixed
/// small: Linux would otherwise grow it up to `net.ipv4.tcp_rmem`'s maximum (32 MiB on some machines), and the
/// kernel alone could take in everything a test sends.
func withSilentRelay<R: Sendable>(_ body: (RelayURL) async throws -> R) async throws -> R {
    let (ready, announce) = AsyncStream<Int>.makeStream()
    let app = Application(
        router: Router(),
        server: .http1WebSocketUpgrade(configuration: .init(ws: .init(maxFrameSize: 1 << 20))) { _, channel, _ in
            try await channel.setOption(ChannelOptions.socketOption(.so_rcvbuf), value: 65_536).get()
            return .upgrade([:]) { _, _, _ in
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
                // Events of 60 KB in waves of 100 (6 MB) until the connection is dropped, at most 20 waves. The socket
                // buffers hold ~4 MiB (the relay's fixed at 128 KiB, ours at most `net.ipv4.tcp_wmem`'s maximum);
                // NIO takes what is written before its event loop marks the channel unwritable, which on a
                // loaded machine can be a whole wave or more. Past that, the outbox fills.
                let key = SecretKey.generate()
                let filler = String(repeating: "x", count: 60_000)
                // Why the connection was dropped shows in the status until the next connection is up; so do the
                // messages counted as sent up to then (those refused by the full outbox are not).
                let drops = Mutex<[String: Int]>([:])
                let watcher = Task {
                    while !Task.isCancelled {
                        if let status = pool.status().first, let error = status.lastError {
                            drops.withLock { drops in if drops[error] == nil { drops[error] = status.messagesSent } }
                        }
                        try? await Task.sleep(for: .milliseconds(2))
                    }
                }
                var published = 0
                while published < 2_000, pool.status().first?.reconnects == 0 {
                    await withTaskGroup(of: Void.self) { group in
                        for i in published..<published + 100 {
                            let event = EventTemplate(kind: 1, content: "\(i) \(filler)").sign(with: key)
                            group.addTask { _ = await pool.publish(event, timeout: .seconds(2)) }
                        }
                    }
                    published += 100
                }
                // Dropped at once: the next connection is up well within a wave.
                try await withTimeout(.seconds(10), "the connection to be made again") {
                    while !(pool.status().first?.isConnected ?? false) { try await Task.sleep(for: .milliseconds(20)) }
                }
                watcher.cancel()
                let status = try #require(pool.status().first)
                let seen = drops.withLock { $0 }
                let overflow = seen.first { $0.key.contains("the relay stopped reading: 20 messages") }
                #expect(overflow != nil, "\(seen)")
                #expect(overflow.map { $0.value < published } == true, "messages beyond the outbox were not counted as sent: \(seen), \(published) published")
                #expect(status.reconnects >= 1)
            }
        }
    }
}
