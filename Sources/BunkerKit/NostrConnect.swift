import Foundation
import NostrCore
public import NostrCrypto
public import NostrRelay

/// `nostrconnect://<client pubkey>?relay=…&secret=…[&perms=…&name=…&url=…&image=…]`: a connection the client
/// starts (older clients send `metadata={"name":…,"url":…}` instead of `name` and `url`). The signer answers `connect` unasked, with the secret as the result, on the client's relays.
public struct NostrConnectURI: Sendable, Hashable {
    public var client: PublicKey
    public var relays: [RelayURL]
    public var secret: String
    /// What the client asks for: recorded as requested, never granted by itself.
    public var requested: Permissions
    public var name: String?
    public var url: String?

    public init(_ text: String) throws {
        guard let components = URLComponents(string: text), components.scheme == "nostrconnect", let host = components.host,
            let client = try? PublicKey(validatingHex: host)
        else { throw BunkerError("expected nostrconnect://<64 hex characters>?relay=…&secret=…") }
        // Form encoding, as the NIP's example has it (`name=My+Client`): '+' is a space.
        let items = (components.percentEncodedQueryItems ?? []).map { item in
            URLQueryItem(name: item.name, value: item.value.flatMap { $0.replacingOccurrences(of: "+", with: "%20").removingPercentEncoding })
        }
        func first(_ name: String) -> String? { items.first { $0.name == name }?.value.flatMap { $0.isEmpty ? nil : $0 } }
        let relays = try items.filter { $0.name == "relay" }.compactMap(\.value).map { try RelayURL($0) }
        guard !relays.isEmpty else { throw BunkerError("the nostrconnect URI names no relay") }
        guard let secret = first("secret") else { throw BunkerError("the nostrconnect URI has no secret") }
        guard secret.count <= 256 else { throw BunkerError("the nostrconnect secret is longer than 256 characters") }
        self.client = client
        self.relays = Array(relays.prefix(8))
        self.secret = secret
        self.requested = Permissions(requested: first("perms") ?? "")
        // Older clients (rust-nostr among them) put name and url in a JSON `metadata` parameter instead.
        let metadata = first("metadata").map { ClientMetadata(json: $0) } ?? ClientMetadata()
        self.name = first("name").map { String($0.prefix(100)) } ?? metadata.name
        self.url = first("url").map { String($0.prefix(200)) } ?? metadata.url
    }
}

/// A `bunker connect` waiting for the running daemon, in the store (namespace `bunker.connects`): the CLI
/// writes it, the daemon serves it and records the outcome.
public struct PendingConnect: Codable, Sendable, Hashable {
    public var uri: String
    /// The remote-signer key that answers.
    public var signer: String
    public var permissions: Permissions
    public var label: String?
    public var createdAt: Int64
    /// Nil while waiting; then `connected` or the reason it failed.
    public var outcome: String?

    public init(uri: String, signer: String, permissions: Permissions, label: String?, createdAt: Int64) {
        self.uri = uri
        self.signer = signer
        self.permissions = permissions
        self.label = label
        self.createdAt = createdAt
    }

    enum CodingKeys: String, CodingKey {
        case uri, signer, permissions, label, outcome
        case createdAt = "created_at"
    }
}

extension BunkerState {
    static let connects = "bunker.connects"

    /// Asks the running daemon to answer `pending`'s URI; the key is the client's pubkey.
    public func requestConnect(_ pending: PendingConnect, client: PublicKey) async throws {
        try await store.setValue(Array(try JSONEncoder().encode(pending)), forKey: client.hex, in: Self.connects)
    }

    /// The connect requests, by client pubkey (hex).
    public func connectRequests() async throws -> [String: PendingConnect] {
        try await store.values(in: Self.connects).mapValues { try JSONDecoder().decode(PendingConnect.self, from: Data($0)) }
    }

    public func connectRequest(for client: PublicKey) async throws -> PendingConnect? {
        try await store.value(client.hex, in: Self.connects).map { try JSONDecoder().decode(PendingConnect.self, from: Data($0)) }
    }

