import ArgumentParser
import Foundation
import NostrCore
import NostrCrypto
import WalletKit

struct BOLT11Command: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bolt11", abstract: "Decode a Lightning invoice (BOLT11), checking its signature; prints JSON.")

    @Argument(help: "The invoice (lnbc…, with or without lightning:).") var invoice: String

    func run() throws {
        try reportingErrors {
            let decoded = try BOLT11Invoice(invoice)
            var object: [String: JSONValue] = [
                "network": .string(decoded.network.name), "timestamp": .number("\(decoded.timestamp)"),
                "payment_hash": .string(decoded.paymentHash.hex), "expiry": .number("\(decoded.expiry)"),
                "min_final_cltv_expiry": .number("\(decoded.minFinalCLTVExpiry)"), "payee": .string(Hex.encode(decoded.payee)),
            ]
            if let amount = decoded.amountMsat { object["amount_msat"] = .number("\(amount)") }
            if let secret = decoded.paymentSecret { object["payment_secret"] = .string(secret.hex) }
            if let description = decoded.description { object["description"] = .string(description) }
            if let hash = decoded.descriptionHash { object["description_hash"] = .string(hash.hex) }
            var writer = JSONWriter()
            writer.value(.object(object))
            IO.writeLine(writer.text)
        }
    }
}

struct NWCCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nwc",
        abstract: "Call a NIP-47 wallet through a nostr+walletconnect:// URI; prints the result as JSON.",
        discussion: """
            PARAMS is a JSON object, e.g. '{"amount":21000,"description":"coffee"}' for make_invoice or \
            '{"invoice":"lnbc…"}' for pay_invoice. The URI holds a secret: pass it through NWC_URI (or a file \
            with --uri-file) rather than the command line on shared machines. An error response prints \
            CODE: message on stderr and exits with 1.
            """)

    @Option(help: "Read the URI from this file instead of the NWC_URI environment variable.") var uriFile: String?
    @Option(help: "Seconds to wait for the response.") var timeout: Int = 60
    @Flag(help: "Send NIP-04 requests (for old wallet services).") var nip04 = false
    @Argument(help: "The method: get_info, get_balance, make_invoice, pay_invoice, lookup_invoice, list_transactions, get_budget…")
    var method: String
    @Argument(help: "The params, as a JSON object (default {}).") var params: String = "{}"

    func run() async throws {
        try await reportingErrors {
            let text: String
            if let uriFile {
                text = try String(contentsOfFile: uriFile, encoding: .utf8)
            } else if let value = ProcessInfo.processInfo.environment["NWC_URI"] {
                text = value
            } else {
                throw CommandFailure("set NWC_URI, or pass --uri-file")
            }
            guard case .object(let values) = try JSON.parse(params) else { throw CommandFailure("PARAMS must be a JSON object") }
            var client = NIP47Client(uri: try WalletConnectURI(text))
            client.timeout = .seconds(max(1, timeout))
            client.encryption = nip04 ? .nip04 : .nip44
            let result: JSONValue
            do {
                result = try await client.run { try await $0.call(method, values) }
            } catch let error as NIP47Error {
                throw CommandFailure(error.description)
            }
            var writer = JSONWriter()
            writer.value(result)
            IO.writeLine(writer.text)
        }
    }
}
