import NostrCrypto
import Testing
import WalletKit

@Suite("BOLT11: invoices made and decoded, signatures checked")
struct BOLT11Tests {
    let node = SecretKey.generate()

    func make(
        amount: Int64? = 150_000, description: String? = "coffee", descriptionHash: Bytes32? = nil, network: BOLT11Invoice.Network = .regtest
    ) throws -> (BOLT11Invoice, Bytes32) {
        let hash = SHA256.hash(SecureMemory.randomBytes(32))
        let invoice = try BOLT11Invoice.make(
            network: network, amountMsat: amount, paymentHash: hash, paymentSecret: SHA256.hash([1, 2, 3]),
            description: description, descriptionHash: descriptionHash, expiry: 600, timestamp: 1_750_000_000, nodeKey: node)
        return (invoice, hash)
    }

    @Test("a made invoice decodes to what was put in, and recovers the node key")
    func roundTrip() throws {
        let (invoice, hash) = try make()
        let decoded = try BOLT11Invoice(invoice.string)
        #expect(decoded.string.hasPrefix("lnbcrt1500n1"))
        #expect(decoded.network == .regtest)
        #expect(decoded.amountMsat == 150_000)
        #expect(decoded.paymentHash == hash)
        #expect(decoded.paymentSecret == SHA256.hash([1, 2, 3]))
        #expect(decoded.description == "coffee")
        #expect(decoded.timestamp == 1_750_000_000)
        #expect(decoded.expiry == 600)
        #expect(decoded.expiresAt == 1_750_000_600)
        #expect(decoded.payee == node.compressedPublicKey)
        #expect(try BOLT11Invoice("lightning:" + invoice.string.uppercased()).paymentHash == hash)
    }

    @Test("amounts take the shortest exact multiplier", arguments: [
        (Int64(1), "lnbcrt10p1"), (1_000, "lnbcrt10n1"), (150_000, "lnbcrt1500n1"), (2_500_000, "lnbcrt25u1"),
        (100_000_000, "lnbcrt1m1"), (123, "lnbcrt1230p1"), (NIP47.maximumAmountMsat - 1, "lnbcrt20999999999999999990p1"),
    ])
    func amounts(msat: Int64, prefix: String) throws {
        let (invoice, _) = try make(amount: msat)
        #expect(invoice.string.hasPrefix(prefix))
        #expect(try BOLT11Invoice(invoice.string).amountMsat == msat)
    }

    @Test("an amount above 21 million bitcoin is refused, up to where msat would overflow")
    func tooLarge() throws {
        let (invoice, _) = try make(amount: 1_000)
        for amount in ["21000000001m", "92233720368m", "2100000000000000001" + "0p"] {
            #expect(throws: BOLT11Error("the amount is more than 21 million bitcoin")) {
                try BOLT11Invoice(invoiceWithAmount(invoice.string, amount))
            }
        }
        #expect(throws: BOLT11Error("a pico amount must be a whole number of msat")) { try BOLT11Invoice(invoiceWithAmount(invoice.string, "1001p")) }
    }

    @Test("no amount, a description hash, and every network prefix")
    func variants() throws {
        let descriptionHash = SHA256.hash(Array("long metadata".utf8))
        let (open, _) = try make(amount: nil, description: nil, descriptionHash: descriptionHash, network: .mainnet)
        let decoded = try BOLT11Invoice(open.string)
        #expect(decoded.amountMsat == nil)
        #expect(decoded.description == nil)
        #expect(decoded.descriptionHash == descriptionHash)
        #expect(open.string.hasPrefix("lnbc1"))
        for network in BOLT11Invoice.Network.allCases {
            #expect(try BOLT11Invoice(try make(network: network).0.string).network == network)
        }
    }

    @Test("a changed character, a forged signature or junk is refused")
    func tampering() throws {
        let (invoice, _) = try make()
        var characters = Array(invoice.string)
        let index = characters.count / 2
        characters[index] = characters[index] == "q" ? "p" : "q"
        #expect(throws: (any Error).self) { try BOLT11Invoice(String(characters)) }

        // A changed amount with a recomputed checksum still decodes, but the signature no longer recovers the
        // node's key: whoever checks the payee sees the forgery.
        let words = try Bech32.decodeWords(invoice.string).words
        let altered = try BOLT11Invoice(Bech32.encode(hrp: "lnbcrt1600n", words: words))
        #expect(altered.amountMsat == 160_000)
        #expect(altered.payee != node.compressedPublicKey)

        for junk in ["", "lnbc", "lnxx1qqqqqq", "npub1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqt0aj7m", String(repeating: "q", count: 9_000)] {
            #expect(throws: (any Error).self) { try BOLT11Invoice(junk) }
        }
    }

    @Test("budget periods are calendar-aligned in UTC")
    func periods() {
        // 2026-11-21 (a Saturday) 15:30:00 UTC.
        let time: Int64 = 1_795_275_000
        #expect(BudgetPeriod.daily.start(containing: time) == 1_795_219_200)
        #expect(BudgetPeriod.daily.renewal(after: time) == 1_795_305_600)
        #expect(BudgetPeriod.weekly.start(containing: time) == 1_794_787_200)  // Monday 16 November
        #expect(BudgetPeriod.monthly.start(containing: time) == 1_793_491_200)  // 1 November
        #expect(BudgetPeriod.yearly.start(containing: time) == 1_767_225_600)  // 1 January 2026
        #expect(BudgetPeriod.never.start(containing: time) == 0)
        #expect(BudgetPeriod.never.renewal(after: time) == nil)
    }
}

/// `invoice` with its amount replaced by `amount`: a valid checksum; the payee recovered from the signature is
/// then some other key, which a decoder cannot tell without the invoice's `n` field.
func invoiceWithAmount(_ invoice: String, _ amount: String) throws -> String {
    let (hrp, words) = try Bech32.decodeWords(invoice, maximumLength: BOLT11Invoice.maximumLength)
    let network = hrp.prefix { !$0.isNumber }
    return Bech32.encode(hrp: String(network) + amount, words: words)
}
