import NostrCrypto
import Testing
@testable import NostrCore

@Suite("Filters and the message codec")
struct MessageTests {
    static let key = SecretKey.generate()
    static let event = EventTemplate(kind: 1, content: "hi", tags: [["p", "abc"], ["t", "nostr"]], createdAt: 1000).sign(with: key)

    @Test("filter matching")
    func matching() throws {
        let e = Self.event
        #expect(Filter().matches(e))
        #expect(Filter(ids: [e.id]).matches(e))
        #expect(!Filter(ids: [EventID(.zero)]).matches(e))
        #expect(Filter(authors: [e.pubkey], kinds: [1]).matches(e))
        #expect(!Filter(kinds: [2]).matches(e))
        #expect(Filter(tags: ["p": ["abc", "zzz"]]).matches(e))
        #expect(!Filter(tags: ["p": ["zzz"]]).matches(e))
        #expect(!Filter(tags: ["e": ["abc"]]).matches(e))
        #expect(Filter(tags: ["p": ["abc"], "t": ["nostr"]]).matches(e))
        #expect(!Filter(tags: ["p": ["abc"], "t": ["x"]]).matches(e))
        #expect(Filter(since: 1000, until: 1000).matches(e))
        #expect(!Filter(since: 1001).matches(e))
        #expect(!Filter(until: 999).matches(e))
        #expect(Filter(limit: 0).matches(e))
    }

    @Test("tag values match byte for byte, not by Unicode canonical equivalence (as relays' databases compare)")
    func tagValuesAreBytes() {
        let composed = "caf\u{E9}", decomposed = "cafe\u{301}"
        #expect(composed == decomposed, "Swift's String == takes them as equal")
        let e = EventTemplate(kind: 1, content: "", tags: [["t", composed]], createdAt: 1000).sign(with: Self.key)
        #expect(Filter(tags: ["t": [composed]]).matches(e))
        #expect(!Filter(tags: ["t": [decomposed]]).matches(e))
        #expect(!Filter(tags: ["t": [decomposed, "other"]]).matches(e))
    }

    @Test("filters parse strictly and round-trip")
    func filterCodec() throws {
        let f = try Filter(jsonValue: JSON.parse("{\"kinds\":[1,2],\"#p\":[\"abc\"],\"since\":5,\"limit\":10,\"authors\":[\"\(Self.key.publicKey.hex)\"]}"))
        #expect(f.kinds == [1, 2])
        #expect(f.tags == ["p": ["abc"]])
        #expect(f.authors == [Self.key.publicKey])
        #expect(try Filter(jsonValue: JSON.parse(f.json)) == f)
        for bad in ["{\"kinds\":[70000]}", "{\"ids\":[\"abc\"]}", "{\"since\":\"1\"}", "{\"search\":\"x\"}", "{\"#pp\":[\"x\"]}",
                    "{\"#p\":[1]}", "{\"limit\":-1}", "[]"] {
            #expect(throws: NostrError.self, "\(bad)") { try Filter(jsonValue: JSON.parse(bad)) }
        }
    }

    @Test("client messages round-trip")
    func clientMessages() throws {
        let messages: [ClientMessage] = [
            .event(Self.event), .request(subscriptionID: "sub", filters: [Filter(kinds: [1]), Filter(limit: 5)]),
            .close(subscriptionID: "sub"), .auth(Self.event), .count(subscriptionID: "c", filters: [Filter()]),
        ]
        for m in messages {
            #expect(try ClientMessage(json: m.json) == m)
        }
    }

    @Test("relay messages round-trip")
    func relayMessages() throws {
        let messages: [RelayMessage] = [
            .event(subscriptionID: "s", event: Self.event), .ok(eventID: Self.event.id, accepted: false, message: "blocked: no"),
            .endOfStoredEvents(subscriptionID: "s"), .closed(subscriptionID: "s", message: "auth-required: x"),
            .notice("hello"), .auth(challenge: "chal"), .count(subscriptionID: "s", count: 3),
        ]
        for m in messages {
            #expect(try RelayMessage(json: m.json) == m)
        }
        #expect(MachineReadablePrefix(message: "rate-limited: slow down") == .rateLimited)
        #expect(MachineReadablePrefix(message: "whatever") == nil)
    }

    @Test(
        "bad client messages get typed errors",
        arguments: [
            ("", NostrError.Code.invalidJSON), ("{}", .invalidShape), ("[]", .invalidShape), ("[1]", .invalidShape),
            ("[\"PING\"]", .unknownMessage), ("[\"REQ\"]", .invalidShape), ("[\"REQ\",\"\"]", .invalidShape),
            ("[\"REQ\",\"" + String(repeating: "x", count: 65) + "\"]", .invalidShape), ("[\"REQ\",\"s\",[]]", .invalidShape),
            ("[\"EVENT\"]", .invalidShape), ("[\"EVENT\",{}]", .invalidShape), ("[\"CLOSE\",1]", .invalidShape),
            ("[\"REQ\",\"s\"" + String(repeating: ",{}", count: 33) + "]", .tooLarge),
        ])
    func badClientMessages(json: String, code: NostrError.Code) {
        do {
            _ = try ClientMessage(json: json)
            Issue.record("accepted \(json)")
        } catch let error as NostrError {
            #expect(error.code == code)
            #expect(!error.message.isEmpty)
        } catch {
            Issue.record("unexpected error type \(error)")
        }
    }

    @Test("bad relay messages get typed errors")
    func badRelayMessages() {
        for bad in ["[\"OK\",\"x\",true,\"\"]", "[\"OK\",\"\(Self.event.id.hex)\",\"true\",\"\"]", "[\"EOSE\"]", "[\"COUNT\",\"s\",3]",
                    "[\"NOTICE\",1]", "[\"WHAT\"]"] {
            #expect(throws: NostrError.self, "\(bad)") { try RelayMessage(json: bad) }
        }
    }
}
