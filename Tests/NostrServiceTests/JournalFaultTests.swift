import Foundation
import MetricsTestKit
import NostrCore
import NostrCrypto
import NostrService
import NostrServiceTesting
import Synchronization
import Testing

/// A real SQLite store whose next writes of a given operation fail, as a full disk or a lost database
/// connection would make them: fault injection in front of the real thing, which does all other work.
final class FaultyStore: ServiceStore {
    struct InjectedFault: Error {}

    let store: SQLiteServiceStore
    private let failures = Mutex<[String: Int]>([:])
    private let failuresAfter = Mutex<[String: Int]>([:])

    init(_ store: SQLiteServiceStore) { self.store = store }

    /// Makes the next `count` calls of `operation` (`claim`, `finish`, ...) throw.
    func fail(_ operation: String, times count: Int) { failures.withLock { $0[operation] = count } }

    /// Makes the next `count` calls of `operation` do their work and then throw, as a connection lost after the
    /// database committed would.
    func failAfterWriting(_ operation: String, times count: Int) { failuresAfter.withLock { $0[operation] = count } }

    /// Calls of `operation` still set to fail.
    func remaining(_ operation: String) -> Int { failures.withLock { $0[operation] ?? 0 } }

    private func check(_ operation: String) throws {
        if Self.take(operation, from: failures) { throw InjectedFault() }
    }

    /// Whether `operation` is set to fail in `counts`, using one of its failures up if so.
    private static func take(_ operation: String, from counts: borrowing Mutex<[String: Int]>) -> Bool {
        counts.withLock { counts in
            guard let left = counts[operation], left > 0 else { return false }
            counts[operation] = left - 1
            return true
        }
    }

    func claim(_ entry: JournalEntry, owner: String, now: Timestamp, lease: Int64) async throws -> ClaimResult {
        try check("claim")
        let result = try await store.claim(entry, owner: owner, now: now, lease: lease)
        if Self.take("claim", from: failuresAfter) { throw InjectedFault() }
        return result
    }
    func reclaim(_ id: EventID, owner: String, now: Timestamp, lease: Int64) async throws -> Bool {
        try check("reclaim")
        return try await store.reclaim(id, owner: owner, now: now, lease: lease)
    }
    func renew(_ ids: [EventID], owner: String, now: Timestamp) async throws {
        try check("renew")
        try await store.renew(ids, owner: owner, now: now)
    }
    func release(_ id: EventID, owner: String) async throws {
        try check("release")
        try await store.release(id, owner: owner)
    }
    func finish(_ id: EventID, owner: String, outcome: String, replies: [Event], now: Timestamp) async throws {
        try check("finish")
        try await store.finish(id, owner: owner, outcome: outcome, replies: replies, now: now)
    }
    func recordDelivery(_ id: EventID, _ delivery: String) async throws {
        try check("recordDelivery")
        try await store.recordDelivery(id, delivery)
    }
    func checkpoint(for service: PublicKey) async throws -> Timestamp? { try await store.checkpoint(for: service) }
    func advanceCheckpoint(for service: PublicKey, to createdAt: Timestamp) async throws {
        try check("advanceCheckpoint")
        try await store.advanceCheckpoint(for: service, to: createdAt)
    }
    func pruneJournal(before createdAt: Timestamp) async throws -> Int { try await store.pruneJournal(before: createdAt) }
    func value(_ key: String, in namespace: String) async throws -> [UInt8]? { try await store.value(key, in: namespace) }
    func setValue(_ value: [UInt8]?, forKey key: String, in namespace: String) async throws {
        try await store.setValue(value, forKey: key, in: namespace)
    }
    func values(in namespace: String) async throws -> [String: [UInt8]] { try await store.values(in: namespace) }
    func updateValue(forKey key: String, in namespace: String, _ change: @escaping @Sendable ([UInt8]?) throws -> [UInt8]?) async throws
        -> [UInt8]?
    {
        try await store.updateValue(forKey: key, in: namespace, change)
    }
    func appendLog(_ entry: [UInt8], at time: Timestamp, in namespace: String) async throws {
        try await store.appendLog(entry, at: time, in: namespace)
    }
    func log(in namespace: String, limit: Int, before: Int64?) async throws -> [LogEntry] {
        try await store.log(in: namespace, limit: limit, before: before)
    }
    func pruneLog(in namespace: String, before time: Timestamp) async throws -> Int { try await store.pruneLog(in: namespace, before: time) }
    func flush() async { await store.flush() }
}

