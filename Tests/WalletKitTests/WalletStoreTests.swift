import Foundation
import Logging
import NostrCore
import NostrCrypto
import NostrRelay
import NostrServiceTesting
import PostgresNIO
import Testing
import WalletKit
import WalletKitPostgres

let quiet = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

enum WalletStoreBackend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite, postgres
    var testDescription: String { rawValue }
}

/// `count` wallet stores on one fresh database (replicas sharing it), closed and deleted afterwards.
func withWalletStores<R: Sendable>(
    _ backend: WalletStoreBackend, count: Int = 1, _ body: ([any WalletStore]) async throws -> R
) async throws -> R {
    switch backend {
    case .sqlite:
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("wallet.sqlite").path
        return try await body((0..<count).map { _ in try SQLiteWalletStore(path: path) })
    case .postgres:
        return try await withPostgresDatabase { configuration in
            let clients = (0..<count).map { _ in PostgresClient(configuration: configuration) }
            return try await withThrowingTaskGroup(of: Void.self) { group in
                for client in clients { group.addTask { await client.run() } }
                defer { group.cancelAll() }
                return try await body(clients.map { PostgresWalletStore(client: $0, logger: quiet) })
            }
        }
    }
}

/// A ledger with two funded connections on a store.
struct LedgerFixture {
    let store: any WalletStore
    let ledger: LedgerBackend
    let node: SecretKey

    init(store: any WalletStore, node: SecretKey) {
        self.store = store
        self.node = node
        self.ledger = LedgerBackend(store: store, nodeKey: node)
    }

    func connection(_ name: String, budget: Budget? = nil, balance: Int64 = 0) async throws -> WalletConnection {
        let connection = try await store.addConnection(
            name: name, clientKey: SecretKey.generate().publicKey, methods: Set(NIP47.coreMethods), budget: budget, expiresAt: nil,
            relays: [try RelayURL("ws://127.0.0.1:1")], now: .now, walletKey: { _ in SecretKey.generate().publicKey })
        if balance > 0 { _ = try await store.credit(connection: connection.id, msat: balance) }
        return connection
    }

    func invoice(for connection: WalletConnection, msat: Int64) async throws -> BOLT11Invoice {
        let made = try await ledger.makeInvoice(
            InvoiceRequest(amountMsat: msat, description: "test", descriptionHash: nil, expiry: 3600, metadata: nil), for: connection, now: .now)
        return try BOLT11Invoice(try #require(made.invoice))
    }

    func pay(_ invoice: BOLT11Invoice, from connection: WalletConnection) async throws -> PaymentOutcome {
        try await ledger.pay(invoice, amountMsat: invoice.amountMsat ?? 0, metadata: nil, for: connection, deadline: .now + .seconds(5))
    }

    func balance(_ connection: WalletConnection) async throws -> Int64 {
        try await ledger.balance(of: connection)
    }
}

@Suite("The wallet store on SQLite and PostgreSQL: connections, the ledger, budgets, exactly-once payments")
struct WalletStoreTests {
    @Test("connections: indexes, unique live names, revocation, the version counter", arguments: WalletStoreBackend.allCases)
    func connections(backend: WalletStoreBackend) async throws {
        try await withWalletStores(backend) { stores in
            let store = stores[0]
            let fixture = LedgerFixture(store: store, node: .generate())
            let version = try await store.connectionsVersion()
            let first = try await fixture.connection("alice", budget: Budget(msat: 5_000, period: .weekly))
            let second = try await fixture.connection("bob")
            #expect(first.walletIndex == 0 && second.walletIndex == 1)
            #expect(try await store.connectionsVersion() == version + 2)
            await #expect(throws: WalletStoreError.nameTaken("alice")) { _ = try await fixture.connection("alice") }

            let found = try #require(try await store.connection(walletKey: first.walletKey))
            #expect(found == first)
            #expect(try await store.connection(idOrName: "bob")?.id == second.id)
            #expect(try await store.connection(idOrName: first.id)?.budget == Budget(msat: 5_000, period: .weekly))

            let revoked = try #require(try await store.revoke(idOrName: "alice", now: .now))
            #expect(revoked.revokedAt != nil)
            #expect(try await store.revoke(idOrName: "alice", now: .now) == nil)
            #expect(try await store.connection(idOrName: first.id)?.isLive(at: .now) == false)
            // The name is free again once its connection is revoked.
            let again = try await fixture.connection("alice")
            #expect(again.walletIndex == 2)
            #expect(try await store.connections().map(\.name) == ["alice", "bob", "alice"])
        }
    }

