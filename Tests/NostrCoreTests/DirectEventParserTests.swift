import NostrCrypto
import Testing

@testable import NostrCore

/// The direct reader for `EVENT` messages must take the plain messages and never change what the general reader
/// accepts or rejects: whatever it does not read plainly, it leaves to the general reader.
@Suite("The direct EVENT reader")
struct DirectEventParserTests {
    static let key = SecretKey.generate()
    static let events: [Event] = [
        EventTemplate(kind: 1, content: "hi", tags: [["p", key.publicKey.hex], ["t", "nostr"]], createdAt: 1000).sign(with: key),
        EventTemplate(kind: 25_910, content: "", tags: [], createdAt: 0).sign(with: key),
        EventTemplate(kind: 65_535, content: "quote \" backslash \\ newline \n tab \t nul \u{0} del \u{7f}", tags: [[]], createdAt: 1_700_000_000)
            .sign(with: key),
        EventTemplate(kind: 7, content: "🦄 ünïcödé \u{2028}", tags: [["e", "🦄", "wss://r", ""], ["a"]], createdAt: 42).sign(with: key),
    ]

    /// What the general reader makes of `json` (nil when it throws).
    static func general(client json: String) -> ClientMessage? { try? ClientMessage(jsonValue: JSON.parse(json)) }
    static func general(relay json: String) -> RelayMessage? { try? RelayMessage(jsonValue: JSON.parse(json)) }
    static func general(event json: String) -> Event? { try? Event(jsonValue: JSON.parse(json)) }

    @Test("plain EVENT messages are read directly, to the same values as the general reader's")
    func plainMessages() throws {
        for event in Self.events {
            let client = ClientMessage.event(event).json
            let relay = RelayMessage.event(subscriptionID: "sub ✓", event: event).json
            #expect(JSON.directClientEvent(client) == event)
            #expect(Self.general(client: client) == .event(event))
            #expect(JSON.directRelayEvent(relay)?.event == event)
            #expect(JSON.directRelayEvent(relay)?.subscriptionID == "sub ✓")
            #expect(Self.general(relay: relay) == .event(subscriptionID: "sub ✓", event: event))
            #expect(JSON.directEvent(event.json) == event)
            #expect(try Event(json: event.json) == event)
            // Whitespace between the tokens and members in another order are still plain.
            let spaced = " [ \"EVENT\" ,\n" + event.json.replacing(",\"", with: " ,\t\"") + " ] "
            #expect(JSON.directClientEvent(spaced) == event)
        }
    }

    @Test("unusual messages are left to the general reader, which decides as before")
    func unusualMessages() throws {
        let event = Self.events[0]
        let json = ClientMessage.event(event).json
        let cases: [(String, String)] = [
            ("\"id\":", "\"\\u0069d\":"),  // escaped member name: valid, read by the general reader
            ("\"kind\":1", "\"kind\":1,\"kind\":1"),  // repeated member: refused
            ("\"kind\":1", "\"kind\":1.0"),  // not an integer literal: refused
            ("\"kind\":1", "\"kind\":70000"),  // out of range: refused
            ("\"created_at\":1000", "\"created_at\":-1"),  // negative: refused
            ("\"created_at\":1000", "\"created_at\":01000"),  // leading zero: not JSON
            ("\"content\":\"hi\"", "\"content\":\"hi\",\"x\":{\"y\":[1,2,{\"z\":null}]}"),  // unknown member: ignored
            ("\"content\":\"hi\"", "\"content\":\"hi\",\"x\":1,\"x\":2"),  // repeated unknown member: refused
            ("\"content\":\"hi\"", "\"content\":\"h\\u0069\""),  // escape in content: read by either
            ("[\"t\",\"nostr\"]", "[\"t\",5]"),  // a tag field that is not a string: refused
            ("\"tags\":[", "\"tags\":{\"a\":["),  // not an array: refused
        ]
        for (from, to) in cases {
            let changed = json.replacingFirst(from, with: to)
            #expect(changed != json, "replacement \(from) did not apply")
            let parsed = try? ClientMessage(json: changed)
            #expect(parsed == Self.general(client: changed), "\(to)")
        }
        // Two that the general reader accepts and the direct one leaves to it.
        #expect(JSON.directClientEvent(json.replacingFirst("\"id\":", with: "\"\\u0069d\":")) == nil)
        #expect(try ClientMessage(json: json.replacingFirst("\"id\":", with: "\"\\u0069d\":")) == .event(event))
        // Many members NIP-01 does not define: read and ignored; one repeated among them is refused.
        let others = (0..<5_000).map { "\"x\($0)\":\($0)" }.joined(separator: ",")
        let padded = json.replacingFirst("\"content\":", with: others + ",\"content\":")
        #expect(JSON.directClientEvent(padded) == event)
        let repeated = json.replacingFirst("\"content\":", with: others + ",\"x7\":0,\"content\":")
        #expect(JSON.directClientEvent(repeated) == nil)
        #expect(throws: NostrError.self) { try ClientMessage(json: repeated) }
        // Shapes around the event.
        for message in ["[\"EVENT\"]", "[\"EVENT\",\(event.json),1]", "[\"EVENT\",\(event.json)] x", "[\"EVEN\",\(event.json)]"] {
            #expect(JSON.directClientEvent(message) == nil)
            #expect(throws: NostrError.self) { try ClientMessage(json: message) }
        }
    }

    @Test("under 20,000 random mutations the direct reader never accepts what the general one refuses, nor reads differently")
    func mutations() async {
        var random = SplitMix64(seed: 0x5eed)
        let alphabet = Array("{}[],:\"\\ 0123456789abcdefEVNTu-+.e\u{1}".utf8) + [0xC3, 0xA9, 0xFF]
        let originals = Self.events.flatMap { event in
            [ClientMessage.event(event).json, RelayMessage.event(subscriptionID: "s", event: event).json, event.json]
        }
        var directlyRead = 0
        for round in 0..<20_000 {
            // Seconds of work without a suspension would hold one of the few threads every other test's tasks
            // run on (as many as cores), and their timers would be late by as much.
            if round % 250 == 0 { await Task.yield() }
            var bytes = Array(originals[round % originals.count].utf8)
            for _ in 0...(random.next() % 3) {
                let at = Int(random.next() % UInt64(bytes.count))
                let byte = alphabet[Int(random.next() % UInt64(alphabet.count))]
                switch random.next() % 3 {
                case 0: bytes.remove(at: at)
                case 1: bytes.insert(byte, at: at)
                default: bytes[at] = byte
                }
                if bytes.isEmpty { bytes = [UInt8(ascii: "[")] }
            }
            let text = String(decoding: bytes, as: UTF8.self)
            if let event = JSON.directClientEvent(text) {
                directlyRead += 1
                #expect(Self.general(client: text) == .event(event), "\(text)")
            }
            if let (subscriptionID, event) = JSON.directRelayEvent(text) {
                directlyRead += 1
                #expect(Self.general(relay: text) == .event(subscriptionID: subscriptionID, event: event), "\(text)")
            }
            if let event = JSON.directEvent(text) {
                directlyRead += 1
                #expect(Self.general(event: text) == event, "\(text)")
            }
            #expect((try? ClientMessage(json: text)) == Self.general(client: text), "\(text)")
            #expect((try? RelayMessage(json: text)) == Self.general(relay: text), "\(text)")
            #expect((try? Event(json: text)) == Self.general(event: text), "\(text)")
        }
        // Mutations inside the content or a tag keep a message plain: the comparison above did run on those.
        #expect(directlyRead > 1_000)
    }
}

/// A small seeded generator, so a failing mutation run can be repeated.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
