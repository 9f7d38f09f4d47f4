import DVMKit
import NostrCore
import NostrCrypto
import NostrRelay
import NostrServiceTesting
import Synchronization
import Testing
import WalletKit

@Suite("DVMClient: the customer's side trusts only the provider it asked")
struct DVMClientTests {
    let customer = SecretKey.generate()
    let provider = SecretKey.generate()
    let node = SecretKey.generate()

    func bolt11(msat: Int64?, expiry: Int64 = 3600, timestamp: Int64 = Timestamp.now) throws -> String {
        try BOLT11Invoice.make(
            network: .regtest, amountMsat: msat, paymentHash: Bytes32(SecureMemory.randomBytes(32))!,
            paymentSecret: Bytes32(SecureMemory.randomBytes(32))!, description: "job", descriptionHash: nil, expiry: expiry,
            timestamp: timestamp, nodeKey: node
        ).string
    }

    func feedback(
        _ client: DVMClient, by author: SecretKey, amount: Int64, bolt11: String, about request: EventID = EventID(Bytes32([UInt8](repeating: 7, count: 32))!)
    ) throws -> DVMClient.Feedback {
        try client.decode(feedback: EventTemplate(
            kind: NIP90.feedbackKind, content: "",
            tags: [["status", "payment-required"], ["amount", "\(amount)", bolt11], ["e", request.hex], ["p", customer.publicKey.hex]]
        ).sign(with: author))
    }

    @Test("an invoice is paid only if it is the provider's, for the amount it names, within the bid and unexpired")
    func invoiceChecks() throws {
        try withClientPool { client in
            let good = try bolt11(msat: 21_000)
            let invoice = try client.invoice(in: try feedback(client, by: provider, amount: 21_000, bolt11: good), from: provider.publicKey, maximumMsat: 50_000)
            #expect(invoice.string == good && invoice.amountMsat == 21_000)

            func refusal(_ feedback: DVMClient.Feedback, maximum: Int64 = 50_000) -> String? {
                do {
                    _ = try client.invoice(in: feedback, from: provider.publicKey, maximumMsat: maximum)
                    return nil
                } catch let error as JobError {
                    return error.reason
                } catch {
                    return "\(error)"
                }
            }
            let stranger = SecretKey.generate()
            #expect(refusal(try feedback(client, by: stranger, amount: 21_000, bolt11: good))?.contains("not from the provider") == true)
            #expect(refusal(try feedback(client, by: provider, amount: 1_000, bolt11: good)) == "the invoice is for 21000 msat, the feedback asks 1000")
            #expect(refusal(try feedback(client, by: provider, amount: 21_000, bolt11: good), maximum: 20_000)
                == "the invoice is for 21000 msat, more than the 20000 msat allowed")
            #expect(refusal(try feedback(client, by: provider, amount: 21_000, bolt11: try bolt11(msat: nil))) == "the invoice names no amount")
            let stale = try bolt11(msat: 21_000, expiry: 60, timestamp: Timestamp.now - 120)
            #expect(refusal(try feedback(client, by: provider, amount: 21_000, bolt11: stale)) == "the invoice has expired")
            #expect(refusal(try feedback(client, by: provider, amount: 21_000, bolt11: "lnbc1garbage"))?.hasPrefix("the invoice is unreadable") == true)
        }
    }

    @Test("for a request to a provider, a stranger's feedback and result are ignored; the provider's result is returned")
    func onlyTheProvider() async throws {
        try await withTestRelays(1) { relays in
            let urls = relays.compactMap(\.url)
            var configuration = RelayPool.Configuration()
            configuration.reconnectDelay = .milliseconds(50)
            let pool = RelayPool(relays: urls, configuration: configuration, logger: quiet)
            let client = DVMClient(secret: customer, pool: pool)
            let request = try client.request(kind: 5050, inputs: [JobInput(data: "hello", type: .text)], provider: provider.publicKey)
            let stranger = SecretKey.generate()
            let seen = Mutex<[String]>([])
            try await pool.withRunning {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        // Once the request is on the relay: a stranger's error and result, then the provider's result.
                        try await withDeadline(.seconds(30), "the request on the relay") {
                            while try await pool.fetch([Filter(ids: [request.id])], timeout: .seconds(2)).isEmpty {
                                try await Task.sleep(for: .milliseconds(20))
                            }
                        }
                        let about: [NostrCore.Tag] = [["e", request.id.hex], ["p", customer.publicKey.hex]]
                        let events = [
                            EventTemplate(kind: NIP90.feedbackKind, content: "", tags: [["status", "error", "fake failure"]] + about).sign(with: stranger),
                            EventTemplate(kind: NIP90.resultKind(of: 5050), content: "FORGED", tags: about).sign(with: stranger),
                            EventTemplate(kind: NIP90.resultKind(of: 5050), content: "HELLO", tags: about).sign(with: provider),
                        ]
                        for event in events {
                            #expect(await pool.publish(event, timeout: .seconds(5)).values.allSatisfy(\.isAccepted))
                        }
                    }
                    let result = try await client.run(request, timeout: .seconds(10)) { feedback in seen.withLock { $0.append(feedback.status) } }
                    #expect(result.content == "HELLO")
                    #expect(result.event.pubkey == provider.publicKey)
                    try await group.waitForAll()
                }
            }
            #expect(seen.withLock { $0 }.isEmpty)
        }
    }

    /// A client whose pool is never run (for checks that need no relay).
    func withClientPool(_ body: (DVMClient) throws -> Void) throws {
        try body(DVMClient(secret: customer, pool: RelayPool(logger: quiet)))
    }
}
