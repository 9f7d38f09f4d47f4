import Foundation
public import Logging
import NostrCore
import NostrRelay
public import NostrService
import Synchronization
public import WalletKit

/// Payment for priced jobs through a NIP-47 wallet (`--wallet nostr+walletconnect://…`): an invoice per job
/// (`make_invoice`), kept in the service store so a job run again after a restart, or by another worker,
/// asks for the same payment; paid when the wallet's `payment_received` notification names its hash or
/// `lookup_invoice` says it is settled (checked every ``pollInterval`` too, for wallets that do not notify).
public final class JobPayments: Sendable {
    public let client: NIP47Client
    /// How often an unpaid invoice is looked up.
    public let pollInterval: Duration
    /// How long an invoice stays payable (its expiry).
    public let invoiceLifetime: Int64
    /// How long an expired invoice's settlement is asked for again while the wallet cannot be reached.
    public let confirmationGrace: Duration = .seconds(60)
    private let logger: Logger
    private let state = Mutex<State>(State())

    private struct State {
        var session: NIP47Client.Session?
        var sessionWaiters: [CheckedContinuation<Void, Never>] = []
        var paymentWaiters: [String: [AsyncStream<Void>.Continuation]] = [:]
    }

    public init(wallet: WalletConnectURI, invoiceLifetime: Int64 = 600, pollInterval: Duration = .seconds(2), logger: Logger) {
        var client = NIP47Client(uri: wallet, logger: logger)
        client.timeout = .seconds(30)
        // Jobs in flight may still be paid while the host winds down: the host cancels ``run()`` after them.
        client.stopsOnGracefulShutdown = false
        self.client = client
        self.invoiceLifetime = invoiceLifetime
        self.pollInterval = pollInterval
        self.logger = logger
    }

    /// Holds the wallet session and listens for its notifications until cancelled (graceful shutdown does not
    /// end it).
    public func run() async throws {
        try await client.run { session in
            let waiters = state.withLock { state in
                state.session = session
                defer { state.sessionWaiters = [] }
                return state.sessionWaiters
            }
            for waiter in waiters { waiter.resume() }
            for await notification in session.notifications where notification.type == "payment_received" {
                guard let hash = notification.transaction["payment_hash"]?.string else { continue }
                let waiters = state.withLock { $0.paymentWaiters[hash] ?? [] }
                for waiter in waiters { waiter.yield() }
            }
        }
    }

