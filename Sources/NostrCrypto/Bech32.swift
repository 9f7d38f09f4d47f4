/// Bech32 (BIP-173; not bech32m), as NIP-19 and NIP-49 use it.
///
/// Nostr strings exceed BIP-173's 90-character limit (TLV entities, `ncryptsec`), so the limit is a
/// parameter: ``defaultMaximumLength`` by default, which bounds the work a hostile string can cause.
public enum Bech32 {
    /// The default upper bound on an encoded string's length.
    public static let defaultMaximumLength = 5_000

    static let charset: [UInt8] = Array("qpzry9x8gf2tvdw0s3jn54khce6mua7l".utf8)
    static let reverse: [Int8] = {
        var table = [Int8](repeating: -1, count: 128)
        for (i, c) in charset.enumerated() {
            table[Int(c)] = Int8(i)
            // Decoding accepts an all-uppercase string too.
            if c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z") { table[Int(c - 32)] = Int8(i) }
        }
        return table
    }()

    private static func polymod(_ values: [UInt8]) -> UInt32 {
        let generator: [UInt32] = [0x3b6a_57b2, 0x2650_8e6d, 0x1ea1_19fa, 0x3d42_33dd, 0x2a14_62b3]
        var chk: UInt32 = 1
        for v in values {
            let top = chk >> 25
            chk = (chk & 0x1ff_ffff) << 5 ^ UInt32(v)
            for i in 0..<5 where (top >> UInt32(i)) & 1 == 1 { chk ^= generator[i] }
        }
        return chk
    }

    private static func expand(_ hrp: [UInt8]) -> [UInt8] {
        hrp.map { $0 >> 5 } + [0] + hrp.map { $0 & 31 }
    }

    /// Regroups bits (8 → 5 when encoding, 5 → 8 when decoding).
    static func convertBits(_ data: some Sequence<UInt8>, from: Int, to: Int, pad: Bool) -> [UInt8]? {
        var acc = 0
        var bits = 0
        var result = [UInt8]()
        let maxValue = (1 << to) - 1
        for value in data {
            guard Int(value) >> from == 0 else { return nil }
            acc = (acc << from) | Int(value)
            bits += from
            while bits >= to {
                bits -= to
                result.append(UInt8((acc >> bits) & maxValue))
            }
        }
        if pad {
            if bits > 0 { result.append(UInt8((acc << (to - bits)) & maxValue)) }
        } else if bits >= from || ((acc << (to - bits)) & maxValue) != 0 {
            return nil
        }
        return result
    }

    /// Encodes `data` (8-bit bytes) under the human-readable part `hrp` (lowercase).
    public static func encode(hrp: String, data: some Sequence<UInt8>) -> String {
        encode(hrp: hrp, words: convertBits(data, from: 8, to: 5, pad: true) ?? [])
    }

    /// Encodes 5-bit `words` (each below 32) under `hrp` (lowercase), for formats that pack their own bits
    /// (BOLT11 invoices).
    public static func encode(hrp: String, words: [UInt8]) -> String {
        let hrpBytes = Array(hrp.utf8)
        let checksumInput = expand(hrpBytes) + words + [0, 0, 0, 0, 0, 0]
        let mod = polymod(checksumInput) ^ 1
        var out = hrpBytes
        out.append(UInt8(ascii: "1"))
        for v in words { out.append(charset[Int(v & 31)]) }
        for i in 0..<6 { out.append(charset[Int((mod >> UInt32(5 * (5 - i))) & 31)]) }
        return String(decoding: out, as: UTF8.self)
    }

    /// Regroups bits: 8 → 5 to pack bytes into words, 5 → 8 to unpack (nil on values out of range or, without
    /// `pad`, on non-zero padding).
    public static func regroup(_ data: some Sequence<UInt8>, from: Int, to: Int, pad: Bool) -> [UInt8]? {
        convertBits(data, from: from, to: to, pad: pad)
    }