    @Test("a ledger payment moves the amount between accounts once; the invoice cannot be paid twice", arguments: WalletStoreBackend.allCases)
    func ledgerPayment(backend: WalletStoreBackend) async throws {
        try await withWalletStores(backend) { stores in
            let fixture = LedgerFixture(store: stores[0], node: .generate())
            let payer = try await fixture.connection("payer", balance: 100_000)
            let payee = try await fixture.connection("payee")
            let third = try await fixture.connection("third", balance: 100_000)
            let invoice = try await fixture.invoice(for: payee, msat: 21_000)

            guard case .paid(let payment) = try await fixture.pay(invoice, from: payer) else {
                Issue.record("the payment did not go through")
                return
            }
            let preimage = try #require(payment.preimage.flatMap { Hex.decode($0) })
            #expect(SHA256.hash(preimage) == invoice.paymentHash)
            #expect(try await fixture.balance(payer) == 79_000)
            #expect(try await fixture.balance(payee) == 21_000)

            // The same payer again: refused before anything moves.
            guard case .refused(.alreadyPaid(let existing)) = try await fixture.pay(invoice, from: payer) else {
                Issue.record("a second payment of the hash was not refused")
                return
            }
            #expect(existing.sequence == payment.sequence)
            // Another payer: the invoice is settled, so the payment fails and its reservation goes back.
            guard case .failed(let reason) = try await fixture.pay(invoice, from: third) else {
                Issue.record("paying a settled invoice did not fail")
                return
            }
            #expect(reason.contains("already paid"))
            #expect(try await fixture.balance(third) == 100_000)
            #expect(try await fixture.balance(payee) == 21_000)

            let incoming = try #require(try await stores[0].transaction(connection: payee.id, paymentHash: invoice.paymentHash))
            #expect(incoming.direction == .incoming && incoming.state == .settled && incoming.settledAt != nil)
            let history = try await stores[0].transactions(connection: payer.id, query: TransactionQuery(), now: .now)
            #expect(history.map(\.state) == [.settled])
        }
    }

    @Test("unpaid invoices are counted per connection until paid or expired", arguments: WalletStoreBackend.allCases)
    func unpaidInvoices(backend: WalletStoreBackend) async throws {
        try await withWalletStores(backend) { stores in
            let fixture = LedgerFixture(store: stores[0], node: .generate())
            let payer = try await fixture.connection("payer", balance: 10_000)
            let shop = try await fixture.connection("shop")
            let first = try await fixture.invoice(for: shop, msat: 1_000)
            _ = try await fixture.invoice(for: shop, msat: 2_000)
            _ = try await fixture.invoice(for: payer, msat: 3_000)
            let now = Timestamp.now
            #expect(try await fixture.store.unpaidInvoiceCount(connection: shop.id, since: now - 3600, now: now) == 2)
            #expect(try await fixture.pay(first, from: payer) != .refused(.insufficientBalance(balance: 10_000)))
            #expect(try await fixture.store.unpaidInvoiceCount(connection: shop.id, since: now - 3600, now: now) == 1)
            // An hour on, the other has expired (they are made for 3,600 s); one made before `since` is not counted.
            #expect(try await fixture.store.unpaidInvoiceCount(connection: shop.id, since: now - 3600, now: now + 3601) == 0)
            #expect(try await fixture.store.unpaidInvoiceCount(connection: payer.id, since: now + 10, now: now) == 0)
            #expect(try await fixture.store.unpaidInvoiceCount(connection: payer.id, since: now - 3600, now: now) == 1)
        }
    }

    @Test("insufficient balance, invoices of other nodes, and expired invoices", arguments: WalletStoreBackend.allCases)
    func refusals(backend: WalletStoreBackend) async throws {
        try await withWalletStores(backend) { stores in
            let fixture = LedgerFixture(store: stores[0], node: .generate())
            let payer = try await fixture.connection("payer", balance: 1_000)
            let payee = try await fixture.connection("payee")
            let big = try await fixture.invoice(for: payee, msat: 5_000)
            #expect(try await fixture.pay(big, from: payer) == .refused(.insufficientBalance(balance: 1_000)))

            let foreign = try BOLT11Invoice.make(
                network: .regtest, amountMsat: 500, paymentHash: SHA256.hash([9]), paymentSecret: SHA256.hash([8]), description: "x",
                descriptionHash: nil, expiry: 3600, timestamp: .now, nodeKey: .generate())
            guard case .failed(let reason) = try await fixture.pay(foreign, from: payer) else {
                Issue.record("an invoice of another node did not fail")
                return
            }
            #expect(reason.contains("no route"))
            #expect(try await fixture.balance(payer) == 1_000)
        }
    }

