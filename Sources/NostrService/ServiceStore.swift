public import NostrCore
public import NostrCrypto

/// What the journal knows about a request when the runtime tries to claim it.
public enum ClaimResult: Sendable, Equatable {
    /// The caller owns the request now and runs its handler.
    case claimed
    /// `owner` (another runtime, or this one) is handling it; its claim holds until `leaseEnds` unless renewed
    /// (``ServiceStore/renew(_:owner:now:)``).
    case inProgress(owner: String, leaseEnds: Timestamp)
    /// It was handled; these replies were published for it (re-send them).
    case finished(replies: [Event])
    /// It was claimed and never finished, and the lease has run out unrenewed: the runtime that held it stopped.
    case interrupted

    /// An unfinished claim, judged at `now` by its holder's `lease` (seconds from its last renewal, `claimedAt`).
    public static func unfinished(owner: String, claimedAt: Timestamp, lease: Int64, now: Timestamp) -> ClaimResult {
        // Saturating: the lease comes from the store, written by whichever runtime holds the claim.
        let (sum, overflow) = claimedAt.addingReportingOverflow(lease)
        let leaseEnds = overflow ? (lease > 0 ? Int64.max : Int64.min) : sum
        return leaseEnds < now ? .interrupted : .inProgress(owner: owner, leaseEnds: leaseEnds)
    }
}

/// A request as the journal records it.
public struct JournalEntry: Sendable, Hashable {
    public var id: EventID
    /// The service key it is addressed to.
    public var service: PublicKey
    public var sender: PublicKey
    public var kind: Kind
    public var createdAt: Timestamp

    public init(id: EventID, service: PublicKey, sender: PublicKey, kind: Kind, createdAt: Timestamp) {
        self.id = id
        self.service = service
        self.sender = sender
        self.kind = kind
        self.createdAt = createdAt
    }

    public init(_ request: Event, service: PublicKey) {
        self.init(id: request.id, service: service, sender: request.pubkey, kind: request.kind, createdAt: request.createdAt)
    }
}

/// Where a service keeps what must outlive the process: the request journal (claims, replies, delivery
/// outcomes), the catch-up checkpoints, and key-value state for handlers (clients, permissions, budgets, jobs).
///
/// ``SQLiteServiceStore`` keeps it in a file in the data directory. Implementations must make
/// ``claim(_:owner:now:lease:)`` atomic, so runtimes sharing a store never both run one request.
public protocol ServiceStore: Sendable {
    /// Claims `entry` for `owner` unless the journal already has it. `lease` (seconds) is recorded with the claim:
    /// every runtime judges a claim by its holder's lease, so replicas need not agree on one. A claim recorded
    /// without a lease (by an older release) is judged by the caller's.
    func claim(_ entry: JournalEntry, owner: String, now: Timestamp, lease: Int64) async throws -> ClaimResult

    /// Takes over an ``ClaimResult/interrupted`` request (for handlers that may run twice), recording `lease` as
    /// the new holder's; false if another runtime took it first.
    func reclaim(_ id: EventID, owner: String, now: Timestamp, lease: Int64) async throws -> Bool

    /// Renews `owner`'s unfinished claims among `ids` from `now` (a claim's lease counts from its last renewal).
    /// A runtime renews the claims of the requests it is handling, so leases can be short and a request whose
    /// runtime stopped is taken over soon after.
    func renew(_ ids: [EventID], owner: String, now: Timestamp) async throws

    /// Gives up `owner`'s unfinished claim on `id` (its work was cut off by shutdown before it started, or by a
    /// handler that may run twice), so that the request is claimed afresh, and run, the next time it arrives.
    func release(_ id: EventID, owner: String) async throws

    /// Records that `owner`'s claim on a request is done, with the replies to re-send for its duplicates.
    /// `outcome` is a short machine-readable word (`answered`, `error:<code>`). It changes nothing once another
    /// runtime has taken the request over (a late record must not overwrite the new holder's). It need not be
    /// durable when this returns, but a later call on this store (a copy's ``claim(_:owner:now:lease:)``) must
    /// see it.
    func finish(_ id: EventID, owner: String, outcome: String, replies: [Event], now: Timestamp) async throws

    /// Records how publishing the replies went (`accepted by 2 of 3 relays`, say). It need not be written when
    /// this returns: a store may queue it with later writes (the SQLite store does).
    func recordDelivery(_ id: EventID, _ delivery: String) async throws

    /// The newest `created_at` of requests the service has claimed, if any.
    func checkpoint(for service: PublicKey) async throws -> Timestamp?

    /// Moves the checkpoint forward to `createdAt` (never back).
    func advanceCheckpoint(for service: PublicKey, to createdAt: Timestamp) async throws

    /// Forgets finished requests created before `createdAt`; returns how many.
    func pruneJournal(before createdAt: Timestamp) async throws -> Int

    /// A handler's value for `key` in `namespace`.
    func value(_ key: String, in namespace: String) async throws -> [UInt8]?

    /// Sets (or, with nil, removes) a value.
    func setValue(_ value: [UInt8]?, forKey key: String, in namespace: String) async throws

    /// Every value in `namespace`, by key.
    func values(in namespace: String) async throws -> [String: [UInt8]]

    /// Replaces the value for `key` with what `change` makes of the current one (nil: absent; returning nil
    /// removes it), atomically: no other write to the key lands between the read and the write, in this process
    /// or another. Returns the new value. For read-modify-write updates that must not undo a concurrent change
    /// (a revocation, say).
    func updateValue(forKey key: String, in namespace: String, _ change: @escaping @Sendable ([UInt8]?) throws -> [UInt8]?) async throws
        -> [UInt8]?

    /// Appends `entry` to the append-only log `namespace` (an audit trail, a history), stamped `time`.
    func appendLog(_ entry: [UInt8], at time: Timestamp, in namespace: String) async throws

    /// Entries of log `namespace`, newest first: at most `limit`, only those older than sequence number
    /// `before` when it is given (to page back).
    func log(in namespace: String, limit: Int, before: Int64?) async throws -> [LogEntry]

    /// Removes the entries of log `namespace` stamped before `time`; returns how many.
    func pruneLog(in namespace: String, before time: Timestamp) async throws -> Int

    /// Returns once the writes this store queued without waiting (``finish(_:owner:outcome:replies:now:)``,
    /// ``recordDelivery(_:_:)``) before the call are written or given up, or at once when the task is cancelled.
    /// The runtime calls it when it stops. The default, for stores that write before returning, returns at once.
    func flush() async
}

extension ServiceStore {
    public func flush() async {}
}

/// One entry of a store's append-only log.
public struct LogEntry: Sendable, Hashable {
    /// Increases with every append (across namespaces).
    public var sequence: Int64
    public var time: Timestamp
    public var entry: [UInt8]

    public init(sequence: Int64, time: Timestamp, entry: [UInt8]) {
        self.sequence = sequence
        self.time = time
        self.entry = entry
    }
}

/// Encodes and decodes the replies kept in the journal (a JSON array of events).
package enum StoredReplies {
    package static func encode(_ events: [Event]) -> String {
        "[" + events.map(\.json).joined(separator: ",") + "]"
    }

    package static func decode(_ text: String) throws -> [Event] {
        guard case .array(let values) = try JSON.parse(text) else {
            throw ServiceError(.internal, "the journal's replies are not a JSON array")
        }
        return try values.map(Event.init(jsonValue:))
    }
}
