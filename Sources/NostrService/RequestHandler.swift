public import Logging
public import NostrCore
public import NostrCrypto
public import NostrRelay

/// What a service does with the requests of some kinds.
///
/// The runtime calls ``handle(_:context:)`` at most once per request event, however many relays deliver it and
/// however often it is replayed, and publishes the replies it returns (signed by the key the request
/// addressed, encrypted in the request's scheme). A copy of the request arriving later gets the same replies
/// again. Throw a ``ServiceError`` to answer with an error; ``errorReply(to:error:)`` shapes it for the
/// protocol, and is also used for requests the runtime refuses (rate limit, concurrency, timeout).
///
/// ```swift
/// struct Uppercase: RequestHandler {
///     var kinds: Set<Kind> { [25_910] }
///     func handle(_ request: ServiceRequest, context: RequestContext) async throws -> [ServiceReply] {
///         [request.reply(kind: 25_911, content: request.content.uppercased())]
///     }
///     func errorReply(to request: ServiceRequest, error: ServiceError) -> ServiceReply? {
///         request.reply(kind: 25_911, content: "error: \(error.message)")
///     }
/// }
/// ```
public protocol RequestHandler: Sendable {
    /// The request kinds this handler answers.
    var kinds: Set<Kind> { get }
    /// Encryption schemes accepted (default NIP-44 and NIP-04); others are refused with
    /// ``ServiceError/Code/unsupportedEncryption``.
    var encryptions: Set<PayloadEncryption> { get }
    /// Whether requests of these kinds that `p`-tag no one are taken too (as NIP-90 job requests may be).
    /// Requests that `p`-tag someone else are never taken. Default false.
    var acceptsUntargeted: Bool { get }
    /// How long ``handle(_:context:)`` may run before the request is answered with
    /// ``ServiceError/Code/timeout`` (default 30 s).
    var timeout: Duration { get }
    /// Whether a request interrupted by a crash or restart may be run again (default false: it is answered
    /// with ``ServiceError/Code/interrupted`` instead, so nothing is signed or paid twice). An ephemeral
    /// request cut off by shutdown does not come back (relays do not keep it), so it is answered then:
    /// ``ServiceError/Code/interrupted``, or ``ServiceError/Code/unavailable`` (send it again) if this is true.
    var isIdempotent: Bool { get }
    /// How `event`'s content is protected. The default: plain text when ``encryptions`` is only
    /// `.plaintext`, else NIP-04 when the content has `?iv=`, else NIP-44. Override for protocols where a tag
    /// says whether the content is encrypted (NIP-90's `encrypted`).
    func payloadEncryption(of event: Event) -> PayloadEncryption
    /// Whether replies also go to the requester's inbox relays (their NIP-65 read relays, else their kind
    /// 10050 relays), which the runtime looks up on its relays and caches. Default false.
    var repliesToInbox: Bool { get }

    /// Handles one request; returns the replies to publish (recorded, and re-sent for duplicates).
    func handle(_ request: ServiceRequest, context: RequestContext) async throws -> [ServiceReply]

    /// The protocol's error reply for `request`, or nil when the protocol has none. When the payload could not
    /// be decrypted, `request.content` is empty and the error is ``ServiceError/Code/badRequest``.
    func errorReply(to request: ServiceRequest, error: ServiceError) -> ServiceReply?

    /// Events that tell the world about this service under `context.key` (a NIP-89 handler information event,
    /// a NIP-47 info event): signed with that key and published, each confirmed by `OK`, on start, every
    /// ``ServiceRuntime/Configuration/announcementInterval``, and whenever the relays change (to the old and
    /// the new ones). Default none.
    func announcements(_ context: AnnouncementContext) async throws -> [EventTemplate]

    /// Events this handler watches without answering them (NIP-09 deletions of its requests, say). Default
    /// none. See ``EventWatch``.
    var watches: [EventWatch] { get }
}

