public import NostrCrypto
import Synchronization

/// An event id: the SHA-256 of the event's canonical serialisation (NIP-01).
public struct EventID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let bytes32: Bytes32

    public init(_ bytes32: Bytes32) { self.bytes32 = bytes32 }

    /// Parses 64 hex characters.
    public init(hex: some StringProtocol) throws {
        guard let bytes = Bytes32(hex: hex) else { throw NostrError(.invalidShape, "an event id is 64 hex characters") }
        self.bytes32 = bytes
    }

    public var hex: String { bytes32.hex }
    public var description: String { hex }
    public static func < (lhs: EventID, rhs: EventID) -> Bool { lhs.bytes32 < rhs.bytes32 }

    /// NIP-13 difficulty: the number of leading zero bits.
    public var difficulty: Int {
        bytes32.withUnsafeBytes { raw in
            var bits = 0
            for byte in raw {
                if byte == 0 {
                    bits += 8
                } else {
                    bits += byte.leadingZeroBitCount
                    break
                }
            }
            return bits
        }
    }
}

/// A signed Nostr event (NIP-01).
///
/// Decoding checks shape only; call ``verify()`` (or ``isValid``) before trusting an event from the network.
public struct Event: Hashable, Sendable, CustomStringConvertible {
    public let id: EventID
    public let pubkey: PublicKey
    public let createdAt: Timestamp
    public let kind: Kind
    public let tags: [Tag]
    public let content: String
    public let sig: SchnorrSignature

    /// Assembles an event from its parts without checking it.
    public init(
        id: EventID, pubkey: PublicKey, createdAt: Timestamp, kind: Kind, tags: [Tag], content: String,
        sig: SchnorrSignature
    ) {
        self.id = id
        self.pubkey = pubkey
        self.createdAt = createdAt
        self.kind = kind
        self.tags = tags
        self.content = content
        self.sig = sig
    }

    /// The canonical serialisation NIP-01 hashes for the id: `[0,pubkey,created_at,kind,tags,content]`.
    public static func canonicalSerialization(
        pubkey: PublicKey, createdAt: Timestamp, kind: Kind, tags: [Tag], content: String
    ) -> [UInt8] {
        var writer = JSONWriter(capacity: 128 + content.utf8.count)
        writer.raw("[0,\"")
        writer.rawString(pubkey.hex)
        writer.raw("\",")
        writer.integer(createdAt)
        writer.raw(",")
        writer.integer(kind.rawValue)
        writer.raw(",")
        writer.tags(tags)
        writer.raw(",")
        writer.string(content)
        writer.raw("]")
        return writer.bytes
    }

    /// The id these fields hash to.
    public static func computeID(pubkey: PublicKey, createdAt: Timestamp, kind: Kind, tags: [Tag], content: String) -> EventID {
        let serialized = canonicalSerialization(pubkey: pubkey, createdAt: createdAt, kind: kind, tags: tags, content: content)
        return EventID(serialized.withUnsafeBytes { SHA256.hash($0) })
    }

    /// Checks that the id matches the content and the signature verifies; throws which one failed.
    public func verify() throws {
        let expected = Event.computeID(pubkey: pubkey, createdAt: createdAt, kind: kind, tags: tags, content: content)
        guard expected == id else {
            throw NostrError(.invalidID, "the event id does not match its content (expected \(expected.hex))")
        }
        let signer = Signer(pubkey: pubkey, sig: sig)
        if Event.verified.withLock({ $0[id] }) == signer { return }
        guard pubkey.isValidSignature(sig, for: id.bytes32) else {
            throw NostrError(.invalidSignature, "the signature does not verify for pubkey \(pubkey.hex)")
        }
        Event.verified.withLock { $0.insert(signer, forKey: id) }
    }

    /// Who signed an event, and how: what a verified signature is remembered by.
    private struct Signer: Hashable, Sendable {
        let pubkey: PublicKey
        let sig: SchnorrSignature
    }

    /// Signatures this process verified lately, by event id (~200 bytes each: ~1.6 MB when full).
    ///
    /// The same event often reaches a process more than once: from each relay a service listens on, or — when
    /// a relay and its client share a process — once to each. A copy whose recomputed id, pubkey and signature
    /// all equal a verified one's is valid without a second Schnorr verification (~40 µs). Only signatures that
    /// verified are kept, so an unverified copy never passes on another's account.
    private static let verified = Mutex(BoundedCache<EventID, Signer>(capacity: 8_192))

    /// Whether ``verify()`` succeeds.
    public var isValid: Bool { (try? verify()) != nil }

    /// The first value of the first tag named `name`.
    public func firstTagValue(_ name: String) -> String? {
        tags.first { $0.name == name }?.value
    }

    /// Values of every tag named `name`.
    public func tagValues(_ name: String) -> [String] {
        tags.compactMap { $0.name == name ? $0.value : nil }
    }

