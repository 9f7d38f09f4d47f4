import Foundation
import NostrCore
import NostrCrypto
import NostrRelay
import NostrService
import NostrServiceTesting
import Testing
@testable import BunkerKit

@Suite("BunkerKit: NIP-46 messages, permissions, URIs and the key store")
struct BunkerKitTests {
    @Test("stopping the approvals ends every wait at once, and a challenge opened afterwards is closed as it opens")
    func approvalsStop() async throws {
        let approvals = Approvals(timeout: .seconds(120), operatorToken: Approvals.newOperatorToken())
        approvals.baseURL = "http://127.0.0.1:1"
        func open(_ client: String) throws -> String {
            try #require(approvals.open(client: client, clientName: nil, user: "npub", method: "sign_event", permission: "sign_event:7", event: nil)).id
        }
        let waiting = try open("a")
        let decision = Task { await approvals.decision(waiting) }
        // Waiting for the operator, then stopped: the wait ends with no decision, long before the timeout.
        while approvals.count == 0 { try await Task.sleep(for: .milliseconds(5)) }
        #expect(!approvals.isStopped)
        approvals.stop()
        #expect(approvals.isStopped)
        #expect(try await withDeadline(.seconds(20), "the wait to end") { await decision.value } == nil)
        // Opened after the stop: closed already, so nothing waits on it.
        let late = try open("b")
        #expect(approvals.challenge(late) == nil)
        #expect(await approvals.decision(late) == nil)
        #expect(approvals.count == 0)
    }

