import Foundation
import Logging
import NostrCore
import NostrCrypto
import NostrServiceTesting
import Testing
@testable import NostrRelay

#if canImport(Glibc)
import Glibc
#endif

/// A WebSocket client on a plain socket with a small receive buffer: it upgrades, sends text frames, and never
/// reads again unless told to (a client that has stopped reading: a frozen app, a stalled network).
final class StalledClient {
    private let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket() failed") }
        var small: Int32 = 4096
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        // On any failure from here, deinit closes the socket.
        guard connected == 0 else { throw TestFailure("connect() failed") }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        try write(Array("GET / HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".utf8))
        // The upgrade response, byte by byte so that nothing after it is consumed.
        var response: [UInt8] = []
        while response.suffix(4) != Array("\r\n\r\n".utf8)[...] {
            var byte: UInt8 = 0
            guard recv(fd, &byte, 1, 0) == 1 else { throw TestFailure("no upgrade response: \(String(decoding: response, as: UTF8.self))") }
            response.append(byte)
        }
        guard String(decoding: response, as: UTF8.self).hasPrefix("HTTP/1.1 101") else {
            throw TestFailure("upgrade refused: \(String(decoding: response, as: UTF8.self))")
        }
    }

    /// Sends `text` as one masked text frame (shorter than 126 bytes).
    func send(text: String) throws {
        let payload = Array(text.utf8)
        precondition(payload.count < 126)
        let mask: [UInt8] = [0x12, 0x34, 0x56, 0x78]
        try write([0x81, 0x80 | UInt8(payload.count)] + mask + payload.enumerated().map { $1 ^ mask[$0 % 4] })
    }

    private func write(_ bytes: [UInt8]) throws {
        guard Glibc.send(fd, bytes, bytes.count, 0) == bytes.count else { throw TestFailure("send() failed") }
    }

    deinit { Glibc.close(fd) }
}

@Suite("The embedded relay and a client that stops reading", .timeLimit(.minutes(1)))
struct SlowClientTests {
    @Test("once the client's outbox overflows, the relay closes the connection at once; its writer is not left waiting")
    func closedOnOverflow() async throws {
        var configuration = EmbeddedRelay.Configuration()
        configuration.host = "127.0.0.1"
        configuration.port = 0
        configuration.outboxCapacity = 20
        let (ready, announce) = AsyncStream<String>.makeStream()
        let relay = EmbeddedRelay(configuration: configuration, logger: Logger(label: "test.relay") { _ in SwiftLogNoOpLogHandler() }) {
            announce.yield($0)
        }
        let server = Task { try await relay.run() }
        do {
            try await exerciseStalledClient(relay, announced: ready)
        } catch {
            server.cancel()
            _ = await server.result
            throw error
        }
        server.cancel()
        _ = await server.result
    }

    private func exerciseStalledClient(_ relay: EmbeddedRelay, announced ready: AsyncStream<String>) async throws {
        guard let address = try await withTimeout(.seconds(30), "the relay to start", { await ready.first { _ in true } }),
            let port = address.split(separator: ":").last.flatMap({ Int($0) })
        else { throw TestFailure("the relay did not start") }

        let client = try StalledClient(port: port)
        try client.send(text: #"["REQ","all",{"kinds":[1]}]"#)
        let pool = RelayPool(relays: [try RelayURL(address)], logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        try await pool.withRunning {
            try await withTimeout(.seconds(30), "both connections") { while relay.hub.count < 2 { try await Task.sleep(for: .milliseconds(20)) } }
            // Events of 60 KB for the stalled client until its outbox fills (past the kernel's socket buffers and
            // NIO's; 1,000 of them is 60 MB, more than any loopback socket buffer takes).
            let key = SecretKey.generate()
            let filler = String(repeating: "x", count: 60_000)
            for i in 0..<1_000 {
                _ = await pool.publish(EventTemplate(kind: 1, content: "\(i) \(filler)").sign(with: key), timeout: .seconds(5))
                if relay.hub.count < 2 { break }
            }
            // Closed without the client reading a byte: only the publishing pool is left.
            try await withTimeout(.seconds(30), "the stalled client's connection to be closed") {
                while relay.hub.count > 1 { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(relay.hub.count == 1)
            #expect(pool.status().first?.isConnected == true)
        }
        withExtendedLifetime(client) {}
    }
}