@Suite("ServiceRuntime when its journal fails", .timeLimit(.minutes(2)))
struct JournalFaultTests {
    let key = LocalServiceKey(SecretKey.generate())
    let client = TestClient()

    @Test("an answer the journal fails to record at first is recorded on a later try, so a later copy gets the same reply")
    func finishTriedAgain() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let handler = Uppercase()
            let metrics = TestMetrics()
            let store = FaultyStore(try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path))
            store.fail("finish", times: 2)
            let request = try client.request(kind: requestKind, content: "record me", to: key.publicKey)
            try await withRuntime(urls, handler: handler, key: key, store: store, metrics: metrics) { _ in
                try await withReplies(urls, for: client) { pool, replies in
                    try await publish(request, on: urls, through: pool)
                    let seen = try await awaitReplies(replies) { $0.count >= 1 }
                    #expect(try client.read(seen[0].0) == "RECORD ME")
                    #expect(store.remaining("finish") == 0)
                    // Recorded: another runtime's copy finds the answer, not a claim that will lapse.
                    let claim = try await store.store.claim(JournalEntry(request, service: key.publicKey), owner: "replica", now: .now, lease: 30)
                    #expect(claim == .finished(replies: [seen[0].0]))
                }
            }
            #expect(handler.total == 1)
            #expect(counter(metrics, "switchboard_journal_errors_total", [("operation", "finish")]) == 2)
        }
    }

    @Test("a claim that landed although the journal reported an error is not run, in case it ran before: the request is answered as interrupted")
    func claimLandedDespiteError() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let handler = Uppercase()
            let metrics = TestMetrics()
            let store = FaultyStore(try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path))
            store.failAfterWriting("claim", times: 1)
            let request = try client.request(kind: requestKind, content: "landed", to: key.publicKey)
            try await withRuntime(urls, handler: handler, key: key, store: store, metrics: metrics) { _ in
                try await withReplies(urls, for: client) { pool, replies in
                    try await publish(request, on: urls, through: pool)
                    let seen = try await awaitReplies(replies) { $0.count >= 1 }
                    #expect(try client.read(seen[0].0).hasPrefix("error interrupted:"))
                }
            }
            #expect(handler.total == 0)
            #expect(counter(metrics, "switchboard_journal_errors_total", [("operation", "claim")]) == 1)
        }
    }

    @Test("a request the journal cannot claim is not run; the checkpoint stays before it, so the next start answers it")
    func unclaimedRequestComesBack() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            let handler = Uppercase()
            let metrics = TestMetrics()
            let sqlite = try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path)
            let store = FaultyStore(sqlite)
            let request = try client.request(kind: requestKind, content: "claim me later", to: key.publicKey)
            let later = try client.request(kind: requestKind, content: "newer", to: key.publicKey, createdAt: request.createdAt + 1)
            try await withReplies(urls, for: client) { pool, replies in
                try await withRuntime(urls, handler: handler, key: key, store: store, metrics: metrics) { _ in
                    store.fail("claim", times: 4)
                    try await publish(request, on: urls, through: pool)
                    try await withDeadline(.seconds(30), "the claim to be given up") {
                        while counter(metrics, "switchboard_requests_total", [("kind", "5910"), ("outcome", "store_error")]) == 0 {
                            try await Task.sleep(for: .milliseconds(20))
                        }
                    }
                    // A newer request is answered and its checkpoint flushed; the failed one's pin holds it back.
                    try await publish(later, on: urls, through: pool)
                    _ = try await awaitReplies(replies) { $0.count >= 1 }
                    try await Task.sleep(for: .milliseconds(1_500))
                    #expect(handler.total == 1)
                }
                #expect(try await sqlite.checkpoint(for: key.publicKey).map { $0 <= request.createdAt } ?? true)
                // The next start's catch-up brings the request back and answers it.
                try await withRuntime(urls, handler: handler, key: key, store: sqlite) { _ in
                    _ = try await awaitReplies(replies) { seen in seen.contains { (try? client.read($0.0)) == "CLAIM ME LATER" } }
                }
            }
            #expect(handler.total == 2)
            #expect(counter(metrics, "switchboard_journal_errors_total", [("operation", "claim")]) == 4)
        }
    }
}
