public import NostrCrypto

/// A NIP-01 subscription filter. All present conditions must hold; a list condition holds when any of
/// its values matches.
public struct Filter: Hashable, Sendable, CustomStringConvertible {
    public var ids: Set<EventID>?
    public var authors: Set<PublicKey>?
    public var kinds: Set<Kind>?
    /// Tag conditions by single-letter name: `["e": [...]]` for `#e`.
    public var tags: [String: Set<String>]
    public var since: Timestamp?
    public var until: Timestamp?
    public var limit: Int?

    public init(
        ids: Set<EventID>? = nil, authors: Set<PublicKey>? = nil, kinds: Set<Kind>? = nil,
        tags: [String: Set<String>] = [:], since: Timestamp? = nil, until: Timestamp? = nil, limit: Int? = nil
    ) {
        self.ids = ids
        self.authors = authors
        self.kinds = kinds
        self.tags = tags
        self.since = since
        self.until = until
        self.limit = limit
    }

    /// Whether `event` satisfies every condition (`limit` is not a condition).
    public func matches(_ event: Event) -> Bool {
        if let ids, !ids.contains(event.id) { return false }
        if let authors, !authors.contains(event.pubkey) { return false }
        if let kinds, !kinds.contains(event.kind) { return false }
        if let since, event.createdAt < since { return false }
        if let until, event.createdAt > until { return false }
        for (name, values) in tags {
            let hit = event.tags.contains { tag in
                tag.fields.count >= 2 && Self.sameBytes(tag.fields[0], name) && Self.contains(values, exactly: tag.fields[1])
            }
            if !hit { return false }
        }
        return true
    }

    /// Tag names and values compare as bytes, as relays' databases compare them: `String`'s `==` would also
    /// take a canonically equivalent spelling (é composed or decomposed) for the same value.
    static func sameBytes(_ a: String, _ b: String) -> Bool {
        a.utf8.elementsEqual(b.utf8)
    }

    /// Whether `values` holds `value` byte for byte. A set keeps one spelling per canonical equivalence class,
    /// so the member its hash finds is the only candidate — and a filter that lists two spellings of one text
    /// (é composed and decomposed) keeps only one of them, matching events with that one only.
    static func contains(_ values: Set<String>, exactly value: String) -> Bool {
        guard let index = values.firstIndex(of: value) else { return false }
        return sameBytes(values[index], value)
    }

    /// Reads a filter object. Unknown members are refused (a relay that ignored one would match more than
    /// the client asked for); `ids` and `authors` must be exact 64-character hex as NIP-01 now requires.
    public init(jsonValue: JSONValue) throws {
        guard case .object(let object) = jsonValue else { throw NostrError(.invalidShape, "a filter is a JSON object") }
        self.init()
        for (key, value) in object {
            switch key {
            case "ids":
                ids = Set(try Filter.stringList(value, key).map { hex in
                    guard let b = Bytes32(hex: hex) else { throw NostrError(.invalidShape, "filter \"ids\" must hold 64-character hex ids") }
                    return EventID(b)
                })
            case "authors":
                authors = Set(try Filter.stringList(value, key).map { hex in
                    guard let b = Bytes32(hex: hex) else {
                        throw NostrError(.invalidShape, "filter \"authors\" must hold 64-character hex public keys")
                    }
                    return PublicKey(b)
                })
            case "kinds":
                guard case .array(let array) = value else { throw NostrError(.invalidShape, "filter \"kinds\" must be an array") }
                kinds = Set(try array.map { element in
                    guard let n = element.int64, let k = UInt16(exactly: n) else {
                        throw NostrError(.invalidShape, "filter \"kinds\" must hold integers from 0 to 65535")
                    }
                    return Kind(k)
                })
            case "since", "until":
                guard let t = value.int64, t >= 0 else {
                    throw NostrError(.invalidShape, "filter \"\(key)\" must be a non-negative integer")
                }
                if key == "since" { since = t } else { until = t }
            case "limit":
                guard let n = value.int64, n >= 0, let l = Int(exactly: n) else {
                    throw NostrError(.invalidShape, "filter \"limit\" must be a non-negative integer")
                }
                limit = l
            default:
                let scalars = key.unicodeScalars
                guard scalars.count == 2, scalars.first == "#", let letter = scalars.last,
                    ("a"..."z").contains(letter) || ("A"..."Z").contains(letter)
                else {
                    throw NostrError(.invalidShape, "unsupported filter field \"\(key.prefix(32))\"")
                }
                tags[String(letter)] = Set(try Filter.stringList(value, key))
            }
        }
    }

    static func stringList(_ value: JSONValue, _ key: String) throws -> [String] {
        guard case .array(let array) = value else { throw NostrError(.invalidShape, "filter \"\(key)\" must be an array") }
        return try array.map { element in
            guard case .string(let s) = element else {
                throw NostrError(.invalidShape, "filter \"\(key)\" must hold strings")
            }
            return s
        }
    }

    /// Writes the filter object (lists sorted, so equal filters serialise equally).
    public func write(to writer: inout JSONWriter) {
        writer.raw("{")
        var first = true
        func key(_ name: String) {
            if !first { writer.raw(",") }
            first = false
            writer.string(name)
            writer.raw(":")
        }
        if let ids {
            key("ids")
            writer.stringArray(ids.map(\.hex).sorted())
        }
        if let authors {
            key("authors")
            writer.stringArray(authors.map(\.hex).sorted())
        }
        if let kinds {
            key("kinds")
            writer.raw("[")
            for (i, k) in kinds.sorted().enumerated() {
                if i > 0 { writer.raw(",") }
                writer.integer(k.rawValue)
            }
            writer.raw("]")
        }
        for name in tags.keys.sorted() {
            key("#" + name)
            writer.stringArray((tags[name] ?? []).sorted())
        }
        if let since {
            key("since")
            writer.integer(since)
        }
        if let until {
            key("until")
            writer.integer(until)
        }
        if let limit {
            key("limit")
            writer.integer(limit)
        }
        writer.raw("}")
    }

    public var json: String {
        var writer = JSONWriter()
        write(to: &writer)
        return writer.text
    }

    public var description: String { json }
}
