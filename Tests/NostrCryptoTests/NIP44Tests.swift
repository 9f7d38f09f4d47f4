import Foundation
import Testing
@testable import NostrCrypto

private func conversationKey(_ hex: Any?) throws -> ConversationKey {
    let bytes = hexBytes(hex as? String ?? "")
    return try bytes.withUnsafeBytes { try ConversationKey(bytes: $0) }
}

private func hexOf(_ key: ConversationKey) -> String { key.withUnsafeBytes { Hex.encode($0) } }

/// `body`'s result, computed on a thread of its own: megabytes through a debug build take seconds, which on the
/// test run's shared task threads (as many as cores) would hold up every other test's tasks.
private func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

@Suite("NIP-44 v2 (official vectors and the spec's extended-prefix checksums)")
struct NIP44Tests {
    @Test("get_conversation_key: valid")
    func conversationKeys() throws {
        let cases = try VectorFiles.nip44Cases("valid", "get_conversation_key")
        #expect(cases.count == 35)
        for c in cases {
            let secret = try SecretKey(hex: c["sec1"] as? String ?? "")
            let key = try ConversationKey(secretKey: secret, publicKey: PublicKey(hex: c["pub2"] as? String ?? ""))
            #expect(hexOf(key) == c["conversation_key"] as? String)
        }
    }

