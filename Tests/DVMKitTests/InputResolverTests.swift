import DVMKit
import Hummingbird
import Logging
import NostrCore
import NostrCrypto
import NostrRelay
import Testing

@Suite("InputResolver: url inputs")
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
            // Never run: each fetch brings and shuts down a client of its own.
            let request = try JobRequest(
                EventTemplate(kind: 5050, content: "", tags: [["i", "http://127.0.0.1:\(port)/redirect", "url"]]).sign(with: SecretKey.generate()))
            let resolved = try await resolver.resolve(request, pool: pool)
            #expect(resolved.map(\.content) == ["hi from the server"])
            // Running: the shared client.
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await resolver.run() }
                defer { group.cancelAll() }
                let again = try await resolver.resolve(request, pool: pool)
                #expect(again.map(\.content) == ["hi from the server"])
            }
        }
    }
}
