import CoreMetrics
import Foundation
import Logging
public import NostrCore
import NostrCrypto
import NostrRelay
public import NostrService
import Synchronization

/// NIP-90 on the service runtime: job requests in (kinds 5000–5999, `p`-tagged to the host or to no one;
/// plain, or encrypted with NIP-04 or NIP-44), feedback (kind 7000) and results (request kind + 1000) out,
/// encrypted in the request's scheme when it was encrypted.
///
/// For each job, in order: the request is read (an unreadable one gets an `error` feedback); a priced job gets
/// a `payment-required` feedback with an invoice and waits for its payment; the inputs are resolved; the job
/// waits for one of ``Configuration/concurrency`` slots; a `processing` feedback goes out; the ``JobHandler``
/// runs within ``Configuration/jobTimeout``; the result and a `success` feedback go out (or an `error`
/// feedback with the reason). The runtime's journal makes each request run once, across relays, restarts
/// and workers sharing a PostgreSQL store.
public final class DVMService: RequestHandler {
    public struct Configuration: Sendable {
        /// The job kinds served (5000–5999).
        public var kinds: Set<Kind>
        /// The NIP-89 announcement's name and about text.
        public var name = "Switchboard DVM"
        public var about = ""
        /// The announcement's `d` tag.
        public var identifier = "switchboard-dvm"
        /// The price of one job in msat (nil: free). Needs ``JobPayments``.
        public var priceMsat: Int64?
        /// Jobs run at once.
        public var concurrency = 4
        /// How long one job may run.
        public var jobTimeout: Duration = .seconds(60)
        /// How long a job may wait for a free slot before it is answered with a timeout.
        public var queueTimeout: Duration = .seconds(600)
        /// How often the heartbeat (kind 11998) goes out while the host is subscribed; it expires after two.
        public var heartbeatInterval: Duration = .seconds(300)
        /// The largest result event published, in bytes of JSON. Relays refuse larger events (strfry's default
        /// limit is 64 KiB), and a result no relay takes would be lost while the `success` feedback got through.
        /// A result over it goes without its copies of the request and inputs; still over it, the job is answered
        /// with an `error` feedback saying so.
        public var maximumResultBytes = 64 * 1024
        /// Priced jobs waiting for their payment at once (from all customers); the next is answered with an
        /// `error` feedback saying to try again later.
        public var maximumAwaitingPayment = 1_000
        /// Jobs fetching their inputs or, inputs fetched, waiting for a worker, at once (from all customers).
        /// Others wait before fetching theirs, so what queued jobs hold in memory is bounded.
        public var maximumPreparingJobs = 64

        public init(kinds: Set<Kind>) {
            self.kinds = kinds
        }
    }

    public let configuration: Configuration
    let cancellations = JobCancellations()
    let handler: any JobHandler
    let resolver: InputResolver
    let payments: JobPayments?
    let slots: AsyncSemaphore
    /// Places for jobs between their payment and a worker (``Configuration/maximumPreparingJobs``).
    let preparing: AsyncSemaphore
    /// Jobs waiting for payment now (``Configuration/maximumAwaitingPayment``).
    let awaiting = Mutex(0)
    let metrics: DVMMetrics

    public init(
        handler: any JobHandler, configuration: Configuration, resolver: InputResolver, payments: JobPayments? = nil,
        metricsFactory: any MetricsFactory = MetricsSystem.factory
    ) {
        precondition(!configuration.kinds.isEmpty && configuration.kinds.allSatisfy(NIP90.isRequestKind), "job kinds are 5000–5999")
        precondition(configuration.priceMsat == nil || payments != nil, "a priced job host needs a wallet")
        self.handler = handler
        self.configuration = configuration
        self.resolver = resolver
        self.payments = payments
        self.slots = AsyncSemaphore(max(1, configuration.concurrency))
        self.preparing = AsyncSemaphore(max(1, configuration.maximumPreparingJobs))
        self.metrics = DVMMetrics(factory: metricsFactory)
    }

    // MARK: RequestHandler

    public var kinds: Set<Kind> { configuration.kinds }
    public var acceptsUntargeted: Bool { true }
    public var encryptions: Set<PayloadEncryption> { [.plaintext, .nip44, .nip04] }
    public var repliesToInbox: Bool { true }
    /// A job interrupted by a crash or shutdown runs again (a priced one asks for the same invoice, and runs
    /// once it is paid).
    public var isIdempotent: Bool { true }

    /// Everything a job may take: paying, fetching its inputs, waiting for a slot, running.
    public var timeout: Duration {
        let paying: Duration = payments.map { .seconds($0.invoiceLifetime) + $0.confirmationGrace } ?? .zero
        return paying + resolver.configuration.jobTimeout + .seconds(60) + configuration.queueTimeout + configuration.jobTimeout
    }

