import Foundation
import GRDB
import Logging
public import CoreMetrics
public import NostrCore
public import NostrCrypto
import NostrRelay
import Synchronization

/// A ``ServiceStore`` in an SQLite file (GRDB, WAL mode): the default, for one service process.
///
/// Claims are atomic between tasks and between processes that open the same file (each runs in a write
/// transaction). Replicas on several machines share a ``ServiceStore`` in PostgreSQL instead.
///
/// Journal writes (claims, answers, delivery outcomes) are committed in groups: those that arrive while a
/// transaction is being written go together into the next one. A claim's caller resumes once its group is
/// committed (synchronous=FULL, so a claim is on disk before its handler runs); answers and delivery outcomes
/// are queued in order behind it and not waited for. A queued write that fails is tried again after 0.2, 1 and
/// 3 s (as the runtime does with the writes it waits for), each failure counted in
/// `switchboard_journal_errors_total{operation}` and logged. ``flush()`` waits for what is queued, retries
/// included (the runtime calls it when it stops); a retry still waiting when the process ends is lost, as it
/// would be in a crash.
///
/// Under load the groups are made larger on purpose (PostgreSQL's `commit_delay` idea): after a group of at least
/// 16 writes, the next one gathers for up to `commitDelay` (or until 256 writes wait) before it is committed. Each
/// commit costs a sync and rewrites the pages its writes share, so fewer, larger commits cost less per request; a
/// lightly loaded store never waits.
///
/// Point reads (``value(_:in:)``, which handlers like the bunker make per request, and checkpoints) are batched
/// too, by `BatchedReads`: those that arrive while a batch is being read go into the next one, on one reader
/// connection, each in a transaction of its own. Listings (``values(in:)``, logs) read through GRDB's pool.
public final class SQLiteServiceStore: ServiceStore {
    private let pool: DatabasePool
    private let reads: BatchedReads
    private let queue = Mutex(WriteQueue())
    private let commitDelay: Duration
    /// A committed group this large means the store is busy: the next group gathers before its commit.
    private let busyGroup: Int
    /// A gathering group this large is committed without waiting out the delay.
    private let fullGroup: Int
    /// Signalled when a gathering group is full.
    private let gathered = DispatchSemaphore(value: 0)
    /// Where failed queued writes are counted; nil: the global factory at the time of the failure.
    private let metricsFactory: (any MetricsFactory)?

    /// Queued writes not yet committed or given up (retries included), by sequence number, and the flushes
    /// waiting for them.
    private let outstanding = Mutex(Outstanding())

    private struct Outstanding {
        var writes: Set<UInt64> = []
        var next: UInt64 = 0
        /// No write numbered below this is outstanding. It only moves up, so finding the oldest outstanding
        /// write costs, over the store's life, one step per write.
        var oldest: UInt64 = 0
        /// Each waits for the writes numbered below its own `upTo`.
        var flushes: [UInt64: (upTo: UInt64, continuation: CheckedContinuation<Void, Never>)] = [:]
        var nextFlush: UInt64 = 0

        /// The oldest outstanding write's number, or `next` when none is.
        mutating func oldestOutstanding() -> UInt64 {
            while oldest < next, !writes.contains(oldest) { oldest += 1 }
            return oldest
        }
    }

    private struct WriteQueue {
        var pending: [any GroupedWrite] = []
        var writing = false
        /// The writer waits for the pending group to fill up (or `commitDelay` to pass).
        var gathering = false
    }

    /// Opens (creating and migrating if needed) the database at `path`.
    ///
    /// - Parameters:
    ///   - commitDelay: How long a group commit may wait for more writes when the store is busy (zero: never). It
    ///     adds at most this much to a claim's latency under load, and nothing when the load is light.
    ///   - metricsFactory: Where failures of queued writes (answers, delivery outcomes) are counted. By default the
    ///     global swift-metrics factory as it is when a failure happens, so a store opened before the metrics
    ///     system is bootstrapped still reports to it.
    public convenience init(
        path: String, commitDelay: Duration = .milliseconds(3), metricsFactory: (any MetricsFactory)? = nil
    ) throws {
        try self.init(path: path, commitDelay: commitDelay, busyGroup: 16, fullGroup: 256, metricsFactory: metricsFactory)
    }

