import CSecp256k1
import CSodium
import COpenSSL
import NostrCore
import NostrCrypto

#if canImport(Glibc)
import Glibc
#endif

// switchboard-bench: release-mode throughput figures, each beside the same operation done by direct C
// calls in the same run. This target (and only it, besides NostrCrypto) imports the C shims: the raw
// calls are the baseline. Run: swift run -c release switchboard-bench crypto

/// A named measurement: operations per second over a time budget, best of `rounds`.
struct Measurement {
    let name: String
    let opsPerSecond: Double
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

@inline(never)
func blackHole<T>(_ value: T) { withExtendedLifetime(value) {} }

/// Runs `body` in batches until `seconds` pass; returns the best ops/s of `rounds` rounds.
func measure(seconds: Double = 0.4, rounds: Int = 3, body: () -> Void) -> Double {
    var best = 0.0
    for _ in 0..<rounds {
        var count = 0
        let start = now()
        var elapsed = 0.0
        repeat {
            for _ in 0..<16 { body() }
            count += 16
            elapsed = now() - start
        } while elapsed < seconds
        best = max(best, Double(count) / elapsed)
    }
    return best
}

func format(_ ops: Double) -> String {
    let s = String(Int(ops.rounded()))
    var out = ""
    for (i, c) in s.reversed().enumerated() {
        if i > 0 && i % 3 == 0 { out.append(",") }
        out.append(c)
    }
    return String(out.reversed())
}

func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
func padLeft(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }

func compare(_ name: String, ours: () -> Void, raw: () -> Void) {
    // Interleave to share the machine's noise fairly between the two.
    let r1 = measure(body: raw)
    let o1 = measure(body: ours)
    let r2 = measure(body: raw)
    let o2 = measure(body: ours)
    let o = max(o1, o2), r = max(r1, r2)
    print("\(pad(name, 30)) \(padLeft(format(o), 12)) ops/s   raw C \(padLeft(format(r), 12)) ops/s   ratio \(String(format: "%.2f", o / r))")
}

func runCrypto() {
    print("switchboard-bench crypto — one thread, ops/s (best of interleaved rounds); ratio = Switchboard / raw C")
    let ctx = secp256k1_context_create(UInt32(SECP256K1_CONTEXT_NONE))!
    _ = sodium_init()
    let alice = SecretKey.generate()
    let bob = SecretKey.generate()
    var aliceSecret = [UInt8](repeating: 0, count: 32)
    alice.withUnsafeSecretBytes { aliceSecret = Array($0) }
    var keypair = secp256k1_keypair()
    _ = secp256k1_keypair_create(ctx, &keypair, aliceSecret)
    let message = SHA256.hash(Array("benchmark".utf8))
    let messageBytes = message.bytes
    let bobPub = bob.publicKey.bytes32.bytes

    // Schnorr sign (fresh aux randomness on both sides).
    compare("schnorr sign", ours: { blackHole(alice.sign(message)) }) {
        var sig = [UInt8](repeating: 0, count: 64)
        var aux = [UInt8](repeating: 0, count: 32)
        randombytes_buf(&aux, 32)
        _ = secp256k1_schnorrsig_sign32(ctx, &sig, messageBytes, &keypair, aux)
        blackHole(sig)
    }

    // Schnorr verify. Raw C parses the x-only key each time, as an event from the wire needs; ours caches parsed
    // keys, so the first row (a key seen before: a service's returning clients) gains the parse, and the second
    // (more keys than the cache holds, cycled: every lookup misses) pays the cache's upkeep on top of raw C's work.
    let signature = alice.sign(message)
    let sigBytes = signature.bytes
    let alicePubBytes = alice.publicKey.bytes32.bytes
    compare("schnorr verify (known key)", ours: { blackHole(alice.publicKey.isValidSignature(signature, for: message)) }) {
        var key = secp256k1_xonly_pubkey()
        _ = secp256k1_xonly_pubkey_parse(ctx, &key, alicePubBytes)
        blackHole(secp256k1_schnorrsig_verify(ctx, sigBytes, messageBytes, 32, &key))
    }
    let signers = (0..<20_000).map { _ in SecretKey.generate() }
    let signed = signers.map { ($0.publicKey, $0.sign(message)) }
    let signedBytes = signed.map { ($0.0.bytes32.bytes, $0.1.bytes) }
    var nextSigner = 0
    compare("schnorr verify (new key)", ours: {
        let (key, signature) = signed[nextSigner % signed.count]
        nextSigner += 1
        blackHole(key.isValidSignature(signature, for: message))
    }) {
        let (keyBytes, signatureBytes) = signedBytes[nextSigner % signedBytes.count]
        nextSigner += 1
        var key = secp256k1_xonly_pubkey()
        _ = secp256k1_xonly_pubkey_parse(ctx, &key, keyBytes)
        blackHole(secp256k1_schnorrsig_verify(ctx, signatureBytes, messageBytes, 32, &key))
    }

    // x-only ECDH. Ours is the NIP-44 conversation key (ECDH + HKDF-extract); raw is parse + ECDH only.
    let copyX: @convention(c) (UnsafeMutablePointer<UInt8>?, UnsafePointer<UInt8>?, UnsafePointer<UInt8>?, UnsafeMutableRawPointer?) -> Int32 = {
        out, x, _, _ in
        out!.update(from: x!, count: 32)
        return 1
    }
    compare("x-only ECDH (conversation key)", ours: { blackHole(try? ConversationKey(secretKey: alice, publicKey: bob.publicKey)) }) {
        var point = secp256k1_pubkey()
        var compressed = [UInt8](repeating: 2, count: 33)
        compressed.withUnsafeMutableBufferPointer { buf in for i in 0..<32 { buf[i + 1] = bobPub[i] } }
        _ = secp256k1_ec_pubkey_parse(ctx, &point, compressed, 33)
        var shared = [UInt8](repeating: 0, count: 32)
        _ = secp256k1_ecdh(ctx, &shared, &point, aliceSecret, copyX, nil)
        blackHole(shared)
    }

    // Event id: serialise + SHA-256 (ours) vs SHA-256 of the already-serialised bytes (raw).
    let tags: [Tag] = [["p", bob.publicKey.hex], ["e", message.hex, "wss://relay.example.com"], ["t", "nostr"]]
    let content = String(repeating: "A typical short note with some text. ", count: 8)
    let serialized = Event.canonicalSerialization(pubkey: alice.publicKey, createdAt: 1_700_000_000, kind: 1, tags: tags, content: content)
    compare("event id (\(serialized.count) B)", ours: {
        blackHole(Event.computeID(pubkey: alice.publicKey, createdAt: 1_700_000_000, kind: 1, tags: tags, content: content))
    }) {
        var digest = [UInt8](repeating: 0, count: 32)
        var c = SHA256_CTX()
        SHA256_Init(&c)
        SHA256_Update(&c, serialized, serialized.count)
        SHA256_Final(&digest, &c)
        blackHole(digest)
    }

    // NIP-44 with a cached conversation key.
    let conversation = try! ConversationKey(secretKey: alice, publicKey: bob.publicKey)
    var conversationBytes = [UInt8](repeating: 0, count: 32)
    conversation.withUnsafeBytes { conversationBytes = Array($0) }
    for size in [32, 1024, 65536] {
        let text = String(repeating: "x", count: size)
        let label = size >= 1024 ? "\(size / 1024) KiB" : "\(size) B"
        compare("nip44 encrypt \(label)", ours: { blackHole(try? NIP44.encrypt(text, conversationKey: conversation)) }) {
            blackHole(RawNIP44.encrypt(Array(text.utf8), key: conversationBytes))
        }
        let payload = try! NIP44.encrypt(text, conversationKey: conversation)
        compare("nip44 decrypt \(label)", ours: { blackHole(try? NIP44.decrypt(payload, conversationKey: conversation)) }) {
            blackHole(RawNIP44.decrypt(payload, key: conversationBytes))
        }
    }
    let kib = String(repeating: "x", count: 1024)
    let pair = measure {
        let p = try! NIP44.encrypt(kib, conversationKey: conversation)
        blackHole(try? NIP44.decrypt(p, conversationKey: conversation))
    }
    print("\(pad("nip44 encrypt+decrypt 1 KiB", 30)) \(padLeft(format(pair), 12)) pairs/s (target ≥ 150,000)")

    // NIP-04 (ECDH per message on both sides, as the API takes keys).
    compare("nip04 encrypt 1 KiB", ours: { blackHole(try? NIP04.encrypt(kib, secretKey: alice, publicKey: bob.publicKey)) }) {
        blackHole(RawNIP04.encrypt(Array(kib.utf8), secret: aliceSecret, peer: bobPub, ctx: ctx, copyX: copyX))
    }
    let nip04Payload = try! NIP04.encrypt(kib, secretKey: alice, publicKey: bob.publicKey)
    compare("nip04 decrypt 1 KiB", ours: { blackHole(try? NIP04.decrypt(nip04Payload, secretKey: bob, publicKey: alice.publicKey)) }) {
        blackHole(RawNIP04.decrypt(nip04Payload, secret: aliceSecret, peer: bobPub, ctx: ctx, copyX: copyX))
    }
    sodium_memzero(&aliceSecret, 32)
    sodium_memzero(&conversationBytes, 32)
}

let arguments = CommandLine.arguments.dropFirst()
switch arguments.first {
case "crypto", nil:
    runCrypto()
case "relay":
    do {
        try await runRelay()
    } catch {
        print("relay benchmark failed: \(error)")
        exit(1)
    }
case "store":
    do {
        try await runStore()
    } catch {
        print("store benchmark failed: \(error)")
        exit(1)
    }
case "service":
    do {
        try await runService()
    } catch {
        print("service benchmark failed: \(error)")
        exit(1)
    }
case "bunker":
    do {
        try await runBunker()
    } catch {
        print("bunker benchmark failed: \(error)")
        exit(1)
    }
case "wallet":
    do {
        try await runWallet()
    } catch {
        print("wallet benchmark failed: \(error)")
        exit(1)
    }
case "dvm":
    do {
        try await runDVM()
    } catch {
        print("dvm benchmark failed: \(error)")
        exit(1)
    }
default:
    print("usage: switchboard-bench crypto | relay | store | service | bunker | wallet | dvm")
    exit(64)
}