    /// NIP-09 deletion requests naming a job kind served here (`k`), which cancel the jobs they name (`e`) when
    /// they come from the job's customer: the job stops wherever it is (waiting for payment, inputs or a slot,
    /// or running) and is answered with an `error` feedback; a deletion that comes before its job keeps the
    /// job from running.
    public var watches: [EventWatch] {
        let filter = Filter(kinds: [.deletion], tags: ["k": Set(configuration.kinds.map { "\($0.rawValue)" })])
        return [EventWatch(filter: filter) { [cancellations] event, _ in cancellations.deletion(event) }]
    }

    /// Encrypted only when the request says so (the `encrypted` tag); then NIP-04 (`?iv=`) or NIP-44.
    public func payloadEncryption(of event: Event) -> PayloadEncryption {
        guard event.tags.contains(where: { $0.name == "encrypted" }) else { return .plaintext }
        return NIP04.isNIP04Payload(event.content) ? .nip04 : .nip44
    }

    public func handle(_ request: ServiceRequest, context: RequestContext) async throws -> [ServiceReply] {
        let kind = "\(request.event.kind.rawValue)"
        let job: JobRequest
        do {
            job = try JobRequest(request.event, decryptedContent: request.encryption == .plaintext ? nil : request.content)
        } catch {
            metrics.job(kind: kind, outcome: "bad_request")
            throw ServiceError(.badRequest, error.reason)
        }
        let cancelled = ServiceError(.init("cancelled"), "the customer cancelled the job (kind 5)")
        guard cancellations.begin(job.id, requester: request.sender) else {
            metrics.job(kind: kind, outcome: "cancelled")
            throw cancelled
        }
        let work = Task { try await self.run(job, request: request, context: context) }
        cancellations.attach(work, to: job.id)
        let result = await withTaskCancellationHandler { await work.result } onCancel: { work.cancel() }
        if cancellations.end(job.id), case .failure = result {
            metrics.job(kind: kind, outcome: "cancelled")
            throw cancelled
        }
        return try result.get()
    }

    /// A job from its payment to its result. Outcomes are counted unless the job was cancelled (by its
    /// customer, counted by the caller; or by shutdown).
    private func run(_ job: JobRequest, request: ServiceRequest, context: RequestContext) async throws -> [ServiceReply] {
        let kind = "\(request.event.kind.rawValue)"
        let metrics = self.metrics
        func count(_ outcome: String) {
            if !Task.isCancelled { metrics.job(kind: kind, outcome: outcome) }
        }
        let answer = Answer(request: request, relays: job.relays)
        let started = ContinuousClock.now

        // Paid already (the job runs again after a restart, or on another worker, perhaps at another price):
        // it is not asked to pay twice.
        if let price = configuration.priceMsat, let payments, try await payments.paidInvoice(for: job, store: context.store) == nil {
            if let bid = job.bid, bid < price {
                count("bid_too_low")
                throw ServiceError(.init("bid-too-low"), "the price is \(price) msat; the bid was \(bid) msat")
            }
            // A place among the jobs waiting for payment (they hold no handling slot), taken before an invoice
            // is made: past the bound the customer is told to come back, rather than waits piling up.
            let bound = configuration.maximumAwaitingPayment
            guard awaiting.withLock({ count in
                guard count < bound else { return false }
                count += 1
                return true
            }) else {
                count("busy")
                throw ServiceError(.unavailable, "too many jobs are waiting for payment; try again later")
            }
            defer { awaiting.withLock { $0 -= 1 } }
            let made = try await payments.unpaidInvoice(for: job, amountMsat: price, store: context.store)
            await context.send(answer.feedback("payment-required", amount: (price, made.bolt11)))
            metrics.awaitingPayment.increment()
            let paid: Bool
            do {
                defer { metrics.awaitingPayment.decrement() }
                // Waiting on the customer: the runtime's handling slot is free for other requests meanwhile.
                paid = try await context.withoutHandlingSlot {
                    try await payments.waitUntilPaid(made, deadline: .now + .seconds(payments.invoiceLifetime))
                }
            }
            guard paid else {
                count("unpaid")
                throw ServiceError(.init("payment-required"), "the invoice was not paid in time")
            }
            metrics.paid(kind: kind)
            // Paid either way: if the record cannot be written, a run again finds the payment by the wallet.
            do {
                try await payments.markPaid(made, for: job, store: context.store)
            } catch {
                context.logger.warning("could not record that the job's invoice is paid", metadata: ["error": "\(error)"])
            }
        }

        // Fetching inputs (a chained job's result can take minutes) and waiting for a worker hold none of the
        // runtime's handling slots: jobs waiting on others cannot stop the host reading requests, pings and
        // cancellations. The sender's own concurrency limit still counts them, and at most
        // `maximumPreparingJobs` (from all senders) hold fetched inputs at once; the others wait before fetching.
        let preparing = self.preparing
        var isPreparing = false
        defer { if isPreparing { preparing.release() } }
        let inputs: [ResolvedInput]
        do {
            let resolver = self.resolver
            inputs = try await context.withoutHandlingSlot {
                try await preparing.acquireUnlessCancelled()
                isPreparing = true
                return try await resolver.resolve(job, pool: context.pool)
            }
        } catch let error as JobError {
            count("input_failed")
            throw ServiceError(.badRequest, error.reason)
        }

        metrics.queued.increment()
        do {
            defer { metrics.queued.decrement() }
            let (slots, queueTimeout) = (self.slots, configuration.queueTimeout)
            try await context.withoutHandlingSlot {
                try await withDeadline(.now + queueTimeout) { try await slots.acquireUnlessCancelled() }
            }
        } catch is DeadlineExceeded {
            count("queue_timeout")
            throw ServiceError(.timeout, "no free worker within \(configuration.queueTimeout.components.seconds) s")
        } catch {
            throw ServiceError(.unavailable, "the service is shutting down")
        }
        defer { slots.release() }
        preparing.release()
        isPreparing = false

        await context.send(answer.feedback("processing"))
        metrics.running.increment()
        defer { metrics.running.decrement() }
        let deadline = ContinuousClock.now + configuration.jobTimeout
        let jobContext = JobContext(logger: context.logger, deadline: deadline) { sample in
            await context.send(answer.feedback("partial", content: sample))
        }
        let output: JobOutput
        do {
            output = try await withDeadline(deadline) { try await self.handler.run(Job(request: job, inputs: inputs), context: jobContext) }
        } catch is DeadlineExceeded {
            count("timeout")
            throw ServiceError(.timeout, "the job took longer than \(configuration.jobTimeout.components.seconds) s")
        } catch let error as JobError {
            count("failed")
            throw ServiceError(.init("job-failed"), error.reason)
        } catch is CancellationError {
            throw ServiceError(.unavailable, "the service is shutting down")
        }
        // No `amount` tag once paid: NIP-90 clients read one as a suggestion to pay (a second time, here).
        var result = answer.result(output, job: job)
        if Answer.estimatedSize(of: result) > configuration.maximumResultBytes {
            result = answer.result(output, job: job, echoes: false)
            let size = Answer.estimatedSize(of: result)
            guard size <= configuration.maximumResultBytes else {
                count("result_too_large")
                throw ServiceError(
                    .init("job-failed"), "the result (about \(size) bytes) is larger than relays accept (\(configuration.maximumResultBytes))")
            }
        }
        metrics.job(kind: kind, outcome: "success")
        metrics.duration(kind: kind, ContinuousClock.now - started)
        return [result, answer.feedback("success")]
    }

