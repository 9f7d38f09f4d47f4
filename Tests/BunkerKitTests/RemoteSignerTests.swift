import Foundation
import Hummingbird
import Logging
import MetricsTestKit
import NostrCore
import NostrCrypto
import NostrRelay
import NostrService
import NostrServiceTesting
import Prometheus
import Synchronization
import Testing
@testable import BunkerKit

typealias Tag = NostrCore.Tag

let quiet = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

/// A bunker running over test relays: one user key, its remote-signer key, the runtime with the remote signer,
/// and (with approvals) the HTTP listener with the approval pages.
struct TestBunker {
    let relays: [RelayURL]
    let identity: BunkerIdentity
    /// More user keys (with `otherIdentities`), served by the same runtime.
    let others: [BunkerIdentity]
    /// The remote signer's metrics.
    let metrics: TestMetrics
    let state: BunkerState
    let approvals: Approvals?
    let runtime: ServiceRuntime

    var signer: PublicKey { identity.signer.publicKey }

    /// A new single-use `bunker://` URI for the first relay (and the first user key, unless told).
    func uri(
        permissions: Permissions = .all, relays: [RelayURL]? = nil, for identity: BunkerIdentity? = nil, expiresAt: Int64? = nil,
        sessionLifetime: Int64? = nil
    ) async throws -> BunkerURI {
        let signer = (identity ?? self.identity).signer.publicKey
        let secret = try await state.mintSecret(
            for: signer, permissions: permissions, label: nil, expiresAt: expiresAt, sessionLifetime: sessionLifetime)
        return BunkerURI(signer: signer, relays: relays ?? [self.relays[0]], secret: secret)
    }

    func client(_ uri: BunkerURI, key: SecretKey = .generate()) -> NIP46Client {
        var client = NIP46Client(uri: uri, key: key)
        client.timeout = .seconds(30)
        return client
    }
}

/// Runs a bunker on `relayCount` test relays (with the approval pages when `approvals` is given) while `body`
/// runs, and stops everything however it ends. `authRequired` relays take events only from authenticated
/// authors and show `p`-tagged events only to their recipient (NIP-42).
func withBunker<R: Sendable>(
    relays relayCount: Int = 1, approvals: Approvals? = nil, authRequired: Bool = false, otherIdentities: Int = 0,
    configure: (inout ServiceRuntime.Configuration) -> Void = { _ in },
    _ body: @escaping @Sendable (TestBunker) async throws -> R
) async throws -> R {
    var relayConfiguration = EmbeddedRelay.Configuration()
    relayConfiguration.policy.authRequired = authRequired
    return try await withTestRelays(relayCount, configuration: relayConfiguration) { testRelays in
        let urls = testRelays.compactMap(\.url)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bunker-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let identity = BunkerIdentity(user: .generate(), signer: .generate())
        let others = (0..<otherIdentities).map { _ in BunkerIdentity(user: .generate(), signer: .generate()) }
        let metrics = TestMetrics()
        let state = BunkerState(store: try SQLiteServiceStore(path: directory.appendingPathComponent("bunker.sqlite").path))
        var configuration = ServiceRuntime.Configuration(relays: urls)
        configuration.pool.reconnectDelay = .milliseconds(50)
        configuration.publishTimeout = .seconds(2)
        configure(&configuration)
        let runtime = ServiceRuntime(
            keys: ([identity] + others).map { LocalServiceKey($0.signer) },
            handlers: [RemoteSigner(identities: [identity] + others, state: state, approvals: approvals, metricsFactory: metrics, relays: { urls })],
            store: state.store, configuration: configuration, logger: quiet)
        let bunker = TestBunker(relays: urls, identity: identity, others: others, metrics: metrics, state: state, approvals: approvals, runtime: runtime)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await runtime.run() }
            if let approvals { group.addTask { await approvals.followDecisions(in: state, every: .milliseconds(50)) } }
            if let approvals {
                let (listening, ready) = AsyncStream<Void>.makeStream()
                group.addTask {
                    try await OperationsServer(
                        port: 0, registry: PrometheusCollectorRegistry(), runtime: runtime, logger: quiet,
                        onListening: { host, port in
                            approvals.baseURL = "http://\(host):\(port)"
                            HTTP.operatorSessions.withLock { $0[port] = approvals.signIn() }
                            ready.yield()
                        },
                        routes: { approvals.addRoutes(to: $0) }
                    ).run()
                }
                _ = try await withDeadline(.seconds(30), "the HTTP listener") { await listening.first { _ in true } }
            }
            defer { group.cancelAll() }
            try await withDeadline(.seconds(30), "the bunker to be ready") {
                while !runtime.isReady { try await Task.sleep(for: .milliseconds(20)) }
            }
            return try await body(bunker)
        }
    }
}

