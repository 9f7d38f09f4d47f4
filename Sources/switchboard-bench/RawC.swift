import CSecp256k1
import CSodium
import COpenSSL

// The baselines: NIP-44 and NIP-04 written as straight C calls, no Switchboard types. Not for use
// elsewhere: no secret hygiene, no input validation beyond what keeps the benchmark honest.

enum RawHMAC {
    static func mac(key: UnsafeRawBufferPointer, _ parts: [UnsafeRawBufferPointer], out: UnsafeMutablePointer<UInt8>) {
        var block = [UInt8](repeating: 0, count: 64)
        for i in 0..<key.count { block[i] = key[i] }
        var inner = SHA256_CTX(), outer = SHA256_CTX()
        for i in 0..<64 { block[i] ^= 0x36 }
        SHA256_Init(&inner)
        SHA256_Update(&inner, block, 64)
        for i in 0..<64 { block[i] ^= 0x36 ^ 0x5c }
        SHA256_Init(&outer)
        SHA256_Update(&outer, block, 64)
        for p in parts where p.count > 0 { SHA256_Update(&inner, p.baseAddress, p.count) }
        SHA256_Final(out, &inner)
        SHA256_Update(&outer, out, 32)
        SHA256_Final(out, &outer)
    }
}

enum RawNIP44 {
    static func keys(_ key: [UInt8], nonce: UnsafeRawBufferPointer) -> [UInt8] {
        var okm = [UInt8](repeating: 0, count: 96)
        var t = [UInt8](repeating: 0, count: 32)
        key.withUnsafeBytes { k in
            for i in 1...3 {
                var counter = UInt8(i)
                withUnsafeBytes(of: &counter) { c in
                    t.withUnsafeBytes { prev in
                        okm.withUnsafeMutableBufferPointer { o in
                            RawHMAC.mac(key: k, i == 1 ? [nonce, c] : [prev, nonce, c], out: o.baseAddress! + (i - 1) * 32)
                        }
                    }
                }
                t = Array(okm[((i - 1) * 32)..<(i * 32)])
            }
        }
        return okm
    }

    static func padded(_ n: Int) -> Int {
        if n <= 32 { return 32 }
        let next = 1 << (Int.bitWidth - (n - 1).leadingZeroBitCount)
        let chunk = next <= 256 ? 32 : next / 8
        return chunk * ((n - 1) / chunk + 1)
    }

    static func encrypt(_ plain: [UInt8], key: [UInt8]) -> String {
        let prefix = plain.count >= 65536 ? 6 : 2
        let body = prefix + padded(plain.count)
        var raw = [UInt8](repeating: 0, count: 1 + 32 + body + 32)
        raw[0] = 2
        raw.withUnsafeMutableBytes { r in
            randombytes_buf(r.baseAddress! + 1, 32)
            let nonce = UnsafeRawBufferPointer(rebasing: r[1..<33])
            let k = keys(key, nonce: nonce)
            let b = r.baseAddress!.assumingMemoryBound(to: UInt8.self) + 33
            if prefix == 2 {
                b[0] = UInt8(plain.count >> 8); b[1] = UInt8(plain.count & 0xff)
            } else {
                b[2] = UInt8(plain.count >> 24); b[3] = UInt8((plain.count >> 16) & 0xff)
                b[4] = UInt8((plain.count >> 8) & 0xff); b[5] = UInt8(plain.count & 0xff)
            }
            plain.withUnsafeBufferPointer { (b + prefix).update(from: $0.baseAddress!, count: plain.count) }
            k.withUnsafeBufferPointer { kp in
                _ = crypto_stream_chacha20_ietf_xor(b, b, UInt64(body), kp.baseAddress! + 32, kp.baseAddress!)
                RawHMAC.mac(
                    key: UnsafeRawBufferPointer(start: kp.baseAddress! + 44, count: 32),
                    [nonce, UnsafeRawBufferPointer(start: b, count: body)], out: b + body)
            }
        }
        let len = (raw.count + 2) / 3 * 4
        var out = [CChar](repeating: 0, count: len + 1)
        _ = sodium_bin2base64(&out, len + 1, raw, raw.count, sodium_base64_VARIANT_ORIGINAL)
        return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func decrypt(_ payload: String, key: [UInt8]) -> [UInt8]? {
        let chars = Array(payload.utf8CString)
        var raw = [UInt8](repeating: 0, count: payload.utf8.count / 4 * 3)
        var n = 0
        guard sodium_base642bin(&raw, raw.count, chars, chars.count - 1, nil, &n, nil, sodium_base64_VARIANT_ORIGINAL) == 0,
            n >= 99, raw[0] == 2
        else { return nil }
        return raw.withUnsafeMutableBytes { r -> [UInt8]? in
            let nonce = UnsafeRawBufferPointer(rebasing: r[1..<33])
            let k = keys(key, nonce: nonce)
            let b = r.baseAddress!.assumingMemoryBound(to: UInt8.self) + 33
            let body = n - 65
            var mac = [UInt8](repeating: 0, count: 32)
            return k.withUnsafeBufferPointer { kp -> [UInt8]? in
                RawHMAC.mac(
                    key: UnsafeRawBufferPointer(start: kp.baseAddress! + 44, count: 32),
                    [nonce, UnsafeRawBufferPointer(start: b, count: body)], out: &mac)
                guard sodium_memcmp(mac, b + body, 32) == 0 else { return nil }
                _ = crypto_stream_chacha20_ietf_xor(b, b, UInt64(body), kp.baseAddress! + 32, kp.baseAddress!)
                let first = Int(b[0]) << 8 | Int(b[1])
                let (len, off) = first == 0 ? (Int(b[2]) << 24 | Int(b[3]) << 16 | Int(b[4]) << 8 | Int(b[5]), 6) : (first, 2)
                return Array(UnsafeBufferPointer(start: b + off, count: len))
            }
        }
    }
}

enum RawNIP04 {
    typealias CopyX = @convention(c) (UnsafeMutablePointer<UInt8>?, UnsafePointer<UInt8>?, UnsafePointer<UInt8>?, UnsafeMutableRawPointer?) -> Int32
    nonisolated(unsafe) static let cipher = EVP_CIPHER_fetch(nil, "AES-256-CBC", nil)