    public func errorReply(to request: ServiceRequest, error: ServiceError) -> ServiceReply? {
        let hidden = request.encryption == .plaintext || request.content.isEmpty ? nil : request.content
        let relays = (try? JobRequest(request.event, decryptedContent: hidden))?.relays ?? []
        return Answer(request: request, relays: relays).feedback("error", info: error.message)
    }

    // MARK: Announcement

    /// The heartbeat (kind 11998, replaceable): the announcement's `d` tag, `status` `online`, a `k` per kind
    /// served, and a NIP-40 expiration two intervals on, so that a host that stops beating drops out of the
    /// clients that watch for it (Amethyst counts a DVM alive while its last beat is at most 900 s old).
    public func heartbeat(now: Timestamp = .now) -> ServiceReply {
        var tags: [Tag] = [["d", configuration.identifier], ["status", "online"]]
        tags += configuration.kinds.sorted().map { ["k", "\($0.rawValue)"] }
        tags.append(["expiration", "\(now + 2 * max(60, configuration.heartbeatInterval.components.seconds))"])
        return ServiceReply(kind: NIP90.heartbeatKind, content: "online", tags: tags)
    }

    /// The NIP-89 handler information (31990): `k` per kind, name and about, encryption support (both
    /// spellings in use), the price, and a NIP-40 expiration one announcement interval after the next
    /// announcement, so it lapses only when the host stops announcing.
    public func announcements(_ context: AnnouncementContext) async throws -> [EventTemplate] {
        var writer = JSONWriter()
        writer.raw("{\"name\":")
        writer.string(configuration.name)
        writer.raw(",\"about\":")
        writer.string(configuration.about)
        writer.raw(",\"encryptionSupported\":true,\"supportsEncryption\":true,\"amount\":")
        if let price = configuration.priceMsat { writer.string("\(price) msat") } else { writer.string("free") }
        writer.raw("}")
        let interval = max(60, context.nextAnnouncement - context.now)
        var tags: [Tag] = [["d", configuration.identifier]]
        tags += configuration.kinds.sorted().map { ["k", "\($0.rawValue)"] }
        tags.append(["expiration", "\(context.nextAnnouncement + interval)"])
        return [EventTemplate(kind: NIP90.handlerInformationKind, content: writer.text, tags: tags, createdAt: context.now)]
    }
}

