public import NostrCrypto

// NIP-40 expiration and NIP-13 proof of work.
extension Event {
    /// The NIP-40 `expiration` timestamp, when the event has a well-formed one.
    public var expiration: Timestamp? {
        guard let value = firstTagValue("expiration"), let t = Int64(value), t >= 0 else { return nil }
        return t
    }

    /// Whether the event has expired at `now` (NIP-40).
    public func isExpired(at now: Timestamp = .now) -> Bool {
        guard let expiration else { return false }
        return expiration <= now
    }

    /// The difficulty the author committed to in the NIP-13 `nonce` tag's third field, if any.
    public var committedDifficulty: Int? {
        guard let tag = tags.first(where: { $0.name == "nonce" }), tag.fields.count >= 3 else { return nil }
        return Int(tag.fields[2])
    }

    /// Whether the event meets `minimum` NIP-13 difficulty, counting only a commitment that is at least
    /// `minimum` (so a lucky id without a matching commitment is not enough when `requireCommitment`).
    public func meetsDifficulty(_ minimum: Int, requireCommitment: Bool = false) -> Bool {
        guard id.difficulty >= minimum else { return false }
        guard requireCommitment else { return true }
        return (committedDifficulty ?? 0) >= minimum
    }
}

extension EventTemplate {
    /// Mines a NIP-13 `nonce` tag until the id has at least `difficulty` leading zero bits, then signs.
    /// Stops after `maximumAttempts` (returns `nil`) so a caller cannot hang forever.
    public func minedAndSigned(
        difficulty: Int, with secretKey: SecretKey, maximumAttempts: Int = 1 << 32
    ) -> Event? {
        let createdAt = self.createdAt ?? .now
        var tags = self.tags.filter { $0.name != "nonce" }
        let nonceIndex = tags.count
        tags.append(Tag(["nonce", "0", String(difficulty)]))
        var attempt = 0
        while attempt < maximumAttempts {
            tags[nonceIndex] = Tag(["nonce", String(attempt), String(difficulty)])
            let id = Event.computeID(pubkey: secretKey.publicKey, createdAt: createdAt, kind: kind, tags: tags, content: content)
            if id.difficulty >= difficulty {
                return Event(
                    id: id, pubkey: secretKey.publicKey, createdAt: createdAt, kind: kind, tags: tags, content: content,
                    sig: secretKey.sign(id.bytes32))
            }
            attempt += 1
        }
        return nil
    }
}

/// NIP-42 client authentication events (kind 22242).
public enum ClientAuthentication {
    /// How far `created_at` may be from the relay's clock (NIP-42 suggests about 10 minutes).
    public static let defaultWindow: Int64 = 600

    /// Signs the AUTH event for `relay` and `challenge`.
    public static func makeEvent(relay: String, challenge: String, secretKey: SecretKey, createdAt: Timestamp = .now) -> Event {
        EventTemplate(kind: .clientAuthentication, tags: [["relay", relay], ["challenge", challenge]], createdAt: createdAt)
            .sign(with: secretKey)
    }

    /// Checks an AUTH event as a relay must: kind, signature, challenge, relay URL (host match) and time.
    /// Returns the authenticated public key.
    public static func validate(
        _ event: Event, challenge: String, relayURL: String, now: Timestamp = .now, window: Int64 = defaultWindow
    ) throws -> PublicKey {
        guard event.kind == .clientAuthentication else {
            throw NostrError(.invalidShape, "an AUTH event has kind 22242")
        }
        try event.verify()
        guard event.firstTagValue("challenge") == challenge else {
            throw NostrError(.invalidShape, "the AUTH event's challenge does not match")
        }
        guard let relay = event.firstTagValue("relay"), normalizedHost(relay) == normalizedHost(relayURL) else {
            throw NostrError(.invalidShape, "the AUTH event names another relay")
        }
        guard abs(event.createdAt - now) <= window else {
            throw NostrError(.invalidShape, "the AUTH event's created_at is too far from now")
        }
        return event.pubkey
    }

    /// `wss://Host:port/path/` → `host:port/path`, for comparing relay URLs loosely (scheme and case aside).
    static func normalizedHost(_ url: String) -> String {
        var s = url.lowercased()
        for scheme in ["wss://", "ws://", "https://", "http://"] where s.hasPrefix(scheme) {
            s.removeFirst(scheme.count)
            break
        }
        while s.hasSuffix("/") { s.removeLast() }
        return s
    }
}