    @Test("20 concurrent payments against a budget for 10: exactly 10 paid", arguments: WalletStoreBackend.allCases)
    func concurrentBudget(backend: WalletStoreBackend) async throws {
        try await withWalletStores(backend, count: 2) { stores in
            let node = SecretKey.generate()
            let fixtures = stores.map { LedgerFixture(store: $0, node: node) }
            let payer = try await fixtures[0].connection("payer", budget: Budget(msat: 10_000, period: .daily), balance: 1_000_000)
            let payee = try await fixtures[0].connection("payee")
            var invoices: [BOLT11Invoice] = []
            for _ in 0..<20 { invoices.append(try await fixtures[0].invoice(for: payee, msat: 1_000)) }
            // Spread over two store instances (replicas, with PostgreSQL).
            let outcomes = try await withThrowingTaskGroup(of: PaymentOutcome.self) { group in
                for (index, invoice) in invoices.enumerated() {
                    group.addTask { try await fixtures[index % 2].pay(invoice, from: payer) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let paid = outcomes.filter { if case .paid = $0 { true } else { false } }.count
            let quota = outcomes.filter { if case .refused(.quotaExceeded) = $0 { true } else { false } }.count
            #expect(paid == 10)
            #expect(quota == 10)
            #expect(try await fixtures[0].balance(payer) == 990_000)
            #expect(try await fixtures[0].balance(payee) == 10_000)
            #expect(try await stores[0].spent(connection: payer.id, since: 0) == 10_000)
        }
    }

    @Test("fee reserves: held while pending, settled to the real fee, released on failure", arguments: WalletStoreBackend.allCases)
    func feeReserve(backend: WalletStoreBackend) async throws {
        try await withWalletStores(backend) { stores in
            let store = stores[0]
            let fixture = LedgerFixture(store: store, node: .generate())
            let payer = try await fixture.connection("payer", budget: Budget(msat: 20_000, period: .never), balance: 50_000)
            func invoice() throws -> BOLT11Invoice {
                try BOLT11Invoice.make(
                    network: .regtest, amountMsat: 8_000, paymentHash: SHA256.hash(SecureMemory.randomBytes(32)), paymentSecret: SHA256.hash([1]),
                    description: "x", descriptionHash: nil, expiry: 3600, timestamp: .now, nodeKey: .generate())
            }
            func reserve(_ invoice: BOLT11Invoice) async throws -> ReservationResult {
                try await store.reserve(
                    PaymentReservation(connection: payer.id, invoice: invoice, amountMsat: 8_000, feeReserveMsat: 2_000, metadata: nil, debitsLedger: true),
                    now: .now)
            }
            guard case .reserved(let first) = try await reserve(try invoice()) else { Issue.record("not reserved"); return }
            #expect(try await store.spent(connection: payer.id, since: 0) == 10_000)
            #expect(try await fixture.balance(payer) == 40_000)
            // 10,000 reserved: a second reservation of 10,000 fits, a third does not.
            guard case .reserved(let second) = try await reserve(try invoice()) else { Issue.record("not reserved"); return }
            #expect(try await reserve(try invoice()) == .quotaExceeded(used: 20_000, budget: 20_000))

            _ = try await store.settlePayment(sequence: first.sequence, preimage: "00", feesPaidMsat: 500, creditsLedger: true, now: .now)
            _ = try await store.failPayment(sequence: second.sequence, creditsLedger: true, now: .now)
            #expect(try await store.spent(connection: payer.id, since: 0) == 8_500)
            #expect(try await fixture.balance(payer) == 41_500)
            #expect(try await store.pendingPayments().isEmpty)
            // A failed payment's hash may be paid again.
            let retry = try BOLT11Invoice(try #require(second.invoice))
            guard case .reserved = try await reserve(retry) else {
                Issue.record("a failed payment's hash could not be retried")
                return
            }
        }
    }
}
