import DVMExamples
import DVMKit
import Foundation
import NostrCore
import NostrCrypto
import NostrRelay
import NostrService
import NostrServiceTesting
import Testing
import WalletKit

@Suite("dvm-host priced jobs, paid through a wallet-bridge ledger")
struct PricedJobTests {
    @Test("payment-required with an invoice from the host's wallet; the job runs once it is paid; a low bid is refused")
    func priced() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("dvm-priced-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try await withTestRelays(1) { relays in
            let urls = relays.compactMap(\.url)
            let keys = WalletKeys(master: .generate())
            let walletStore = try SQLiteWalletStore(path: directory.appendingPathComponent("wallet.sqlite").path)
            let bridge = try await WalletBridge(
                keys: keys, store: walletStore, backend: LedgerBackend(store: walletStore, nodeKey: try keys.ledgerNodeKey()),
                serviceStore: try SQLiteServiceStore(path: directory.appendingPathComponent("bridge.sqlite").path),
                configuration: runtimeConfiguration(urls), pollInterval: .milliseconds(50), logger: quiet)
            func connect(_ name: String, methods: Set<String>, balance: Int64) async throws -> WalletConnectURI {
                let secret = SecretKey.generate()
                let connection = try await walletStore.addConnection(
                    name: name, clientKey: secret.publicKey, methods: methods, budget: nil, expiresAt: nil, relays: urls, now: .now,
                    walletKey: { try keys.walletKey($0).publicKey })
                if balance > 0 { _ = try await walletStore.credit(connection: connection.id, msat: balance) }
                return WalletConnectURI(wallet: connection.walletKey, relays: urls, secret: secret)
            }
            let hostWallet = try await connect("dvm", methods: ["make_invoice", "lookup_invoice", "notifications"], balance: 0)
            let customerWallet = try await connect("customer", methods: ["pay_invoice"], balance: 100_000)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await bridge.run() }
                defer { group.cancelAll() }
                try await bridge.synchronize()
                try await withTimeout(.seconds(10), "the wallet") { while !bridge.isReady { try await Task.sleep(for: .milliseconds(20)) } }
                try await withHosts(handler: Uppercase(), service: { $0.priceMsat = 21_000 }, wallet: hostWallet, existingRelays: urls) { hosts in
                    let test = hosts[0]
                    let payer = { () -> NIP47Client in
                        var client = NIP47Client(uri: customerWallet)
                        client.timeout = .seconds(20)
                        return client
                    }()
                    let request = try test.client.request(kind: 5050, inputs: [JobInput(data: "paid work", type: .text)], bid: 50_000)
                    let statuses = Statuses()
                    let result = try await test.client.run(request, timeout: .seconds(30)) { feedback in
                        statuses.add(feedback)
                        if feedback.status == "payment-required" {
                            #expect(feedback.amountMsat == 21_000)
                            let bolt11 = try #require(feedback.bolt11)
                            let invoice = try BOLT11Invoice(bolt11)
                            #expect(invoice.amountMsat == 21_000)
                            _ = try await payer.run { try await $0.call("pay_invoice", ["invoice": .string(bolt11)]) }
                        }
                    }
                    #expect(result.content == "PAID WORK")
                    #expect(statuses.all == ["payment-required", "processing"])
                    let amount = try #require(result.event.tags.first { $0.name == "amount" })
                    #expect(amount.value == "21000" && amount.fields.count == 3)
                    let balances = try await walletStore.connections().map { ($0.name, $0.balanceMsat) }
                    #expect(balances.contains { $0 == ("dvm", 21_000) } && balances.contains { $0 == ("customer", 79_000) })

                    let lowBid = try test.client.request(kind: 5050, inputs: [JobInput(data: "cheap", type: .text)], bid: 1_000)
                    await #expect(throws: JobError("the price is 21000 msat; the bid was 1000 msat")) {
                        try await test.client.run(lowBid, timeout: .seconds(10))
                    }
                }
            }
        }
    }
}
