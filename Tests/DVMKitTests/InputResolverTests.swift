import Foundation
@testable import DVMKit
import Hummingbird
import Logging
import NostrCore
import NostrCrypto
import NostrRelay
import NostrServiceTesting
import Synchronization
import Testing

// One at a time: the lookup tests hold the URL lookup threads, which the others need.
@Suite("InputResolver: url inputs", .serialized)
struct InputResolverTests {
    /// Runs an HTTP server on 127.0.0.1 (a free port) with `/hello` and a redirect to it while `body` runs.
    func withServer(_ body: (Int) async throws -> Void) async throws {
        let router = Router()
        router.get("hello") { _, _ in "hi from the server" }
        router.get("redirect") { _, _ in Response(status: .found, headers: [.location: "/hello"]) }
        let (ports, announce) = AsyncStream<Int>.makeStream()
        let app = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in announce.yield(channel.localAddress?.port ?? 0) },
            logger: Logger(label: "test.http"))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await app.run() }
            defer { group.cancelAll() }
            var iterator = ports.makeAsyncIterator()
            guard let port = await iterator.next(), port > 0 else { throw JobError("the test server did not start") }
            try await body(port)
        }
    }

    @Test("a url input is fetched (redirects followed) whether or not the resolver runs yet")
    func fetchWithoutRunning() async throws {
        var configuration = InputResolver.Configuration()
        configuration.allowsPrivateAddresses = true
        let resolver = InputResolver(configuration: configuration, logger: Logger(label: "test.inputs"))
        let pool = RelayPool(logger: Logger(label: "test.pool"))
        try await withServer { port in
            // Not running yet: its relay hints are not connected, but URLs are fetched.
            let request = try JobRequest(
                EventTemplate(kind: 5050, content: "", tags: [["i", "http://127.0.0.1:\(port)/redirect", "url"]]).sign(with: SecretKey.generate()))
            let resolved = try await resolver.resolve(request, pool: pool)
            #expect(resolved.map(\.content) == ["hi from the server"])
            // Running.
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await resolver.run() }
                defer { group.cancelAll() }
                let again = try await resolver.resolve(request, pool: pool)
                #expect(again.map(\.content) == ["hi from the server"])
            }
        }
    }

    @Test("a URL's host is looked up once per hop and the connection goes to that address, not to a second lookup")
    func pinnedAddress() async throws {
        // A name no DNS server knows: only the resolver's own lookup can make it reach the test server, so a
        // fetch that looked the name up again (as a rebinding attack relies on) would fail.
        let lookups = Mutex<[String]>([])
        var configuration = InputResolver.Configuration()
        configuration.allowsPrivateAddresses = true
        let resolver = InputResolver(configuration: configuration, logger: Logger(label: "test.inputs")) { host in
            lookups.withLock { $0.append(host) }
            return host == "pinned.switchboard.invalid" ? [[127, 0, 0, 1]] : []
        }
        let pool = RelayPool(logger: Logger(label: "test.pool"))
        try await withServer { port in
            let request = try JobRequest(
                EventTemplate(kind: 5050, content: "", tags: [["i", "http://pinned.switchboard.invalid:\(port)/redirect", "url"]])
                    .sign(with: SecretKey.generate()))
            let resolved = try await resolver.resolve(request, pool: pool)
            #expect(resolved.map(\.content) == ["hi from the server"])
            // Two hops (the redirect, then /hello), one lookup each.
            #expect(lookups.withLock { $0 } == ["pinned.switchboard.invalid", "pinned.switchboard.invalid"])
        }
    }

    @Test("when the first address of a name cannot be reached, the first of the other family is tried")
    func otherFamily() async throws {
        var configuration = InputResolver.Configuration()
        configuration.allowsPrivateAddresses = true
        // IPv6 loopback first, where nothing listens (the test server is on 127.0.0.1 only), then IPv4.
        let resolver = InputResolver(configuration: configuration, logger: Logger(label: "test.inputs")) { host in
            host == "dual.switchboard.invalid" ? [[UInt8](repeating: 0, count: 15) + [1], [127, 0, 0, 1]] : []
        }
        let pool = RelayPool(logger: Logger(label: "test.pool"))
        try await withServer { port in
            let request = try JobRequest(
                EventTemplate(kind: 5050, content: "", tags: [["i", "http://dual.switchboard.invalid:\(port)/hello", "url"]])
                    .sign(with: SecretKey.generate()))
            #expect(try await resolver.resolve(request, pool: pool).map(\.content) == ["hi from the server"])
        }
    }

    @Test("a name that resolves to a private address is refused before anything is fetched")
    func privateName() async throws {
        let resolver = InputResolver(configuration: InputResolver.Configuration(), logger: Logger(label: "test.inputs")) { host in
            host == "inside.switchboard.invalid" ? [[93, 184, 215, 14], [10, 0, 0, 7]] : []
        }
        let pool = RelayPool(logger: Logger(label: "test.pool"))
        let request = try JobRequest(
            EventTemplate(kind: 5050, content: "", tags: [["i", "http://inside.switchboard.invalid/", "url"]]).sign(with: SecretKey.generate()))
        do {
            _ = try await resolver.resolve(request, pool: pool)
            Issue.record("a private address was fetched")
        } catch let error as JobError {
            #expect("\(error)".contains("private address"))
        }
    }

    @Test("a name whose lookup hangs fails the input after the lookup's 5 s, not after the system resolver gives up")
    func hangingLookup() async throws {
        // The lookup answers only once the input has failed, or after a minute if it never does.
        let failed = DispatchSemaphore(value: 0)
        let answered = Mutex(false)
        let resolver = InputResolver(configuration: InputResolver.Configuration(), logger: Logger(label: "test.inputs")) { host in
            _ = failed.wait(timeout: .now() + 60)
            answered.withLock { $0 = true }
            return [[93, 184, 215, 14]]
        }
        let pool = RelayPool(logger: Logger(label: "test.pool"))
        let request = try JobRequest(
            EventTemplate(kind: 5050, content: "", tags: [["i", "http://slow.switchboard.invalid/", "url"]]).sign(with: SecretKey.generate()))
        do {
            _ = try await resolver.resolve(request, pool: pool)
            Issue.record("a name that never resolved was fetched")
        } catch let error as JobError {
            #expect("\(error)".contains("did not resolve within 5"), "\(error)")
        }
        #expect(!answered.withLock { $0 }, "the input waited for the lookup")
        failed.signal()
    }

    @Test("URL lookups that hang do not hold up relay lookups: the two have threads of their own")
    func separateLookupThreads() async throws {
        // Every thread URL inputs are looked up on hangs until the relay lookup below has answered.
        let threads = 4
        let release = DispatchSemaphore(value: 0)
        let hanging = Mutex(0)
        let resolver = InputResolver(configuration: InputResolver.Configuration(), logger: Logger(label: "test.inputs")) { _ in
            hanging.withLock { $0 += 1 }
            _ = release.wait(timeout: .now() + 60)
            return [[93, 184, 215, 14]]
        }
        defer { for _ in 0..<threads { release.signal() } }
        let pool = RelayPool(logger: Logger(label: "test.pool"))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<threads {
                let request = try JobRequest(
                    EventTemplate(kind: 5050, content: "", tags: [["i", "http://slow-\(index).switchboard.invalid/", "url"]]).sign(with: SecretKey.generate()))
                group.addTask { _ = try? await resolver.resolve(request, pool: pool) }
            }
            // Each URL lookup gives up after 5 s, so the threads are all taken well within it.
            try await withDeadline(.seconds(4), "the URL lookups to take every thread") {
                while hanging.withLock({ $0 }) < threads { try await Task.sleep(for: .milliseconds(5)) }
            }
            let addresses = try await AddressPolicy.addresses(of: "relay.switchboard.invalid", timeout: .seconds(3)) { _ in [[1, 2, 3, 4]] }
            #expect(addresses == [[1, 2, 3, 4]])
            for _ in 0..<threads { release.signal() }
        }
    }

    @Test("addresses as text: IPv4, IPv6 (no brackets), IPv4-mapped")
    func addressText() {
        #expect(AddressPolicy.text([192, 0, 2, 1]) == "192.0.2.1")
        #expect(AddressPolicy.text([0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1]) == "2001:db8::1")
        #expect(AddressPolicy.text([UInt8](repeating: 0, count: 10) + [0xff, 0xff, 127, 0, 0, 1]) == "::ffff:127.0.0.1")
        #expect(AddressPolicy.text([1, 2, 3]) == nil)
    }
}