    static func shared(_ secret: [UInt8], _ peer: [UInt8], _ ctx: OpaquePointer, _ copyX: CopyX) -> [UInt8] {
        var point = secp256k1_pubkey()
        let compressed = [2] + peer
        _ = secp256k1_ec_pubkey_parse(ctx, &point, compressed, 33)
        var out = [UInt8](repeating: 0, count: 32)
        _ = secp256k1_ecdh(ctx, &out, &point, secret, copyX, nil)
        return out
    }

    static func crypt(_ input: [UInt8], key: [UInt8], iv: [UInt8], encrypt: Bool) -> [UInt8] {
        let c = EVP_CIPHER_CTX_new()
        defer { EVP_CIPHER_CTX_free(c) }
        var out = [UInt8](repeating: 0, count: input.count + 16)
        var a: Int32 = 0, b: Int32 = 0
        _ = EVP_CipherInit_ex2(c, cipher, key, iv, encrypt ? 1 : 0, nil)
        _ = EVP_CipherUpdate(c, &out, &a, input, Int32(input.count))
        out.withUnsafeMutableBufferPointer { o in _ = EVP_CipherFinal_ex(c, o.baseAddress! + Int(a), &b) }
        return Array(out[0..<Int(a + b)])
    }

    static func b64(_ bytes: [UInt8]) -> String {
        let len = (bytes.count + 2) / 3 * 4
        var out = [CChar](repeating: 0, count: len + 1)
        _ = sodium_bin2base64(&out, len + 1, bytes, bytes.count, sodium_base64_VARIANT_ORIGINAL)
        return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func unb64(_ s: Substring) -> [UInt8] {
        let chars = Array(String(s).utf8CString)
        var out = [UInt8](repeating: 0, count: s.utf8.count / 4 * 3)
        var n = 0
        _ = sodium_base642bin(&out, out.count, chars, chars.count - 1, nil, &n, nil, sodium_base64_VARIANT_ORIGINAL)
        return Array(out[0..<n])
    }

    static func encrypt(_ plain: [UInt8], secret: [UInt8], peer: [UInt8], ctx: OpaquePointer, copyX: CopyX) -> String {
        var iv = [UInt8](repeating: 0, count: 16)
        randombytes_buf(&iv, 16)
        let ct = crypt(plain, key: shared(secret, peer, ctx, copyX), iv: iv, encrypt: true)
        return b64(ct) + "?iv=" + b64(iv)
    }

    static func decrypt(_ payload: String, secret: [UInt8], peer: [UInt8], ctx: OpaquePointer, copyX: CopyX) -> [UInt8] {
        // The payloads here have exactly one "?", so a byte search for it is enough.
        let q = payload.utf8.firstIndex(of: UInt8(ascii: "?"))!
        let ct = Substring(payload.utf8[..<q])
        let iv = Substring(payload.utf8[payload.utf8.index(q, offsetBy: 4)...])
        return crypt(unb64(ct), key: shared(secret, peer, ctx, copyX), iv: unb64(iv), encrypt: false)
    }
}
