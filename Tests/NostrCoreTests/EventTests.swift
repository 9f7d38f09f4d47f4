import NostrCrypto
import Testing
@testable import NostrCore

@Suite("Events: canonical serialisation, ids, signatures")
struct EventTests {
    /// The mined note from 13.md: a real event signed elsewhere.
    static let specEvent = """
        {"id":"000006d8c378af1779d2feebc7603a125d99eca0ccf1085959b307f64e5dd358","pubkey":"a48380f4cfcc1ad5378294fcac36439770f9c878dd880ffa94bb74ea54a6f243","created_at":1651794653,"kind":1,"tags":[["nonce","776797","20"]],"content":"It's just me mining my own business","sig":"284622fc0a3f4f1303455d5175f7ba962a3300d136085b9566801bc2e0699de0c7e31e44c81fb40ad9049173742e904713c3594a1da0fc5d2382a25c11aba977"}
        """

    @Test("the NIP-13 example event verifies and has difficulty 21")
    func specEventVerifies() throws {
        let event = try Event(json: Self.specEvent)
        try event.verify()
        #expect(event.id.difficulty == 21)
        #expect(event.committedDifficulty == 20)
        #expect(event.meetsDifficulty(20, requireCommitment: true))
        #expect(!event.meetsDifficulty(22))
        #expect(try EventID(hex: "000000000e9d97a1ab09fc381030b346cdd7a142ad57e6df0b46dc9bef6c7e2d").difficulty == 36)
    }

