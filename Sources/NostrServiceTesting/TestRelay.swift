import NostrCore
public import NostrRelay
import Logging
import Synchronization

/// An embedded relay on 127.0.0.1 that a test starts, stops and restarts on the same port at will — to test a
/// handler end to end, or what a service does when a relay goes away.
///
/// Prefer ``withTestRelays(_:configuration:_:)``, which stops them however the test ends.
public final class TestRelay: Sendable {
    /// The events it stores; kept across restarts.
    public let store: any EventStore
    public let configuration: EmbeddedRelay.Configuration
    private let running = Mutex<(task: Task<Void, any Error>, url: RelayURL, port: Int)?>(nil)

    public init(store: any EventStore = MemoryEventStore(), configuration: EmbeddedRelay.Configuration = EmbeddedRelay.Configuration()) {
        self.store = store
        self.configuration = configuration
    }

    /// Where it listens (the last start's URL).
    public var url: RelayURL? { running.withLock { $0?.url } }

    /// Starts it on `port` (0 = a free one) and returns its URL once it accepts connections.
    @discardableResult
    public func start(port: Int = 0) async throws -> RelayURL {
        await stop()
        let (ready, readyContinuation) = AsyncStream<String>.makeStream()
        var configuration = self.configuration
        configuration.host = "127.0.0.1"
        configuration.port = port
        let relay = EmbeddedRelay(
            configuration: configuration, store: store, logger: Logger(label: "test.relay") { _ in SwiftLogNoOpLogHandler() }
        ) { readyContinuation.yield($0) }
        // The relay outlives the scope that starts it (tests restart it); stop() always ends this task.
        let task = Task { try await relay.run() }
        let first = try await withDeadline(.seconds(10), "the test relay to start") { await ready.first { _ in true } }
        guard let first, let url = try? RelayURL(first), let bound = first.split(separator: ":").last.flatMap({ Int($0) }) else {
            task.cancel()
            throw TestKitError("the test relay did not start")
        }
        running.withLock { $0 = (task, url, bound) }
        return url
    }

    /// Starts it again on the port it had (its events are kept).
    @discardableResult
    public func restart() async throws -> RelayURL {
        let port = running.withLock { $0?.port } ?? 0
        return try await start(port: port)
    }

    /// Stops it (connections are closed); does nothing if it is not running.
    public func stop() async {
        let task = running.withLock { $0?.task }
        task?.cancel()
        _ = await task?.result
    }
}

/// Starts `count` test relays, runs `body` with them, and stops them when it returns or throws.
public func withTestRelays<Result>(
    _ count: Int, configuration: EmbeddedRelay.Configuration = EmbeddedRelay.Configuration(),
    _ body: ([TestRelay]) async throws -> Result
) async throws -> Result {
    let relays = (0..<count).map { _ in TestRelay(configuration: configuration) }
    do {
        for relay in relays { try await relay.start() }
        let result = try await body(relays)
        for relay in relays { await relay.stop() }
        return result
    } catch {
        for relay in relays { await relay.stop() }
        throw error
    }
}

/// A test-kit failure with a message.
public struct TestKitError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// `body`'s result, or ``TestKitError`` once `limit` has passed (the body is cancelled).
public func withDeadline<Result: Sendable>(
    _ limit: Duration, _ what: String, _ body: @escaping @Sendable () async throws -> Result
) async throws -> Result {
    try await withThrowingTaskGroup(of: Result?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let result = first else { throw TestKitError("timed out waiting for \(what)") }
        return result
    }
}

/// `body`'s result, or a ``TestKitError`` naming `what` after `limit` (the body is then cancelled).
public func withTimeout<R: Sendable>(
    _ limit: Duration, _ what: String, _ body: @escaping @Sendable () async throws -> R
) async throws -> R {
    try await withThrowingTaskGroup(of: R?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let result = first else { throw TestKitError("timed out: \(what)") }
        return result
    }
}
