import Foundation
public import NostrCore
public import NostrCrypto
public import NostrRelay

/// NIP-46 messages travel as kind 24133 events, NIP-44 (or, from old clients, NIP-04) encrypted.
public enum NIP46 {
    public static let kind: Kind = 24_133

    /// A request: `{"id": …, "method": …, "params": [strings]}`.
    public struct Request: Sendable, Hashable {
        public var id: String
        public var method: String
        public var params: [String]

        public init(id: String, method: String, params: [String]) {
            self.id = id
            self.method = method
            self.params = params
        }

        /// Parses a request; the id is kept when it can be read, so that even a malformed request can be
        /// answered (``id(in:)``).
        public init(json: String) throws {
            guard case .object(let object) = try JSON.parse(json) else { throw BunkerError("a request is a JSON object") }
            guard let id = object["id"]?.string else { throw BunkerError("the request has no string \"id\"") }
            guard let method = object["method"]?.string else { throw BunkerError("the request has no string \"method\"") }
            var params: [String] = []
            if let value = object["params"], value != .null {
                guard let array = value.array else { throw BunkerError("\"params\" must be an array of strings") }
                params = try array.map { item in
                    guard let text = item.string else { throw BunkerError("\"params\" must be an array of strings") }
                    return text
                }
            }
            self.init(id: id, method: method, params: params)
        }

        /// The `id` of a request that may be malformed otherwise.
        public static func id(in json: String) -> String? {
            guard case .object(let object) = try? JSON.parse(json) else { return nil }
            return object["id"]?.string
        }

        public var json: String {
            var writer = JSONWriter()
            writer.raw("{\"id\":")
            writer.string(id)
            writer.raw(",\"method\":")
            writer.string(method)
            writer.raw(",\"params\":")
            writer.stringArray(params)
            writer.raw("}")
            return writer.text
        }
    }

    /// A response: `{"id": …, "result": …}` or `{"id": …, "error": …}` (and both for an auth challenge).
    public struct Response: Sendable, Hashable {
        public var id: String
        public var result: String?
        public var error: String?

        public init(id: String, result: String? = nil, error: String? = nil) {
            self.id = id
            self.result = result
            self.error = error
        }

        public init(json: String) throws {
            guard case .object(let object) = try JSON.parse(json) else { throw BunkerError("a response is a JSON object") }
            guard let id = object["id"]?.string else { throw BunkerError("the response has no string \"id\"") }
            self.init(id: id, result: object["result"]?.string, error: object["error"]?.string)
        }

        public var json: String {
            var writer = JSONWriter()
            writer.raw("{\"id\":")
            writer.string(id)
            if let result {
                writer.raw(",\"result\":")
                writer.string(result)
            }
            if let error {
                writer.raw(",\"error\":")
                writer.string(error)
            }
            writer.raw("}")
            return writer.text
        }
    }

    /// The methods every session may call; the others need a permission.
    public static let sessionMethods: Set<String> = ["connect", "ping", "get_public_key", "switch_relays", "logout"]
    /// The methods that need a permission (`sign_event` also per kind, as `sign_event:<kind>`).
    public static let grantableMethods = ["sign_event", "nip04_encrypt", "nip04_decrypt", "nip44_encrypt", "nip44_decrypt"]

    /// Kinds a blanket `sign_event` grant does not cover by default, because one signature replaces or erases
    /// what the user has: the profile (0), the follow list (3), deletion requests (5), a request to vanish
    /// (62, NIP-62: relays delete everything of the key) and the relay list (10002). Signing them takes
    /// `sign_event:<kind>` (granted, or approved on the auth page).
    public static let sensitiveKinds: Set<Kind> = [.metadata, .contacts, .deletion, Kind(rawValue: 62), .relayList]
}

/// Permissions of one client, in NIP-46's `method[:param]` form: `sign_event` (any kind), `sign_event:1`,
/// `nip44_encrypt`, … The session methods (``NIP46/sessionMethods``) need none.
public struct Permissions: Sendable, Hashable, Codable, CustomStringConvertible {
    public private(set) var entries: Set<String>