    /// The waits before each further attempt of a queued write that failed: four attempts in about 4 s.
    static let defaultRetryDelays: [Duration] = [.milliseconds(200), .seconds(1), .seconds(3)]

    /// - Parameter retryDelays: The waits before each further attempt of a queued write that failed.
    init(
        path: String, commitDelay: Duration, busyGroup: Int, fullGroup: Int, metricsFactory: (any MetricsFactory)? = nil,
        retryDelays: [Duration] = defaultRetryDelays
    ) throws {
        self.commitDelay = commitDelay
        self.busyGroup = busyGroup
        self.fullGroup = fullGroup
        self.metricsFactory = metricsFactory
        self.retryDelays = retryDelays
        pool = try openMigratedDatabase(path: path, label: "switchboard.service", migrator: Self.migrator)
        reads = BatchedReads(pool)
        // Commits reach the disk before they return (SQLite's usual default, made certain here): a claim must
        // survive a power cut, or a request could run again after it.
        try pool.writeWithoutTransaction { try $0.execute(sql: "PRAGMA synchronous = FULL") }
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE journal (
                    id BLOB PRIMARY KEY,
                    service BLOB NOT NULL,
                    sender BLOB NOT NULL,
                    kind INTEGER NOT NULL,
                    created_at INTEGER NOT NULL,
                    owner TEXT NOT NULL,
                    claimed_at INTEGER NOT NULL,
                    finished_at INTEGER,
                    outcome TEXT,
                    replies TEXT,
                    delivery TEXT
                ) WITHOUT ROWID;
                CREATE INDEX journal_created ON journal(created_at);
                CREATE TABLE checkpoints (
                    service BLOB PRIMARY KEY,
                    created_at INTEGER NOT NULL
                ) WITHOUT ROWID;
                CREATE TABLE kv (
                    namespace TEXT NOT NULL,
                    key TEXT NOT NULL,
                    value BLOB NOT NULL,
                    PRIMARY KEY (namespace, key)
                ) WITHOUT ROWID;
                """)
        }
        // v2: the journal in arrival order (rowid) with a unique index on the request id. Under load the
        // claim, the answer and the delivery outcome of a request then touch the same few recent pages instead
        // of one random page each in a table keyed by random ids, so a group commit writes far fewer pages.
        migrator.registerMigration("v2") { db in
            try db.execute(sql: """
                CREATE TABLE journal_v2 (
                    seq INTEGER PRIMARY KEY,
                    id BLOB NOT NULL UNIQUE,
                    service BLOB NOT NULL,
                    sender BLOB NOT NULL,
                    kind INTEGER NOT NULL,
                    created_at INTEGER NOT NULL,
                    owner TEXT NOT NULL,
                    claimed_at INTEGER NOT NULL,
                    finished_at INTEGER,
                    outcome TEXT,
                    replies TEXT,
                    delivery TEXT
                );
                INSERT INTO journal_v2 (id, service, sender, kind, created_at, owner, claimed_at, finished_at, outcome, replies, delivery)
                    SELECT id, service, sender, kind, created_at, owner, claimed_at, finished_at, outcome, replies, delivery
                    FROM journal ORDER BY claimed_at;
                DROP TABLE journal;
                ALTER TABLE journal_v2 RENAME TO journal;
                CREATE INDEX journal_created ON journal(created_at);
                """)
        }
        // v3: append-only logs for handlers (audit trails), newest first by sequence.
        migrator.registerMigration("v3") { db in
            try db.execute(sql: """
                CREATE TABLE log (
                    seq INTEGER PRIMARY KEY,
                    namespace TEXT NOT NULL,
                    at INTEGER NOT NULL,
                    entry BLOB NOT NULL
                );
                CREATE INDEX log_namespace ON log(namespace, seq);
                CREATE INDEX log_at ON log(namespace, at);
                """)
        }
        // v4: each claim records its holder's lease, so runtimes judge each other's claims by the holder's lease
        // rather than their own (NULL for claims made before: judged by the caller's lease, as they were).
        migrator.registerMigration("v4") { db in
            try db.execute(sql: "ALTER TABLE journal ADD COLUMN lease INTEGER")
        }
        return migrator
    }

    // MARK: Group commit

    /// Runs `body` in the next group transaction; returns its result once that transaction is committed.
    private func grouped<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            enqueue(Write(body: body, continuation: continuation))
        }
    }

    /// Queues `body` for the next group transaction without waiting for it: for records whose loss in a crash
    /// costs nothing but the record. Nobody is waiting to be told of a failure, so the store tries again itself
    /// (``retryDelays``), counting and logging each failure.
    private func deferred(_ operation: String, _ body: @escaping @Sendable (Database) throws -> Void) {
        let sequence = outstanding.withLock { outstanding in
            defer { outstanding.next += 1 }
            outstanding.writes.insert(outstanding.next)
            return outstanding.next
        }
        enqueue(DeferredWrite(operation: operation, body: body, sequence: sequence, attempt: 0, store: self))
    }

    /// Returns once every write queued before the call (answers, delivery outcomes) is committed or, after its
    /// last retry, given up; at once when cancelled. Writes that are not failing take milliseconds; one the
    /// database keeps refusing, about 4 s.
    public func flush() async {
        let id = outstanding.withLock { outstanding in
            defer { outstanding.nextFlush += 1 }
            return outstanding.nextFlush
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let done = outstanding.withLock { outstanding in
                    guard !Task.isCancelled, !outstanding.writes.isEmpty else { return true }
                    outstanding.flushes[id] = (outstanding.next, continuation)
                    return false
                }
                if done { continuation.resume() }
            }
        } onCancel: {
            outstanding.withLock { $0.flushes.removeValue(forKey: id) }?.continuation.resume()
        }
    }

    /// A queued write is committed or given up: the flushes waiting for nothing older resume.
    fileprivate func settled(_ write: DeferredWrite) {
        let resumed = outstanding.withLock { outstanding -> [CheckedContinuation<Void, Never>] in
            outstanding.writes.remove(write.sequence)
            guard !outstanding.flushes.isEmpty else { return [] }
            let oldest = outstanding.oldestOutstanding()
            let done = outstanding.flushes.filter { $0.value.upTo <= oldest }
            for id in done.keys { outstanding.flushes[id] = nil }
            return done.values.map(\.continuation)
        }
        for continuation in resumed { continuation.resume() }
    }

    /// The waits before the second, third, ... attempts of a queued write (by default three more attempts, after
    /// 0.2, 1 and 3 s).
    let retryDelays: [Duration]

    /// A queued write failed: counted, logged, and queued again after its delay unless it has had every try.
    fileprivate func failed(_ write: DeferredWrite, _ error: any Error) {
        Counter(
            label: "switchboard_journal_errors_total", dimensions: [("operation", write.operation)],
            factory: metricsFactory ?? MetricsSystem.factory
        ).increment()
        guard write.attempt < retryDelays.count else {
            Self.logger.error(
                "a queued journal write failed; giving up", metadata: ["operation": "\(write.operation)", "error": "\(error)"])
            settled(write)
            return
        }
        let delay = retryDelays[write.attempt]
        Self.logger.warning(
            "a queued journal write failed; trying again", metadata: ["operation": "\(write.operation)", "error": "\(error)"])
        let next = DeferredWrite(
            operation: write.operation, body: write.body, sequence: write.sequence, attempt: write.attempt + 1, store: self)
        Task.detached {
            try? await Task.sleep(for: delay)
            self.enqueue(next)
        }
    }

    private static let logger = Logger(label: "switchboard.journal")

    /// Adds `write` to the pending group; the first write while the writer is idle starts it draining.
    private func enqueue(_ write: any GroupedWrite) {
        let (leads, full) = queue.withLock { queue in
            queue.pending.append(write)
            let full = queue.gathering && queue.pending.count >= fullGroup
            if full { queue.gathering = false }
            defer { queue.writing = true }
            return (!queue.writing, full)
        }
        if full { gathered.signal() }
        if leads { pool.asyncWriteWithoutTransaction { db in self.drain(db) } }
    }

    /// On the writer queue: commits what is pending, one transaction per group, until nothing is.
    private func drain(_ db: Database) {
        var busy = false
        while true {
            if busy { gather() }
            let group = queue.withLock { queue in
                defer { queue.pending = [] }
                if queue.pending.isEmpty { queue.writing = false }
                return queue.pending
            }
            if group.isEmpty { return }
            busy = group.count >= busyGroup && commitDelay > .zero
            do {
                try Self.commit(group, in: db)
                for write in group { write.complete(failure: nil) }
            } catch let error as DatabaseError where error.resultCode == .SQLITE_BUSY {
                // Another process held the database past the busy timeout: the group is tried once more as a
                // whole (write by write, each could wait out the timeout again).
                do {
                    try Self.commit(group, in: db)
                    for write in group { write.complete(failure: nil) }
                } catch {
                    for write in group { write.complete(failure: error) }
                }
            } catch {
                // The group was rolled back because a write aborted it: each write is tried again alone, so one
                // bad write does not take the others with it.
                for write in group {
                    do {
                        try Self.commit([write], in: db)
                        write.complete(failure: nil)
                    } catch {
                        write.complete(failure: error)
                    }
                }
            }
        }
    }

    /// Runs `writes` in one transaction and commits it.
    private static func commit(_ writes: [any GroupedWrite], in db: Database) throws {
        try db.inTransaction(.immediate) {
            for write in writes {
                write.run(db)
                // An error that aborted the transaction (disk full, I/O) fails the whole group.
                guard db.isInsideTransaction else { throw ServiceError(.internal, "the journal transaction was aborted") }
            }
            return .commit
        }
    }

    /// On the writer queue, after a busy group: waits until the pending group is full or `commitDelay` has
    /// passed. Blocking here holds up only writes, which are what it waits for; other writes to the database
    /// (checkpoints, handler state) queue behind it, so nothing enqueued is left out of a later commit.
    private func gather() {
        let wait = queue.withLock { queue in
            guard queue.pending.count < fullGroup else { return false }
            queue.gathering = true
            return true
        }
        guard wait else { return }
        let (seconds, attoseconds) = commitDelay.components
        let timeout = DispatchTime.now() + .nanoseconds(Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000))
        let timedOut = gathered.wait(timeout: timeout) == .timedOut
        guard timedOut else { return }
        let signalled = queue.withLock { queue in
            defer { queue.gathering = false }
            return !queue.gathering
        }
        // The group filled up just as the wait ended: take the signal that is on its way.
        if signalled { gathered.wait() }
    }

    public func claim(_ entry: JournalEntry, owner: String, now: Timestamp, lease: Int64) async throws -> ClaimResult {
        try await grouped { db in
            try db.cachedStatement(
                sql: """
                    INSERT INTO journal (id, service, sender, kind, created_at, owner, claimed_at, lease)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING
                    """
            ).execute(
                arguments: [
                    Data(entry.id.bytes32.bytes), Data(entry.service.bytes32.bytes), Data(entry.sender.bytes32.bytes),
                    Int(entry.kind.rawValue), entry.createdAt, owner, now, lease,
                ])
            if db.changesCount == 1 { return .claimed }
            guard let row = try Row.fetchOne(
                db.cachedStatement(sql: "SELECT owner, claimed_at, lease, finished_at, replies FROM journal WHERE id = ?"),
                arguments: [Data(entry.id.bytes32.bytes)])
            else { return .finished(replies: []) }
            if row["finished_at"] as Int64? != nil {
                return .finished(replies: try (row["replies"] as String?).map(StoredReplies.decode) ?? [])
            }
            return ClaimResult.unfinished(owner: row["owner"], claimedAt: row["claimed_at"], lease: row["lease"] ?? lease, now: now)
        }
    }

    public func reclaim(_ id: EventID, owner: String, now: Timestamp, lease: Int64) async throws -> Bool {
        try await grouped { db in
            try db.cachedStatement(
                sql: """
                    UPDATE journal SET owner = ?, claimed_at = ?, lease = ?
                    WHERE id = ? AND finished_at IS NULL AND claimed_at + coalesce(lease, ?) < ?
                    """
            ).execute(arguments: [owner, now, lease, Data(id.bytes32.bytes), lease, now])
            return db.changesCount == 1
        }
    }

    public func renew(_ ids: [EventID], owner: String, now: Timestamp) async throws {
        for start in stride(from: 0, to: ids.count, by: Self.renewalChunk) {
            let chunk = ids[start..<min(start + Self.renewalChunk, ids.count)]
            let marks = Array(repeating: "?", count: chunk.count).joined(separator: ",")
            let arguments = StatementArguments([now, owner] as [any DatabaseValueConvertible])
                + StatementArguments(chunk.map { Data($0.bytes32.bytes) })
            try await grouped { db in
                try db.execute(
                    sql: "UPDATE journal SET claimed_at = ? WHERE owner = ? AND finished_at IS NULL AND id IN (\(marks))",
                    arguments: arguments)
            }
        }
    }

    /// Claims renewed per statement (SQLite limits a statement's parameters).
    static let renewalChunk = 500

    public func release(_ id: EventID, owner: String) async throws {
        try await grouped { db in
            try db.cachedStatement(sql: "DELETE FROM journal WHERE id = ? AND owner = ? AND finished_at IS NULL")
                .execute(arguments: [Data(id.bytes32.bytes), owner])
        }
    }

    /// Queued with the next group of journal writes and not waited for. The claim is what keeps a request from
    /// running twice, and it is on disk already; a crash before the answer is written costs only its re-sending
    /// (a copy of the request that comes back is answered as interrupted instead).
    public func finish(_ id: EventID, owner: String, outcome: String, replies: [Event], now: Timestamp) async throws {
        deferred("finish") { db in
            try db.cachedStatement(sql: "UPDATE journal SET finished_at = ?, outcome = ?, replies = ? WHERE id = ? AND owner = ?")
                .execute(arguments: [now, outcome, StoredReplies.encode(replies), Data(id.bytes32.bytes), owner])
        }
    }

    /// Queued with the next group of journal writes and not waited for: the outcome is for the operator, and
    /// a crash before it is written loses only it.
    public func recordDelivery(_ id: EventID, _ delivery: String) async throws {
        deferred("record_delivery") { db in
            try db.cachedStatement(sql: "UPDATE journal SET delivery = ? WHERE id = ?")
                .execute(arguments: [delivery, Data(id.bytes32.bytes)])
        }
    }

    public func checkpoint(for service: PublicKey) async throws -> Timestamp? {
        try await reads.read { db in
            try Int64.fetchOne(db, sql: "SELECT created_at FROM checkpoints WHERE service = ?", arguments: [Data(service.bytes32.bytes)])
        }
    }

    public func advanceCheckpoint(for service: PublicKey, to createdAt: Timestamp) async throws {
        try await pool.write { db in
            try db.execute(
                sql: """
                    INSERT INTO checkpoints (service, created_at) VALUES (?, ?)
                    ON CONFLICT (service) DO UPDATE SET created_at = max(created_at, excluded.created_at)
                    """,
                arguments: [Data(service.bytes32.bytes), createdAt])
        }
    }

    public func pruneJournal(before createdAt: Timestamp) async throws -> Int {
        try await pool.write { db in
            try db.execute(sql: "DELETE FROM journal WHERE created_at < ? AND finished_at IS NOT NULL", arguments: [createdAt])
            return db.changesCount
        }
    }

    public func value(_ key: String, in namespace: String) async throws -> [UInt8]? {
        try await reads.read { db in
            try Data.fetchOne(db.cachedStatement(sql: "SELECT value FROM kv WHERE namespace = ? AND key = ?"), arguments: [namespace, key])
                .map { Array($0) }
        }
    }

    public func setValue(_ value: [UInt8]?, forKey key: String, in namespace: String) async throws {
        try await pool.write { db in try Self.write(value, forKey: key, in: namespace, db) }
    }

    /// Stores `value` for `key`, or deletes it for nil.
    private static func write(_ value: [UInt8]?, forKey key: String, in namespace: String, _ db: Database) throws {
        if let value {
            try db.cachedStatement(
                sql: """
                    INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?)
                    ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value
                    """
            ).execute(arguments: [namespace, key, Data(value)])
        } else {
            try db.cachedStatement(sql: "DELETE FROM kv WHERE namespace = ? AND key = ?").execute(arguments: [namespace, key])
        }
    }

    public func updateValue(
        forKey key: String, in namespace: String, _ change: @escaping @Sendable ([UInt8]?) throws -> [UInt8]?
    ) async throws -> [UInt8]? {
        // One write transaction: SQLite lets no other writer in between, in any process.
        try await pool.write { db in
            let current = try Data.fetchOne(
                db.cachedStatement(sql: "SELECT value FROM kv WHERE namespace = ? AND key = ?"), arguments: [namespace, key]
            ).map { Array($0) }
            let new = try change(current)
            if new != nil || current != nil { try Self.write(new, forKey: key, in: namespace, db) }
            return new
        }
    }

    public func values(in namespace: String) async throws -> [String: [UInt8]] {
        try await pool.read { db in
            var values: [String: [UInt8]] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT key, value FROM kv WHERE namespace = ?", arguments: [namespace]) {
                let data: Data = row["value"]
                values[row["key"]] = Array(data)
            }
            return values
        }
    }

    public func appendLog(_ entry: [UInt8], at time: Timestamp, in namespace: String) async throws {
        // Grouped with the journal writes: an entry per request costs no commit of its own.
        try await grouped { db in
            try db.cachedStatement(sql: "INSERT INTO log (namespace, at, entry) VALUES (?, ?, ?)")
                .execute(arguments: [namespace, time, Data(entry)])
        }
    }

    public func log(in namespace: String, limit: Int, before: Int64?) async throws -> [LogEntry] {
        try await pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT seq, at, entry FROM log WHERE namespace = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                arguments: [namespace, before ?? Int64.max, max(0, limit)]
            ).map { row in
                let entry: Data = row["entry"]
                return LogEntry(sequence: row["seq"], time: row["at"], entry: Array(entry))
            }
        }
    }

    public func pruneLog(in namespace: String, before time: Timestamp) async throws -> Int {
        try await pool.write { db in
            try db.execute(sql: "DELETE FROM log WHERE namespace = ? AND at < ?", arguments: [namespace, time])
            return db.changesCount
        }
    }
}

/// A write waiting for its group transaction.
private protocol GroupedWrite: Sendable {
    /// Runs inside the group's transaction. Each journal write changes the database with a single statement,
    /// so a failing one is undone alone (SQLite's statement atomicity); an error that aborts the transaction
    /// fails the whole group.
    func run(_ db: Database)
    /// After the group's commit (failure nil) or its rollback.
    func complete(failure: (any Error)?)
}

/// A write nobody waits for: one attempt of it.
private final class DeferredWrite: GroupedWrite {
    let operation: String
    let body: @Sendable (Database) throws -> Void
    /// The write's place in the store's queue (kept by its retries), for ``SQLiteServiceStore/flush()``.
    let sequence: UInt64
    /// How many attempts came before this one.
    let attempt: Int
    private let store: SQLiteServiceStore
    /// The error of the last run, if it failed (a group rolled back is run again write by write).
    private let error = Mutex<(any Error)?>(nil)

    init(
        operation: String, body: @escaping @Sendable (Database) throws -> Void, sequence: UInt64, attempt: Int,
        store: SQLiteServiceStore
    ) {
        self.operation = operation
        self.body = body
        self.sequence = sequence
        self.attempt = attempt
        self.store = store
    }

    func run(_ db: Database) {
        let failure: (any Error)?
        do {
            try body(db)
            failure = nil
        } catch {
            failure = error
        }
        error.withLock { $0 = failure }
    }

    func complete(failure: (any Error)?) {
        if let failure = failure ?? error.withLock({ $0 }) {
            store.failed(self, failure)
        } else {
            store.settled(self)
        }
    }
}

private final class Write<T: Sendable>: GroupedWrite {
    private let body: @Sendable (Database) throws -> T
    private let continuation: CheckedContinuation<T, any Error>
    private let outcome = Mutex<Result<T, any Error>?>(nil)

    init(body: @escaping @Sendable (Database) throws -> T, continuation: CheckedContinuation<T, any Error>) {
        self.body = body
        self.continuation = continuation
    }

    func run(_ db: Database) {
        let result = Result { try body(db) }
        outcome.withLock { $0 = result }
    }

    func complete(failure: (any Error)?) {
        let result = outcome.withLock { $0 } ?? .failure(ServiceError(.internal, "the journal write did not run"))
        if let failure {
            continuation.resume(throwing: failure)
        } else {
            continuation.resume(with: result)
        }
    }
}
