import NostrCrypto
import Testing
@testable import NostrCore

@Suite("NIP-19, NIP-21, NIP-42, NIP-59")
struct EntityTests {
    @Test("19.md examples")
    func specExamples() throws {
        #expect(try NIP19Entity(bech32: "npub180cvv07tjdrrgpa0j7j7tmnyl2yr6yr7l8j4s3evf6u64th6gkwsyjh6w6")
            == .npub(PublicKey(hex: "3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d")))
        let profile = "nprofile1qqsrhuxx8l9ex335q7he0f09aej04zpazpl0ne2cgukyawd24mayt8gpp4mhxue69uhhytnc9e3k7mgpz4mhxue69uhkg6nzv9ejuumpv34kytnrdaksjlyr9p"
        let entity = try NIP19Entity(bech32: profile)
        #expect(entity == .nprofile(
            pubkey: try PublicKey(hex: "3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d"),
            relays: ["wss://r.x.com", "wss://djbas.sadkb.com"]))
        #expect(entity.bech32 == profile)
        #expect(throws: NostrError.self) {
            try NIP19Entity(bech32: "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5")
        }
    }

    @Test("nevent, naddr and note round-trip")
    func roundTrips() throws {
        let key = SecretKey.generate().publicKey
        let id = EventID(SHA256.hash(Array("x".utf8)))
        let entities: [NIP19Entity] = [
            .note(id), .nevent(id: id, relays: ["wss://a"], author: key, kind: 1), .nevent(id: id, relays: [], author: nil, kind: nil),
            .naddr(identifier: "my-article", pubkey: key, kind: 30023, relays: ["wss://b", "wss://c"]),
        ]
        for e in entities {
            #expect(try NIP19Entity(bech32: e.bech32) == e)
            #expect(try NostrURI.parse(NostrURI.uri(for: e)) == e)
        }
        #expect(throws: NostrError.self) { try NostrURI.parse("nostr:nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5") }
        #expect(throws: NostrError.self) { try NostrURI.parse("npub180cvv07tjdrrgpa0j7j7tmnyl2yr6yr7l8j4s3evf6u64th6gkwsyjh6w6") }
    }

    @Test("broken TLV is refused")
    func brokenTLV() {
        // A record that claims 40 bytes but carries 3; a 3-byte kind; an naddr without a kind.
        let cases: [(String, [UInt8])] = [
            ("nprofile", [0, 40, 1, 2, 3]), ("nevent", [0, 32] + [UInt8](repeating: 1, count: 32) + [3, 3, 0, 0, 1]),
            ("naddr", [0, 1, 0x61, 2, 32] + [UInt8](repeating: 2, count: 32)), ("nprofile", [0]),
        ]
        for (hrp, data) in cases {
            #expect(throws: NostrError.self, "\(hrp) \(data.count)") { try NIP19Entity(bech32: Bech32.encode(hrp: hrp, data: data)) }
        }
    }

    @Test("NIP-42 auth events validate only for the right challenge, relay and time")
    func auth() throws {
        let key = SecretKey.generate()
        let event = ClientAuthentication.makeEvent(relay: "wss://relay.example.com/", challenge: "c1", secretKey: key, createdAt: 1000)
        #expect(try ClientAuthentication.validate(event, challenge: "c1", relayURL: "wss://relay.example.com", now: 1100) == key.publicKey)
        #expect(throws: NostrError.self) { try ClientAuthentication.validate(event, challenge: "c2", relayURL: "wss://relay.example.com", now: 1100) }
        #expect(throws: NostrError.self) { try ClientAuthentication.validate(event, challenge: "c1", relayURL: "wss://other.com", now: 1100) }
        #expect(throws: NostrError.self) { try ClientAuthentication.validate(event, challenge: "c1", relayURL: "wss://relay.example.com", now: 5000) }
    }

    @Test("NIP-59 seal and gift wrap round trip; impersonation is caught")
    func giftWrap() throws {
        let alice = SecretKey.generate(), bob = SecretKey.generate(), mallory = SecretKey.generate()
        let rumor = UnsignedEvent(pubkey: alice.publicKey, createdAt: .now, kind: 14, tags: [["p", bob.publicKey.hex]], content: "secret")
        let wrap = try GiftWrap.sealAndWrap(rumor, sender: alice, recipient: bob.publicKey)
        #expect(wrap.kind == .giftWrap)
        #expect(wrap.pubkey != alice.publicKey)
        #expect(wrap.firstTagValue("p") == bob.publicKey.hex)
        #expect(!wrap.content.contains("secret"))
        #expect(try GiftWrap.unwrap(wrap, recipient: bob) == rumor)
        #expect(throws: NostrError.self) { try GiftWrap.unwrap(wrap, recipient: mallory) }
        // Mallory seals a rumor that claims Alice as its author.
        #expect(throws: NostrError.self) { try GiftWrap.seal(rumor, sender: mallory, recipient: bob.publicKey) }
        let forgedSeal = EventTemplate(
            kind: .seal,
            content: try NIP44.encrypt(rumor.json, conversationKey: ConversationKey(secretKey: mallory, publicKey: bob.publicKey))
        ).sign(with: mallory)
        let forged = try GiftWrap.wrap(forgedSeal, recipient: bob.publicKey)
        #expect(throws: NostrError.self) { try GiftWrap.unwrap(forged, recipient: bob) }
    }
}
