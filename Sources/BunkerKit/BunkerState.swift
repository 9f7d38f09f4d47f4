import Foundation
import NostrCore
public import NostrCrypto
public import NostrService
import Synchronization

/// A single-use connection secret minted for a `bunker://` URI.
public struct ConnectionSecret: Codable, Sendable, Hashable {
    /// The remote-signer key the URI names.
    public var signer: String
    public var permissions: Permissions
    public var label: String?
    public var createdAt: Int64
    /// After this time an unused secret is refused (nil: never; secrets minted before lifetimes existed).
    public var expiresAt: Int64?
    /// How long the session it opens lasts, in seconds (nil: no limit).
    public var sessionLifetime: Int64? = nil
    /// The client that used it (then it is spent).
    public var usedBy: String?

    enum CodingKeys: String, CodingKey {
        case signer, permissions, label
        case createdAt = "created_at"
        case expiresAt = "expires_at"
        case sessionLifetime = "session_lifetime"
        case usedBy = "used_by"
    }
}

/// A client's session with one remote-signer key.
public struct ClientSession: Codable, Sendable, Hashable {
    public var signer: String
    public var client: String
    public var permissions: Permissions
    /// What the client asked for in `connect`: recorded, not granted.
    public var requested: Permissions
    /// The client's own description (`connect`'s 4th parameter or the operator's label); display only.
    public var name: String?
    public var url: String?
    public var label: String?
    /// The relays the client was given; `switch_relays` answers with the bunker's relays when they differ.
    public var relays: [String]
    /// For a `nostrconnect://` client: the relays it listens on, which the bunker serves it on too.
    public var clientRelays: [String]?
    public var createdAt: Int64
    public var lastUsed: Int64
    /// After this time the session is refused and the client must connect again (nil: no limit).
    public var expiresAt: Int64? = nil

    enum CodingKeys: String, CodingKey {
        case signer, client, permissions, requested, name, url, label, relays
        case clientRelays = "client_relays"
        case createdAt = "created_at"
        case lastUsed = "last_used"
        case expiresAt = "expires_at"
    }
}

/// One line of the audit log: who asked for what and how it was decided — never content.
public struct AuditRecord: Codable, Sendable, Hashable {
    public var time: Int64
    /// The remote-signer key the request addressed.
    public var signer: String
    public var client: String
    public var method: String
    /// The kind of the event to sign (`sign_event` only).
    public var kind: UInt16?
    /// `ok`, `approved-once`, `approved-always`, `unauthorized`, `denied`, `expired`, `cancelled` (the bunker
    /// stopped before the operator decided) or `error`.
    public var decision: String
    /// Milliseconds from the handler's start to the response (an approval's wait included).
    public var latency: Double

    public init(time: Int64, signer: String, client: String, method: String, kind: UInt16?, decision: String, latency: Double) {
        self.time = time
        self.signer = signer
        self.client = client
        self.method = method
        self.kind = kind
        self.decision = decision
        self.latency = latency
    }
}

/// Secrets and sessions, in the service store's key-value state (namespaces `bunker.secrets` and
/// `bunker.clients`), so that `bunker uri`, `grant` and `revoke` work on the data directory while the daemon
/// runs, and everything survives a restart.
public struct BunkerState: Sendable {
    static let secrets = "bunker.secrets"
    static let clients = "bunker.clients"
    static let auditLog = "bunker.audit"

    public let store: any ServiceStore
    private let decodedSessions = DecodedSessions()

    public init(store: any ServiceStore) {
        self.store = store
    }

    /// Mints a secret for `signer` (32 random bytes, hex).
    /// A new single-use secret for `signer`, unusable after `expiresAt` (nil: never); the session it opens lasts
    /// `sessionLifetime` seconds (nil: no limit).
    public func mintSecret(
        for signer: PublicKey, permissions: Permissions, label: String?, expiresAt: Int64? = nil, sessionLifetime: Int64? = nil
    ) async throws -> String {
        var bytes = [UInt8](repeating: 0, count: 32)
        bytes.withUnsafeMutableBytes { SecureMemory.fillRandom($0) }
        let secret = Hex.encode(bytes)
        let record = ConnectionSecret(
            signer: signer.hex, permissions: permissions, label: label, createdAt: Int64(Date().timeIntervalSince1970), expiresAt: expiresAt,
            sessionLifetime: sessionLifetime)
        try await store.setValue(Array(try JSONEncoder().encode(record)), forKey: secret, in: Self.secrets)
        return secret
    }

