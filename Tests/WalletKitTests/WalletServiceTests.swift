import Foundation
import Synchronization
import Logging
import MetricsTestKit
import NostrCore
import NostrCrypto
import NostrRelay
import NostrService
import NostrServicePostgres
import NostrServiceTesting
import PostgresNIO
import Testing
import WalletKit
import WalletKitPostgres

/// A wallet-bridge with the ledger over test relays (one bridge per replica, on a shared store).
struct TestWallet {
    let bridges: [WalletBridge]
    let keys: WalletKeys
    let relays: [RelayURL]
    /// The bridges' metrics (runtime and wallet).
    let metrics: TestMetrics
    var store: any WalletStore { bridges[0].store }
    var ledger: any LightningBackend { bridges[0].backend }

    /// A new connection (served by the running bridges within their poll interval), funded with `balance`.
    func connect(
        _ name: String, methods: Set<String> = Set(NIP47.coreMethods + ["notifications"]), budget: Budget? = nil, balance: Int64 = 0,
        relays: [RelayURL]? = nil
    ) async throws -> (WalletConnection, NIP47Client) {
        let secret = SecretKey.generate()
        let keys = self.keys
        let connection = try await store.addConnection(
            name: name, clientKey: secret.publicKey, methods: methods, budget: budget, expiresAt: nil, relays: relays ?? self.relays,
            now: .now, walletKey: { try keys.walletKey($0).publicKey })
        if balance > 0 { _ = try await store.credit(connection: connection.id, msat: balance) }
        for bridge in bridges { try await bridge.synchronize() }
        var client = NIP47Client(uri: WalletConnectURI(wallet: connection.walletKey, relays: relays ?? self.relays, secret: secret))
        client.timeout = .seconds(20)
        return (connection, client)
    }

    func invoice(_ connection: WalletConnection, msat: Int64) async throws -> String {
        let made = try await ledger.makeInvoice(
            InvoiceRequest(amountMsat: msat, description: "test", descriptionHash: nil, expiry: 3600, metadata: nil), for: connection, now: .now)
        return try #require(made.invoice)
    }
}

/// Runs `replicas` wallet bridges (one relay each unless `sharedRelays`) over `relayCount` test relays on a
/// fresh store of `backend`, and stops everything however `body` ends. The last `downRelays` of the relays are
/// stopped before the bridges start (they stay in the bridges' relay set, down).
func withWallet<R: Sendable>(
    _ backend: WalletStoreBackend = .sqlite, relays relayCount: Int = 1, downRelays: Int = 0, replicas: Int = 1,
    policy: RequestPolicy.Configuration = RequestPolicy.Configuration(),
    service: WalletService.Configuration = WalletService.Configuration(), maximumConcurrentRequests: Int = 64,
    backend wrap: @escaping @Sendable (LedgerBackend) -> any LightningBackend = { $0 },
    _ body: @escaping @Sendable (TestWallet) async throws -> R
) async throws -> R {
    try await withTestRelays(relayCount) { testRelays in
        let urls = testRelays.compactMap(\.url)
        for relay in testRelays.suffix(downRelays) { await relay.stop() }
        let keys = WalletKeys(master: .generate())
        return try await withStorePairs(backend, count: replicas) { pairs in
            var bridges: [WalletBridge] = []
            let metrics = TestMetrics()
            for (index, (wallet, journal)) in pairs.enumerated() {
                // Each replica listens on its own relay when there are as many relays as replicas.
                var configuration = ServiceRuntime.Configuration(relays: replicas > 1 && relayCount == replicas ? [urls[index]] : urls)
                configuration.pool.reconnectDelay = .milliseconds(50)
                configuration.publishTimeout = .seconds(2)
                configuration.policy = policy
                configuration.metricsFactory = metrics
                configuration.maximumConcurrentRequests = maximumConcurrentRequests
                bridges.append(try await WalletBridge(
                    keys: keys, store: wallet, backend: wrap(LedgerBackend(store: wallet, nodeKey: try keys.ledgerNodeKey())), serviceStore: journal,
                    configuration: configuration, service: service, pollInterval: .milliseconds(50), logger: quiet))
            }
            let wallet = TestWallet(bridges: bridges, keys: keys, relays: urls, metrics: metrics)
            let started = bridges
            return try await withThrowingTaskGroup(of: Void.self) { group in
                for bridge in started { group.addTask { try await bridge.run() } }
                defer { group.cancelAll() }
                try await withDeadline(.seconds(30), "the bridges to be ready") {
                    while !started.allSatisfy(\.isReady) { try await Task.sleep(for: .milliseconds(20)) }
                }
                return try await body(wallet)
            }
        }
    }
}

