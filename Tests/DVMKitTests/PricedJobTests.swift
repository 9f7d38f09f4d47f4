import DVMExamples
import DVMKit
import Foundation
import NostrCore
import NostrCrypto
import NostrRelay
import NostrService
import NostrServiceTesting
import ServiceLifecycleTestKit
import Synchronization
import Testing
import WalletKit

@Suite("dvm-host priced jobs, paid through a wallet-bridge ledger")
struct PricedJobTests {
    /// A wallet bridge with a ledger on one test relay: the host's connection (invoices) and a customer's
    /// (100,000 msat to pay with).
    struct Wallet {
        let urls: [RelayURL]
        let store: SQLiteWalletStore
        let host: WalletConnectURI
        let directory: URL
        let payer: NIP47Client

        /// Pays a `payment-required` feedback's invoice after checking it is for 21,000 msat.
        func pay(_ feedback: DVMClient.Feedback) async throws {
            guard feedback.status == "payment-required" else { return }
            #expect(feedback.amountMsat == 21_000)
            let bolt11 = try #require(feedback.bolt11)
            #expect(try BOLT11Invoice(bolt11).amountMsat == 21_000)
            _ = try await payer.run { try await $0.call("pay_invoice", ["invoice": .string(bolt11)]) }
        }
    }