    /// The JSON object form, `{"id":…,"pubkey":…,"created_at":…,"kind":…,"tags":…,"content":…,"sig":…}`.
    public var json: String {
        var writer = JSONWriter(capacity: 400 + content.utf8.count)
        write(to: &writer)
        return writer.text
    }

    /// A bound on ``json``'s length in bytes that costs no serialisation: every byte of the content and the
    /// tags escaped as `\u00XX` (six bytes), plus the fixed fields. Size caps compare with this first and
    /// serialise only an event that may be over.
    public var maximumJSONLength: Int {
        var variable = content.utf8.count
        for tag in tags {
            variable += 3
            for field in tag.fields { variable += field.utf8.count + 3 }
        }
        // id, pubkey and sig in hex, the keys, a 20-digit created_at and kind, punctuation.
        return 6 * variable + 400
    }

    /// Appends the JSON object form to `writer`.
    public func write(to writer: inout JSONWriter) {
        Event.writeObject(
            to: &writer, id: id, pubkey: pubkey, createdAt: createdAt, kind: kind, tags: tags, content: content, sig: sig)
    }

    /// Writes `{"id","pubkey","created_at","kind","tags","content"[,"sig"]}`, shared by events and rumors.
    static func writeObject(
        to writer: inout JSONWriter, id: EventID, pubkey: PublicKey, createdAt: Timestamp, kind: Kind, tags: [Tag],
        content: String, sig: SchnorrSignature?
    ) {
        writer.raw("{\"id\":\"")
        writer.rawString(id.hex)
        writer.raw("\",\"pubkey\":\"")
        writer.rawString(pubkey.hex)
        writer.raw("\",\"created_at\":")
        writer.integer(createdAt)
        writer.raw(",\"kind\":")
        writer.integer(kind.rawValue)
        writer.raw(",\"tags\":")
        writer.tags(tags)
        writer.raw(",\"content\":")
        writer.string(content)
        if let sig {
            writer.raw(",\"sig\":\"")
            writer.rawString(sig.hex)
            writer.raw("\"")
        }
        writer.raw("}")
    }

    public var description: String { json }

    /// Parses the JSON object form (shape only: see ``verify()``).
    public init(json: String) throws {
        if let event = JSON.directEvent(json) {
            self = event
            return
        }
        try self.init(jsonValue: JSON.parse(json))
    }

    /// Reads an event from a parsed JSON object. Unknown members are ignored.
    public init(jsonValue: JSONValue) throws {
        guard case .object(let object) = jsonValue else { throw NostrError(.invalidShape, "an event is a JSON object") }
        func field(_ name: String) throws -> JSONValue {
            guard let value = object[name] else { throw NostrError(.invalidShape, "the event has no \"\(name)\"") }
            return value
        }
        func hexField(_ name: String) throws -> String {
            guard let s = try field(name).string else { throw NostrError(.invalidShape, "event \"\(name)\" must be a string") }
            return s
        }
        guard let id = Bytes32(hex: try hexField("id")) else {
            throw NostrError(.invalidShape, "event \"id\" must be 64 hex characters")
        }
        guard let pubkey = Bytes32(hex: try hexField("pubkey")) else {
            throw NostrError(.invalidShape, "event \"pubkey\" must be 64 hex characters")
        }
        guard let sig = try? SchnorrSignature(hex: try hexField("sig")) else {
            throw NostrError(.invalidShape, "event \"sig\" must be 128 hex characters")
        }
        guard let createdAt = try field("created_at").int64, createdAt >= 0 else {
            throw NostrError(.invalidShape, "event \"created_at\" must be a non-negative integer")
        }
        guard let kindValue = try field("kind").int64, let kind = UInt16(exactly: kindValue) else {
            throw NostrError(.invalidShape, "event \"kind\" must be an integer from 0 to 65535")
        }
        guard let content = try field("content").string else {
            throw NostrError(.invalidShape, "event \"content\" must be a string")
        }
        self.init(
            id: EventID(id), pubkey: PublicKey(pubkey), createdAt: createdAt, kind: Kind(kind),
            tags: try Event.parseTags(try field("tags")), content: content, sig: sig)
    }

    /// Reads a `tags` array: an array of arrays of strings.
    static func parseTags(_ value: JSONValue) throws -> [Tag] {
        guard case .array(let array) = value else { throw NostrError(.invalidShape, "event \"tags\" must be an array") }
        var tags = [Tag]()
        tags.reserveCapacity(array.count)
        for element in array {
            guard case .array(let fields) = element else {
                throw NostrError(.invalidShape, "each tag must be an array of strings")
            }
            var strings = [String]()
            strings.reserveCapacity(fields.count)
            for field in fields {
                guard case .string(let s) = field else { throw NostrError(.invalidShape, "each tag must be an array of strings") }
                strings.append(s)
            }
            tags.append(Tag(strings))
        }
        return tags
    }
}

/// What a signer needs to produce an event: everything but `pubkey`, `id` and `sig`.
public struct EventTemplate: Hashable, Sendable {
    public var kind: Kind
    public var content: String
    public var tags: [Tag]
    /// `nil` means "now" at signing time.
    public var createdAt: Timestamp?