    @Test("get_conversation_key: invalid keys throw")
    func invalidConversationKeys() throws {
        let cases = try VectorFiles.nip44Cases("invalid", "get_conversation_key")
        #expect(cases.count == 8)
        for c in cases {
            #expect(throws: CryptoError.self, "\(c["note"] ?? "")") {
                let secret = try SecretKey(hex: c["sec1"] as? String ?? "")
                _ = try ConversationKey(secretKey: secret, publicKey: PublicKey(hex: c["pub2"] as? String ?? ""))
            }
        }
    }

    @Test("get_message_keys")
    func messageKeys() throws {
        let root = try VectorFiles.nip44()
        let group = ((root["valid"] as? [String: Any])?["get_message_keys"] as? [String: Any]) ?? [:]
        let key = try conversationKey(group["conversation_key"])
        let cases = group["keys"] as? [[String: Any]] ?? []
        #expect(cases.count == 32)
        for c in cases {
            let nonce = try #require(Bytes32(hexBytes(c["nonce"] as? String ?? "")))
            let keys = NIP44.MessageKeys(conversationKey: key, nonce: nonce)
            #expect(keys.chachaKey.hex == c["chacha_key"] as? String)
            #expect(Hex.encode(keys.chachaNonce) == c["chacha_nonce"] as? String)
            #expect(keys.hmacKey.hex == c["hmac_key"] as? String)
        }
    }

    @Test("calc_padded_len")
    func paddedLength() throws {
        let root = try VectorFiles.nip44()
        let cases = ((root["valid"] as? [String: Any])?["calc_padded_len"] as? [[Int]]) ?? []
        #expect(cases.count == 24)
        for pair in cases {
            #expect(NIP44.paddedLength(pair[0]) == pair[1], "\(pair[0])")
        }
    }

    @Test("encrypt_decrypt: both directions")
    func encryptDecrypt() throws {
        let cases = try VectorFiles.nip44Cases("valid", "encrypt_decrypt")
        #expect(cases.count == 10)
        for c in cases {
            let sec1 = try SecretKey(hex: c["sec1"] as? String ?? "")
            let sec2 = try SecretKey(hex: c["sec2"] as? String ?? "")
            let forward = try ConversationKey(secretKey: sec1, publicKey: sec2.publicKey)
            #expect(hexOf(forward) == c["conversation_key"] as? String)
            let nonce = try #require(Bytes32(hexBytes(c["nonce"] as? String ?? "")))
            let plaintext = c["plaintext"] as? String ?? ""
            let payload = try NIP44.encrypt(plaintext, conversationKey: forward, nonce: nonce)
            #expect(payload == c["payload"] as? String)
            let backward = try ConversationKey(secretKey: sec2, publicKey: sec1.publicKey)
            #expect(backward == forward)
            #expect(try NIP44.decrypt(payload, conversationKey: backward) == plaintext)
        }
    }

    @Test("encrypt_decrypt_long_msg: checksums")
    func longMessages() throws {
        let cases = try VectorFiles.nip44Cases("valid", "encrypt_decrypt_long_msg")
        #expect(cases.count == 3)
        for c in cases {
            let key = try conversationKey(c["conversation_key"])
            let nonce = try #require(Bytes32(hexBytes(c["nonce"] as? String ?? "")))
            let plaintext = String(repeating: c["pattern"] as? String ?? "", count: c["repeat"] as? Int ?? 0)
            #expect(SHA256.hash(Array(plaintext.utf8)).hex == c["plaintext_sha256"] as? String)
            let payload = try NIP44.encrypt(plaintext, conversationKey: key, nonce: nonce)
            #expect(SHA256.hash(Array(payload.utf8)).hex == c["payload_sha256"] as? String)
            #expect(try NIP44.decrypt(payload, conversationKey: key) == plaintext)
        }
    }

    /// The table in 44.md ("Extended length prefix test vectors"): 'a' repeated, fixed key and nonce.
    @Test(
        "extended length prefix (44.md checksums)",
        arguments: [
            (65535, "6e1bebca6a8229364a162a72ef064826c4cd7457bf54f190ef782bd9deff3e42",
             "6d8c2810d1e870fbaa1f0a0937126cca837a15f9260e27060c331d70a3c0bc84"),
            (65536, "bf718b6f653bebc184e1479f1935b8da974d701b893afcf49e701f3e2f9f9c5a",
             "b7b4edb36ba92e267d322d56d9aebc22e7fa96ff52e3c12adc07f07a43cbc616"),
            (65537, "008ffc88d3c96a9f307524eb361e47c5222a887fc45fa0c1fb8d429c5c23b430",
             "eeb7c7c5373894ea2c1547cfd3ccb15d5a0b2d619da852e5c79df792dcc9e435"),
        ])
    func extendedPrefix(length: Int, plaintextSHA: String, payloadSHA: String) throws {
        let key = try conversationKey("c41c775356fd92eadc63ff5a0dc1da211b268cbea22316767095b2871ea1412d")
        let nonce = try #require(Bytes32(hexBytes("0000000000000000000000000000000000000000000000000000000000000001")))
        let plaintext = String(repeating: "a", count: length)
        #expect(SHA256.hash(Array(plaintext.utf8)).hex == plaintextSHA)
        let payload = try NIP44.encrypt(plaintext, conversationKey: key, nonce: nonce)
        #expect(SHA256.hash(Array(payload.utf8)).hex == payloadSHA)
        #expect(try NIP44.decrypt(payload, conversationKey: key) == plaintext)
    }

    /// The vector file predates the extended prefix: it lists 65,536, 100,000 and 10,000,000 bytes as
    /// invalid lengths, which 44.md now encrypts with the 6-byte prefix (and checks with its own checksums
    /// above). The empty plaintext stays invalid; the others must round-trip with the extended prefix.
    @Test("encrypt_msg_lengths: 0 refused; the file's other lengths use the extended prefix")
    func messageLengths() async throws {
        let root = try VectorFiles.nip44()
        let lengths = ((root["invalid"] as? [String: Any])?["encrypt_msg_lengths"] as? [Int]) ?? []
        #expect(lengths == [0, 65536, 100000, 10000000])
        let key = try conversationKey("c41c775356fd92eadc63ff5a0dc1da211b268cbea22316767095b2871ea1412d")
        #expect(throws: CryptoError.self) { try NIP44.encrypt("", conversationKey: key) }
        for length in lengths where length > 0 {
            let (payloadLength, decryptedLength) = try await onOwnThread {
                let payload = try NIP44.encrypt(String(repeating: "x", count: length), conversationKey: key)
                let back = try NIP44.decryptBytes(payload, conversationKey: key, maximumPayloadLength: 20 << 20)
                return (Base64.decode(payload)?.count, back.count)
            }
            #expect(decryptedLength == length)
            #expect(payloadLength == 1 + 32 + 6 + NIP44.paddedLength(length) + 32)
        }
    }

    @Test("invalid decrypt cases throw")
    func invalidDecrypt() throws {
        let cases = try VectorFiles.nip44Cases("invalid", "decrypt")
        #expect(cases.count == 12)
        for c in cases {
            let key = try conversationKey(c["conversation_key"])
            #expect(throws: CryptoError.self, "\(c["note"] ?? "")") {
                _ = try NIP44.decrypt(c["payload"] as? String ?? "", conversationKey: key)
            }
        }
    }

    @Test("random round trips, and tampering is detected")
    func roundTrips() throws {
        let a = SecretKey.generate(), b = SecretKey.generate()
        let key = try ConversationKey(secretKey: a, publicKey: b.publicKey)
        for length in [1, 31, 32, 33, 255, 256, 257, 1000, 65535, 65536, 70000] {
            let text = String(repeating: "é", count: (length + 1) / 2)
            let payload = try NIP44.encrypt(text, conversationKey: key)
            #expect(try NIP44.decrypt(payload, conversationKey: key) == text)
            var raw = try #require(Base64.decode(payload))
            raw[40] ^= 0x01
            let tampered = raw.withUnsafeBytes { Base64.encode($0) }
            #expect(throws: CryptoError.self) { try NIP44.decrypt(tampered, conversationKey: key) }
        }
        #expect(throws: CryptoError.self) {
            try NIP44.decrypt(String(repeating: "A", count: 200), conversationKey: key, maximumPayloadLength: 150)
        }
    }
}