    public func secret(_ secret: String) async throws -> ConnectionSecret? {
        try await store.value(secret, in: Self.secrets).map { try JSONDecoder().decode(ConnectionSecret.self, from: Data($0)) }
    }

    /// What ``spend(_:signer:by:now:)`` found.
    public enum Spending: Sendable, Equatable {
        /// Unspent until now; now bound to the client.
        case spent(ConnectionSecret)
        /// Already spent, by this client (`byThisClient`) or another.
        case alreadySpent(byThisClient: Bool)
        case expired
        /// Not a secret of this signer.
        case unknown
    }

    /// Spends `secret` for `client` if it is `signer`'s, unspent and unexpired: one atomic update of the stored
    /// record, so two clients racing for one secret — in this process or two sharing the store — never both get
    /// it. The session it opens is saved after this; ``unspend(_:by:)`` gives the secret back if that fails.
    public func spend(_ secret: String, signer: PublicKey, by client: PublicKey, now: Int64) async throws -> Spending {
        let found = Mutex(Spending.unknown)
        _ = try await store.updateValue(forKey: secret, in: Self.secrets) { current in
            guard let current, var record = try? JSONDecoder().decode(ConnectionSecret.self, from: Data(current)), record.signer == signer.hex
            else {
                found.withLock { $0 = .unknown }
                return current
            }
            if let usedBy = record.usedBy {
                found.withLock { $0 = .alreadySpent(byThisClient: usedBy == client.hex) }
                return current
            }
            if let expiresAt = record.expiresAt, now >= expiresAt {
                found.withLock { $0 = .expired }
                return current
            }
            record.usedBy = client.hex
            found.withLock { $0 = .spent(record) }
            return Array(try JSONEncoder().encode(record))
        }
        return found.withLock { $0 }
    }

    /// Makes `secret` unspent again, if `client` spent it (its session could not be saved).
    public func unspend(_ secret: String, by client: PublicKey) async throws {
        _ = try await store.updateValue(forKey: secret, in: Self.secrets) { current in
            guard let current, var record = try? JSONDecoder().decode(ConnectionSecret.self, from: Data(current)),
                record.usedBy == client.hex
            else { return current }
            record.usedBy = nil
            return Array(try JSONEncoder().encode(record))
        }
    }

    /// Deletes the secrets that expired unused before `time` (each `serve` start mints one per key, and
    /// those never used would otherwise pile up); spent ones stay, as the record of who used them.
    @discardableResult
    public func pruneExpiredSecrets(before time: Int64) async throws -> Int {
        var pruned = 0
        for (secret, bytes) in try await store.values(in: Self.secrets) {
            guard let record = try? JSONDecoder().decode(ConnectionSecret.self, from: Data(bytes)), record.usedBy == nil,
                let expiresAt = record.expiresAt, expiresAt < time
            else { continue }
            try await store.setValue(nil, forKey: secret, in: Self.secrets)
            pruned += 1
        }
        return pruned
    }

    static func key(signer: String, client: String) -> String { "\(signer):\(client)" }

    /// The session as stored now. It is read on every request, so that `grant`, `revoke` and `logout` take effect
    /// at once whichever process made them; only its decoding is skipped when the stored bytes have not changed.
    public func session(signer: PublicKey, client: PublicKey) async throws -> ClientSession? {
        let key = Self.key(signer: signer.hex, client: client.hex)
        guard let bytes = try await store.value(key, in: Self.clients) else { return nil }
        return try decodedSessions.session(key, from: bytes)
    }

    public func save(_ session: ClientSession) async throws {
        try await store.setValue(Array(try JSONEncoder().encode(session)), forKey: Self.key(signer: session.signer, client: session.client), in: Self.clients)
    }