/// Events a handler watches beside its requests: the runtime subscribes to ``filter`` on its relays (from the
/// same `since` as the requests, so a restart's catch-up brings them again; on connections that a full intake
/// does not hold up) and passes each matching event to ``observe`` once as it arrives (copies from other relays
/// are dropped), in arrival order, on one task (so `observe` must return quickly). Nothing is journaled,
/// rate-limited or answered, and every replica sharing a store sees every event.
public struct EventWatch: Sendable {
    /// Without `since` (the runtime sets it); include tag conditions, so that a kind many use (like 5) is
    /// asked for only where it concerns this service.
    public var filter: Filter
    public var observe: @Sendable (_ event: Event, _ relay: RelayURL) async -> Void

    public init(filter: Filter, observe: @escaping @Sendable (_ event: Event, _ relay: RelayURL) async -> Void) {
        self.filter = filter
        self.observe = observe
    }
}

/// What a handler knows when it writes its announcements.
public struct AnnouncementContext: Sendable {
    /// The service key the announcements are signed with.
    public let key: PublicKey
    /// The relays the service listens on.
    public let relays: [RelayURL]
    /// Now, for `created_at`.
    public let now: Timestamp
    /// When the runtime announces again at the latest: a NIP-40 `expiration` after this never lapses while the
    /// service runs.
    public let nextAnnouncement: Timestamp
    /// The service's relay pool, to look up what is published already (what an announcement replaces or
    /// withdraws).
    public let pool: RelayPool
}

extension RequestHandler {
    public var encryptions: Set<PayloadEncryption> { [.nip44, .nip04] }
    public var acceptsUntargeted: Bool { false }
    public var timeout: Duration { .seconds(30) }
    public var isIdempotent: Bool { false }
    public var repliesToInbox: Bool { false }
    public func payloadEncryption(of event: Event) -> PayloadEncryption {
        if encryptions == [.plaintext] { return .plaintext }
        return NIP04.isNIP04Payload(event.content) ? .nip04 : .nip44
    }
    public func errorReply(to request: ServiceRequest, error: ServiceError) -> ServiceReply? { nil }
    public func announcements(_ context: AnnouncementContext) async throws -> [EventTemplate] { [] }
    public var watches: [EventWatch] { [] }
}

/// What a handler may use while it handles a request.
public struct RequestContext: Sendable {
    /// A logger carrying the request's metadata (`nostr.event.id`, `nostr.kind`, `nostr.pubkey`).
    public let logger: Logger
    /// The service's storage, for state a handler keeps (``ServiceStore/value(_:in:)`` and friends).
    public let store: any ServiceStore
    /// The service's relay pool (its working connections), for fetching what a request refers to.
    public let pool: RelayPool
    /// When the handler's time is up.
    public let deadline: ContinuousClock.Instant
    /// The request's handling slot (given back while it waits on something outside the service).
    let slot: ServiceRuntime.Slot
    let publish: @Sendable (ServiceReply) async -> [RelayURL: PublishResult]

    /// Publishes an intermediate reply now (progress, a payment request) and waits for the relays' answers.
    /// Unlike the replies ``RequestHandler/handle(_:context:)`` returns, it is not recorded or re-sent.
    @discardableResult
    public func send(_ reply: ServiceReply) async -> [RelayURL: PublishResult] {
        await publish(reply)
    }

    /// Runs `wait` — for something outside the service: a person's approval, a payment — without holding one of
    /// the runtime's ``ServiceRuntime/Configuration/maximumConcurrentRequests`` handling slots, so that requests
    /// waiting on people cannot stop the service from reading others; a slot is taken again before it returns
    /// (unless the handler is being cancelled: then it finishes without one). The request still counts for the
    /// sender's own limits, and graceful shutdown still waits for it (within the grace period).
    public func withoutHandlingSlot<T>(_ wait: () async throws -> T) async rethrows -> T {
        slot.leave()
        do {
            let result = try await wait()
            await slot.retake()
            return result
        } catch {
            await slot.retake()
            throw error
        }
    }
}