/// The error a NIP-46 call ended with, or nil if it succeeded.
func refusal(_ call: () async throws -> some Any) async -> String? {
    do {
        _ = try await call()
        return nil
    } catch let error as NIP46Error {
        return error.description
    } catch {
        return "\(error)"
    }
}

@Suite("RemoteSigner end to end: the library's NIP-46 client against the bunker over a relay", .timeLimit(.minutes(2)))
struct RemoteSignerTests {
    @Test("a bunker:// secret works once: a second client using it is refused, the first keeps its session")
    func singleUseSecret() async throws {
        try await withBunker { bunker in
            let uri = try await bunker.uri()
            let user = try await bunker.client(uri).run { signer in
                try await signer.connect()
                return try await signer.publicKey()
            }
            #expect(user == bunker.identity.user.publicKey)
            let second = await refusal { try await bunker.client(uri).run { try await $0.connect() } }
            #expect(second?.contains("already been used") == true)
            #expect(try await bunker.state.sessions().count == 1)
        }
    }

    @Test("a connected client sending a new secret spends it: its session becomes the one that secret was minted for, and no other client can use it; its own spent secret still acks while connected")
    func connectedClientSpendsNewSecret() async throws {
        try await withBunker { bunker in
            let app = SecretKey.generate()
            let first = try await bunker.uri()
            try await bunker.client(first, key: app).run { try await $0.connect() }
            let second = try await bunker.uri(permissions: Permissions(entries: ["sign_event:7"]))
            try await bunker.client(second, key: app).run { try await $0.connect() }
            #expect(try await bunker.state.sessions().map(\.permissions.entries) == [["sign_event:7"]])
            let stolen = await refusal { try await bunker.client(second).run { try await $0.connect() } }
            #expect(stolen?.contains("already been used") == true, "\(stolen ?? "connected")")
            // Re-sending its own first secret while connected is a retry, not a new session.
            try await bunker.client(first, key: app).run { try await $0.connect() }
            #expect(try await bunker.state.sessions().map(\.permissions.entries) == [["sign_event:7"]])
            let secret = try #require(second.secret)
            #expect(try await bunker.state.secret(secret)?.usedBy == app.publicKey.hex)
        }
    }

    @Test("on a relay that shows p-tagged events only to their recipient (NIP-42), a client of the bunker's second user key connects and signs")
    func authRequiredRelay() async throws {
        try await withBunker(authRequired: true, otherIdentities: 1) { bunker in
            let other = bunker.others[0]
            try await bunker.client(try await bunker.uri(for: other)).run { signer in
                try await signer.connect()
                let event = try await signer.sign(EventTemplate(kind: 1, content: "through an AUTH relay"), as: other.user.publicKey)
                #expect(event.isValid)
                #expect(event.pubkey == other.user.publicKey)
            }
        }
    }

    @Test("an expired secret is refused; pruning removes expired unused secrets and keeps spent and live ones")
    func expiredSecret() async throws {
        try await withBunker { bunker in
            let now = Int64(Date().timeIntervalSince1970)
            let stale = try await bunker.uri(expiresAt: now - 1)
            let refused = await refusal { try await bunker.client(stale).run { try await $0.connect() } }
            #expect(refused == "unauthorized: this secret has expired; ask the operator for a new bunker:// URI")
            let live = try await bunker.uri(expiresAt: now + 3600)
            let used = try await bunker.uri(expiresAt: now + 3600)
            try await bunker.client(used).run { try await $0.connect() }
            #expect(try await bunker.state.pruneExpiredSecrets(before: now) == 1)
            #expect(try await bunker.state.secret(stale.secret ?? "") == nil)
            // Pruning when the others have expired too: the spent one stays.
            #expect(try await bunker.state.pruneExpiredSecrets(before: now + 7200) == 1)
            #expect(try await bunker.state.secret(live.secret ?? "") == nil)
            #expect(try await bunker.state.secret(used.secret ?? "")?.usedBy != nil)
        }
    }