    /// Records `outcome` on the connect request of `client` if the CLI is still waiting for it (the record is
    /// there, unanswered); false when it gave up meanwhile.
    public func answerConnectRequest(for client: PublicKey, outcome: String) async throws -> Bool {
        let answered = try await store.updateValue(forKey: client.hex, in: Self.connects) { current in
            guard let current, var pending = try? JSONDecoder().decode(PendingConnect.self, from: Data(current)), pending.outcome == nil
            else { return current }
            pending.outcome = outcome
            return Array(try JSONEncoder().encode(pending))
        }
        return answered.flatMap { try? JSONDecoder().decode(PendingConnect.self, from: Data($0)) }?.outcome == outcome
    }

    /// Gives up on the connect request of `client` unless the daemon answered it meanwhile: atomically, it is
    /// removed if unanswered; the answer is returned if there is one (the record stays, to be removed after).
    public func abandonConnectRequest(for client: PublicKey) async throws -> String? {
        let kept = try await store.updateValue(forKey: client.hex, in: Self.connects) { current in
            guard let current, let pending = try? JSONDecoder().decode(PendingConnect.self, from: Data(current)), pending.outcome != nil
            else { return nil }
            return current
        }
        return kept.flatMap { try? JSONDecoder().decode(PendingConnect.self, from: Data($0)) }?.outcome
    }

    /// Removes a connect request (answered and reported, or abandoned).
    public func removeConnectRequest(for client: PublicKey) async throws {
        try await store.setValue(nil, forKey: client.hex, in: Self.connects)
    }

    /// The relays sessions were last given (a bunker:// URI's, or `switch_relays`' answer) that are not in
    /// `current`: clients still use them until they ask `switch_relays`, so a bunker whose relays were replaced
    /// listens there too.
    /// Sessions that have expired, and the `ignored` relays (development relays, gone with their process), do
    /// not count.
    public func formerSessionRelays(besides current: [RelayURL], ignoring ignored: Set<RelayURL> = []) async throws -> [RelayURL] {
        let time = Int64(Date().timeIntervalSince1970)
        let live = try await sessions().filter { session in session.expiresAt.map { time < $0 } ?? true }
        return Set(live.flatMap(\.relays).compactMap { try? RelayURL($0) }).subtracting(current).subtracting(ignored).sorted()
    }

    /// The relays nostrconnect clients asked to be served on (the daemon listens there too).
    public func clientRelays() async throws -> [RelayURL] {
        Array(Set(try await sessions().flatMap { $0.clientRelays ?? [] }.compactMap { try? RelayURL($0) })).sorted()
    }
}

extension RemoteSigner {
    /// Serves a `nostrconnect://` connection: records the session (granting `pending.permissions`), then sends
    /// the `connect` response carrying the URI's secret to the client on its relays through `pool`. Returns
    /// the outcome: `connected`, or why not (the session is then removed again).
    public func accept(_ pending: PendingConnect, through pool: RelayPool, timeout: Duration = .seconds(10)) async -> String {
        do {
            let uri = try NostrConnectURI(pending.uri)
            guard let signer = try? PublicKey(validatingHex: pending.signer), let identity = identities[signer] else {
                return "failed: this bunker does not serve \(pending.signer)"
            }
            let now = Int64(Date().timeIntervalSince1970)
            try await state.save(ClientSession(
                signer: signer.hex, client: uri.client.hex, permissions: pending.permissions, requested: uri.requested,
                name: uri.name, url: uri.url, label: pending.label, relays: uri.relays.map(\.string),
                clientRelays: uri.relays.map(\.string), createdAt: now, lastUsed: now))
            let response = NIP46.Response(id: Hex.encode(SecureMemory.randomBytes(16)), result: uri.secret)
            let content = try NIP44.encrypt(response.json, conversationKey: ConversationKey(secretKey: identity.signer, publicKey: uri.client))
            let event = EventTemplate(kind: NIP46.kind, content: content, tags: [["p", uri.client.hex]]).sign(with: identity.signer)
            let results = await pool.publish(event, to: uri.relays, timeout: timeout)
            let accepted = results.values.filter(\.isAccepted).count
            guard accepted > 0 else {
                try await state.remove(signer: signer.hex, client: uri.client.hex)
                return "failed: no relay of the client accepted the response (\(results.map { "\($0.key): \($0.value)" }.sorted().joined(separator: "; ")))"
            }
            return "connected"
        } catch {
            return "failed: \(error)"
        }
    }
}
