public import NostrCrypto

/// A Lightning invoice (BOLT11): decoded and checked (the signature must recover the payee), or made and
/// signed with a node key.
public struct BOLT11Invoice: Sendable, Hashable {
    /// The chain an invoice is for, from its prefix.
    public enum Network: String, Sendable, CaseIterable {
        case mainnet = "bc"
        case testnet = "tb"
        case signet = "tbs"
        case regtest = "bcrt"

        /// The NIP-47 `get_info` name.
        public var name: String {
            switch self {
            case .mainnet: "mainnet"
            case .testnet: "testnet"
            case .signet: "signet"
            case .regtest: "regtest"
            }
        }
    }

    /// The invoice as text (lowercase).
    public let string: String
    public let network: Network
    /// The amount asked for, if the invoice names one.
    public let amountMsat: Int64?
    /// When it was made (unix seconds).
    public let timestamp: Int64
    public let paymentHash: Bytes32
    public let paymentSecret: Bytes32?
    public let description: String?
    public let descriptionHash: Bytes32?
    /// Seconds after ``timestamp`` during which it may be paid (3600 when the invoice does not say).
    public let expiry: Int64
    public let minFinalCLTVExpiry: Int64
    /// The payee node's compressed public key (33 bytes).
    public let payee: [UInt8]

    /// When it stops being payable.
    public var expiresAt: Int64 { timestamp + expiry }

    /// The longest invoice accepted (a bound on the work a hostile string causes).
    public static let maximumLength = 8_000

    /// Decodes and checks `text` (the `lightning:` prefix is allowed): checksum, fields, and the signature,
    /// which must come from the `n` field's key when there is one.
    public init(_ text: String) throws {
        var text = text.trimmingPrefix("lightning:")
        if text.hasPrefix("LIGHTNING:") { text = text.dropFirst(10) }
        let (hrp, words) = try Bech32.decodeWords(String(text), maximumLength: Self.maximumLength)
        guard hrp.hasPrefix("ln") else { throw BOLT11Error("not a Lightning invoice (the prefix is not ln)") }
        // Longest prefix first: bcrt before bc, tbs before tb.
        let rest = hrp.dropFirst(2)
        guard let network = [Network.regtest, .mainnet, .signet, .testnet].first(where: { rest.hasPrefix($0.rawValue) }) else {
            throw BOLT11Error("unknown currency prefix in '\(hrp)'")
        }
        self.network = network
        self.amountMsat = try Self.parseAmount(rest.dropFirst(network.rawValue.count))
        // Timestamp (7 words), tagged fields, signature (104 words: 64 bytes and the recovery id).
        guard words.count >= 7 + 104 else { throw BOLT11Error("the invoice is too short") }
        let signatureWords = words.suffix(104)
        let body = Array(words.dropLast(104))
        timestamp = Self.integer(body[0..<7])

        var paymentHash: Bytes32?
        var paymentSecret: Bytes32?
        var description: String?
        var descriptionHash: Bytes32?
        var expiry: Int64 = 3600
        var minFinalCLTVExpiry: Int64 = 18
        var payeeField: [UInt8]?
        var index = 7
        while index < body.count {
            guard index + 3 <= body.count else { throw BOLT11Error("a field is cut short") }
            let type = body[index]
            let length = Int(body[index + 1]) * 32 + Int(body[index + 2])
            index += 3
            guard index + length <= body.count else { throw BOLT11Error("a field runs past the end") }
            let data = body[index..<(index + length)]
            index += length
            // Fields of the wrong length are skipped, as BOLT11 tells readers to.
            switch type {
            case 1 where length == 52: paymentHash = Bytes32(Self.bytes(data))
            case 16 where length == 52: paymentSecret = Bytes32(Self.bytes(data))
            case 23 where length == 52: descriptionHash = Bytes32(Self.bytes(data))
            case 19 where length == 53: payeeField = Array(Self.bytes(data).prefix(33))
            case 13:
                guard let text = String(validating: Self.bytes(data), as: UTF8.self) else {
                    throw BOLT11Error("the description is not UTF-8")
                }
                description = text
            case 6:
                guard length <= 12 else { throw BOLT11Error("the expiry is too large") }
                expiry = Self.integer(data)
            case 24:
                guard length <= 12 else { throw BOLT11Error("the final CLTV delta is too large") }
                minFinalCLTVExpiry = Self.integer(data)
            default: break
            }
        }
        guard let paymentHash else { throw BOLT11Error("the invoice has no payment hash") }
        guard description != nil || descriptionHash != nil else {
            throw BOLT11Error("the invoice has neither a description nor a description hash")
        }
        self.paymentHash = paymentHash
        self.paymentSecret = paymentSecret
        self.description = description
        self.descriptionHash = descriptionHash
        self.expiry = expiry
        self.minFinalCLTVExpiry = minFinalCLTVExpiry

        let signatureBytes = Self.bytes(signatureWords)
        guard signatureBytes.count == 65 else { throw BOLT11Error("the signature is malformed") }
        let signature = try ECDSA.RecoverableSignature(compact: Array(signatureBytes[0..<64]), recoveryID: Int(signatureBytes[64]))
        let digest = Self.signingDigest(hrp: hrp, body: body)
        let recovered: [UInt8]
        do {
            recovered = try ECDSA.recover(signature, digest: digest)
        } catch {
            throw BOLT11Error("the signature is invalid")
        }
        if let payeeField, payeeField != recovered {
            throw BOLT11Error("the signature is not by the payee the invoice names")
        }
        payee = recovered
        string = String(text).lowercased()
    }

