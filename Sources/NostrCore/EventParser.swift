import NostrCrypto

// The direct path for the messages a service and a relay read most: `["EVENT", {…}]` and
// `["EVENT", "<sub>", {…}]`. The event's fields are decoded as they are read (hex straight into bytes, no
// `JSONValue` tree, no dictionary), which is most of what reading an event costs besides its signature check.
//
// The direct path only ever answers "here is the value" or "not mine": anything it does not read plainly (an
// escape in a key or a hex field, a missing or repeated member, a wrong type, any syntax error) sends the
// message to the general parser, which accepts or rejects it and words the error. So the direct path cannot
// change what is accepted or how a rejection reads; the differential test and the fuzz target hold it to that.

extension JSON {
    /// `["EVENT", {…}]`, read directly; `nil` for anything else or anything unusual.
    static func directClientEvent(_ text: String) -> Event? {
        reading(text) { parser in
            guard parser.enterEventMessage() else { return nil }
            return parser.finishMessage(parser.directEvent(depth: 1))
        }
    }

    /// `["EVENT", "<subscription id>", {…}]`, read directly; `nil` for anything else or anything unusual.
    static func directRelayEvent(_ text: String) -> (subscriptionID: String, event: Event)? {
        reading(text) { parser in
            guard parser.enterEventMessage(), let subscriptionID = parser.directString(), parser.comma() else { return nil }
            return parser.finishMessage(parser.directEvent(depth: 1)).map { (subscriptionID, $0) }
        }
    }

    /// An event object on its own, read directly; `nil` for anything unusual.
    static func directEvent(_ text: String) -> Event? {
        reading(text) { parser in
            parser.skipWhitespace()
            guard let event = parser.directEvent(depth: 0) else { return nil }
            parser.skipWhitespace()
            return parser.index == parser.bytes.count ? event : nil
        }
    }

    /// Runs `body` with a parser over `text`'s UTF-8.
    private static func reading<T>(_ text: String, _ body: (inout Parser) -> T?) -> T? {
        var copy = text
        return copy.withUTF8 { bytes in
            var parser = Parser(bytes: bytes)
            return body(&parser)
        }
    }
}

extension JSON.Parser {
    private static let quote = UInt8(ascii: "\"")

    /// Reads `[ "EVENT" ,` and stops before the next element.
    mutating func enterEventMessage() -> Bool {
        skipWhitespace()
        guard take(UInt8(ascii: "[")) else { return false }
        skipWhitespace()
        guard let verb = plainString(), verb.elementsEqual("EVENT".utf8) else { return false }
        return comma()
    }

    /// Whitespace, `,`, whitespace.
    mutating func comma() -> Bool {
        skipWhitespace()
        guard take(UInt8(ascii: ",")) else { return false }
        skipWhitespace()
        return true
    }

    /// `value` if the message ends after it with `]` (and whitespace).
    mutating func finishMessage<T>(_ value: T?) -> T? {
        guard let value else { return nil }
        skipWhitespace()
        guard take(UInt8(ascii: "]")) else { return nil }
        skipWhitespace()
        return index == bytes.count ? value : nil
    }

    mutating func take(_ byte: UInt8) -> Bool {
        guard index < bytes.count, bytes[index] == byte else { return false }
        index += 1
        return true
    }

    /// A string's bytes as they stand, when it has no escape and no control character; `nil` otherwise.
    mutating func plainString() -> UnsafeBufferPointer<UInt8>? {
        guard index < bytes.count, bytes[index] == Self.quote else { return nil }
        var end = index + 1
        while end < bytes.count {
            let c = bytes[end]
            if c == Self.quote {
                let contents = UnsafeBufferPointer(rebasing: bytes[(index + 1)..<end])
                index = end + 1
                return contents
            }
            if c == UInt8(ascii: "\\") || c < 0x20 { return nil }
            end += 1
        }
        return nil
    }

    /// Any string, through the general string reader; `nil` where that reader would throw.
    mutating func directString() -> String? {
        guard index < bytes.count, bytes[index] == Self.quote else { return nil }
        return try? parseString()
    }