    @Test("tampering with any field is detected with the right code")
    func tampering() throws {
        let event = try Event(json: Self.specEvent)
        let changed = event.copy(createdAt: event.createdAt + 1)
        #expect(throws: NostrError(.invalidID, "the event id does not match its content (expected \(Event.computeID(pubkey: changed.pubkey, createdAt: changed.createdAt, kind: changed.kind, tags: changed.tags, content: changed.content).hex))")) {
            try changed.verify()
        }
        var sigBytes = event.sig.bytes
        sigBytes[63] ^= 0x80
        let flipped = try #require(SchnorrSignature(sigBytes))
        let badSig = event.copy(sig: flipped)
        do {
            try badSig.verify()
            Issue.record("a bad signature verified")
        } catch let error as NostrError {
            #expect(error.code == .invalidSignature)
        }
    }

    @Test("a copy of a verified event passes only if its id, pubkey and signature all match the verified one")
    func verifiedCopies() throws {
        let key = SecretKey.generate(), other = SecretKey.generate()
        let template = EventTemplate(kind: 1, content: "verified once", createdAt: 1_700_000_000)
        let event = template.sign(with: key)
        try event.verify()
        // The same event signed again: the same id, another (valid) signature, verified on its own.
        let resigned = template.sign(with: key)
        #expect(resigned.id == event.id && resigned.sig != event.sig)
        try resigned.verify()
        // Copies that reuse the verified id with another signature, or another author, must still fail.
        var sigBytes = event.sig.bytes
        sigBytes[63] ^= 0x01
        let flipped = try #require(SchnorrSignature(sigBytes))
        let forged = event.copy(sig: flipped)
        #expect(throws: NostrError.self) { try forged.verify() }
        let otherSigned = event.copy(pubkey: other.publicKey)
        #expect(throws: NostrError.self) { try otherSigned.verify() }
        // Another author's signature over the very id (a valid Schnorr signature, but not of this event).
        let borrowed = event.copy(sig: other.sign(event.id.bytes32))
        #expect(throws: NostrError.self) { try borrowed.verify() }
        // The verified copies still pass after the failures.
        try event.verify()
        try resigned.verify()
    }

    @Test("escaping follows NIP-01 (and \\u00XX for other control characters)")
    func escaping() throws {
        var all = ""
        for scalar in 0..<0x20 { all.unicodeScalars.append(Unicode.Scalar(UInt8(scalar))) }
        all += "\"\\/\u{7F}\u{2028}\u{2029}é🦄𝄞"
        var writer = JSONWriter()
        writer.string(all)
        var expected = "\""
        for scalar in 0..<0x20 {
            switch scalar {
            case 0x08: expected += "\\b"
            case 0x09: expected += "\\t"
            case 0x0A: expected += "\\n"
            case 0x0C: expected += "\\f"
            case 0x0D: expected += "\\r"
            default: expected += "\\u00" + String(format2: scalar)
            }
        }
        expected += "\\\"\\\\/\u{7F}\u{2028}\u{2029}é🦄𝄞\""
        #expect(writer.text == expected)
        // And it parses back to the same string.
        #expect(try JSON.parse(writer.text) == .string(all))
    }

    @Test("canonical serialisation layout")
    func canonical() throws {
        let key = try PublicKey(hex: String(repeating: "ab", count: 32))
        let bytes = Event.canonicalSerialization(
            pubkey: key, createdAt: 1_700_000_000, kind: 30023, tags: [["d", "x"], ["p", "y", "wss://r/"]], content: "a\nb")
        #expect(
            String(decoding: bytes, as: UTF8.self)
                == "[0,\"\(key.hex)\",1700000000,30023,[[\"d\",\"x\"],[\"p\",\"y\",\"wss://r/\"]],\"a\\nb\"]")
    }

    @Test("sign, serialise, parse, verify round trip with hostile content")
    func roundTrip() throws {
        let key = SecretKey.generate()
        let content = "quote\" backslash\\ nul\u{0} bell\u{7} 🦄 \u{2028} </script>"
        let event = EventTemplate(kind: 1, content: content, tags: [["t", "x\u{1}y"], []], createdAt: 42).sign(with: key)
        try event.verify()
        let parsed = try Event(json: event.json)
        #expect(parsed == event)
        try parsed.verify()
        #expect(parsed.content == content)
    }

    @Test("the cheap JSON length bound is never below the real length, whatever the content escapes to")
    func jsonLengthBound() {
        let key = SecretKey.generate()
        let contents = [
            "", "plain", String(repeating: "\u{1}", count: 5000), String(repeating: "\"\\", count: 3000),
            "🦄\u{2028}\u{0}", String(repeating: "x", count: 100_000),
        ]
        for content in contents {
            let tags: [NostrCore.Tag] = [["p", String(repeating: "\u{1f}", count: 64)], [], ["e", content.prefix(100).description, "wss://r"]]
            let event = EventTemplate(kind: 25_910, content: content, tags: tags, createdAt: 1_700_000_000).sign(with: key)
            #expect(event.maximumJSONLength >= event.json.utf8.count)
            // A bound, not a wild guess: within the worst case of six bytes per escaped byte.
            #expect(event.maximumJSONLength <= 6 * event.json.utf8.count + 400)
        }
    }

    @Test(
        "malformed events are refused with a shape error",
        arguments: [
            "{}", "[]", "{\"id\":1}",
            "{\"id\":\"00\",\"pubkey\":\"00\",\"created_at\":1,\"kind\":1,\"tags\":[],\"content\":\"\",\"sig\":\"00\"}",
        ])
    func malformed(json: String) {
        #expect(throws: NostrError.self) { try Event(json: json) }
    }

    @Test("wrong field types and ranges are refused")
    func wrongTypes() throws {
        let good = try Event(json: Self.specEvent)
        let replacements: [(String, String)] = [
            ("\"kind\":1", "\"kind\":65536"), ("\"kind\":1", "\"kind\":-1"), ("\"kind\":1", "\"kind\":1.5"),
            ("\"kind\":1", "\"kind\":\"1\""), ("\"created_at\":1651794653", "\"created_at\":-5"),
            ("[[\"nonce\",\"776797\",\"20\"]]", "[[\"nonce\",776797]]"), ("[[\"nonce\",\"776797\",\"20\"]]", "{}"),
            ("\"content\":\"It's", "\"content\":5,\"x\":\"It's"),
        ]
        for (from, to) in replacements {
            let json = good.json.replacingFirst(from, with: to)
            #expect(json != good.json, "replacement \(from) did not apply")
            #expect(throws: NostrError.self, "\(to)") { try Event(json: json) }
        }
    }

    @Test("kind classes")
    func kinds() {
        #expect(Kind(0).classification == .replaceable)
        #expect(Kind(1).classification == .regular)
        #expect(Kind(3).classification == .replaceable)
        #expect(Kind(10002).classification == .replaceable)
        #expect(Kind(20000).classification == .ephemeral)
        #expect(Kind(29999).classification == .ephemeral)
        #expect(Kind(30023).classification == .addressable)
        #expect(Kind(40000).classification == .regular)
    }

    @Test("event templates parse from JSON, with optional fields")
    func templates() throws {
        let t = try EventTemplate(json: "{\"kind\":7,\"content\":\"+\",\"tags\":[[\"e\",\"x\"]],\"created_at\":5}")
        #expect(t == EventTemplate(kind: 7, content: "+", tags: [["e", "x"]], createdAt: 5))
        #expect(try EventTemplate(json: "{\"kind\":1}").createdAt == nil)
        #expect(throws: NostrError.self) { try EventTemplate(json: "{\"content\":\"x\"}") }
        #expect(throws: NostrError.self) { try EventTemplate(json: "{\"kind\":1,\"tags\":[[1]]}") }
    }

    @Test("NIP-40 expiration")
    func expiration() {
        let key = SecretKey.generate()
        let e = EventTemplate(kind: 1, tags: [["expiration", "100"]], createdAt: 1).sign(with: key)
        #expect(e.expiration == 100)
        #expect(e.isExpired(at: 100))
        #expect(!e.isExpired(at: 99))
        #expect(!EventTemplate(kind: 1, tags: [["expiration", "soon"]]).sign(with: key).isExpired(at: 1 << 40))
    }

    @Test("NIP-13 mining reaches the target and commits to it")
    func mining() throws {
        let key = SecretKey.generate()
        let mined = try #require(EventTemplate(kind: 1, content: "pow").minedAndSigned(difficulty: 10, with: key))
        try mined.verify()
        #expect(mined.id.difficulty >= 10)
        #expect(mined.committedDifficulty == 10)
        #expect(EventTemplate(kind: 1).minedAndSigned(difficulty: 200, with: key, maximumAttempts: 10) == nil)
    }
}

extension String {
    init(format2 value: Int) {
        let digits = Array("0123456789abcdef")
        self = String([digits[value >> 4], digits[value & 15]])
    }

    func replacingFirst(_ target: String, with replacement: String) -> String {
        guard let range = range(of: target) else { return self }
        return replacingCharacters(in: range, with: replacement)
    }
}

import Foundation

extension Event {
    /// This event with some fields replaced and its id and other fields kept (unchecked): a tampered copy.
    func copy(pubkey: PublicKey? = nil, createdAt: Timestamp? = nil, sig: SchnorrSignature? = nil) -> Event {
        Event(
            id: id, pubkey: pubkey ?? self.pubkey, createdAt: createdAt ?? self.createdAt, kind: kind, tags: tags,
            content: content, sig: sig ?? self.sig)
    }
}