    @Test("requests parse with string params; malformed ones are refused but keep their id for the error reply")
    func requests() throws {
        let request = try NIP46.Request(json: #"{"id":"r1","method":"sign_event","params":["{\"kind\":1}"]}"#)
        #expect(request == NIP46.Request(id: "r1", method: "sign_event", params: [#"{"kind":1}"#]))
        #expect(try NIP46.Request(json: request.json) == request)
        #expect(throws: BunkerError.self) { try NIP46.Request(json: #"{"id":"r2","method":"ping","params":[1]}"#) }
        #expect(throws: BunkerError.self) { try NIP46.Request(json: #"{"id":"r3"}"#) }
        #expect(throws: (any Error).self) { try NIP46.Request(json: "not json") }
        #expect(NIP46.Request.id(in: #"{"id":"r2","method":"ping","params":[1]}"#) == "r2")
        #expect(NIP46.Request.id(in: "[]") == nil)
    }

    @Test("responses carry a result, an error, or both (an auth challenge)")
    func responses() throws {
        #expect(NIP46.Response(id: "a", result: "pong").json == #"{"id":"a","result":"pong"}"#)
        #expect(NIP46.Response(id: "a", error: "no \"way\"").json == #"{"id":"a","error":"no \"way\""}"#)
        let challenge = NIP46.Response(id: "b", result: "auth_url", error: "https://example.com/x")
        #expect(try NIP46.Response(json: challenge.json) == challenge)
    }

    @Test("permissions: grantable methods and sign_event per kind; session methods need none; unknown ones refused")
    func permissions() throws {
        let granted = try Permissions(parsing: "sign_event:1, nip44_encrypt,ping")
        #expect(granted.description == "nip44_encrypt,sign_event:1")
        #expect(granted.missing("sign_event", kind: 1) == nil)
        #expect(granted.missing("sign_event", kind: 7) == "sign_event:7")
        #expect(granted.missing("nip04_decrypt") == "nip04_decrypt")
        #expect(granted.missing("get_public_key") == nil)
        #expect(Permissions.all.missing("sign_event", kind: 30_023) == nil)
        // A blanket sign_event leaves out the sensitive kinds, unless granted one by one or the set is empty.
        #expect(Permissions.all.missing("sign_event", kind: 0) == "sign_event:0")
        #expect(Permissions.all.missing("sign_event", kind: 10_002) == "sign_event:10002")
        #expect(try Permissions(parsing: "sign_event,sign_event:3").missing("sign_event", kind: 3) == nil)
        #expect(try Permissions(parsing: "sign_event:5").missing("sign_event", kind: 5) == nil)
        #expect(Permissions.all.missing("sign_event", kind: 0, sensitiveKinds: []) == nil)
        #expect(throws: BunkerError.self) { try Permissions(parsing: "sign_everything") }
        #expect(throws: BunkerError.self) { try Permissions(parsing: "sign_event:70000") }
        #expect(Permissions(requested: "sign_event:4,bogus,nip44_decrypt").description == "nip44_decrypt,sign_event:4")
        let encoded = try JSONEncoder().encode(granted)
        #expect(try JSONDecoder().decode(Permissions.self, from: encoded) == granted)
    }

    @Test("bunker:// URIs round-trip with several relays and a secret; bad ones are refused")
    func uris() throws {
        let signer = SecretKey.generate().publicKey
        let uri = BunkerURI(signer: signer, relays: [try RelayURL("wss://relay.example.com"), try RelayURL("ws://127.0.0.1:7777")], secret: "s3cr3t")
        let text = uri.description
        #expect(text.hasPrefix("bunker://\(signer.hex)?relay=wss%3A%2F%2Frelay.example.com&relay=ws%3A%2F%2F127.0.0.1%3A7777&secret=s3cr3t"))
        #expect(try BunkerURI(text) == uri)
        #expect(throws: BunkerError.self) { try BunkerURI("bunker://\(signer.hex)") }
        #expect(throws: BunkerError.self) { try BunkerURI("nostrconnect://\(signer.hex)?relay=wss%3A%2F%2Fa.example") }
        #expect(throws: BunkerError.self) { try BunkerURI("bunker://nothex?relay=wss%3A%2F%2Fa.example") }
    }

    @Test("nostrconnect:// URIs: the NIP's example (form-encoded), the older metadata form; no relay or no secret refused")
    func nostrConnectURIs() throws {
        let example = try NostrConnectURI(
            "nostrconnect://83f3b2ae6aa368e8275397b9c26cf550101d63ebaab900d19dd4a4429f5ad8f5?relay=wss%3A%2F%2Frelay1.example.com&perms=nip44_encrypt%2Cnip44_decrypt%2Csign_event%3A13%2Csign_event%3A14%2Csign_event%3A1059&name=My+Client&secret=0s8j2djs&relay=wss%3A%2F%2Frelay2.example2.com")
        #expect(example.client.hex == "83f3b2ae6aa368e8275397b9c26cf550101d63ebaab900d19dd4a4429f5ad8f5")
        #expect(example.relays.map(\.string) == ["wss://relay1.example.com", "wss://relay2.example2.com"])
        #expect(example.secret == "0s8j2djs")
        #expect(example.name == "My Client")
        #expect(example.requested.entries == ["nip44_encrypt", "nip44_decrypt", "sign_event:13", "sign_event:14", "sign_event:1059"])
        let client = SecretKey.generate().publicKey.hex
        let older = try NostrConnectURI("nostrconnect://\(client)?relay=ws%3A%2F%2F127.0.0.1%3A7&secret=abc&metadata=%7B%22name%22%3A%22Old+App%22%2C%22url%22%3A%22https%3A%2F%2Fapp.example%22%7D")
        #expect(older.name == "Old App")
        #expect(older.url == "https://app.example")
        #expect(throws: BunkerError.self) { try NostrConnectURI("nostrconnect://\(client)?secret=abc") }
        #expect(throws: BunkerError.self) { try NostrConnectURI("nostrconnect://\(client)?relay=ws%3A%2F%2F127.0.0.1%3A7") }
        #expect(throws: BunkerError.self) { try NostrConnectURI("bunker://\(client)?relay=ws%3A%2F%2F127.0.0.1%3A7&secret=abc") }
    }

    @Test("the key store: ncryptsec files readable by the owner only, listed without the passphrase, a wrong one refused")
    func keyStore() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bunker-test-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let store = KeyStore(directory: directory)
        let user = SecretKey.generate()
        let identity = try store.add(user, passphrase: "correct horse", keySecurity: .insecure)
        #expect(identity.user.publicKey == user.publicKey)
        #expect(identity.signer.publicKey != user.publicKey)
        #expect(throws: BunkerError.self) { try store.add(user, passphrase: "correct horse", keySecurity: .insecure) }

        let file = directory.appendingPathComponent("keys/\(user.publicKey.hex).json")
        let mode = try FileManager.default.attributesOfItem(atPath: file.path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let text = try String(contentsOf: file, encoding: .utf8)
        #expect(!text.contains(user.exportHex()) && !text.contains(user.exportNsec()))
        #expect(text.contains("ncryptsec1"))

        let listed = try store.list()
        #expect(listed.count == 1 && listed[0].user == user.publicKey && listed[0].signer == identity.signer.publicKey)
        let unlocked = try store.unlock(passphrase: "correct horse")
        #expect(unlocked.map(\.signer.publicKey) == [identity.signer.publicKey])
        #expect(throws: BunkerError.self) { try store.unlock(passphrase: "wrong") }
        let exported = try store.export(user.publicKey, passphrase: "correct horse")
        #expect(try NIP49.decrypt(exported, password: "correct horse").publicKey == user.publicKey)
        #expect(try NIP49.keySecurity(of: exported) == .insecure)
    }
}

@Suite("BunkerState: sessions and the audit log in the service store")
struct BunkerStateTests {
    @Test("a session read after a change made through another handle on the same file is the changed one")
    func sessionChanges() async throws {
        let directory = try temporaryDirectory("bunker-state")
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("bunker.sqlite").path
        // The daemon's handle and, beside it, the CLI's (`bunker grant`, `bunker revoke`).
        let daemon = BunkerState(store: try SQLiteServiceStore(path: path))
        let cli = BunkerState(store: try SQLiteServiceStore(path: path))
        let signer = SecretKey.generate().publicKey, client = SecretKey.generate().publicKey
        let session = ClientSession(
            signer: signer.hex, client: client.hex, permissions: Permissions(entries: ["sign_event:1"]),
            requested: Permissions(entries: []), name: "app", url: nil, label: nil, relays: [], clientRelays: nil,
            createdAt: 1, lastUsed: 1)
        try await cli.save(session)
        #expect(try await daemon.session(signer: signer, client: client) == session)
        #expect(try await daemon.session(signer: signer, client: client) == session)

        var granted = session
        granted.permissions.grant("nip44_encrypt")
        try await cli.save(granted)
        #expect(try await daemon.session(signer: signer, client: client)?.permissions.entries == ["sign_event:1", "nip44_encrypt"])

        try await cli.remove(signer: signer.hex, client: client.hex)
        #expect(try await daemon.session(signer: signer, client: client) == nil)
        try await cli.save(session)
        #expect(try await daemon.session(signer: signer, client: client) == session)
    }