    /// An integer member (the general reader's number grammar, then `Int64` as ``JSONValue/int64`` reads it).
    mutating func directInteger() -> Int64? {
        guard index < bytes.count, bytes[index] == UInt8(ascii: "-") || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]),
            let text = try? parseNumber()
        else { return nil }
        return Int64(text)
    }

    /// The members NIP-01 defines, one bit each, to refuse a repeated member as the general reader does.
    private enum Member: UInt8 {
        case id = 1, pubkey = 2, createdAt = 4, kind = 8, tags = 16, content = 32, sig = 64

        init?(_ name: UnsafeBufferPointer<UInt8>) {
            switch name.count {
            case 2 where name.elementsEqual("id".utf8): self = .id
            case 3 where name.elementsEqual("sig".utf8): self = .sig
            case 4 where name.elementsEqual("kind".utf8): self = .kind
            case 4 where name.elementsEqual("tags".utf8): self = .tags
            case 6 where name.elementsEqual("pubkey".utf8): self = .pubkey
            case 7 where name.elementsEqual("content".utf8): self = .content
            case 10 where name.elementsEqual("created_at".utf8): self = .createdAt
            default: return nil
            }
        }
    }

    /// An event object at nesting `depth`, with the same acceptance rules as `Event(jsonValue:)` over the
    /// general reader; `nil` for anything else.
    mutating func directEvent(depth: Int) -> Event? {
        // The deepest value read here is a tag's string, three levels down.
        guard depth + 3 < JSON.maximumDepth, take(UInt8(ascii: "{")) else { return nil }
        var seen: UInt8 = 0
        var otherNames = Set<String>()
        var id: Bytes32?
        var pubkey: Bytes32?
        var sig: SchnorrSignature?
        var createdAt: Int64?
        var kind: UInt16?
        var tags: [Tag]?
        var content: String?
        skipWhitespace()
        guard !take(UInt8(ascii: "}")) else { return nil }
        while true {
            skipWhitespace()
            guard let name = plainString() else { return nil }
            skipWhitespace()
            guard take(UInt8(ascii: ":")) else { return nil }
            skipWhitespace()
            if let member = Member(name) {
                guard seen & member.rawValue == 0 else { return nil }
                seen |= member.rawValue
                switch member {
                case .id:
                    guard let hex = plainString(), let value = Bytes32(hexUTF8: hex) else { return nil }
                    id = value
                case .pubkey:
                    guard let hex = plainString(), let value = Bytes32(hexUTF8: hex) else { return nil }
                    pubkey = value
                case .sig:
                    guard let hex = plainString(), let value = SchnorrSignature(hexUTF8: hex) else { return nil }
                    sig = value
                case .createdAt:
                    guard let value = directInteger(), value >= 0 else { return nil }
                    createdAt = value
                case .kind:
                    guard let value = directInteger().flatMap(UInt16.init(exactly:)) else { return nil }
                    kind = value
                case .content:
                    guard let value = directString() else { return nil }
                    content = value
                case .tags:
                    guard let value = directTags() else { return nil }
                    tags = value
                }
            } else {
                // A member NIP-01 does not define: read (and so checked) like any JSON value, then ignored.
                guard let other = String(validating: name, as: UTF8.self), otherNames.insert(other).inserted,
                    (try? parseValue(depth: depth + 1)) != nil
                else { return nil }
            }
            skipWhitespace()
            if take(UInt8(ascii: ",")) { continue }
            guard take(UInt8(ascii: "}")) else { return nil }
            break
        }
        guard let id, let pubkey, let sig, let createdAt, let kind, let tags, let content else { return nil }
        return Event(
            id: EventID(id), pubkey: PublicKey(pubkey), createdAt: createdAt, kind: Kind(kind), tags: tags,
            content: content, sig: sig)
    }

    /// `tags`: an array of arrays of strings.
    mutating func directTags() -> [Tag]? {
        guard take(UInt8(ascii: "[")) else { return nil }
        var tags: [Tag] = []
        skipWhitespace()
        if take(UInt8(ascii: "]")) { return tags }
        while true {
            skipWhitespace()
            guard take(UInt8(ascii: "[")) else { return nil }
            var fields: [String] = []
            skipWhitespace()
            if !take(UInt8(ascii: "]")) {
                while true {
                    skipWhitespace()
                    guard let field = directString() else { return nil }
                    fields.append(field)
                    skipWhitespace()
                    if take(UInt8(ascii: ",")) { continue }
                    guard take(UInt8(ascii: "]")) else { return nil }
                    break
                }
            }
            tags.append(Tag(fields))
            skipWhitespace()
            if take(UInt8(ascii: ",")) { continue }
            guard take(UInt8(ascii: "]")) else { return nil }
            return tags
        }
    }
}