/// Wallet stores with their runtimes' journals, on one fresh database per backend.
func withStorePairs<R: Sendable>(
    _ backend: WalletStoreBackend, count: Int, _ body: ([(any WalletStore, any ServiceStore)]) async throws -> R
) async throws -> R {
    switch backend {
    case .sqlite:
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let wallet = directory.appendingPathComponent("wallet.sqlite").path
        let service = directory.appendingPathComponent("service.sqlite").path
        return try await body(try (0..<count).map { _ in (try SQLiteWalletStore(path: wallet), try SQLiteServiceStore(path: service)) })
    case .postgres:
        return try await withPostgresDatabase { configuration in
            let stores = (0..<count).map { _ in PostgresServiceStore(configuration: configuration, logger: quiet) }
            return try await withThrowingTaskGroup(of: Void.self) { group in
                for store in stores { group.addTask { await store.run() } }
                defer { group.cancelAll() }
                return try await body(stores.map { (PostgresWalletStore(client: $0.client, logger: quiet), $0) })
            }
        }
    }
}

func expectError(_ code: NIP47.ErrorCode, containing text: String = "", _ body: () async throws -> JSONValue) async {
    do {
        let result = try await body()
        Issue.record("expected \(code.rawValue), got a result: \(result)")
    } catch let error as NIP47Error {
        #expect(error.code == code, "\(error.message)")
        #expect(text.isEmpty || error.message.contains(text), "\(error.message)")
    } catch {
        Issue.record("expected \(code.rawValue), got \(error)")
    }
}

@Suite("wallet-bridge end to end: NIP-47 requests over relays to the ledger")
struct WalletServiceTests {
    @Test("the core methods, from one connection to another, with notifications on both kinds")
    func roundTrip() async throws {
        try await withWallet { wallet in
            let (_, payerClient) = try await wallet.connect("payer", balance: 100_000)
            let (_, payeeClient) = try await wallet.connect("payee")
            try await payeeClient.run { payee in
                try await payerClient.run { session in
                    let info = try #require(try await session.call("get_info").object)
                    #expect(info["network"] == .string("regtest"))
                    #expect(info["methods"]?.array?.contains(.string("pay_invoice")) == true)
                    #expect(try await session.call("get_balance").object?["balance"]?.int64 == 100_000)

                    let made = try #require(try await payee.call("make_invoice", ["amount": .number("21000"), "description": .string("coffee")]).object)
                    #expect(made["state"] == .string("pending"))
                    #expect(made["type"] == .string("incoming"))
                    let invoice = try #require(made["invoice"]?.string)
                    #expect(try BOLT11Invoice(invoice).payee == Hex.decode(info["pubkey"]?.string ?? ""))

                    let paid = try #require(try await session.call("pay_invoice", ["invoice": .string(invoice)]).object)
                    let preimage = try #require(paid["preimage"]?.string.flatMap { Hex.decode($0) })
                    #expect(SHA256.hash(preimage).hex == made["payment_hash"]?.string)
                    #expect(paid["fees_paid"] == .number("0"))

                    #expect(try await session.call("get_balance").object?["balance"]?.int64 == 79_000)
                    #expect(try await payee.call("get_balance").object?["balance"]?.int64 == 21_000)
                    // A retry (a new request: the client lost the answer) gets the same answer; nothing moves.
                    let again = try #require(try await session.call("pay_invoice", ["invoice": .string(invoice)]).object)
                    #expect(again["preimage"] == paid["preimage"] && again["fees_paid"] == paid["fees_paid"])
                    #expect(try await session.call("get_balance").object?["balance"]?.int64 == 79_000)
                    let looked = try #require(try await payee.call("lookup_invoice", ["invoice": .string(invoice)]).object)
                    #expect(looked["state"] == .string("settled"))
                    #expect(looked["settled_at"]?.int64 != nil)
                    let listed = try await session.call("list_transactions", ["limit": .number("5")]).object?["transactions"]?.array ?? []
                    #expect(listed.count == 1)
                    #expect(listed.first?.object?["type"] == .string("outgoing"))

                    // Both sides were told, in both schemes.
                    var received: [Kind] = []
                    for await note in payee.notifications {
                        #expect(note.type == "payment_received")
                        #expect(note.transaction["payment_hash"] == made["payment_hash"])
                        received.append(note.kind)
                        if received.count == 2 { break }
                    }
                    #expect(Set(received) == [NIP47.notificationKind, NIP47.legacyNotificationKind])
                    let sent = await session.notifications.first { _ in true }
                    #expect(sent?.type == "payment_sent")
                }
            }
            func counter(_ label: String, _ dimensions: [(String, String)] = []) -> Int64 {
                (try? wallet.metrics.expectCounter(label, dimensions))?.totalValue ?? 0
            }
            #expect(counter("switchboard_wallet_payments_total", [("outcome", "paid")]) == 1)
            #expect(counter("switchboard_wallet_paid_msat_total") == 21_000)
            #expect(counter("switchboard_wallet_invoices_total") == 1)
            #expect(counter("switchboard_wallet_notifications_total", [("type", "payment_received")]) == 1)
            #expect(counter("switchboard_wallet_notifications_total", [("type", "payment_sent")]) == 1)
        }
    }

