import ArgumentParser
import DVMKit
import Foundation
import NostrCore
import NostrCrypto
import NostrRelay
import NostrService
import Synchronization
import WalletKit

struct DVMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dvm",
        abstract: "Send a NIP-90 job request and wait for its result (the customer's side of dvm-host).",
        discussion: """
            Each feedback is printed on stderr (`feedback STATUS [INFO]`); the result's content goes to stdout. \
            Inputs are TYPE:DATA with TYPE text, url, event or job (event and job take an id; add @RELAY for a \
            hint). With --pay (which needs --to and --bid), the provider's payment-required feedback is paid once \
            through the NIP-47 wallet in NWC_URI, if its invoice is for the amount it names and at most the bid; \
            feedback and results from anyone but --to are ignored.
            """)

    @OptionGroup var pool: PoolOptions
    @Option(help: "The job kind (5000–5999).") var kind: UInt16
    @Option(help: "An input, TYPE:DATA (repeat for several).") var input: [String] = []
    @Option(help: "A parameter, NAME=VALUE (repeat for several).") var param: [String] = []
    @Option(help: "The output MIME type wanted.") var output: String?
    @Option(help: ArgumentHelp("The service provider's public key (hex or npub): the request is p-tagged to it.", valueName: "PUBKEY"))
    var to: String?
    @Option(help: "Encrypt the inputs and parameters to --to: nip44 or nip04.") var encrypt: String?
    @Option(help: "The most to pay, in msat (the bid tag).") var bid: Int64?
    @Flag(help: "Pay the provider's payment-required feedback (once, at most --bid) through the wallet in NWC_URI.") var pay = false
    @Option(help: "Seconds to wait for the result.") var timeout: Int = 120
    @Flag(help: "Print the result event as JSON instead of its content.") var json = false

    func run() async throws {
        try await reportingErrors {
            guard NIP90.isRequestKind(Kind(kind)) else { throw CommandFailure("--kind must be 5000–5999") }
            let inputs = try input.map(Self.parseInput)
            let parameters = try param.map { text -> JobParameter in
                guard let equals = text.firstIndex(of: "=") else { throw CommandFailure("a --param is NAME=VALUE") }
                return JobParameter(name: String(text[..<equals]), values: [String(text[text.index(after: equals)...])])
            }
            let provider = try to.map(parsePublicKey)
            let encryption: PayloadEncryption
            switch encrypt {
            case nil: encryption = .plaintext
            case "nip44": encryption = .nip44
            case "nip04": encryption = .nip04
            default: throw CommandFailure("--encrypt takes nip44 or nip04")
            }
            if encryption != .plaintext && provider == nil { throw CommandFailure("--encrypt needs --to") }
            if pay && (provider == nil || bid == nil) {
                throw CommandFailure("--pay needs --to (whose invoice is paid) and --bid (the most to pay, msat)")
            }
            let wallet = try pay ? NIP47Client(uri: WalletConnectURI(ProcessInfo.processInfo.environment["NWC_URI"] ?? "")) : nil
            let relays = try self.pool.makePool()
            let client = DVMClient(secret: SecretKey.generate(), pool: relays)
            let paid = Mutex<Bytes32?>(nil)
            let result = try await relays.withRunning {
                let request = try client.request(
                    kind: Kind(kind), inputs: inputs, parameters: parameters, output: output, provider: provider, encryption: encryption,
                    bid: bid)
                FileHandle.standardError.write(Data("request \(request.id.hex)\n".utf8))
                return try await client.run(request, timeout: .seconds(max(1, timeout))) { feedback in
                    let amount = feedback.amountMsat.map { " amount=\($0)msat" } ?? ""
                    // What a provider wrote, on the user's terminal: escaped.
                    let line = "feedback \(feedback.status)\(feedback.info.map { " \($0)" } ?? "")\(amount)".escapingControlCharacters
                    FileHandle.standardError.write(Data((line + "\n").utf8))
                    if feedback.status == "payment-required", let wallet, let provider, let bid {
                        guard paid.withLock({ $0 == nil }) else {
                            FileHandle.standardError.write(Data("already paid this job; not paying again\n".utf8))
                            return
                        }
                        let invoice = try client.invoice(in: feedback, from: provider, maximumMsat: bid)
                        _ = try await wallet.run { try await $0.call("pay_invoice", ["invoice": .string(invoice.string)]) }
                        paid.withLock { $0 = invoice.paymentHash }
                        FileHandle.standardError.write(Data("paid\n".utf8))
                    }
                }
            }
            IO.writeLine(json ? result.event.json : result.content)
        }
    }

    static func parseInput(_ text: String) throws -> JobInput {
        guard let colon = text.firstIndex(of: ":"), let type = JobInput.InputType(rawValue: String(text[..<colon])) else {
            throw CommandFailure("an --input is TYPE:DATA with TYPE text, url, event or job")
        }
        var data = String(text[text.index(after: colon)...])
        var relay: String?
        if type == .event || type == .job, let at = data.firstIndex(of: "@") {
            relay = String(data[data.index(after: at)...])
            data = String(data[..<at])
        }
        return JobInput(data: data, type: type, relay: relay)
    }
}
