import Testing
@testable import NostrCrypto

@Suite("NIP-04, NIP-49, bech32, hashes")
struct EncodingTests {
    @Test("NIP-49 decrypts the spec's ncryptsec with password 'nostr'")
    func nip49Vector() throws {
        let ncryptsec =
            "ncryptsec1qgg9947rlpvqu76pj5ecreduf9jxhselq2nae2kghhvd5g7dgjtcxfqtd67p9m0w57lspw8gsq6yphnm8623nsl8xn9j4jdzz84zm3frztj3z7s35vpzmqf6ksu8r89qk5z2zxfmu5gv8th8wclt0h4p"
        let key = try NIP49.decrypt(ncryptsec, password: "nostr")
        #expect(key.exportHex() == "3501454135014541350145413501453fefb02227e449e57cf4d3a3ce05378683")
        #expect(throws: CryptoError.self) { try NIP49.decrypt(ncryptsec, password: "nostR") }
    }

    @Test("NIP-49 round trip with an NFKC-equivalent password, and the key-security byte")
    func nip49RoundTrip() throws {
        let key = SecretKey.generate()
        // The spec's normalisation example: U+212B U+2126 U+1E9B U+0323 ≡ U+00C5 U+03A9 U+1E69 under NFKC.
        let typed = "\u{212B}\u{2126}\u{1E9B}\u{0323}"
        let normalized = "\u{00C5}\u{03A9}\u{1E69}"
        let encrypted = try NIP49.encrypt(key, password: typed, logN: 10, keySecurity: .secure)
        #expect(encrypted.hasPrefix("ncryptsec1"))
        #expect(try Bech32.decode(encrypted).data.count == 91)
        #expect(try NIP49.keySecurity(of: encrypted) == .secure)
        #expect(try NIP49.decrypt(encrypted, password: normalized) == key)
        #expect(throws: CryptoError.self) { try NIP49.decrypt(encrypted, password: "other") }
        #expect(throws: CryptoError.self) { try NIP49.decrypt(encrypted, password: typed, maximumLogN: 9) }
    }

    @Test("NIP-04 round trip both ways, and malformed payloads are refused")
    func nip04() throws {
        let a = SecretKey.generate(), b = SecretKey.generate()
        for text in ["hi", String(repeating: "x", count: 16), "emoji 🦄 and \u{0}"] {
            let payload = try NIP04.encrypt(text, secretKey: a, publicKey: b.publicKey)
            #expect(NIP04.isNIP04Payload(payload))
            #expect(try NIP04.decrypt(payload, secretKey: b, publicKey: a.publicKey) == text)
        }
        for bad in ["", "abc", "abc?iv=def", "AAAA?iv=AAAAAAAAAAAAAAAAAAAAAA==", "?iv="] {
            #expect(throws: CryptoError.self) { try NIP04.decrypt(bad, secretKey: b, publicKey: a.publicKey) }
        }
    }

    @Test("bech32 npub/nsec round trip; bad checksums and mixed case are refused")
    func bech32() throws {
        // NIP-19's example pair.
        let npub = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg"
        let key = try PublicKey(npub: npub)
        #expect(key.hex == "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e")
        #expect(key.npub == npub)
        let nsec = "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5"
        let secret = try SecretKey(nsec: nsec)
        #expect(secret.exportHex() == "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa")
        #expect(secret.exportNsec() == nsec)
        #expect(throws: CryptoError.self) { try PublicKey(npub: String(npub.dropLast()) + "h") }
        #expect(throws: CryptoError.self) { try PublicKey(npub: "NPUB" + npub.dropFirst(4)) }
        #expect(throws: CryptoError.self) { try PublicKey(npub: nsec) }
        #expect(throws: CryptoError.self) { try Bech32.decode(String(repeating: "q", count: 6000)) }
    }

    @Test("SHA-256 and HMAC-SHA256 (RFC 4231 case 2)")
    func hashes() {
        #expect(SHA256.hash(Array("abc".utf8)).hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let mac = Array("Jefe".utf8).withUnsafeBytes { key in
            Array("what do ya want for nothing?".utf8).withUnsafeBytes { HMACSHA256.mac(key: key, message: $0) }
        }
        #expect(mac.hex == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        let longKey = [UInt8](repeating: 0xaa, count: 131)
        let mac2 = longKey.withUnsafeBytes { key in
            Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8).withUnsafeBytes {
                HMACSHA256.mac(key: key, message: $0)
            }
        }
        #expect(mac2.hex == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    }
}