    /// Changes the stored session with `change` atomically, so that a revoke or grant made meanwhile (by the
    /// CLI, say) is never undone by writing back an older copy. Nil, and nothing written, when there is no
    /// session (any more).
    @discardableResult
    public func updateSession(
        signer: String, client: String, _ change: @escaping @Sendable (inout ClientSession) -> Void
    ) async throws -> ClientSession? {
        let bytes = try await store.updateValue(forKey: Self.key(signer: signer, client: client), in: Self.clients) { current in
            guard let current else { return nil }
            var session = try JSONDecoder().decode(ClientSession.self, from: Data(current))
            change(&session)
            return Array(try JSONEncoder().encode(session))
        }
        return try bytes.map { try JSONDecoder().decode(ClientSession.self, from: Data($0)) }
    }

    public func remove(signer: String, client: String) async throws {
        try await store.setValue(nil, forKey: Self.key(signer: signer, client: client), in: Self.clients)
    }

    /// Every session, oldest first.
    public func sessions() async throws -> [ClientSession] {
        try await store.values(in: Self.clients).values
            .map { try JSONDecoder().decode(ClientSession.self, from: Data($0)) }
            .sorted { ($0.createdAt, $0.client) < ($1.createdAt, $1.client) }
    }

    /// Sessions whose client pubkey (hex or npub) or name matches `text`.
    public func sessions(matching text: String) async throws -> [ClientSession] {
        let lowered = text.lowercased()
        return try await sessions().filter { session in
            session.client == lowered || session.client.hasPrefix(lowered) && lowered.count >= 8 || session.name == text || session.label == text
        }
    }

    /// Appends `record` to the audit log.
    public func audit(_ record: AuditRecord) async throws {
        try await store.appendLog(record.json, at: record.time, in: Self.auditLog)
    }

    /// The newest audit records first: at most `limit`, older than sequence `before` when given.
    public func auditRecords(limit: Int, before: Int64? = nil) async throws -> [(sequence: Int64, record: AuditRecord)] {
        try await store.log(in: Self.auditLog, limit: limit, before: before).map { entry in
            (entry.sequence, try JSONDecoder().decode(AuditRecord.self, from: Data(entry.entry)))
        }
    }

    /// Forgets audit records older than `time`; returns how many.
    public func pruneAudit(before time: Int64) async throws -> Int {
        try await store.pruneLog(in: Self.auditLog, before: time)
    }
}

/// The sessions decoded last, each with the stored bytes it was decoded from: a client's requests find the same
/// bytes again and again, and decoding them (Foundation's JSON decoder) was ~4 % of the bunker's CPU under load.
private final class DecodedSessions: Sendable {
    private struct Decoded: Sendable {
        let bytes: [UInt8]
        let session: ClientSession
    }

    private let cache = Mutex(BoundedCache<String, Decoded>(capacity: 4096))

    func session(_ key: String, from bytes: [UInt8]) throws -> ClientSession {
        if let decoded = cache.withLock({ $0[key] }), decoded.bytes == bytes { return decoded.session }
        let session = try JSONDecoder().decode(ClientSession.self, from: Data(bytes))
        cache.withLock { $0.insert(Decoded(bytes: bytes, session: session), forKey: key) }
        return session
    }
}

extension AuditRecord {
    /// The record as JSON, with the keys its `Codable` conformance reads, written directly: one is written per
    /// request.
    var json: [UInt8] {
        var writer = JSONWriter(capacity: 256)
        writer.raw("{\"time\":")
        writer.integer(time)
        writer.raw(",\"signer\":")
        writer.string(signer)
        writer.raw(",\"client\":")
        writer.string(client)
        writer.raw(",\"method\":")
        writer.string(method)
        if let kind {
            writer.raw(",\"kind\":")
            writer.integer(kind)
        }
        writer.raw(",\"decision\":")
        writer.string(decision)
        writer.raw(",\"latency\":")
        writer.rawString(latency.isFinite ? "\(latency)" : "0")
        writer.raw("}")
        return writer.bytes
    }
}