    func withWallet(_ body: @escaping @Sendable (Wallet) async throws -> Void) async throws {
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
            var payer = NIP47Client(uri: try await connect("customer", methods: ["pay_invoice"], balance: 100_000))
            payer.timeout = .seconds(20)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await bridge.run() }
                defer { group.cancelAll() }
                try await bridge.synchronize()
                try await withTimeout(.seconds(30), "the wallet") { while !bridge.isReady { try await Task.sleep(for: .milliseconds(20)) } }
                try await body(Wallet(urls: urls, store: walletStore, host: hostWallet, directory: directory, payer: payer))
            }
        }
    }

    @Test("payment-required with an invoice from the host's wallet; the job runs once it is paid, and again without a second invoice; a low bid is refused")
    func priced() async throws {
        try await withWallet { wallet in
            let walletStore = wallet.store
            let hostStore = try SQLiteServiceStore(path: wallet.directory.appendingPathComponent("host.sqlite").path)
            try await withHosts(
                handler: Uppercase(), service: { $0.priceMsat = 21_000 }, wallet: wallet.host, stores: [hostStore], existingRelays: wallet.urls
            ) { hosts in
                let test = hosts[0]
                let request = try test.client.request(kind: 5050, inputs: [JobInput(data: "paid work", type: .text)], bid: 50_000)
                let statuses = Statuses()
                let result = try await test.client.run(request, timeout: .seconds(30)) { feedback in
                    statuses.add(feedback)
                    try await wallet.pay(feedback)
                }
                #expect(result.content == "PAID WORK")
                #expect(statuses.all == ["payment-required", "processing"])
                // Paid: the result does not suggest paying again.
                #expect(!result.event.tags.contains { $0.name == "amount" })
                let balances = try await walletStore.connections().map { ($0.name, $0.balanceMsat) }
                #expect(balances.contains { $0 == ("dvm", 21_000) } && balances.contains { $0 == ("customer", 79_000) })

                // The job run again (a restart, another worker) finds its invoice paid: recorded, or, if the
                // record is missing, by the wallet's account even once the invoice has expired.
                let payments = JobPayments(wallet: wallet.host, logger: quiet)
                let job = try JobRequest(request)
                try await withThrowingTaskGroup(of: Void.self) { paying in
                    paying.addTask { try await payments.run() }
                    defer { paying.cancelAll() }
                    let again = try await payments.invoice(for: job, amountMsat: 21_000, store: hostStore)
                    #expect(again.isPaid)
                    var unrecorded = again
                    unrecorded.paid = nil
                    unrecorded.expiresAt = .now - 1
                    try await hostStore.setValue(Array(try JSONEncoder().encode(unrecorded)), forKey: job.id.hex, in: "dvm.invoices")
                    let found = try await payments.invoice(for: job, amountMsat: 21_000, store: hostStore)
                    #expect(found.isPaid && found.bolt11 == again.bolt11)
                    // Recorded this time: no lookup needed next time.
                    let stored = try #require(try await hostStore.value(job.id.hex, in: "dvm.invoices"))
                    #expect(try JSONDecoder().decode(JobPayments.Invoice.self, from: Data(stored)).isPaid)
                    // At another price now (a restart with a new --price-msats): still paid, no new invoice.
                    let repriced = try await payments.invoice(for: job, amountMsat: 30_000, store: hostStore)
                    #expect(repriced.isPaid && repriced.bolt11 == again.bolt11)

                    // An invoice replaced as it was about to expire, then paid late: the job is paid.
                    let other = try JobRequest(try test.client.request(kind: 5050, inputs: [JobInput(data: "late", type: .text)], bid: 50_000))
                    var expiring = try await payments.invoice(for: other, amountMsat: 21_000, store: hostStore)
                    #expect(!expiring.isPaid)
                    expiring.expiresAt = .now + 10
                    try await hostStore.setValue(Array(try JSONEncoder().encode(expiring)), forKey: other.id.hex, in: "dvm.invoices")
                    let replacement = try await payments.invoice(for: other, amountMsat: 21_000, store: hostStore)
                    #expect(replacement.bolt11 != expiring.bolt11 && replacement.earlier?.first?.bolt11 == expiring.bolt11)
                    #expect(try await payments.paidInvoice(for: other, store: hostStore) == nil)
                    // A job waiting on the new invoice sees the old one paid.
                    async let waited = payments.waitUntilPaid(replacement, deadline: .now + .seconds(60))
                    try await Task.sleep(for: .milliseconds(300))
                    _ = try await wallet.payer.run { try await $0.call("pay_invoice", ["invoice": .string(expiring.bolt11)]) }
                    #expect(try await waited)
                    let late = try #require(try await payments.paidInvoice(for: other, store: hostStore))
                    #expect(late.isPaid && late.bolt11 == expiring.bolt11)
                    #expect(try await payments.invoice(for: other, amountMsat: 21_000, store: hostStore).isPaid)
                }

                let lowBid = try test.client.request(kind: 5050, inputs: [JobInput(data: "cheap", type: .text)], bid: 1_000)
                await #expect(throws: JobError("the price is 21000 msat; the bid was 1000 msat")) {
                    try await test.client.run(lowBid, timeout: .seconds(10))
                }
            }
        }
    }

    @Test("at most maximumAwaitingPayment jobs wait for payment at once; the next is told to try later, and paying frees the place")
    func awaitingPaymentBound() async throws {
        try await withWallet { wallet in
            let hostStore = try SQLiteServiceStore(path: wallet.directory.appendingPathComponent("host.sqlite").path)
            try await withHosts(
                handler: Uppercase(), service: { $0.priceMsat = 21_000; $0.maximumAwaitingPayment = 1 }, wallet: wallet.host, stores: [hostStore],
                existingRelays: wallet.urls
            ) { hosts in
                let client = hosts[0].client
                let asked = Mutex<DVMClient.Feedback?>(nil)
                let first = try client.request(kind: 5050, inputs: [JobInput(data: "first", type: .text)], bid: 50_000)
                async let firstResult = client.run(first, timeout: .seconds(30)) { feedback in
                    if feedback.status == "payment-required" { asked.withLock { $0 = feedback } }
                }
                try await withTimeout(.seconds(30), "the first invoice") {
                    while asked.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(50)) }
                }
                let second = try client.request(kind: 5050, inputs: [JobInput(data: "second", type: .text)], bid: 50_000)
                await #expect(throws: JobError("too many jobs are waiting for payment; try again later")) {
                    try await client.run(second, timeout: .seconds(10))
                }
                try await wallet.pay(try #require(asked.withLock { $0 }))
                #expect(try await firstResult.content == "FIRST")
            }
        }
    }

    @Test("graceful shutdown lets a paid job in flight finish: the wallet session stays up until the runtime is done")
    func shutdownFinishesPaidJob() async throws {
        try await withWallet { wallet in
            let store = try SQLiteServiceStore(path: wallet.directory.appendingPathComponent("host.sqlite").path)
            var service = DVMService.Configuration(kinds: [5050])
            service.priceMsat = 21_000
            let host = DVMHost(
                key: LocalServiceKey(.generate()), handler: Recorder(delay: .milliseconds(1500)), store: store, service: service,
                runtime: runtimeConfiguration(wallet.urls), wallet: wallet.host, logger: quiet)
            let pool = RelayPool(relays: wallet.urls, logger: quiet)
            try await pool.withRunning {
                let client = DVMClient(secret: .generate(), pool: pool)
                let request = try client.request(kind: 5050, inputs: [JobInput(data: "in flight", type: .text)], provider: host.publicKey)
                try await testGracefulShutdown { trigger in
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask { try await withDeadline(.seconds(30), "the host to stop") { try await host.run() } }
                        defer { group.cancelAll() }
                        try await withTimeout(.seconds(30), "the host to be ready") {
                            while !host.isReady { try await Task.sleep(for: .milliseconds(20)) }
                        }
                        let statuses = Statuses()
                        let result = try await client.run(request, timeout: .seconds(20)) { feedback in
                            statuses.add(feedback)
                            try await wallet.pay(feedback)
                            // Paid and running (1.5 s): the host is asked to stop.
                            if feedback.status == "processing" { trigger.triggerGracefulShutdown() }
                        }
                        #expect(result.content == "done: in flight")
                        #expect(statuses.all == ["payment-required", "processing"])
                        // The host stops by itself once the job is answered.
                        try await group.next()
                    }
                }
            }
        }
    }
}