@Suite("InputResolver: relay hints")
struct InputResolverHintTests {
    @Test("a hint relay a job is waiting on is not closed to make room for another hint")
    func hintInUseIsKept() async throws {
        try await withTestRelays(3) { relays in
            let urls = relays.compactMap(\.url)
            var configuration = InputResolver.Configuration()
            configuration.allowsPrivateAddresses = true
            configuration.maximumHintRelays = 1
            configuration.jobTimeout = .seconds(15)
            configuration.eventTimeout = .seconds(1)
            let resolver = InputResolver(configuration: configuration, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
            let pool = RelayPool(relays: [urls[0]], logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
            let worker = SecretKey.generate()
            let job = EventTemplate(kind: 5050, content: "", tags: [["i", "earlier", "text"]]).sign(with: worker)
            let elsewhere = EventTemplate(kind: 1, content: "on the second hint", tags: []).sign(with: worker)
            try await pool.withRunning {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await resolver.run() }
                    defer { group.cancelAll() }
                    let publisher = RelayPool(relays: [urls[1], urls[2]], logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
                    try await publisher.withRunning {
                        _ = await publisher.publish(elsewhere, to: [urls[2]])
                        // A chained job waits for the earlier job's result on its hint, the first relay of the two.
                        let waiting = Task { try await resolver.resolve(JobInput(data: job.id.hex, type: .job, relay: urls[1].string), pool: pool) }
                        try await withDeadline(.seconds(20), "the wait to take the hint place") {
                            while !resolver.hints.pool.relays.contains(urls[1]) { try await Task.sleep(for: .milliseconds(20)) }
                        }
                        // Another input's hint: with the only hint place in use, it is not used (before, it closed
                        // the first hint, and the wait above sat on a closed connection until its timeout).
                        await #expect(throws: JobError.self) {
                            _ = try await resolver.resolve(JobInput(data: elsewhere.id.hex, type: .event, relay: urls[2].string), pool: pool)
                        }
                        let result = EventTemplate(kind: 6050, content: "the earlier result", tags: [["request", job.json], ["e", job.id.hex]]).sign(with: worker)
                        _ = await publisher.publish(result, to: [urls[1]])
                        let resolved = try await withDeadline(.seconds(20), "the chained input") { try await waiting.value }
                        #expect(resolved.content == "the earlier result")
                    }
                }
            }
        }
    }
}
