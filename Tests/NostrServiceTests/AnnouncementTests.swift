import Foundation
import GRDB
import Metrics
import MetricsTestKit
import NostrCore
import NostrCrypto
import NostrRelay
import NostrServiceTesting
import Synchronization
import Testing
@testable import NostrService

/// Upper-cases requests, replies to the requester's inbox too, and announces itself with a NIP-89-style
/// handler information event that expires after the next announcement.
final class AnnouncingUppercase: RequestHandler {
    let executions = Mutex(0)
    var kinds: Set<Kind> { [requestKind] }
    var repliesToInbox: Bool { true }

    func handle(_ request: ServiceRequest, context: RequestContext) async throws -> [ServiceReply] {
        executions.withLock { $0 += 1 }
        return [request.reply(kind: replyKind, content: request.content.uppercased())]
    }

    func announcements(_ context: AnnouncementContext) async throws -> [EventTemplate] {
        [EventTemplate(
            kind: .handlerInformation, content: #"{"name":"uppercase"}"#,
            tags: [["d", "uppercase"], ["k", "\(requestKind.rawValue)"], ["expiration", "\(context.nextAnnouncement + 600)"]],
            createdAt: context.now)]
    }
}

/// A client pool on `relays`, running while `body` runs.
func withClientPool<R: Sendable>(_ relays: [RelayURL], _ body: (RelayPool) async throws -> R) async throws -> R {
    var configuration = RelayPool.Configuration()
    configuration.reconnectDelay = .milliseconds(50)
    let pool = RelayPool(relays: relays, configuration: configuration, logger: quiet)
    return try await pool.withRunning { try await body(pool) }
}

/// The newest event of `kind` by `author` on `relay`.
func newest(_ kind: Kind, by author: PublicKey, on relay: RelayURL, through pool: RelayPool) async throws -> Event? {
    try await pool.fetch([Filter(authors: [author], kinds: [kind])], from: [relay], timeout: .seconds(5)).first
}

/// Polls until `condition` holds, or fails after `limit`.
func eventually(_ what: String, limit: Duration = .seconds(30), _ condition: @escaping @Sendable () async throws -> Bool) async throws {
    try await withDeadline(limit, what) {
        while try await !condition() { try await Task.sleep(for: .milliseconds(100)) }
    }
}

@Suite("ServiceRuntime announcements, relay changes and inbox routing", .timeLimit(.minutes(2)))
struct AnnouncementTests {
    let key = LocalServiceKey(SecretKey.generate())
    let client = TestClient()

    @Test("relay list and handler announcements on start, confirmed; after a relay change, on old and new relays")
    func announceAndMove() async throws {
        try await withRelaysAndDirectory(3) { urls, directory in
            let (a, b, c) = (urls[0], urls[1], urls[2])
            let handler = AnnouncingUppercase()
            let metrics = TestMetrics()
            try await withRuntime([a, b], handler: handler, key: key, directory: directory, metrics: metrics) { runtime in
                try await withClientPool(urls) { pool in
                    try await eventually("the first announcements") { runtime.isAnnounced }
                    for relay in [a, b] {
                        let relayList = try #require(try await newest(.relayList, by: key.publicKey, on: relay, through: pool))
                        #expect(Set(relayList.tagValues("r")) == [a.string, b.string])
                        let information = try #require(try await newest(.handlerInformation, by: key.publicKey, on: relay, through: pool))
                        #expect(information.tagValues("k") == ["5910"])
                        #expect((information.expiration ?? 0) > Timestamp.now + 3000)
                    }
                    #expect(counter(metrics, "switchboard_announcements_published_total", [("kind", "10002"), ("accepted", "true")]) >= 1)
                    #expect(counter(metrics, "switchboard_announcements_published_total", [("kind", "31990"), ("accepted", "true")]) >= 1)

                    runtime.setRelays([b, c])
                    #expect(Set(runtime.relays) == [b, c])
                    // The new list reaches the new relay and the one the service left.
                    for relay in [c, a] {
                        try await eventually("the new relay list on \(relay)") {
                            let list = try await newest(.relayList, by: key.publicKey, on: relay, through: pool)
                            return list.map { Set($0.tagValues("r")) } == [b.string, c.string]
                        }
                    }
                    // Published after the relay list, in the same round.
                    try await eventually("the handler information on \(c)") {
                        try await newest(.handlerInformation, by: key.publicKey, on: c, through: pool) != nil
                    }

                    // It listens on c now, and no longer on a.
                    try await pool.withSubscription([Filter(kinds: [replyKind], tags: ["p": [client.publicKey.hex]])]) { replies in
                        let onA = try client.request(kind: requestKind, content: "to a", to: key.publicKey)
                        try await publish(onA, on: [a], through: pool)
                        let onC = try client.request(kind: requestKind, content: "to c", to: key.publicKey)
                        try await publish(onC, on: [c], through: pool)
                        let seen = try await awaitReplies(replies) { $0.contains { $0.0.tagValues("e") == [onC.id.hex] } }
                        #expect(try client.read(seen[0].0) == "TO C")
                        try await Task.sleep(for: .milliseconds(500))
                        #expect(handler.executions.withLock { $0 } == 1)
                    }
                }
            }
        }
    }