/// Feedback and results for one request, shaped as NIP-90 says for plain and encrypted requests.
struct Answer: Sendable {
    let request: ServiceRequest
    let relays: [RelayURL]

    /// About how many bytes `reply` takes as a signed event's JSON: its tags as written, its content as
    /// encrypted (base64 of NIP-44's padded payload, or NIP-04's ciphertext and IV), and the fixed fields.
    static func estimatedSize(of reply: ServiceReply) -> Int {
        var writer = JSONWriter()
        writer.tags(reply.tags)
        let text = reply.content.utf8.count
        let content: Int
        switch reply.encryption {
        case .plaintext:
            var escaped = JSONWriter()
            escaped.value(.string(reply.content))
            content = escaped.text.utf8.count
        case .nip44: content = (1 + 32 + NIP44.paddedLength(max(1, text)) + 2 + 32 + 2) / 3 * 4
        case .nip04: content = (text + 16 + 2) / 3 * 4 + 28
        }
        return writer.text.utf8.count + content + 400
    }

    private var reference: [Tag] {
        [["e", request.event.id.hex, request.relay.string], ["p", request.sender.hex]]
    }

    /// A kind 7000 feedback. For an encrypted request the status, amount and content travel encrypted (a JSON
    /// array of tags, `["content", …]` for a sample), next to clear `e`, `p` and `encrypted` tags.
    func feedback(_ status: String, info: String? = nil, amount: (Int64, String)? = nil, content: String = "") -> ServiceReply {
        var statusTag: Tag = ["status", status]
        if let info { statusTag.fields.append(info) }
        var private_: [Tag] = [statusTag]
        if let (msat, bolt11) = amount { private_.append(["amount", "\(msat)", bolt11]) }
        guard request.encryption != .plaintext else {
            return ServiceReply(kind: NIP90.feedbackKind, content: content, tags: reference + private_, relays: relays)
        }
        if !content.isEmpty { private_.append(["content", content]) }
        var writer = JSONWriter()
        writer.tags(private_)
        return ServiceReply(
            kind: NIP90.feedbackKind, content: writer.text, tags: reference + [["encrypted"]], encryption: request.encryption,
            relays: relays)
    }

    /// The result (request kind + 1000): `request`, `e`, `p`, the inputs (`i`, unless encrypted) and `amount`.
    /// The result event. `echoes`: with the request (a `request` tag) and, for a plain request, its inputs
    /// (`i` tags), as NIP-90 suggests; without them when the result would be too large.
    func result(_ output: JobOutput, job: JobRequest, echoes: Bool = true) -> ServiceReply {
        var tags: [Tag] = (echoes ? [["request", request.event.json]] : []) + reference
        // NIP-44 has no encoding of an empty text: an empty result of an encrypted job goes out empty, with no
        // `encrypted` tag (there is nothing to hide, and the inputs stay out as for any encrypted job).
        let encryption: PayloadEncryption = request.encryption == .nip44 && output.content.isEmpty ? .plaintext : request.encryption
        if request.encryption == .plaintext {
            if echoes { tags += job.inputs.map(\.tag) }
        } else if encryption != .plaintext {
            tags.append(["encrypted"])
        }
        tags += output.tags
        return ServiceReply(
            kind: NIP90.resultKind(of: job.kind), content: output.content, tags: tags, encryption: encryption, relays: relays)
    }
}

struct DeadlineExceeded: Error {}

/// Runs `body`, cancelling it at `deadline` (then throws ``DeadlineExceeded``).
func withDeadline<T: Sendable>(_ deadline: ContinuousClock.Instant, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let work = Task { try await body() }
    let timer = Deadlines.shared.schedule(at: deadline) { work.cancel() }
    let result = await withTaskCancellationHandler { await work.result } onCancel: { work.cancel() }
    if !Deadlines.shared.cancel(timer) {
        if case .success(let value) = result { return value }
        throw DeadlineExceeded()
    }
    return try result.get()
}

/// Answers a ping (kind 7007 `p`-tagged to the host) with a kind 7000 feedback, status `pong`, that `e`-tags
/// it: a customer can tell a live host from a stale announcement before sending it a job.
public struct DVMPing: RequestHandler {
    public init() {}

    public var kinds: Set<Kind> { [NIP90.pingKind] }
    public var encryptions: Set<PayloadEncryption> { [.plaintext] }

    public func handle(_ request: ServiceRequest, context: RequestContext) async throws -> [ServiceReply] {
        [request.reply(kind: NIP90.feedbackKind, content: "", tags: [["status", "pong"]])]
    }
}
