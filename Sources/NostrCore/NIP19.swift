public import NostrCrypto

/// A NIP-19 bech32 entity other than `nsec` (secret keys decode only into ``SecretKey``, via
/// `SecretKey(nsec:)`, so they never pass through a plain value type).
///
/// See [NIP-19](https://github.com/nostr-protocol/nips/blob/master/19.md).
public enum NIP19Entity: Hashable, Sendable {
    case npub(PublicKey)
    case note(EventID)
    case nprofile(pubkey: PublicKey, relays: [String])
    case nevent(id: EventID, relays: [String], author: PublicKey?, kind: Kind?)
    case naddr(identifier: String, pubkey: PublicKey, kind: Kind, relays: [String])

    /// Most relay hints accepted in one entity.
    public static let maximumRelays = 32

    /// Decodes an entity; `nsec` is refused with a pointer to `SecretKey(nsec:)`.
    public init(bech32 text: String) throws {
        let hrp: String
        let data: [UInt8]
        do {
            (hrp, data) = try Bech32.decode(text)
        } catch {
            throw NostrError(.invalidEntity, "not a valid bech32 string: \(error)")
        }
        switch hrp {
        case "npub":
            guard let b = Bytes32(data) else { throw NostrError(.invalidEntity, "an npub holds 32 bytes") }
            self = .npub(PublicKey(b))
        case "note":
            guard let b = Bytes32(data) else { throw NostrError(.invalidEntity, "a note holds 32 bytes") }
            self = .note(EventID(b))
        case "nprofile":
            let tlv = try TLV(data)
            guard let special = tlv.special, let key = Bytes32(special) else {
                throw NostrError(.invalidEntity, "an nprofile needs a 32-byte public key")
            }
            self = .nprofile(pubkey: PublicKey(key), relays: tlv.relays)
        case "nevent":
            let tlv = try TLV(data)
            guard let special = tlv.special, let id = Bytes32(special) else {
                throw NostrError(.invalidEntity, "an nevent needs a 32-byte event id")
            }
            self = .nevent(id: EventID(id), relays: tlv.relays, author: tlv.author, kind: tlv.kind)
        case "naddr":
            let tlv = try TLV(data)
            guard let special = tlv.special, let identifier = String(validating: special, as: UTF8.self) else {
                throw NostrError(.invalidEntity, "an naddr needs a UTF-8 identifier")
            }
            guard let author = tlv.author, let kind = tlv.kind else {
                throw NostrError(.invalidEntity, "an naddr needs an author and a kind")
            }
            self = .naddr(identifier: identifier, pubkey: author, kind: kind, relays: tlv.relays)
        case "nsec":
            throw NostrError(.invalidEntity, "nsec is a secret key: decode it with SecretKey(nsec:)")
        default:
            throw NostrError(.invalidEntity, "unknown NIP-19 prefix \"\(hrp.prefix(16))\"")
        }
    }

    /// The bech32 form.
    public var bech32: String {
        switch self {
        case .npub(let key):
            return Bech32.encode(hrp: "npub", data: key.bytes32.bytes)
        case .note(let id):
            return Bech32.encode(hrp: "note", data: id.bytes32.bytes)
        case .nprofile(let key, let relays):
            var out = TLV.record(0, key.bytes32.bytes)
            for r in relays { out += TLV.record(1, Array(r.utf8)) }
            return Bech32.encode(hrp: "nprofile", data: out)
        case .nevent(let id, let relays, let author, let kind):
            var out = TLV.record(0, id.bytes32.bytes)
            for r in relays { out += TLV.record(1, Array(r.utf8)) }
            if let author { out += TLV.record(2, author.bytes32.bytes) }
            if let kind { out += TLV.record(3, TLV.bigEndian(UInt32(kind.rawValue))) }
            return Bech32.encode(hrp: "nevent", data: out)
        case .naddr(let identifier, let pubkey, let kind, let relays):
            var out = TLV.record(0, Array(identifier.utf8))
            for r in relays { out += TLV.record(1, Array(r.utf8)) }
            out += TLV.record(2, pubkey.bytes32.bytes)
            out += TLV.record(3, TLV.bigEndian(UInt32(kind.rawValue)))
            return Bech32.encode(hrp: "naddr", data: out)
        }
    }