    @Test("a secret is spent once even when clients race for it through two handles on one file; unspent, it can be used again; expired and unknown ones are told apart")
    func spendOnce() async throws {
        let directory = try temporaryDirectory("bunker-state")
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("bunker.sqlite").path
        let handles = [BunkerState(store: try SQLiteServiceStore(path: path)), BunkerState(store: try SQLiteServiceStore(path: path))]
        let signer = SecretKey.generate().publicKey
        let now = Int64(Date().timeIntervalSince1970)
        for round in 0..<20 {
            let secret = try await handles[0].mintSecret(for: signer, permissions: .all, label: nil, expiresAt: now + 60)
            let clients = (0..<6).map { _ in SecretKey.generate().publicKey }
            let outcomes = try await withThrowingTaskGroup(of: BunkerState.Spending.self) { group in
                for (index, client) in clients.enumerated() {
                    group.addTask { try await handles[index % 2].spend(secret, signer: signer, by: client, now: now) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let spent = outcomes.compactMap { if case .spent(let record) = $0 { return record } else { return nil } }
            #expect(spent.count == 1, "round \(round): \(outcomes)")
            #expect(outcomes.filter { $0 == .alreadySpent(byThisClient: false) }.count == clients.count - 1, "round \(round)")
            let winner = try #require(spent.first?.usedBy)
            #expect(try await handles[1].secret(secret)?.usedBy == winner)
        }
        let secret = try await handles[0].mintSecret(for: signer, permissions: .all, label: nil, expiresAt: now + 60)
        let (first, second) = (SecretKey.generate().publicKey, SecretKey.generate().publicKey)
        guard case .spent = try await handles[0].spend(secret, signer: signer, by: first, now: now) else { Issue.record("not spent"); return }
        #expect(try await handles[0].spend(secret, signer: signer, by: first, now: now) == .alreadySpent(byThisClient: true))
        try await handles[1].unspend(secret, by: second)  // not the one who spent it: no effect
        #expect(try await handles[0].spend(secret, signer: signer, by: second, now: now) == .alreadySpent(byThisClient: false))
        try await handles[1].unspend(secret, by: first)
        guard case .spent = try await handles[0].spend(secret, signer: signer, by: second, now: now) else { Issue.record("not spent again"); return }
        #expect(try await handles[0].spend(secret, signer: SecretKey.generate().publicKey, by: first, now: now) == .unknown)
        #expect(try await handles[0].spend("no such secret", signer: signer, by: first, now: now) == .unknown)
        let stale = try await handles[0].mintSecret(for: signer, permissions: .all, label: nil, expiresAt: now - 1)
        #expect(try await handles[0].spend(stale, signer: signer, by: first, now: now) == .expired)
    }

    @Test("audit records come back as written: escapes, non-ASCII, with and without a kind")
    func auditRoundTrip() async throws {
        let directory = try temporaryDirectory("bunker-state")
        defer { try? FileManager.default.removeItem(at: directory) }
        let state = BunkerState(store: try SQLiteServiceStore(path: directory.appendingPathComponent("bunker.sqlite").path))
        let records = [
            AuditRecord(time: 1_700_000_000, signer: "ab", client: "cd", method: "sign_event", kind: 30023, decision: "ok", latency: 1.25),
            AuditRecord(time: 1_700_000_001, signer: "ab", client: "cd", method: "we\"ird\\ \u{1}\n métho∂ 🙂", kind: nil, decision: "error", latency: 0),
            AuditRecord(time: 1_700_000_002, signer: "ab", client: "cd", method: "ping", kind: 0, decision: "ok", latency: 123_456.000_5),
        ]
        for record in records { try await state.audit(record) }
        let read = try await state.auditRecords(limit: 10).map(\.record)
        #expect(read == records.reversed())
    }
}