    /// Makes an invoice signed by `nodeKey`. Give `description` or `descriptionHash`.
    public static func make(
        network: Network, amountMsat: Int64?, paymentHash: Bytes32, paymentSecret: Bytes32,
        description: String?, descriptionHash: Bytes32?, expiry: Int64, timestamp: Int64,
        minFinalCLTVExpiry: Int64 = 18, nodeKey: SecretKey
    ) throws -> BOLT11Invoice {
        guard description != nil || descriptionHash != nil else {
            throw BOLT11Error("an invoice needs a description or a description hash")
        }
        if let amountMsat, amountMsat <= 0 { throw BOLT11Error("the amount must be positive") }
        guard (0..<(1 << 35)).contains(timestamp), expiry >= 0 else { throw BOLT11Error("timestamp or expiry out of range") }
        let hrp = "ln" + network.rawValue + (amountMsat.map(encodeAmount) ?? "")
        var body = integerWords(timestamp, width: 7)
        func field(_ type: UInt8, _ data: [UInt8]) {
            body += [type, UInt8(data.count / 32), UInt8(data.count % 32)] + data
        }
        func bytesField(_ type: UInt8, _ bytes: [UInt8]) {
            field(type, Bech32.regroup(bytes, from: 8, to: 5, pad: true) ?? [])
        }
        bytesField(1, paymentHash.bytes)
        bytesField(16, paymentSecret.bytes)
        if let descriptionHash {
            bytesField(23, descriptionHash.bytes)
        } else if let description {
            let encoded = Array(description.utf8)
            guard encoded.count <= 639 else { throw BOLT11Error("the description is longer than 639 bytes") }
            bytesField(13, encoded)
        }
        field(6, integerWords(expiry))
        field(24, integerWords(minFinalCLTVExpiry))
        // Features: var_onion_optin (bit 8) and payment_secret (bit 14), both required.
        field(5, integerWords((1 << 8) | (1 << 14)))
        let signature = try ECDSA.signRecoverable(signingDigest(hrp: hrp, body: body), with: nodeKey)
        let words = body + (Bech32.regroup(signature.compact + [UInt8(signature.recoveryID)], from: 8, to: 5, pad: true) ?? [])
        return try BOLT11Invoice(Bech32.encode(hrp: hrp, words: words))
    }

    // MARK: Encoding details

    /// The signed message: the prefix's bytes, then the body's words packed into bytes (zero-padded).
    private static func signingDigest(hrp: String, body: [UInt8]) -> Bytes32 {
        SHA256.hash(Array(hrp.utf8) + (Bech32.regroup(body, from: 5, to: 8, pad: true) ?? []))
    }

    /// Words as bytes, dropping the bits of an incomplete last byte.
    private static func bytes(_ words: some Collection<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(words.count * 5 / 8)
        var accumulator = 0
        var bits = 0
        for word in words {
            accumulator = (accumulator << 5) | Int(word)
            bits += 5
            if bits >= 8 {
                bits -= 8
                out.append(UInt8((accumulator >> bits) & 0xff))
            }
        }
        return out
    }

    private static func integer(_ words: some Collection<UInt8>) -> Int64 {
        words.reduce(0) { $0 << 5 | Int64($1) }
    }

    /// Big-endian base-32 words: exactly `width` of them, or as few as needed.
    private static func integerWords(_ value: Int64, width: Int? = nil) -> [UInt8] {
        var words: [UInt8] = []
        var rest = value
        while rest > 0 || (width.map { words.count < $0 } ?? false) {
            words.insert(UInt8(rest & 31), at: 0)
            rest >>= 5
            if let width, words.count == width { break }
        }
        return words
    }

    /// Msat per unit of each multiplier (pico is a tenth of a msat).
    private static func parseAmount(_ text: Substring) throws -> Int64? {
        guard !text.isEmpty else { return nil }
        var digits = text
        var multiplier: Character?
        if let last = text.last, "munp".contains(last) {
            multiplier = last
            digits = text.dropLast()
        }
        // A pico amount is ten times the msat, so it is read without its last digit (which must be 0): 21 million
        // bitcoin in pBTC has 20 digits.
        guard !digits.isEmpty, digits.count <= (multiplier == "p" ? 20 : 18), digits.allSatisfy(\.isASCIIDigit) else {
            throw BOLT11Error("the amount '\(text)' is malformed")
        }
        if multiplier == "p" {
            guard digits.last == "0" else { throw BOLT11Error("a pico amount must be a whole number of msat") }
            digits = digits.dropLast()
        }
        guard let value = Int64(digits), value > 0 else { throw BOLT11Error("the amount '\(text)' is malformed") }
        let result: (Int64, Bool)
        switch multiplier {
        case "m": result = value.multipliedReportingOverflow(by: 100_000_000)
        case "u": result = value.multipliedReportingOverflow(by: 100_000)
        case "n": result = value.multipliedReportingOverflow(by: 100)
        case "p": result = (value, false)
        default: result = value.multipliedReportingOverflow(by: 100_000_000_000)
        }
        guard !result.1, result.0 <= NIP47.maximumAmountMsat else { throw BOLT11Error("the amount is more than 21 million bitcoin") }
        return result.0
    }

    /// The shortest exact form: whole mBTC, µBTC or nBTC where possible, else pBTC.
    private static func encodeAmount(_ msat: Int64) -> String {
        if msat % 100_000_000 == 0 { return "\(msat / 100_000_000)m" }
        if msat % 100_000 == 0 { return "\(msat / 100_000)u" }
        if msat % 100 == 0 { return "\(msat / 100)n" }
        return "\(msat)0p"
    }
}

/// Why an invoice was refused.
public struct BOLT11Error: Error, Hashable, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "invalid invoice: \(message)" }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}