    public init(kind: Kind, content: String = "", tags: [Tag] = [], createdAt: Timestamp? = nil) {
        self.kind = kind
        self.content = content
        self.tags = tags
        self.createdAt = createdAt
    }

    /// Computes the id and signs with `secretKey`.
    public func sign(with secretKey: SecretKey) -> Event {
        let createdAt = self.createdAt ?? .now
        let id = Event.computeID(pubkey: secretKey.publicKey, createdAt: createdAt, kind: kind, tags: tags, content: content)
        return Event(
            id: id, pubkey: secretKey.publicKey, createdAt: createdAt, kind: kind, tags: tags, content: content,
            sig: secretKey.sign(id.bytes32))
    }

    /// Parses the template form `{"kind":…,"content":…,"tags":[…],"created_at":…}` (`tags` and `created_at`
    /// optional), as `switchboard event sign` reads it and NIP-46 `sign_event` receives it.
    public init(json: String) throws {
        guard case .object(let object) = try JSON.parse(json) else {
            throw NostrError(.invalidShape, "an event template is a JSON object")
        }
        guard let kindValue = object["kind"]?.int64, let kind = UInt16(exactly: kindValue) else {
            throw NostrError(.invalidShape, "template \"kind\" must be an integer from 0 to 65535")
        }
        var content = ""
        if let value = object["content"] {
            guard let s = value.string else { throw NostrError(.invalidShape, "template \"content\" must be a string") }
            content = s
        }
        var createdAt: Timestamp?
        if let value = object["created_at"], value != .null {
            guard let t = value.int64, t >= 0 else {
                throw NostrError(.invalidShape, "template \"created_at\" must be a non-negative integer")
            }
            createdAt = t
        }
        let tags = try object["tags"].map(Event.parseTags) ?? []
        self.init(kind: Kind(kind), content: content, tags: tags, createdAt: createdAt)
    }

    /// `{"kind":…,"content":…,"tags":[…]}`, with `"created_at"` when it is set (what NIP-46 `sign_event` takes).
    public var json: String {
        var writer = JSONWriter(capacity: 100 + content.utf8.count)
        writer.raw("{\"kind\":")
        writer.integer(kind.rawValue)
        writer.raw(",\"content\":")
        writer.string(content)
        writer.raw(",\"tags\":")
        writer.tags(tags)
        if let createdAt {
            writer.raw(",\"created_at\":")
            writer.integer(createdAt)
        }
        writer.raw("}")
        return writer.text
    }
}

/// An event with its id but no signature: a NIP-59 "rumor".
public struct UnsignedEvent: Hashable, Sendable {
    public let id: EventID
    public let pubkey: PublicKey
    public let createdAt: Timestamp
    public let kind: Kind
    public let tags: [Tag]
    public let content: String

    /// Builds the rumor and computes its id.
    public init(pubkey: PublicKey, createdAt: Timestamp, kind: Kind, tags: [Tag], content: String) {
        self.pubkey = pubkey
        self.createdAt = createdAt
        self.kind = kind
        self.tags = tags
        self.content = content
        self.id = Event.computeID(pubkey: pubkey, createdAt: createdAt, kind: kind, tags: tags, content: content)
    }

    /// JSON without `sig`.
    public var json: String {
        var writer = JSONWriter(capacity: 300 + content.utf8.count)
        Event.writeObject(
            to: &writer, id: id, pubkey: pubkey, createdAt: createdAt, kind: kind, tags: tags, content: content, sig: nil)
        return writer.text
    }

    /// Parses a rumor and checks that its id matches.
    public init(json: String) throws {
        guard case .object(let object) = try JSON.parse(json) else {
            throw NostrError(.invalidShape, "a rumor is a JSON object")
        }
        guard let pubkeyHex = object["pubkey"]?.string, let pubkey = Bytes32(hex: pubkeyHex) else {
            throw NostrError(.invalidShape, "rumor \"pubkey\" must be 64 hex characters")
        }
        guard let createdAt = object["created_at"]?.int64, createdAt >= 0 else {
            throw NostrError(.invalidShape, "rumor \"created_at\" must be a non-negative integer")
        }
        guard let kindValue = object["kind"]?.int64, let kind = UInt16(exactly: kindValue) else {
            throw NostrError(.invalidShape, "rumor \"kind\" must be an integer from 0 to 65535")
        }
        guard let content = object["content"]?.string else {
            throw NostrError(.invalidShape, "rumor \"content\" must be a string")
        }
        guard let tagsValue = object["tags"] else { throw NostrError(.invalidShape, "the rumor has no \"tags\"") }
        self.init(pubkey: PublicKey(pubkey), createdAt: createdAt, kind: Kind(kind), tags: try Event.parseTags(tagsValue), content: content)
        if let idHex = object["id"]?.string, idHex != id.hex {
            throw NostrError(.invalidID, "the rumor's id does not match its content")
        }
    }
}