    @Test("a session minted with a lifetime ends then: requests are refused until the client connects with a new secret")
    func sessionLifetime() async throws {
        try await withBunker { bunker in
            let client = SecretKey.generate()
            try await bunker.client(try await bunker.uri(sessionLifetime: 3600), key: client).run { signer in
                try await signer.connect()
                #expect(try await signer.publicKey() == bunker.identity.user.publicKey)
                var session = try #require(try await bunker.state.sessions().first)
                #expect(session.expiresAt.map { $0 - session.createdAt } == 3600)
                // The hour passes.
                session.expiresAt = Int64(Date().timeIntervalSince1970) - 1
                try await bunker.state.save(session)
                let refused = await refusal { try await signer.publicKey() }
                #expect(refused == "unauthorized: this session has expired; connect again with a new bunker:// URI")
            }
            // A new secret opens a new session (without a lifetime this time).
            try await bunker.client(try await bunker.uri(), key: client).run { signer in
                try await signer.connect()
                #expect(try await signer.publicKey() == bunker.identity.user.publicKey)
            }
        }
    }

    @Test("connect's first parameter may be the remote signer's pubkey, the user's (older NDK) or empty; another key is refused")
    func connectFirstParameter() async throws {
        try await withBunker { bunker in
            let user = bunker.identity.user.publicKey
            for (first, accepted) in [(bunker.signer.hex, true), (user.hex, true), ("", true), (SecretKey.generate().publicKey.hex, false)] {
                let uri = try await bunker.uri()
                try await bunker.client(uri).run { signer in
                    let answer = await refusal { try await signer.call("connect", [first, uri.secret ?? ""]) }
                    if accepted {
                        #expect(answer == nil, "\(first): \(answer ?? "")")
                        let named = try await signer.publicKey()
                        #expect(named == user)
                    } else {
                        #expect(answer?.hasPrefix("bad request: connect's first parameter") == true, "\(answer ?? "accepted")")
                    }
                }
            }
        }
    }

    @Test("sign_event: the user's key signs, pubkey, id and signature check out; unknown methods and bad params get errors")
    func signAndErrors() async throws {
        try await withBunker { bunker in
            try await bunker.client(try await bunker.uri()).run { signer in
                try await signer.connect()
                let template = EventTemplate(kind: 1, content: "hello", tags: [["t", "switchboard"]])
                let event = try await signer.sign(template, as: bunker.identity.user.publicKey)
                #expect(event.isValid)
                #expect(event.content == "hello")

                let unknown = await refusal { try await signer.call("frobnicate", ["x"]) }
                #expect(unknown == #"unsupported method "frobnicate""#)
                let notJSON = await refusal { try await signer.call("sign_event", ["not json"]) }
                #expect(notJSON?.hasPrefix("bad request") == true)
                let missing = await refusal { try await signer.call("nip44_encrypt", [bunker.signer.hex]) }
                #expect(missing == "bad request: nip44_encrypt takes 2 parameters")
                let badKey = await refusal { try await signer.call("nip04_encrypt", ["zz", "text"]) }
                #expect(badKey?.hasPrefix("bad request") == true)
                // A NIP-04 message with nothing in it: an error, never an empty result.
                let third = SecretKey.generate()
                let empty = try NIP04.encrypt("", secretKey: third, publicKey: bunker.identity.user.publicKey)
                let nothing = await refusal { try await signer.call("nip04_decrypt", [third.publicKey.hex, empty]) }
                #expect(nothing?.hasPrefix("bad request: the message decrypts to nothing") == true, "\(nothing ?? "an empty result")")
                // Dated far ahead (a replaceable event that would override every later version): refused;
                // a few minutes ahead (a skewed clock) or in the past: signed.
                let ahead = await refusal { try await signer.sign(EventTemplate(kind: 10_000, createdAt: Timestamp.now + 86_400 * 365)) }
                #expect(ahead?.hasPrefix("bad request: created_at is ") == true && ahead?.hasSuffix("at most 900 s is signed") == true, "\(ahead ?? "signed")")
                let skewed = try await signer.sign(EventTemplate(kind: 1, content: "soon", createdAt: Timestamp.now + 300))
                #expect(skewed.isValid)
                let old = try await signer.sign(EventTemplate(kind: 1, content: "then", createdAt: 1_600_000_000))
                #expect(old.createdAt == 1_600_000_000)
            }
            func count(_ method: String, _ decision: String) -> Int64 {
                (try? bunker.metrics.expectCounter("switchboard_bunker_requests_total", [("method", method), ("decision", decision)]))?.totalValue ?? 0
            }
            #expect(count("sign_event", "ok") == 3)
            #expect(count("other", "error") == 1)
            #expect(count("nip44_encrypt", "error") == 1 && count("nip04_encrypt", "error") == 1 && count("nip04_decrypt", "error") == 1)
        }
    }