    @Test("announcements are published again every interval")
    func periodic() async throws {
        try await withRelaysAndDirectory(1) { urls, directory in
            try await withRuntime(urls, handler: AnnouncingUppercase(), key: key, directory: directory, configure: {
                $0.announcementInterval = .seconds(1)
            }) { runtime in
                try await withClientPool(urls) { pool in
                    try await eventually("the first announcements") { runtime.isAnnounced }
                    let first = try #require(try await newest(.relayList, by: key.publicKey, on: urls[0], through: pool))
                    try await eventually("a newer relay list") {
                        let list = try await newest(.relayList, by: key.publicKey, on: urls[0], through: pool)
                        return (list?.createdAt ?? 0) > first.createdAt
                    }
                }
            }
        }
    }

    @Test("replies also reach the requester's NIP-65 read relays, though the service does not use them; a loopback one only when private reply relays are allowed", arguments: [true, false])
    func inboxRouting(allowsPrivate: Bool) async throws {
        try await withRelaysAndDirectory(2) { urls, directory in
            let (service, inbox) = (urls[0], urls[1])
            try await withRuntime([service], handler: AnnouncingUppercase(), key: key, directory: directory, configure: {
                $0.allowsPrivateReplyRelays = allowsPrivate
                // Five attempts: retrying a relay would take 1 + 2 + 4 + 8 = 15 s.
                $0.publishAttempts = 5
            }) { _ in
                try await withClientPool(urls) { pool in
                    let relayList = EventTemplate(kind: .relayList, tags: [
                        ["r", inbox.string, "read"], ["r", "wss://write-only.example", "write"],
                    ]).sign(with: client.key)
                    try await publish(relayList, on: [service], through: pool)
                    let request = try client.request(kind: requestKind, content: "find me", to: key.publicKey)
                    try await publish(request, on: [service], through: pool)
                    @Sendable func reply(on relay: RelayURL) async throws -> String? {
                        let replies = try await pool.fetch([Filter(kinds: [replyKind], tags: ["e": [request.id.hex]])], from: [relay], timeout: .seconds(5))
                        return try replies.first.map { try client.read($0) }
                    }
                    if allowsPrivate {
                        try await eventually("the reply on the inbox relay") { try await reply(on: inbox) == "FIND ME" }
                        return
                    }
                    // Refused before connecting and not retried, so well before retries would end: the delivery
                    // is recorded with the inbox relay among its targets, unreachable.
                    let journal = try DatabaseQueue(path: directory.appendingPathComponent("service.sqlite").path)
                    try await eventually("the delivery recorded", limit: .seconds(8)) {
                        try await journal.read { try String.fetchOne($0, sql: "SELECT delivery FROM journal") } != nil
                    }
                    let delivery = try await journal.read { try String.fetchOne($0, sql: "SELECT delivery FROM journal") }
                    #expect(delivery == "accepted 1 of 2")
                    #expect(try await reply(on: service) == "FIND ME")
                    #expect(try await reply(on: inbox) == nil)
                }
            }
        }
    }

    @Test("inbox relays: NIP-65 read relays first (unmarked or read), else kind 10050; newest list; deduplicated and capped")
    func inboxSelection() throws {
        let user = SecretKey.generate()
        let older = EventTemplate(kind: .relayList, tags: [["r", "wss://old.example"]], createdAt: 100).sign(with: user)
        let relayList = EventTemplate(kind: .relayList, tags: [
            ["r", "wss://both.example"], ["r", "wss://write.example", "write"], ["r", "wss://read.example", "read"],
            ["r", "not a url"], ["r", "wss://both.example"], ["r", "wss://extra1.example"], ["r", "wss://extra2.example"],
        ], createdAt: 200).sign(with: user)
        let dmRelays = EventTemplate(kind: .dmRelayList, tags: [["relay", "wss://dm.example"]], createdAt: 300).sign(with: user)
        let chosen = InboxRelays.inbox(from: [older, dmRelays, relayList], maximum: 3).map(\.string)
        #expect(chosen == ["wss://both.example", "wss://read.example", "wss://extra1.example"])
        #expect(InboxRelays.inbox(from: [dmRelays], maximum: 3).map(\.string) == ["wss://dm.example"])
        let writeOnly = EventTemplate(kind: .relayList, tags: [["r", "wss://write.example", "write"]]).sign(with: user)
        #expect(InboxRelays.inbox(from: [writeOnly, dmRelays], maximum: 3).map(\.string) == ["wss://dm.example"])
        #expect(InboxRelays.inbox(from: [], maximum: 3).isEmpty)
    }
}