    @Test("with one of its relays down, notifications still go out side by side, not one relay timeout after another")
    func notificationsPastADeadRelay() async throws {
        // Each notification event waits for the dead relay: 3 attempts of 2 s plus 1 s and 2 s between them.
        try await withWallet(relays: 2, downRelays: 1) { wallet in
            let (_, payerClient) = try await wallet.connect("payer", balance: 100_000, relays: [wallet.relays[0]])
            let (_, payeeClient) = try await wallet.connect("payee", relays: [wallet.relays[0]])
            try await payeeClient.run { payee in
                try await payerClient.run { session in
                    var hashes: Set<String> = []
                    for index in 0..<4 {
                        let made = try #require(try await payee.call("make_invoice", ["amount": .number("\(1000 + index)")]).object)
                        hashes.insert(try #require(made["payment_hash"]?.string))
                        _ = try await session.call("pay_invoice", ["invoice": .string(try #require(made["invoice"]?.string))])
                    }
                    // One after another, the fourth would come after ~8 s × 2 kinds × 4; side by side, after ~8 s.
                    let received = try await withDeadline(.seconds(20), "the four notifications") {
                        var received: Set<String> = []
                        for await note in payee.notifications where note.kind == NIP47.notificationKind {
                            if let hash = note.transaction["payment_hash"]?.string { received.insert(hash) }
                            if received.count == 4 { break }
                        }
                        return received
                    }
                    #expect(received == hashes)
                }
            }
        }
    }

    @Test("a payment retried after its invoice expired still gets the preimage, and is not paid again")
    func retryAfterExpiry() async throws {
        try await withWallet { wallet in
            let (_, payerClient) = try await wallet.connect("payer", balance: 10_000)
            let (_, payeeClient) = try await wallet.connect("payee")
            try await payeeClient.run { payee in
                try await payerClient.run { session in
                    // Fifteen seconds: long enough to be paid in time on a loaded machine.
                    let brief = try #require(
                        try await payee.call("make_invoice", ["amount": .number("1000"), "expiry": .number("15")]).object?["invoice"]?.string)
                    let first = try await session.call("pay_invoice", ["invoice": .string(brief)])
                    #expect(first.object?["preimage"]?.string?.count == 64)
                    let expiresAt = try BOLT11Invoice(brief).expiresAt
                    while Timestamp.now <= expiresAt { try await Task.sleep(for: .milliseconds(200)) }
                    #expect(try await session.call("pay_invoice", ["invoice": .string(brief)]) == first)
                    #expect(try await session.call("get_balance").object?["balance"]?.int64 == 9_000)
                }
            }
        }
    }

    @Test("a payment still in flight when its invoice expires is answered as in flight, never PAYMENT_FAILED, and not paid again")
    func inFlightPastExpiry() async throws {
        try await withWallet { wallet in
            let (payer, payerClient) = try await wallet.connect("payer", balance: 10_000)
            let (_, payeeClient) = try await wallet.connect("payee")
            try await payeeClient.run { payee in
                try await payerClient.run { session in
                    let brief = try #require(
                        try await payee.call("make_invoice", ["amount": .number("1000"), "expiry": .number("2")]).object?["invoice"]?.string)
                    // The payment as a backend leaves it while the network has not settled it (LNbits, a slow route).
                    let reservation = PaymentReservation(
                        connection: payer.id, invoice: try BOLT11Invoice(brief), amountMsat: 1_000, feeReserveMsat: 0, metadata: nil,
                        debitsLedger: true)
                    guard case .reserved = try await wallet.store.reserve(reservation, now: .now) else {
                        Issue.record("the payment was not reserved")
                        return
                    }
                    let expiresAt = try BOLT11Invoice(brief).expiresAt
                    while Timestamp.now <= expiresAt { try await Task.sleep(for: .milliseconds(200)) }
                    await expectError(.other, containing: "already paying") {
                        try await session.call("pay_invoice", ["invoice": .string(brief)])
                    }
                    #expect(try await session.call("get_balance").object?["balance"]?.int64 == 9_000)
                }
            }
        }
    }

    @Test("payments waiting on the network hold no handling slot: with 2 slots and 3 payments stuck, another connection is answered")
    func slowPaymentsHoldNoSlot() async throws {
        let gate = PaymentGate()
        try await withWallet(maximumConcurrentRequests: 2, backend: { GatedBackend(ledger: $0, gate: gate) }) { wallet in
            let (_, payerClient) = try await wallet.connect("payer", balance: 10_000)
            let (payee, _) = try await wallet.connect("payee")
            let (_, otherClient) = try await wallet.connect("other", balance: 5)
            var invoices: [String] = []
            for _ in 0..<3 { invoices.append(try await wallet.invoice(payee, msat: 100)) }
            let toPay = invoices
            try await payerClient.run { session in
                try await otherClient.run { other in
                    async let paid = withThrowingTaskGroup(of: JSONValue.self) { group in
                        for invoice in toPay { group.addTask { try await session.call("pay_invoice", ["invoice": .string(invoice)]) } }
                        return try await group.reduce(into: []) { $0.append($1) }
                    }
                    try await withDeadline(.seconds(30), "the three payments to reach the network") {
                        while gate.waiting < 3 { try await Task.sleep(for: .milliseconds(20)) }
                    }
                    let balance = try await withDeadline(.seconds(20), "get_balance while the payments wait") {
                        try await other.call("get_balance")
                    }
                    #expect(balance.object?["balance"]?.int64 == 5)
                    gate.open()
                    let results = try await paid
                    #expect(results.count == 3 && results.allSatisfy { $0.object?["preimage"]?.string?.count == 64 })
                }
            }
        }
    }

    @Test("a connection not granted notifications gets none, and neither get_info nor its info event offers them")
    func notificationsGrant() async throws {
        try await withWallet { wallet in
            let (_, payerClient) = try await wallet.connect("payer", balance: 100_000)
            let (quiet, quietClient) = try await wallet.connect("quiet", methods: ["make_invoice", "get_balance"])
            let invoice = try await wallet.invoice(quiet, msat: 5_000)
            try await quietClient.run { session in
                let info = try #require(try await session.call("get_info").object)
                #expect(info["notifications"] == .array([]))
            }
            try await payerClient.run { session in
                _ = try await session.call("pay_invoice", ["invoice": .string(invoice)])
                // The payer (granted them by default) is told; the payee, paid by the same payment, is not.
                let sent = await session.notifications.first { _ in true }
                #expect(sent?.type == "payment_sent")
            }
            let pool = RelayPool(relays: wallet.relays, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
            try await pool.withRunning {
                try await Task.sleep(for: .milliseconds(500))
                let notes = Filter(authors: [quiet.walletKey], kinds: [NIP47.notificationKind, NIP47.legacyNotificationKind])
                #expect(try await pool.fetch([notes], timeout: .seconds(2)).isEmpty)
                let announced = try await pool.fetch([Filter(authors: [quiet.walletKey], kinds: [NIP47.infoKind])], timeout: .seconds(3))
                #expect(announced.count == 1)
                #expect(announced.first?.content.split(separator: " ").contains("notifications") == false)
                #expect(announced.first?.tagValues("notifications").isEmpty == true)
            }
            #expect(try await wallet.store.connection(idOrName: "quiet")?.balanceMsat == 5_000)
        }
    }

    @Test("make_invoice is refused RATE_LIMITED past the connection's unpaid invoices; paying one makes room")
    func unpaidInvoiceCap() async throws {
        var service = WalletService.Configuration()
        service.maximumUnpaidInvoices = 3
        try await withWallet(service: service) { wallet in
            let (_, payer) = try await wallet.connect("payer", balance: 10_000)
            let (_, shop) = try await wallet.connect("shop")
            try await shop.run { session in
                var invoices: [String] = []
                for _ in 0..<3 {
                    invoices.append(try #require(try await session.call("make_invoice", ["amount": .number("1000")]).object?["invoice"]?.string))
                }
                await expectError(.rateLimited) { try await session.call("make_invoice", ["amount": .number("1000")]) }
                try await payer.run { paying in _ = try await paying.call("pay_invoice", ["invoice": .string(invoices[0])]) }
                _ = try await session.call("make_invoice", ["amount": .number("1000")])
            }
            // Concurrent requests from a fresh connection: exactly the cap is made, the rest refused.
            let (_, burst) = try await wallet.connect("burst")
            try await burst.run { session in
                let outcomes = try await withThrowingTaskGroup(of: Bool.self) { group in
                    for _ in 0..<8 {
                        group.addTask {
                            do {
                                _ = try await session.call("make_invoice", ["amount": .number("1000")])
                                return true
                            } catch let error as NIP47Error where error.code == .rateLimited {
                                return false
                            }
                        }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                #expect(outcomes.filter { $0 }.count == 3, "\(outcomes)")
            }
        }
    }

    @Test("list_transactions answers fewer than asked when theirs would make the response too large; paging with offset gets the rest")
    func listBySize() async throws {
        try await withWallet { wallet in
            let (_, client) = try await wallet.connect("shop")
            try await client.run { session in
                let note = String(repeating: "x", count: 3_900)
                var made: Set<String> = []
                for i in 0..<20 {
                    let invoice = try await session.call(
                        "make_invoice", ["amount": .number("1000"), "description": .string("order \(i)"), "metadata": .object(["comment": .string(note)])])
                    made.insert(try #require(invoice.object?["payment_hash"]?.string))
                }
                var listed: [String] = []
                var pages: [Int] = []
                while pages.count < 10 {
                    let page = try #require(try await session.call("list_transactions", ["limit": .number("20"), "offset": .number("\(listed.count)"), "unpaid": .bool(true)])
                        .object?["transactions"]?.array)
                    if page.isEmpty { break }
                    var writer = JSONWriter()
                    writer.value(.array(page))
                    #expect(writer.bytes.count <= 40_000)
                    #expect(page.first?.object?["metadata"]?.object?["comment"] == .string(note))
                    pages.append(page.count)
                    listed += page.compactMap { $0.object?["payment_hash"]?.string }
                }
                #expect(pages.count > 1 && pages[0] < 20, "\(pages)")
                // A negative limit lists nothing (SQLite would read LIMIT -1 as no limit).
                #expect(try await session.call("list_transactions", ["limit": .number("-1"), "unpaid": .bool(true)]).object?["transactions"]?.array?.isEmpty == true)
                #expect(Set(listed) == made && listed.count == 20)
            }
        }
    }

    @Test("a connection revoked while the bridge was stopped: after the restart its deletion names the info event the relays hold")
    func withdrawnAfterRestart() async throws {
        try await withTestRelays(1) { testRelays in
            let urls = testRelays.compactMap(\.url)
            let keys = WalletKeys(master: .generate())
            try await withStorePairs(.sqlite, count: 1) { pairs in
                let (wallet, service) = pairs[0]
                func running<R: Sendable>(_ body: @Sendable () async throws -> R) async throws -> R {
                    var configuration = ServiceRuntime.Configuration(relays: urls)
                    configuration.pool.reconnectDelay = .milliseconds(50)
                    configuration.publishTimeout = .seconds(2)
                    let bridge = try await WalletBridge(
                        keys: keys, store: wallet, backend: LedgerBackend(store: wallet, nodeKey: try keys.ledgerNodeKey()), serviceStore: service,
                        configuration: configuration, pollInterval: .milliseconds(50), logger: quiet)
                    return try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask { try await bridge.run() }
                        defer { group.cancelAll() }
                        try await withDeadline(.seconds(30), "the bridge to be ready") {
                            while !bridge.isReady { try await Task.sleep(for: .milliseconds(20)) }
                        }
                        return try await body()
                    }
                }
                let connection = try await wallet.addConnection(
                    name: "gone", clientKey: SecretKey.generate().publicKey, methods: ["get_balance"], budget: nil, expiresAt: nil, relays: urls,
                    now: .now, walletKey: { try keys.walletKey($0).publicKey })
                let pool = RelayPool(relays: urls, logger: quiet)
                try await pool.withRunning {
                    let info = Filter(authors: [connection.walletKey], kinds: [NIP47.infoKind])
                    let announced = try await running { try await pool.fetch([info], timeout: .seconds(3)) }
                    #expect(announced.count == 1)
                    _ = try await wallet.revoke(idOrName: "gone", now: .now)
                    let deletions = try await running {
                        try await withDeadline(.seconds(30), "the info event's deletion") {
                            while true {
                                let found = try await pool.fetch([Filter(authors: [connection.walletKey], kinds: [.deletion])], timeout: .seconds(2))
                                if !found.isEmpty { return found }
                            }
                        }
                    }
                    #expect(deletions.first?.tagValues("e") == announced.map(\.id.hex))
                    // Dated after what it names (relays such as rust-nostr's ignore an older deletion request).
                    #expect((deletions.first?.createdAt ?? 0) > (announced.first?.createdAt ?? .max))
                    #expect(try await pool.fetch([info], timeout: .seconds(3)).isEmpty)
                }
            }
        }
    }

    @Test("budgets, grants, revocation, bad input and encryption get their NIP-47 errors")
    func errors() async throws {
        var policy = RequestPolicy.Configuration()
        policy.rate = 1
        policy.burst = 40
        try await withWallet(policy: policy) { wallet in
            let (payer, client) = try await wallet.connect("payer", budget: Budget(msat: 5_000, period: .daily), balance: 100_000)
            let (payee, _) = try await wallet.connect("payee")
            let (_, restricted) = try await wallet.connect("reader", methods: ["get_balance"])
            try await client.run { session in
                await expectError(.quotaExceeded) { try await session.call("pay_invoice", ["invoice": .string(try await wallet.invoice(payee, msat: 6_000))]) }
                #expect((try? wallet.metrics.expectCounter("switchboard_wallet_payments_total", [("outcome", "quota_exceeded")]))?.totalValue == 1)
                let budget = try #require(try await session.call("get_budget").object)
                #expect(budget["total_budget"]?.int64 == 5_000 && budget["used_budget"]?.int64 == 0)
                #expect(budget["renewal_period"] == .string("daily"))
                await expectError(.other) { try await session.call("pay_invoice", ["invoice": .string("lnbc1notaninvoice")]) }
                await expectError(.other) { try await session.call("make_invoice", ["amount": .string("lots")]) }
                // Amounts near Int64's limit are refused, not overflowed: a pico amount ×10, amount + fee reserve.
                await expectError(.other, containing: "21 million") { try await session.call("make_invoice", ["amount": .number("2100000000000000001")]) }
                await expectError(.other, containing: "21 million") { try await session.call("make_invoice", ["amount": .number("9223372036854775800")]) }
                let largest = try #require(try await session.call("make_invoice", ["amount": .number("\(NIP47.maximumAmountMsat - 1)")]).object)
                #expect(largest["amount"]?.int64 == NIP47.maximumAmountMsat - 1)
                await expectError(.other, containing: "21 million") {
                    let own = try await wallet.invoice(payee, msat: 1_000)
                    return try await session.call("pay_invoice", ["invoice": .string(try invoiceWithAmount(own, "92233720368m"))])
                }
                await expectError(.notImplemented) { try await session.call("sign_message", ["message": .string("hi")]) }
                await expectError(.notFound) { try await session.call("lookup_invoice", ["payment_hash": .string(String(repeating: "ab", count: 32))]) }
                await expectError(.paymentFailed) {
                    let foreign = try BOLT11Invoice.make(
                        network: .regtest, amountMsat: 1_000, paymentHash: SHA256.hash([7]), paymentSecret: SHA256.hash([8]), description: "x",
                        descriptionHash: nil, expiry: 3600, timestamp: .now, nodeKey: .generate())
                    return try await session.call("pay_invoice", ["invoice": .string(foreign.string)])
                }
                // An encryption scheme the service does not know.
                var event = try session.event(for: NIP47.Request(method: "get_balance"))
                event = EventTemplate(kind: event.kind, content: event.content, tags: [["p", payer.walletKey.hex], ["encryption", "nip44_v3"]])
                    .sign(with: client.uri.secret)
                await expectError(.unsupportedEncryption) { try await session.send(event, method: "get_balance") }
                // The same in a payload the service cannot decrypt (a scheme it does not know at all).
                let unknown = "A" + Data((0..<96).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
                event = EventTemplate(kind: event.kind, content: unknown, tags: [["p", payer.walletKey.hex], ["encryption", "nip44_v3"]])
                    .sign(with: client.uri.secret)
                await expectError(.unsupportedEncryption) { try await session.send(event, method: "get_balance") }
            }
            try await restricted.run { (session) async throws -> Void in
                #expect(try await session.call("get_balance").object?["balance"] != nil)
                await expectError(.restricted) { try await session.call("make_invoice", ["amount": .number("1000")]) }
            }
            // NIP-04 requests (no encryption tag) are answered in NIP-04.
            var legacy = client
            legacy.encryption = .nip04
            try await legacy.run { (session) async throws -> Void in
                #expect(try await session.call("get_balance").object?["balance"]?.int64 == 100_000)
            }
            // A stranger using the wallet key, and the connection after revocation.
            let stranger = NIP47Client(uri: WalletConnectURI(wallet: payer.walletKey, relays: wallet.relays, secret: .generate()))
            try await stranger.run { session in await expectError(.unauthorized) { try await session.call("get_balance") } }
            let info = Filter(authors: [payer.walletKey], kinds: [NIP47.infoKind])
            let pool = RelayPool(relays: wallet.relays, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
            try await pool.withRunning {
                let announced = try await pool.fetch([info], timeout: .seconds(3))
                #expect(announced.count == 1)
                _ = try await wallet.store.revoke(idOrName: "payer", now: .now)
                try await client.run { session in await expectError(.unauthorized) { try await session.call("get_balance") } }

                // Its info event is withdrawn: the next announcement round asks the relays to delete it (NIP-09).
                try await wallet.bridges[0].synchronize()
                let deletions = try await withDeadline(.seconds(30), "the info event's deletion") {
                    while true {
                        let found = try await pool.fetch([Filter(authors: [payer.walletKey], kinds: [.deletion])], timeout: .seconds(2))
                        if !found.isEmpty { return found }
                    }
                }
                #expect(deletions.count == 1)
                #expect(deletions.first?.tagValues("a") == ["13194:\(payer.walletKey.hex):"])
                #expect(deletions.first?.tagValues("e") == announced.map(\.id.hex))
                #expect(try await pool.fetch([info], timeout: .seconds(3)).isEmpty)
                // Another round sends the same deletion again (counted once confirmed by a relay), not a new one.
                @Sendable func deletionsSent() -> Int64 {
                    (try? wallet.metrics.expectCounter("switchboard_announcements_published_total", [("kind", "5"), ("accepted", "true")]))?.totalValue ?? 0
                }
                let sent = deletionsSent()
                try await wallet.bridges[0].synchronize()
                try await withDeadline(.seconds(30), "another announcement round") {
                    while deletionsSent() <= sent { try await Task.sleep(for: .milliseconds(20)) }
                }
                let again = try await pool.fetch([Filter(authors: [payer.walletKey], kinds: [.deletion])], timeout: .seconds(2))
                #expect(again.map(\.id) == deletions.map(\.id))
            }
        }
    }

    @Test("a burst beyond the rate is answered RATE_LIMITED, not dropped")
    func rateLimited() async throws {
        var policy = RequestPolicy.Configuration()
        policy.rate = 0.1
        policy.burst = 3
        // None waits its turn: each request past the burst is refused at once.
        policy.maximumQueueWait = 0
        try await withWallet(policy: policy) { wallet in
            let (_, client) = try await wallet.connect("eager")
            let outcomes = try await client.run { session in
                try await withThrowingTaskGroup(of: String.self) { group in
                    for _ in 0..<8 {
                        group.addTask {
                            do {
                                _ = try await session.call("get_balance")
                                return "ok"
                            } catch let error as NIP47Error {
                                return error.code.rawValue
                            }
                        }
                    }
                    return try await group.reduce(into: [String]()) { $0.append($1) }
                }
            }
            #expect(outcomes.count == 8)
            #expect(outcomes.filter { $0 == "ok" }.count == 3)
            #expect(outcomes.filter { $0 == "RATE_LIMITED" }.count == 5)
        }
    }

    @Test("one pay request published on 3 relays, and again later, is paid once")
    func threeRelays() async throws {
        try await withWallet(relays: 3) { wallet in
            let (payer, client) = try await wallet.connect("payer", balance: 50_000)
            let (payee, _) = try await wallet.connect("payee")
            let invoice = try await wallet.invoice(payee, msat: 10_000)
            // The client's pool publishes the request to all three relays.
            let event = try await client.run { session in
                let event = try session.event(for: NIP47.Request(method: "pay_invoice", params: ["invoice": .string(invoice)]))
                #expect(try await session.send(event, method: "pay_invoice").object?["preimage"] != nil)
                return event
            }
            // Published again later: the service has seen it, and pays nothing more. A request sent after it is
            // answered once the service has read past the copies (each relay sends them first).
            let pool = RelayPool(relays: wallet.relays, logger: quiet)
            let results = try await pool.withRunning { await pool.publish(event) }
            #expect(results.values.filter(\.isAccepted).count == 3)
            try await client.run { (session) async throws -> Void in
                #expect(try await session.call("get_balance").object?["balance"]?.int64 == 40_000)
            }
            #expect(try await wallet.ledger.balance(of: payer) == 40_000)
            #expect(try await wallet.ledger.balance(of: payee) == 10_000)
            let payments = try await wallet.store.transactions(connection: payer.id, query: TransactionQuery(unpaid: true), now: .now)
            #expect(payments.count == 1)
        }
    }

    @Test("two replicas on one PostgreSQL, 1,000 pay requests each delivered to both: every invoice paid once")
    func replicas() async throws {
        var policy = RequestPolicy.Configuration()
        policy.rate = 100_000
        policy.burst = 100_000
        policy.maximumConcurrentPerSender = 1_000
        try await withWallet(.postgres, relays: 2, replicas: 2, policy: policy) { wallet in
            let count = 1_000
            let (payer, connected) = try await wallet.connect("payer", balance: Int64(count) * 1_000)
            // 100 calls in flight at a time, each waited for longer than a loaded machine takes.
            var client = connected
            client.timeout = .seconds(120)
            let (payee, _) = try await wallet.connect("payee")
            var invoices: [String] = []
            for _ in 0..<count { invoices.append(try await wallet.invoice(payee, msat: 1_000)) }
            let answers = try await client.run { session in
                try await withThrowingTaskGroup(of: Bool.self) { group in
                    var answered = 0
                    for (index, invoice) in invoices.enumerated() {
                        if index >= 100, try await group.next() == true { answered += 1 }
                        group.addTask {
                            let event = try session.event(for: NIP47.Request(method: "pay_invoice", params: ["invoice": .string(invoice)]))
                            return (try? await session.send(event, method: "pay_invoice"))?.object?["preimage"] != nil
                        }
                    }
                    for try await ok in group where ok { answered += 1 }
                    return answered
                }
            }
            #expect(answers == count)
            let payments = try await wallet.store.transactions(connection: payer.id, query: TransactionQuery(limit: 5_000, unpaid: true), now: .now)
            #expect(payments.count == count)
            #expect(payments.allSatisfy { $0.state == .settled })
            #expect(Set(payments.map(\.paymentHash)).count == count)
            let received = try await wallet.store.transactions(connection: payee.id, query: TransactionQuery(limit: 5_000), now: .now)
            #expect(received.count == count)
            #expect(try await wallet.ledger.balance(of: payer) == 0)
            #expect(try await wallet.ledger.balance(of: payee) == Int64(count) * 1_000)
        }
    }
}

/// Holds payments until opened, counting those waiting.
final class PaymentGate: Sendable {
    private let state = Mutex((waiting: 0, open: false))
    var waiting: Int { state.withLock { $0.waiting } }
    func open() { state.withLock { $0.open = true } }

    func pass() async throws {
        state.withLock { $0.waiting += 1 }
        while !state.withLock({ $0.open }) { try await Task.sleep(for: .milliseconds(20)) }
    }
}

/// The ledger, with payments held at `gate` first: a slow Lightning network.
struct GatedBackend: LightningBackend {
    let ledger: LedgerBackend
    let gate: PaymentGate

    func nodeInfo() async throws -> NodeInfo { try await ledger.nodeInfo() }
    var optionalMethods: Set<String> { ledger.optionalMethods }
    var usesLedgerAccounts: Bool { ledger.usesLedgerAccounts }
    func balance(of connection: WalletConnection) async throws -> Int64 { try await ledger.balance(of: connection) }
    func makeInvoice(_ request: InvoiceRequest, for connection: WalletConnection, now: Timestamp) async throws -> WalletTransaction {
        try await ledger.makeInvoice(request, for: connection, now: now)
    }
    func feeReserve(for invoice: BOLT11Invoice, amountMsat: Int64) -> Int64 { ledger.feeReserve(for: invoice, amountMsat: amountMsat) }
    func pay(
        _ invoice: BOLT11Invoice, amountMsat: Int64, metadata: String?, for connection: WalletConnection, deadline: ContinuousClock.Instant
    ) async throws -> PaymentOutcome {
        try await gate.pass()
        return try await ledger.pay(invoice, amountMsat: amountMsat, metadata: metadata, for: connection, deadline: deadline)
    }
    func run(events: @escaping @Sendable (WalletEvent) async -> Void) async throws { try await ledger.run(events: events) }
}