    @Test("requests in NIP-04 are answered in NIP-04, and still work")
    func nip04Transport() async throws {
        try await withBunker { bunker in
            var client = bunker.client(try await bunker.uri())
            client.encryption = .nip04
            // NIP-46 events are ephemeral (relays do not store them): watch them live.
            let watcher = RelayPool(relays: bunker.relays, logger: quiet)
            let replies = try await watcher.withRunning {
                try await watcher.withSubscription([Filter(authors: [bunker.signer], kinds: [NIP46.kind])]) { events in
                    // Listening before the first request: ephemeral replies sent earlier would be missed.
                    for await item in events {
                        if case .endOfStoredEvents = item { break }
                    }
                    let user = try await client.run { signer in
                        try await signer.connect()
                        return try await signer.publicKey()
                    }
                    #expect(user == bunker.identity.user.publicKey)
                    // The client has both replies; the watcher's copies may still be on their way. Read until
                    // both are here, or give up after 10 s (the count check below then fails).
                    let deadline = Task {
                        try? await Task.sleep(for: .seconds(10))
                        events.stop()
                    }
                    defer { deadline.cancel() }
                    var replies: [Event] = []
                    for await case .event(let event, _) in events {
                        replies.append(event)
                        if replies.count == 2 { break }
                    }
                    return replies
                }
            }
            #expect(replies.count == 2)
            #expect(replies.allSatisfy { $0.content.contains("?iv=") })
        }
    }

    @Test("a revoked client is refused; logout answers ack, then the session is gone")
    func revokeAndLogout() async throws {
        try await withBunker { bunker in
            let revokedKey = SecretKey.generate()
            try await bunker.client(try await bunker.uri(), key: revokedKey).run { try await $0.connect() }
            try await bunker.state.remove(signer: bunker.signer.hex, client: revokedKey.publicKey.hex)
            let revoked = await refusal { try await bunker.client(BunkerURI(signer: bunker.signer, relays: bunker.relays, secret: nil), key: revokedKey).run { try await $0.ping() } }
            #expect(revoked?.hasPrefix("unauthorized: not connected") == true)

            try await bunker.client(try await bunker.uri()).run { signer in
                try await signer.connect()
                #expect(try await signer.ping() == "pong")
                #expect(try await signer.call("logout") == "ack")
                let after = await refusal { try await signer.ping() }
                #expect(after?.hasPrefix("unauthorized: not connected") == true)
            }
        }
    }