    /// Decodes a bech32 string into its lowercase human-readable part and 8-bit data.
    public static func decode(_ text: String, maximumLength: Int = defaultMaximumLength) throws -> (hrp: String, data: [UInt8]) {
        let (hrp, words) = try decodeWords(text, maximumLength: maximumLength)
        guard let data = convertBits(words, from: 5, to: 8, pad: false) else {
            throw CryptoError(.invalidParameter, "bech32 data has invalid padding")
        }
        return (hrp, data)
    }

    /// Decodes a bech32 string into its lowercase human-readable part and its 5-bit words (checksum removed).
    public static func decodeWords(_ text: String, maximumLength: Int = defaultMaximumLength) throws -> (hrp: String, words: [UInt8]) {
        let bytes = Array(text.utf8)
        guard bytes.count <= maximumLength else {
            throw CryptoError(.invalidParameter, "bech32 string longer than \(maximumLength) characters")
        }
        let hasLower = bytes.contains { $0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "z") }
        let hasUpper = bytes.contains { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") }
        guard !(hasLower && hasUpper) else {
            throw CryptoError(.invalidParameter, "bech32 string mixes upper and lower case")
        }
        guard let separator = bytes.lastIndex(of: UInt8(ascii: "1")), separator >= 1, bytes.count - separator - 1 >= 6
        else {
            throw CryptoError(.invalidParameter, "not a bech32 string (no separator or too short)")
        }
        var hrp = [UInt8]()
        for c in bytes[..<separator] {
            guard c >= 33 && c <= 126 else {
                throw CryptoError(.invalidParameter, "bech32 prefix has an invalid character")
            }
            hrp.append(c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z") ? c + 32 : c)
        }
        var values = [UInt8]()
        values.reserveCapacity(bytes.count - separator - 1)
        for c in bytes[(separator + 1)...] {
            guard c < 128, reverse[Int(c)] >= 0 else {
                throw CryptoError(.invalidParameter, "bech32 data has an invalid character")
            }
            values.append(UInt8(reverse[Int(c)]))
        }
        guard polymod(expand(hrp) + values) == 1 else {
            throw CryptoError(.invalidParameter, "bech32 checksum does not match")
        }
        return (String(decoding: hrp, as: UTF8.self), Array(values.dropLast(6)))
    }
}

extension PublicKey {
    /// The NIP-19 `npub` form.
    public var npub: String { Bech32.encode(hrp: "npub", data: bytes32.bytes) }

    /// Parses a NIP-19 `npub` (format only; see ``isOnCurve``).
    public init(npub: String) throws {
        let (hrp, data) = try Bech32.decode(npub)
        guard hrp == "npub" else { throw CryptoError(.invalidParameter, "expected an npub, found '\(hrp)'") }
        guard let bytes = Bytes32(data) else { throw CryptoError(.invalidParameter, "an npub holds 32 bytes") }
        self.init(bytes)
    }

    /// Parses hex or `npub`, as people type them.
    public init(hexOrNpub text: String) throws {
        if text.lowercased().hasPrefix("npub1") {
            try self.init(npub: text)
        } else {
            try self.init(hex: text)
        }
    }
}

extension SecretKey {
    /// The NIP-19 `nsec` form: for deliberate export only (a `String` cannot be zeroed).
    public func exportNsec() -> String {
        withUnsafeSecretBytes { Bech32.encode(hrp: "nsec", data: $0) }
    }

    /// Parses a NIP-19 `nsec`; the decoded temporary is zeroed.
    public init(nsec: String) throws {
        var (hrp, data) = try Bech32.decode(nsec)
        defer { zero(&data) }
        guard hrp == "nsec" else { throw CryptoError(.invalidParameter, "expected an nsec, found '\(hrp)'") }
        try self = data.withUnsafeBytes { try SecretKey(bytes: $0) }
    }

    /// Parses hex or `nsec`, as people type them.
    public init(hexOrNsec text: String) throws {
        if text.lowercased().hasPrefix("nsec1") {
            try self.init(nsec: text)
        } else {
            try self.init(hex: text)
        }
    }
}