    /// Everything there is to grant.
    public static let all = Permissions(entries: Set(NIP46.grantableMethods))

    public init(entries: Set<String>) {
        self.entries = entries
    }

    /// Parses a comma-separated list; entries that are not grantable methods (or `sign_event:<kind>`) are
    /// refused.
    public init(parsing text: String) throws {
        var entries = Set<String>()
        for part in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !part.isEmpty {
            if NIP46.grantableMethods.contains(part) {
                entries.insert(part)
            } else if part.hasPrefix("sign_event:"), let kind = UInt16(part.dropFirst("sign_event:".count)) {
                entries.insert("sign_event:\(kind)")
            } else if !NIP46.sessionMethods.contains(part) {
                throw BunkerError("unknown permission \"\(part)\" (expected one of \(NIP46.grantableMethods.joined(separator: ", ")) or sign_event:<kind>)")
            }
        }
        self.entries = entries
    }

    /// Parses a client's requested list leniently: what is not understood is left out.
    public init(requested text: String) {
        self.entries = Set(text.split(separator: ",").compactMap { part in (try? Permissions(parsing: String(part)))?.entries.first })
    }

    /// The permission `method` (with `kind` for `sign_event`) needs, or nil if it is allowed. A blanket
    /// `sign_event` covers every kind but `sensitiveKinds`, which need `sign_event:<kind>` of their own.
    public func missing(_ method: String, kind: Kind? = nil, sensitiveKinds: Set<Kind> = NIP46.sensitiveKinds) -> String? {
        if NIP46.sessionMethods.contains(method) { return nil }
        if method == "sign_event", let kind {
            if entries.contains("sign_event:\(kind.rawValue)") { return nil }
            return entries.contains(method) && !sensitiveKinds.contains(kind) ? nil : "sign_event:\(kind.rawValue)"
        }
        return entries.contains(method) ? nil : method
    }

    public mutating func grant(_ entry: String) { entries.insert(entry) }

    public var description: String { entries.sorted().joined(separator: ",") }

    public init(from decoder: any Decoder) throws {
        entries = Set(try decoder.singleValueContainer().decode([String].self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(entries.sorted())
    }
}

/// `bunker://<remote-signer pubkey>?relay=…&relay=…&secret=…`
public struct BunkerURI: Sendable, Hashable, CustomStringConvertible {
    public var signer: PublicKey
    public var relays: [RelayURL]
    public var secret: String?

    public init(signer: PublicKey, relays: [RelayURL], secret: String?) {
        self.signer = signer
        self.relays = relays
        self.secret = secret
    }

    public init(_ text: String) throws {
        guard let components = URLComponents(string: text), components.scheme == "bunker", let host = components.host,
            let signer = try? PublicKey(hex: host)
        else { throw BunkerError("expected bunker://<64 hex characters>?relay=…") }
        let items = components.queryItems ?? []
        let relays = try items.filter { $0.name == "relay" }.compactMap(\.value).map { try RelayURL($0) }
        guard !relays.isEmpty else { throw BunkerError("the bunker URI names no relay") }
        self.init(signer: signer, relays: relays, secret: items.first { $0.name == "secret" }?.value)
    }

    public var description: String {
        var components = URLComponents()
        components.scheme = "bunker"
        components.host = signer.hex
        components.queryItems = relays.map { URLQueryItem(name: "relay", value: $0.string) }
            + (secret.map { [URLQueryItem(name: "secret", value: $0)] } ?? [])
        // URLComponents leaves ':' and '/' in query values; encode them as clients expect.
        components.percentEncodedQuery = components.percentEncodedQuery?
            .replacingOccurrences(of: ":", with: "%3A").replacingOccurrences(of: "/", with: "%2F")
        return components.string ?? "bunker://\(signer.hex)"
    }
}