    @Test("a request delivered by two relays is signed once; the second copy is answered from the journal")
    func duplicateAnsweredFromJournal() async throws {
        try await withBunker(relays: 2) { bunker in
            let client = bunker.client(try await bunker.uri(relays: bunker.relays))
            let request = NIP46.Request(id: "dup-1", method: "sign_event", params: [EventTemplate(kind: 1, content: "once").json])
            let conversation = try ConversationKey(secretKey: client.key, publicKey: bunker.signer)
            let pool = RelayPool(relays: bunker.relays, logger: quiet)
            let (first, copy) = try await pool.withRunning {
                // NIP-46 events are ephemeral: watch the second relay live for the copy's reply.
                try await pool.withSubscription(
                    [Filter(authors: [bunker.signer], kinds: [NIP46.kind], tags: ["p": [client.key.publicKey.hex]])], on: [bunker.relays[1]]
                ) { secondRelay in
                    try await client.run { signer in
                        try await signer.connect()
                        let event = try signer.event(for: request)
                        let responses = signer.responses(to: request.id)
                        _ = await pool.publish(event, to: [bunker.relays[0]])
                        var first: NIP46.Response?
                        for await response in responses {
                            first = response
                            break
                        }
                        // The same request event again, through the other relay (a replay, or a second relay).
                        _ = await pool.publish(event, to: [bunker.relays[1]])
                        let copy = try await withDeadline(.seconds(30), "the reply to the copy") { () -> NIP46.Response? in
                            for await case .event(let reply, _) in secondRelay {
                                let response = try NIP46.Response(json: NIP44.decrypt(reply.content, conversationKey: conversation))
                                if response.id == request.id { return response }
                            }
                            return nil
                        }
                        return (first, copy)
                    }
                }
            }
            let signed = try Event(json: try #require(first?.result))
            #expect(signed.content == "once")
            // The very event the first delivery produced, not a second signature.
            #expect(copy?.result == first?.result)
            let signings = try await bunker.state.auditRecords(limit: 100).filter { $0.record.method == "sign_event" }
            #expect(signings.count == 1)
        }
    }

    @Test("without the approval pages, a kind outside the grant is refused, naming the permission; the audit log records it")
    func unauthorizedWithoutListener() async throws {
        try await withBunker { bunker in
            try await bunker.client(try await bunker.uri(permissions: try Permissions(parsing: "sign_event:1"))).run { signer in
                try await signer.connect()
                _ = try await signer.sign(EventTemplate(kind: 1, content: "fine"))
                let refused = await refusal { try await signer.sign(EventTemplate(kind: 4, content: "no")) }
                #expect(refused == "unauthorized: sign_event:4 is not granted to this client")
                let decrypt = await refusal { try await signer.call("nip44_decrypt", [bunker.signer.hex, "AAAA"]) }
                #expect(decrypt == "unauthorized: nip44_decrypt is not granted to this client")
            }
            let records = try await bunker.state.auditRecords(limit: 10).map(\.record)
            #expect(records.map(\.decision) == ["unauthorized", "unauthorized", "ok", "ok"])
            #expect(records[1].kind == 4)
            #expect(records.allSatisfy { $0.signer == bunker.signer.hex })
        }
    }

    @Test("a client granted everything still needs sign_event:0 for its profile; granted that, it signs it")
    func sensitiveKinds() async throws {
        try await withBunker { bunker in
            try await bunker.client(try await bunker.uri()).run { signer in
                try await signer.connect()
                _ = try await signer.sign(EventTemplate(kind: 1, content: "fine"))
                let refused = await refusal { try await signer.sign(EventTemplate(kind: 0, content: "{\"name\":\"mallory\"}")) }
                #expect(refused == "unauthorized: sign_event:0 is not granted to this client")
            }
            let profile = try await bunker.uri(permissions: try Permissions(parsing: "sign_event,sign_event:0"))
            try await bunker.client(profile).run { signer in
                try await signer.connect()
                let signed = try await signer.sign(EventTemplate(kind: 0, content: "{\"name\":\"alice\"}"))
                #expect(signed.kind == 0 && signed.pubkey == bunker.identity.user.publicKey)
            }
        }
    }

    @Test("an auth challenge's decision: approve once, approve always (then granted), deny, and a forged form refused")
    func approvals() async throws {
        let approvals = Approvals(timeout: .seconds(60), operatorToken: operatorToken)
        try await withBunker(approvals: approvals) { bunker in
            let challenges = AsyncStream<String>.makeStream()
            var client = bunker.client(try await bunker.uri(permissions: Permissions(entries: [])))
            client.timeout = .seconds(60)
            client.onAuthChallenge = { challenges.continuation.yield($0) }
            try await client.run { signer in
                try await signer.connect()
                var urls = challenges.stream.makeAsyncIterator()
                /// Signs kind 7 while the test settles the challenge with `decision` through the page.
                func sign(deciding decision: String, forgeFirst: Bool = false) async throws -> String? {
                    try await withThrowingTaskGroup(of: String?.self) { group in
                        group.addTask { await refusal { try await signer.sign(EventTemplate(kind: 7, content: "+", tags: [["e", "0"]])) } }
                        let url = try #require(await urls.next())
                        #expect(url.hasPrefix(try #require(approvals.baseURL) + "/auth/"))
                        let page = try await HTTP.get(url)
                        #expect(page.status == 200)
                        #expect(page.body.contains("sign_event:7"))
                        #expect(page.body.contains(client.key.publicKey.hex))
                        let token = try #require(page.body.firstMatch(of: /name="token" value="([0-9a-f]+)"/)?.1)
                        if forgeFirst {
                            // Knowing the URL (as the client does) is not enough: the page and a decision need the
                            // operator's sign-in, even with the page's form token.
                            let anonymous = try await HTTP.get(url, asOperator: false)
                            #expect(anonymous.status == 401 && anonymous.body.contains(#"action="login""#) && !anonymous.body.contains(token))
                            #expect(try await HTTP.post(url, form: "token=\(token)&decision=always", asOperator: false).status == 401)
                            let wrongCookie = try await HTTP.post(url, form: "token=\(token)&decision=always", headers: ["Cookie": "\(Approvals.cookieName)=\(String(repeating: "f", count: 64))"], asOperator: false)
                            #expect(wrongCookie.status == 401)
                            // Signing in: a wrong token is refused; the right one sets the cookie and leads back.
                            let id = String(url.split(separator: "/").last ?? "")
                            let login = String(url.dropLast(id.count)) + "login"
                            #expect(try await HTTP.post(login, form: "token=\(String(repeating: "f", count: 64))&next=\(id)", asOperator: false).status == 403)
                            let signedIn = try await HTTP.post(login, form: "token=\(operatorToken)&next=\(id)", asOperator: false)
                            #expect(signedIn.status == 200 && signedIn.body.contains("url=\(id)"))
                            // The cookie is a session of its own, not the token (cookies reach every port of a host).
                            let cookie = try #require(signedIn.setCookie)
                            #expect(cookie.hasPrefix("\(Approvals.cookieName)=") && !cookie.contains(operatorToken), "\(cookie)")
                            #expect(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Path=/auth"), "\(cookie)")
                            let session = String(cookie.dropFirst(Approvals.cookieName.count + 1).prefix { $0 != ";" })
                            let withSession = try await HTTP.get(url, headers: ["Cookie": "\(Approvals.cookieName)=\(session)"], asOperator: false)
                            #expect(withSession.status == 200 && withSession.body.contains(token))
                            #expect(try await HTTP.post(url, form: "token=\(String(repeating: "0", count: token.count))&decision=always").status == 403)
                            // A client's web page that rebound its domain to 127.0.0.1 (DNS rebinding) reaches the
                            // listener under its own name, and a cross-site form carries its origin: both refused.
                            let port = try #require(URL(string: url)?.port)
                            #expect(try await HTTP.get(url, headers: ["Host": "evil.example:\(port)"]).status == 421)
                            let rebound = try await HTTP.post(url, form: "token=\(token)&decision=always", headers: ["Host": "evil.example:\(port)"])
                            #expect(rebound.status == 421)
                            let crossSite = try await HTTP.post(url, form: "token=\(token)&decision=always", headers: ["Origin": "http://evil.example"])
                            #expect(crossSite.status == 421)
                            #expect(try await HTTP.get(url, headers: ["Host": "localhost:\(port)"]).status == 200)
                        }
                        // A browser posts the page's form with `Origin: null` (the page sends no referrer), or with
                        // the page's own origin.
                        let origin = decision == "once" ? "null" : "http://127.0.0.1:\(URL(string: url)?.port ?? 0)"
                        #expect(try await HTTP.post(url, form: "token=\(token)&decision=\(decision)", headers: ["Origin": origin]).status == 200)
                        let result = try await group.next() ?? nil
                        return result
                    }
                }
                #expect(try await sign(deciding: "once", forgeFirst: true) == nil)
                #expect(try await bunker.state.sessions().first?.permissions.entries == [])
                #expect(try await sign(deciding: "deny") == "unauthorized: the operator denied sign_event:7")
                #expect(try await sign(deciding: "always") == nil)
                #expect(try await bunker.state.sessions().first?.permissions.entries == ["sign_event:7"])
                // Granted now: no challenge.
                _ = try await signer.sign(EventTemplate(kind: 7, content: "+"))
            }
            let decisions = try await bunker.state.auditRecords(limit: 10).map(\.record.decision)
            #expect(decisions == ["ok", "approved-always", "denied", "approved-once", "ok"])
            #expect(approvals.count == 0)
        }
    }

    @Test("an auth challenge decided from the store (bunker approvals / approve / deny): listed with its event, decided by id prefix, then gone")
    func approvalsFromTheCLI() async throws {
        let approvals = Approvals(timeout: .seconds(60), operatorToken: operatorToken)
        try await withBunker(approvals: approvals) { bunker in
            var client = bunker.client(try await bunker.uri(permissions: Permissions(entries: [])))
            client.timeout = .seconds(60)
            try await client.run { signer in
                try await signer.connect()
                func sign(deciding decision: Approvals.Decision) async throws -> String? {
                    try await withThrowingTaskGroup(of: String?.self) { group in
                        group.addTask { await refusal { try await signer.sign(EventTemplate(kind: 7, content: "+", tags: [["e", "0"]])) } }
                        let pending = try await withDeadline(.seconds(30), "the challenge in the store") { () async throws -> PendingApproval in
                            while true {
                                if let first = try await bunker.state.pendingApprovals().first { return first }
                                try await Task.sleep(for: .milliseconds(20))
                            }
                        }
                        #expect(pending.permission == "sign_event:7" && pending.method == "sign_event")
                        #expect(pending.client == client.key.publicKey.hex)
                        #expect(pending.event?.contains("kind 7") == true)
                        #expect(try await bunker.state.decideApproval("zz", .once) == false)
                        #expect(try await bunker.state.decideApproval(String(pending.id.prefix(7)), .once) == false, "too short a prefix")
                        #expect(try await bunker.state.decideApproval(String(pending.id.prefix(8)), decision))
                        let result = try await group.next() ?? nil
                        return result
                    }
                }
                #expect(try await sign(deciding: .deny) == "unauthorized: the operator denied sign_event:7")
                #expect(try await sign(deciding: .always) == nil)
                #expect(try await bunker.state.sessions().first?.permissions.entries == ["sign_event:7"])
            }
            try await withDeadline(.seconds(20), "the challenges to leave the store") {
                while try await !bunker.state.pendingApprovals().isEmpty { try await Task.sleep(for: .milliseconds(20)) }
            }
        }
    }

    @Test("requests waiting for the operator hold no handling slot (two slots, four challenges, another client answered); a client's fifth open challenge is refused at once; approving one for good approves its siblings")
    func challengesHoldNoSlot() async throws {
        let approvals = Approvals(timeout: .seconds(30), operatorToken: operatorToken)
        try await withBunker(approvals: approvals, configure: { $0.maximumConcurrentRequests = 2 }) { bunker in
            var waiting = bunker.client(try await bunker.uri(permissions: Permissions(entries: [])))
            waiting.timeout = .seconds(30)
            try await waiting.run { signer in
                try await signer.connect()
                try await withThrowingTaskGroup(of: String?.self) { group in
                    for index in 0..<4 {
                        group.addTask { await refusal { try await signer.sign(EventTemplate(kind: 7, content: "\(index)")) } }
                    }
                    let pending = try await withDeadline(.seconds(30), "four open challenges") { () async throws -> [PendingApproval] in
                        while true {
                            let pending = try await bunker.state.pendingApprovals()
                            if pending.count == 4 { return pending }
                            try await Task.sleep(for: .milliseconds(20))
                        }
                    }
                    let fifth = await refusal { try await signer.sign(EventTemplate(kind: 7, content: "4")) }
                    #expect(fifth == "unauthorized: sign_event:7 is not granted to this client")
                    let pong = try await bunker.client(try await bunker.uri()).run { other in
                        try await other.connect()
                        return try await other.ping()
                    }
                    #expect(pong == "pong")
                    #expect(try await bunker.state.decideApproval(pending[0].id, .always))
                    var results: [String?] = []
                    for try await result in group { results.append(result) }
                    #expect(results == [nil, nil, nil, nil])
                }
            }
            let decisions = try await bunker.state.auditRecords(limit: 20).map(\.record.decision).filter { $0.hasPrefix("approved") }.sorted()
            #expect(decisions == ["approved-always", "approved-once", "approved-once", "approved-once"])
        }
    }

    @Test("a request waiting for the operator when the bunker stops is answered with an error saying so, not left to time out")
    func challengeAtShutdown() async throws {
        let approvals = Approvals(timeout: .seconds(60), operatorToken: operatorToken)
        try await withBunker(approvals: approvals, configure: { $0.shutdownGracePeriod = .milliseconds(300) }) { bunker in
            var client = bunker.client(try await bunker.uri(permissions: Permissions(entries: [])))
            client.timeout = .seconds(30)
            try await client.run { signer in
                try await signer.connect()
                async let signed = refusal { try await signer.sign(EventTemplate(kind: 7, content: "+")) }
                try await withDeadline(.seconds(30), "the challenge in the store") {
                    while try await bunker.state.pendingApprovals().isEmpty { try await Task.sleep(for: .milliseconds(20)) }
                }
                bunker.runtime.stopIntake()
                let answer = await signed
                #expect(answer == "unavailable: the bunker stopped before the operator decided; send the request again")
            }
        }
    }

    @Test("the approval page shows tags and content as JSON: quotes and line breaks cannot fake lines of the page")
    func displayEscapes() {
        let template = EventTemplate(kind: 1, content: "hello\ncontent:\nGM", tags: [["t", "x\"\ncontent:\nGM"]], createdAt: 1_700_000_000)
        #expect(RemoteSigner.display(template) == #"""
            kind 1
            created_at 1700000000
            tags:
              ["t","x\"\ncontent:\nGM"]
            content:
              "hello\ncontent:\nGM"
            """#)
    }

    @Test("an encryption challenge names its peer; approved after the client was revoked, it is still refused")
    func approvalAfterRevocation() async throws {
        let approvals = Approvals(timeout: .seconds(20), operatorToken: operatorToken)
        try await withBunker(approvals: approvals) { bunker in
            var client = bunker.client(try await bunker.uri(permissions: Permissions(entries: [])))
            client.timeout = .seconds(20)
            let peer = SecretKey.generate().publicKey
            let refused = await refusal { try await client.run { signer in
                try await signer.connect()
                return try await withThrowingTaskGroup(of: String.self) { group in
                    group.addTask { try await signer.call("nip44_encrypt", [peer.hex, "secret"]) }
                    let pending = try await withDeadline(.seconds(30), "the challenge in the store") { () async throws -> PendingApproval in
                        while true {
                            if let first = try await bunker.state.pendingApprovals().first { return first }
                            try await Task.sleep(for: .milliseconds(20))
                        }
                    }
                    #expect(pending.event == "peer \(NIP19Entity.npub(peer).bech32)")
                    try await bunker.state.remove(signer: bunker.signer.hex, client: client.key.publicKey.hex)
                    #expect(try await bunker.state.decideApproval(pending.id, .once))
                    return try await group.next() ?? ""
                }
            } }
            #expect(refused == "unauthorized: nip44_encrypt is not granted to this client")
        }
    }

    @Test("an auth challenge nobody decides expires with an error; the page then says so")
    func approvalExpires() async throws {
        let approvals = Approvals(timeout: .seconds(1), operatorToken: operatorToken)
        try await withBunker(approvals: approvals) { bunker in
            let seen = Mutex<[String]>([])
            var client = bunker.client(try await bunker.uri(permissions: Permissions(entries: [])))
            client.onAuthChallenge = { url in seen.withLock { $0.append(url) } }
            let refused = await refusal { try await client.run { signer in
                try await signer.connect()
                return try await signer.call("nip44_encrypt", [bunker.signer.hex, "secret"])
            } }
            #expect(refused == "unauthorized: nip44_encrypt was not approved in time")
            let url = try #require(seen.withLock { $0.first })
            #expect(try await HTTP.get(url).status == 404)
        }
    }
}

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The operator token the tests' approval pages take.
let operatorToken = String(repeating: "0123456789abcdef", count: 4)

/// The test's HTTP client for the approval pages (what a person's browser does): signed in as the operator
/// (with a session of the bunker on the URL's port, as `POST /auth/login` makes) unless told otherwise; it keeps
/// no cookies of its own.
enum HTTP {
    /// Each test bunker's operator session, by its listener's port.
    static let operatorSessions = Mutex<[Int: String]>([:])

    struct Reply {
        var status: Int
        var body: String
        var setCookie: String?
    }

    static let session: URLSession = {
        let configuration = URLSessionConfiguration.ephemeral
        configuration.httpShouldSetCookies = false
        configuration.httpCookieAcceptPolicy = .never
        return URLSession(configuration: configuration)
    }()

    static func get(_ url: String, headers: [String: String] = [:], asOperator: Bool = true) async throws -> Reply {
        var request = URLRequest(url: try #require(URL(string: url)))
        if asOperator, let port = URL(string: url)?.port, let session = operatorSessions.withLock({ $0[port] }) {
            request.setValue("\(Approvals.cookieName)=\(session)", forHTTPHeaderField: "Cookie")
        }
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        return try await send(request)
    }

    static func post(_ url: String, form: String, headers: [String: String] = [:], asOperator: Bool = true) async throws -> Reply {
        var request = URLRequest(url: try #require(URL(string: url)))
        if asOperator, let port = URL(string: url)?.port, let session = operatorSessions.withLock({ $0[port] }) {
            request.setValue("\(Approvals.cookieName)=\(session)", forHTTPHeaderField: "Cookie")
        }
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        request.httpMethod = "POST"
        request.setValue("application/x-www-form-urlencoded", forHTTPHeaderField: "Content-Type")
        request.httpBody = Data(form.utf8)
        return try await send(request)
    }

    private static func send(_ request: URLRequest) async throws -> Reply {
        let (data, response) = try await session.data(for: request)
        let http = response as? HTTPURLResponse
        return Reply(
            status: http?.statusCode ?? 0, body: String(decoding: data, as: UTF8.self),
            setCookie: http?.value(forHTTPHeaderField: "Set-Cookie"))
    }
}