    /// The JSON description `switchboard decode` prints.
    public var jsonValue: JSONValue {
        func relays(_ r: [String]) -> JSONValue { .array(r.map(JSONValue.string)) }
        switch self {
        case .npub(let key): return .object(["type": .string("npub"), "pubkey": .string(key.hex)])
        case .note(let id): return .object(["type": .string("note"), "id": .string(id.hex)])
        case .nprofile(let key, let r):
            return .object(["type": .string("nprofile"), "pubkey": .string(key.hex), "relays": relays(r)])
        case .nevent(let id, let r, let author, let kind):
            var o: [String: JSONValue] = ["type": .string("nevent"), "id": .string(id.hex), "relays": relays(r)]
            if let author { o["author"] = .string(author.hex) }
            if let kind { o["kind"] = .number(String(kind.rawValue)) }
            return .object(o)
        case .naddr(let identifier, let key, let kind, let r):
            return .object([
                "type": .string("naddr"), "identifier": .string(identifier), "pubkey": .string(key.hex),
                "kind": .number(String(kind.rawValue)), "relays": relays(r),
            ])
        }
    }

    /// The TLV records of nprofile, nevent and naddr. Unknown types are ignored, as NIP-19 asks.
    struct TLV {
        var special: [UInt8]?
        var relays: [String] = []
        var author: PublicKey?
        var kind: Kind?

        init(_ data: [UInt8]) throws {
            var i = 0
            while i < data.count {
                guard i + 2 <= data.count else { throw NostrError(.invalidEntity, "truncated TLV record") }
                let type = data[i]
                let length = Int(data[i + 1])
                i += 2
                guard i + length <= data.count else { throw NostrError(.invalidEntity, "TLV record longer than the data") }
                let value = Array(data[i..<(i + length)])
                i += length
                switch type {
                case 0:
                    if special == nil { special = value }
                case 1:
                    guard relays.count < NIP19Entity.maximumRelays else {
                        throw NostrError(.tooLarge, "more than \(NIP19Entity.maximumRelays) relay hints")
                    }
                    guard let relay = String(validating: value, as: UTF8.self) else {
                        throw NostrError(.invalidEntity, "a relay hint is not UTF-8")
                    }
                    relays.append(relay)
                case 2:
                    guard let b = Bytes32(value) else { throw NostrError(.invalidEntity, "an author is 32 bytes") }
                    if author == nil { author = PublicKey(b) }
                case 3:
                    guard value.count == 4 else { throw NostrError(.invalidEntity, "a kind is 4 bytes") }
                    let n = UInt32(value[0]) << 24 | UInt32(value[1]) << 16 | UInt32(value[2]) << 8 | UInt32(value[3])
                    guard let k = UInt16(exactly: n) else { throw NostrError(.invalidEntity, "kind \(n) is above 65535") }
                    if kind == nil { kind = Kind(k) }
                default:
                    continue
                }
            }
        }

        static func record(_ type: UInt8, _ value: [UInt8]) -> [UInt8] {
            // A value longer than 255 bytes cannot be expressed; it is truncated (only a relay URL or an
            // naddr identifier could be that long).
            let v = value.prefix(255)
            return [type, UInt8(v.count)] + v
        }

        static func bigEndian(_ n: UInt32) -> [UInt8] {
            [UInt8(truncatingIfNeeded: n >> 24), UInt8(truncatingIfNeeded: n >> 16), UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n)]
        }
    }
}

/// NIP-21 `nostr:` URIs.
public enum NostrURI {
    /// Parses `nostr:<entity>`. `nsec` is refused, as NIP-21 requires.
    public static func parse(_ uri: String) throws -> NIP19Entity {
        guard uri.lowercased().hasPrefix("nostr:") else {
            throw NostrError(.invalidEntity, "a NIP-21 URI starts with \"nostr:\"")
        }
        return try NIP19Entity(bech32: String(uri.dropFirst(6)))
    }

    /// `nostr:` followed by the entity's bech32 form.
    public static func uri(for entity: NIP19Entity) -> String { "nostr:" + entity.bech32 }
}