    private func session() async -> NIP47Client.Session {
        if let session = state.withLock({ $0.session }) { return session }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { state in
                if state.session != nil { return true }
                state.sessionWaiters.append(continuation)
                return false
            }
            if ready { continuation.resume() }
        }
        return state.withLock { $0.session }!
    }

    /// A job's invoice.
    public struct Invoice: Sendable, Hashable, Codable {
        public var bolt11: String
        public var paymentHash: String
        public var amountMsat: Int64
        public var expiresAt: Int64
        /// Settled: recorded once the job's payment was seen, so a job that runs again does not ask again.
        /// Absent in invoices stored before it was recorded.
        public var paid: Bool?
        /// Invoices this one replaced (expiring, or at an earlier price), newest first: a customer who pays one
        /// of them late has still paid.
        public var earlier: [Invoice]?

        public var isPaid: Bool { paid == true }
    }

    static let namespace = "dvm.invoices"
    /// How many replaced invoices a job's record remembers.
    static let earlierKept = 4

    /// The invoice for `job`: one made before if it is paid (``paidInvoice(for:store:)``, whatever the price
    /// now), else the one made before if it is for `amountMsat` and payable for more than 30 s, else a new
    /// one. A job that runs again (after a restart, or on another worker) thus never asks for a second payment.
    public func invoice(for job: JobRequest, amountMsat: Int64, store: any ServiceStore) async throws -> Invoice {
        if let paid = try await paidInvoice(for: job, store: store) { return paid }
        return try await unpaidInvoice(for: job, amountMsat: amountMsat, store: store)
    }

    /// ``invoice(for:amountMsat:store:)`` for a caller that found no payment with ``paidInvoice(for:store:)``
    /// just before: the stored invoice if it is for `amountMsat` and payable for more than 30 s, else a new one.
    func unpaidInvoice(for job: JobRequest, amountMsat: Int64, store: any ServiceStore) async throws -> Invoice {
        let stored = try await storedInvoice(for: job, store: store)
        if let stored, stored.amountMsat == amountMsat, stored.expiresAt > Timestamp.now + 30 { return stored }
        let session = await session()
        let result: JSONValue
        do {
            result = try await session.call("make_invoice", [
                "amount": .number(String(amountMsat)),
                "description": .string("job \(job.id.hex.prefix(16)) (kind \(job.kind.rawValue))"),
                "expiry": .number(String(invoiceLifetime)),
            ])
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            logger.error("the wallet did not make an invoice", metadata: ["error": "\(error)"])
            throw ServiceError(.unavailable, "could not create an invoice; try again later")
        }
        guard let bolt11 = result.object?["invoice"]?.string, let hash = result.object?["payment_hash"]?.string else {
            logger.error("the wallet's invoice is malformed")
            throw ServiceError(.internal, "could not create an invoice; try again later")
        }
        var invoice = Invoice(bolt11: bolt11, paymentHash: hash, amountMsat: amountMsat, expiresAt: Timestamp.now + invoiceLifetime)
        if var replaced = stored {
            let older = replaced.earlier ?? []
            replaced.earlier = nil
            invoice.earlier = Array(([replaced] + older).prefix(Self.earlierKept))
        }
        try await record(invoice, for: job, store: store)
        return invoice
    }

    /// The invoice `job` was paid with, if any: recorded as paid, or — for a record not updated (a crash, a
    /// payment after the wait) — settled by the wallet's account, the current invoice or one it replaced. A
    /// payment found that way is recorded.
    public func paidInvoice(for job: JobRequest, store: any ServiceStore) async throws -> Invoice? {
        guard let stored = try await storedInvoice(for: job, store: store) else { return nil }
        if stored.isPaid { return stored }
        var current = stored
        current.earlier = nil
        for candidate in [current] + (stored.earlier ?? []) where try await isSettled(candidate) == true {
            var paid = candidate
            paid.paid = true
            try await record(paid, for: job, store: store)
            return paid
        }
        return nil
    }

    private func storedInvoice(for job: JobRequest, store: any ServiceStore) async throws -> Invoice? {
        guard let stored = try await store.value(job.id.hex, in: Self.namespace) else { return nil }
        return try? JSONDecoder().decode(Invoice.self, from: Data(stored))
    }

    /// Records that `invoice`, the invoice for `job`, is paid.
    public func markPaid(_ invoice: Invoice, for job: JobRequest, store: any ServiceStore) async throws {
        var invoice = invoice
        invoice.paid = true
        try await record(invoice, for: job, store: store)
    }

    private func record(_ invoice: Invoice, for job: JobRequest, store: any ServiceStore) async throws {
        try await store.setValue(Array(try JSONEncoder().encode(invoice)), forKey: job.id.hex, in: Self.namespace)
    }

    /// Waits until `invoice` is paid (true) or has expired or `deadline` passes (false). When the wallet cannot
    /// be asked at the end (an outage), it is asked again for up to ``confirmationGrace``: a payment made in
    /// time is not taken for none; still unknown then, an `unavailable` error says so.
    public func waitUntilPaid(_ invoice: Invoice, deadline: ContinuousClock.Instant) async throws -> Bool {
        // The invoices it replaced count too while they can still be paid: a customer may pay the one they got.
        let payable = [invoice] + (invoice.earlier ?? []).filter { $0.expiresAt > Timestamp.now }
        let (wakeups, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        state.withLock { state in
            for candidate in payable { state.paymentWaiters[candidate.paymentHash, default: []].append(continuation) }
        }
        defer {
            state.withLock { state in
                for candidate in payable { state.paymentWaiters[candidate.paymentHash] = nil }
            }
            continuation.finish()
        }
        /// Whether one of them is settled; nil when the wallet could not say for one that is not.
        func anySettled() async throws -> Bool? {
            var unknown = false
            for candidate in payable {
                switch try await self.isSettled(candidate) {
                case true?: return true
                case nil: unknown = true
                case false?: continue
                }
            }
            return unknown ? nil : false
        }
        var iterator = wakeups.makeAsyncIterator()
        func pause(until end: ContinuousClock.Instant) async throws {
            let timer = Deadlines.shared.schedule(at: min(end, .now + pollInterval)) { continuation.yield() }
            _ = await iterator.next()
            Deadlines.shared.cancel(timer)
            try Task.checkCancellation()
        }
        while ContinuousClock.now < deadline && Timestamp.now < invoice.expiresAt {
            if try await anySettled() == true { return true }
            try await pause(until: deadline)
        }
        let giveUp = ContinuousClock.now + confirmationGrace
        while true {
            if let settled = try await anySettled() { return settled }
            guard ContinuousClock.now < giveUp else { break }
            try await pause(until: giveUp)
        }
        throw ServiceError(.unavailable, "the payment could not be confirmed: the wallet did not answer")
    }

    /// Whether the wallet's account has `invoice` settled; nil when the wallet could not say.
    private func isSettled(_ invoice: Invoice) async throws -> Bool? {
        let session = await session()
        do {
            let result = try await session.call("lookup_invoice", ["payment_hash": .string(invoice.paymentHash)])
            let object = result.object ?? [:]
            return object["state"]?.string == "settled" || (object["settled_at"]?.int64 ?? 0) > 0
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            logger.warning("lookup_invoice failed", metadata: ["error": "\(error)"])
            return nil
        }
    }
}
