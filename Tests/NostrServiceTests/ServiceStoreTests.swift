import Foundation
import GRDB
import MetricsTestKit
import NostrCore
import NostrCrypto
import Synchronization
import Testing
@testable import NostrService
import NostrServicePostgres
import NostrServiceTesting

@Suite("ServiceStore on SQLite and PostgreSQL: the journal, checkpoints and handler state")
struct ServiceStoreTests {
    let service = SecretKey.generate().publicKey

    func entry(_ createdAt: Timestamp = 1000) -> JournalEntry {
        let request = EventTemplate(kind: 25_910, content: "x", createdAt: createdAt).sign(with: SecretKey.generate())
        return JournalEntry(request, service: service)
    }

    func reply() -> Event { EventTemplate(kind: 25_911, content: "answer").sign(with: SecretKey.generate()) }

    @Test("a request is claimed once; copies see it in progress, then its recorded replies", arguments: StoreBackend.allCases)
    func claimOnce(backend: StoreBackend) async throws {
        try await withStores(backend) { stores throws in
            let store = stores[0]
            let request = entry()
            #expect(try await store.claim(request, owner: "a", now: 2000, lease: 60) == .claimed)
            #expect(try await store.claim(request, owner: "b", now: 2001, lease: 60) == .inProgress(owner: "a", leaseEnds: 2060))
            let replies = [reply(), reply()]
            // Only the holder records the answer.
            try await store.finish(request.id, owner: "b", outcome: "answered", replies: [], now: 2002)
            #expect(try await store.claim(request, owner: "b", now: 2002, lease: 60) == .inProgress(owner: "a", leaseEnds: 2060))
            try await store.finish(request.id, owner: "a", outcome: "answered", replies: replies, now: 2002)
            #expect(try await store.claim(request, owner: "b", now: 2003, lease: 60) == .finished(replies: replies))
            try await store.recordDelivery(request.id, "accepted 3 of 3")
            #expect(try await store.claim(request, owner: "c", now: 9999, lease: 60) == .finished(replies: replies))
        }
    }

    @Test("a claim never finished is interrupted after its lease; only one runtime can take it over", arguments: StoreBackend.allCases)
    func interrupted(backend: StoreBackend) async throws {
        try await withStores(backend) { stores throws in
            let store = stores[0]
            let request = entry()
            #expect(try await store.claim(request, owner: "a", now: 2000, lease: 60) == .claimed)
            #expect(try await store.claim(request, owner: "b", now: 2060, lease: 60) == .inProgress(owner: "a", leaseEnds: 2060))
            #expect(try await store.claim(request, owner: "b", now: 2061, lease: 60) == .interrupted)
            #expect(try await store.reclaim(request.id, owner: "b", now: 2061, lease: 60))
            #expect(try await !store.reclaim(request.id, owner: "c", now: 2062, lease: 60))
            #expect(try await store.claim(request, owner: "c", now: 2062, lease: 60) == .inProgress(owner: "b", leaseEnds: 2121))
        }
    }

    @Test("a claim is judged by the lease its holder recorded, not by the lease of the runtime looking at it", arguments: StoreBackend.allCases)
    func holdersLease(backend: StoreBackend) async throws {
        try await withStores(backend) { stores throws in
            let store = stores[0]
            let request = entry()
            // A holds it for 60 s; B, with a 10 s lease of its own, must not find it lapsed after 10 s.
            #expect(try await store.claim(request, owner: "a", now: 2000, lease: 60) == .claimed)
            #expect(try await store.claim(request, owner: "b", now: 2030, lease: 10) == .inProgress(owner: "a", leaseEnds: 2060))
            #expect(try await !store.reclaim(request.id, owner: "b", now: 2030, lease: 10))
            // Renewed, A's 60 s count from the renewal.
            try await store.renew([request.id], owner: "a", now: 2050)
            #expect(try await store.claim(request, owner: "b", now: 2100, lease: 10) == .inProgress(owner: "a", leaseEnds: 2110))
            #expect(try await store.claim(request, owner: "b", now: 2111, lease: 10) == .interrupted)
            // B takes it over with its own 10 s lease, by which C (300 s) then judges it.
            #expect(try await store.reclaim(request.id, owner: "b", now: 2111, lease: 10))
            #expect(try await store.claim(request, owner: "c", now: 2115, lease: 300) == .inProgress(owner: "b", leaseEnds: 2121))
            #expect(try await store.claim(request, owner: "c", now: 2122, lease: 300) == .interrupted)
            #expect(try await store.reclaim(request.id, owner: "c", now: 2122, lease: 300))
        }
    }

    @Test("a renewed claim's lease counts from its renewal; only the owner's unfinished claims are renewed", arguments: StoreBackend.allCases)
    func renewed(backend: StoreBackend) async throws {
        try await withStores(backend) { stores throws in
            let store = stores[0]
            let mine = entry(), theirs = entry(), done = entry()
            for request in [mine, done] { #expect(try await store.claim(request, owner: "a", now: 2000, lease: 60) == .claimed) }
            #expect(try await store.claim(theirs, owner: "b", now: 2000, lease: 60) == .claimed)
            try await store.finish(done.id, owner: "a", outcome: "answered", replies: [], now: 2001)
            try await store.renew([], owner: "a", now: 2040)
            try await store.renew([mine.id, theirs.id, done.id, entry().id], owner: "a", now: 2050)
            #expect(try await store.claim(mine, owner: "c", now: 2080, lease: 60) == .inProgress(owner: "a", leaseEnds: 2110))
            #expect(try await store.claim(theirs, owner: "c", now: 2080, lease: 60) == .interrupted)
            #expect(try await store.claim(done, owner: "c", now: 2080, lease: 60) == .finished(replies: []))
            #expect(try await !store.reclaim(mine.id, owner: "c", now: 2080, lease: 60))
            // More ids than one SQLite statement takes.
            let many = (0..<1_200).map { _ in entry() }
            for request in many { _ = try await store.claim(request, owner: "a", now: 2000, lease: 60) }
            try await store.renew(many.map(\.id), owner: "a", now: 2100)
            for request in [many[0], many[599], many[1_199]] {
                #expect(try await store.claim(request, owner: "c", now: 2150, lease: 60) == .inProgress(owner: "a", leaseEnds: 2160))
            }
        }
    }

    @Test("a released claim is claimed afresh; only its owner can release it, and never once finished", arguments: StoreBackend.allCases)
    func released(backend: StoreBackend) async throws {
        try await withStores(backend) { stores throws in
            let store = stores[0]
            let request = entry()
            #expect(try await store.claim(request, owner: "a", now: 2000, lease: 60) == .claimed)
            try await store.release(request.id, owner: "b")
            #expect(try await store.claim(request, owner: "b", now: 2001, lease: 60) == .inProgress(owner: "a", leaseEnds: 2060))
            try await store.release(request.id, owner: "a")
            #expect(try await store.claim(request, owner: "b", now: 2002, lease: 60) == .claimed)
            let replies = [reply()]
            try await store.finish(request.id, owner: "b", outcome: "answered", replies: replies, now: 2003)
            try await store.release(request.id, owner: "b")
            #expect(try await store.claim(request, owner: "c", now: 2004, lease: 60) == .finished(replies: replies))
        }
    }

    @Test("concurrent claims of each request from two store instances on one database: exactly one wins", arguments: StoreBackend.allCases)
    func concurrentClaims(backend: StoreBackend) async throws {
        try await withStores(backend, count: 2) { stores throws in
            let requests = (0..<50).map { _ in entry() }
            let results = await withTaskGroup(of: ClaimResult?.self) { group in
                for request in requests {
                    for attempt in 0..<4 {
                        group.addTask { try? await stores[attempt % 2].claim(request, owner: "o\(attempt)", now: 2000, lease: 60) }
                    }
                }
                var results: [ClaimResult?] = []
                for await result in group { results.append(result) }
                return results
            }
            #expect(results.count == 200)
            #expect(results.filter { $0 == .claimed }.count == 50)
            #expect(results.filter { if case .inProgress = $0 { true } else { false } }.count == 150)
        }
    }

    @Test("checkpoints only move forward; pruning keeps unfinished and recent requests", arguments: StoreBackend.allCases)
    func checkpointsAndPruning(backend: StoreBackend) async throws {
        try await withStores(backend) { stores throws in
            let store = stores[0]
            #expect(try await store.checkpoint(for: service) == nil)
            try await store.advanceCheckpoint(for: service, to: 500)
            try await store.advanceCheckpoint(for: service, to: 400)
            #expect(try await store.checkpoint(for: service) == 500)
            let old = entry(100), oldOpen = entry(100), recent = entry(900)
            for request in [old, oldOpen, recent] { _ = try await store.claim(request, owner: "a", now: 1000, lease: 60) }
            try await store.finish(old.id, owner: "a", outcome: "answered", replies: [], now: 1000)
            try await store.finish(recent.id, owner: "a", outcome: "answered", replies: [], now: 1000)
            #expect(try await store.pruneJournal(before: 500) == 1)
            #expect(try await store.claim(old, owner: "b", now: 1001, lease: 60) == .claimed)
            #expect(try await store.claim(oldOpen, owner: "b", now: 1001, lease: 60) == .inProgress(owner: "a", leaseEnds: 1060))
            #expect(try await store.claim(recent, owner: "b", now: 1001, lease: 60) == .finished(replies: []))
        }
    }

    @Test("key-value state by namespace, seen by another store instance on the same database", arguments: StoreBackend.allCases)
    func keyValue(backend: StoreBackend) async throws {
        try await withStores(backend, count: 2) { stores throws in
            let store = stores[0]
            try await store.setValue([1, 2, 3], forKey: "alice", in: "clients")
            try await store.setValue([4], forKey: "bob", in: "clients")
            try await store.setValue([9], forKey: "alice", in: "budgets")
            try await store.setValue([5, 5], forKey: "bob", in: "clients")
            try await store.setValue(nil, forKey: "alice", in: "budgets")
            try await store.setValue([], forKey: "empty", in: "other")
            let other = stores[1]
            #expect(try await other.values(in: "clients") == ["alice": [1, 2, 3], "bob": [5, 5]])
            #expect(try await other.value("alice", in: "budgets") == nil)
            #expect(try await other.value("bob", in: "clients") == [5, 5])
            #expect(try await other.value("empty", in: "other") == [])
        }
    }

    @Test("updateValue is atomic: 2 × 40 concurrent increments from two store instances lose none; nil removes", arguments: StoreBackend.allCases)
    func atomicUpdate(backend: StoreBackend) async throws {
        try await withStores(backend, count: 2) { stores throws in
            @Sendable func increment(_ bytes: [UInt8]?) -> [UInt8]? {
                let value = bytes.map { Int($0[0]) << 8 | Int($0[1]) } ?? 0
                return [UInt8((value + 1) >> 8), UInt8((value + 1) & 0xff)]
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for store in stores {
                    for _ in 0..<40 { group.addTask { _ = try await store.updateValue(forKey: "n", in: "counters", increment) } }
                }
                try await group.waitForAll()
            }
            #expect(try await stores[1].value("n", in: "counters") == [0, 80])
            #expect(try await stores[0].updateValue(forKey: "missing", in: "counters") { $0 } == nil)
            #expect(try await stores[0].value("missing", in: "counters") == nil)
            #expect(try await stores[0].updateValue(forKey: "n", in: "counters") { _ in nil } == nil)
            #expect(try await stores[1].value("n", in: "counters") == nil)
        }
    }

    @Test("append-only logs by namespace: newest first, paged by sequence, pruned by time", arguments: StoreBackend.allCases)
    func logs(backend: StoreBackend) async throws {
        try await withStores(backend, count: 2) { stores throws in
            let store = stores[0]
            for time in 1...5 {
                try await store.appendLog([UInt8(time)], at: Timestamp(time * 100), in: "audit")
            }
            try await store.appendLog([42], at: 50, in: "other")
            let other = stores[1]
            let newest = try await other.log(in: "audit", limit: 2, before: nil)
            #expect(newest.map(\.entry) == [[5], [4]])
            #expect(newest.map(\.time) == [500, 400])
            let older = try await other.log(in: "audit", limit: 10, before: newest[1].sequence)
            #expect(older.map(\.entry) == [[3], [2], [1]])
            #expect(try await store.pruneLog(in: "audit", before: 300) == 2)
            #expect(try await other.log(in: "audit", limit: 10, before: nil).map(\.entry) == [[5], [4], [3]])
            #expect(try await other.log(in: "other", limit: 10, before: nil).map(\.entry) == [[42]])
        }
    }

    @Test("the SQLite journal survives closing and reopening its file")
    func sqliteReopen() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("service.sqlite").path
        let request = entry()
        do {
            let store = try SQLiteServiceStore(path: path)
            #expect(try await store.claim(request, owner: "a", now: 2000, lease: 60) == .claimed)
            try await store.finish(request.id, owner: "a", outcome: "answered", replies: [], now: 2001)
            try await store.setValue([7], forKey: "k", in: "n")
        }
        let reopened = try SQLiteServiceStore(path: path)
        #expect(try await reopened.claim(request, owner: "b", now: 2002, lease: 60) == .finished(replies: []))
        #expect(try await reopened.value("k", in: "n") == [7])
    }

    @Test("a journal written by the first schema is carried over when the store upgrades it")
    func sqliteUpgrade() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("service.sqlite").path
        let finished = entry()
        let open = entry()
        do {
            let pool = try DatabasePool(path: path)
            try SQLiteServiceStore.migrator.migrate(pool, upTo: "v1")
            try await pool.write { db in
                for (request, finishedAt) in [(finished, 2001 as Int64?), (open, nil)] {
                    try db.execute(
                        sql: """
                            INSERT INTO journal (id, service, sender, kind, created_at, owner, claimed_at, finished_at, outcome, replies)
                            VALUES (?, ?, ?, ?, ?, 'a', 2000, ?, ?, ?)
                            """,
                        arguments: [
                            Data(request.id.bytes32.bytes), Data(request.service.bytes32.bytes), Data(request.sender.bytes32.bytes),
                            Int(request.kind.rawValue), request.createdAt, finishedAt, finishedAt.map { _ in "answered" },
                            finishedAt.map { _ in "[]" },
                        ])
                }
            }
        }
        let upgraded = try SQLiteServiceStore(path: path)
        #expect(try await upgraded.claim(finished, owner: "b", now: 2002, lease: 60) == .finished(replies: []))
        // Claimed before leases were recorded: judged by the caller's.
        #expect(try await upgraded.claim(open, owner: "b", now: 2002, lease: 90) == .inProgress(owner: "a", leaseEnds: 2090))
        #expect(try await upgraded.claim(open, owner: "b", now: 3000, lease: 60) == .interrupted)
        #expect(try await upgraded.claim(entry(), owner: "b", now: 3000, lease: 60) == .claimed)
    }

    @Test("an idle SQLite store commits each claim at once, however long its commit delay")
    func sqliteIdleCommitsAtOnce() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let store = try SQLiteServiceStore(path: directory.appendingPathComponent("service.sqlite").path, commitDelay: .seconds(300))
        let started = ContinuousClock.now
        for _ in 0..<20 {
            #expect(try await store.claim(entry(), owner: "a", now: 2000, lease: 60) == .claimed)
        }
        // One claim at a time never makes a busy group, so none waits out the 300 s delay. (20 claims took up to
        // 15 s on a loaded machine running the whole suite, whose tasks waited seconds for a thread.)
        #expect(ContinuousClock.now - started < .seconds(100))
    }

    @Test("a claim outlasts another writer holding the file past the busy timeout: the failed group is tried again")
    func sqliteLockedGroupRetried() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("service.sqlite").path
        let store = try SQLiteServiceStore(path: path)
        // Another process's write transaction (the CLI's, say), held for longer than the 5 s busy timeout.
        let other = try DatabaseQueue(path: path)
        let holding = Mutex(false)
        let holder = Thread {
            try? other.inTransaction(.immediate) { _ in
                holding.withLock { $0 = true }
                Thread.sleep(forTimeInterval: 6.5)
                return .commit
            }
        }
        holder.start()
        try await withDeadline(.seconds(5), "the other writer") { while !holding.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(10)) } }
        #expect(try await store.claim(entry(), owner: "a", now: 2000, lease: 60) == .claimed)
    }

    @Test("a queued answer the database refuses is tried again, and recorded once the database takes it; every failure is counted")
    func sqliteQueuedWriteRetried() async throws {
        // Attempts at 0, 0.2, 1.2, 4.2, 10.2 and 22.2 s: time enough for the steps below on a loaded machine.
        let retryDelays: [Duration] = [.milliseconds(200), .seconds(1), .seconds(3), .seconds(6), .seconds(12)]
        try await withRefusedAnswers(retryDelays: retryDelays) { store, metrics, request, other in
            let replies = [reply()]
            try await store.finish(request.id, owner: "a", outcome: "answered", replies: replies, now: 2001)
            try await withDeadline(.seconds(30), "the first failure") {
                while counter(metrics, "switchboard_journal_errors_total", [("operation", "finish")]) == 0 {
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
            #expect(try await store.claim(request, owner: "b", now: 2002, lease: 60) == .inProgress(owner: "a", leaseEnds: 2060))
            // A flush waits for the write's retries.
            let flushed = Mutex(false)
            let flushing = Task {
                await store.flush()
                flushed.withLock { $0 = true }
            }
            try await Task.sleep(for: .milliseconds(500))
            #expect(!flushed.withLock { $0 }, "the answer is not written yet")
            // A later write committed meanwhile does not end the wait for the older one.
            try await store.recordDelivery(request.id, "accepted by 1 of 1")
            try await withDeadline(.seconds(30), "the later write") {
                while try await other.read({ try Row.fetchOne($0, sql: "SELECT delivery FROM journal")?["delivery"] as String? }) == nil {
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
            try await Task.sleep(for: .milliseconds(100))
            #expect(!flushed.withLock { $0 }, "the answer is still not written")
            // The database takes writes again: a later attempt records the answer, and the flush returns.
            try await other.write { try $0.execute(sql: "DROP TRIGGER refuse_answers") }
            try await withDeadline(.seconds(30), "the flush") { await flushing.value }
            #expect(try await other.read { try Row.fetchOne($0, sql: "SELECT outcome FROM journal")?["outcome"] as String? } == "answered")
            #expect(try await store.claim(request, owner: "b", now: 2003, lease: 60) == .finished(replies: replies))
            #expect((1...Int64(retryDelays.count)).contains(counter(metrics, "switchboard_journal_errors_total", [("operation", "finish")])))
        }
    }

    @Test("a queued answer the database keeps refusing is given up after four attempts, each counted")
    func sqliteQueuedWriteGivenUp() async throws {
        try await withRefusedAnswers { store, metrics, request, _ in
            try await store.finish(request.id, owner: "a", outcome: "answered", replies: [reply()], now: 2001)
            try await store.recordDelivery(request.id, "accepted by 1 of 1")
            // A cancelled flush returns at once, with the write still being retried.
            let cancelled = Task { await store.flush() }
            try await Task.sleep(for: .milliseconds(50))
            cancelled.cancel()
            try await withDeadline(.seconds(3), "the cancelled flush") { await cancelled.value }
            #expect(counter(metrics, "switchboard_journal_errors_total", [("operation", "finish")]) < 4)
            // Attempts at 0, 0.2, 1.2 and 4.2 s; the flush returns when the last one is given up.
            try await withDeadline(.seconds(20), "the flush") { await store.flush() }
            #expect(counter(metrics, "switchboard_journal_errors_total", [("operation", "finish")]) == 4)
            try await Task.sleep(for: .seconds(1))
            #expect(counter(metrics, "switchboard_journal_errors_total", [("operation", "finish")]) == 4, "no attempt after the fourth")
            #expect(counter(metrics, "switchboard_journal_errors_total", [("operation", "record_delivery")]) == 0)
            #expect(try await store.claim(request, owner: "b", now: 2002, lease: 60) == .inProgress(owner: "a", leaseEnds: 2060))
        }
    }

    /// A store with metrics and a request claimed by `a`, whose real database refuses every attempt to record an
    /// answer (a trigger, added from `other`, another connection), as a full disk would.
    func withRefusedAnswers(
        retryDelays: [Duration] = SQLiteServiceStore.defaultRetryDelays,
        _ body: (SQLiteServiceStore, TestMetrics, JournalEntry, _ other: DatabaseQueue) async throws -> Void
    ) async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("service.sqlite").path
        let metrics = TestMetrics()
        let store = try SQLiteServiceStore(
            path: path, commitDelay: .milliseconds(3), busyGroup: 16, fullGroup: 256, metricsFactory: metrics, retryDelays: retryDelays)
        let request = entry()
        #expect(try await store.claim(request, owner: "a", now: 2000, lease: 60) == .claimed)
        let other = try secondConnection(path)
        try await refuseAnswers(through: other)
        try await body(store, metrics, request, other)
    }

    @Test("after a busy group the next one gathers for the commit delay, unless it fills up first")
    func sqliteGathersWhenBusy() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        // Here a single write is a busy group and four are a full one. The delay is long and the line between
        // "at once" and "waited" is half of it, so a machine busy with the other tests does not blur the two (a
        // lone claim on an idle store once took over 6 s there).
        let store = try SQLiteServiceStore(
            path: directory.appendingPathComponent("service.sqlite").path, commitDelay: .seconds(40), busyGroup: 1, fullGroup: 4)
        func timed(_ count: Int) async throws -> Duration {
            let started = ContinuousClock.now
            try await withThrowingTaskGroup(of: ClaimResult.self) { group in
                for _ in 0..<count { group.addTask { try await store.claim(self.entry(), owner: "a", now: 2000, lease: 60) } }
                for try await result in group { #expect(result == .claimed) }
            }
            return ContinuousClock.now - started
        }
        // The store is idle: committed at once.
        #expect(try await timed(1) < .seconds(20))
        // The group before was busy: a lone claim waits for the next group to gather (40 s).
        #expect(try await timed(1) > .seconds(20))
        // Four claims fill the gathering group: committed without waiting out the delay.
        #expect(try await timed(4) < .seconds(20))
    }

    @Test("batched SQLite reads each see the latest commit while other reads keep the batches going, and many at once are all answered")
    func sqliteBatchedReads() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("service.sqlite").path
        // The daemon's handle reads; a second handle (a CLI beside it) writes.
        let reader = try SQLiteServiceStore(path: path)
        let writer = try SQLiteServiceStore(path: path)
        try await writer.setValue([0], forKey: "k", in: "ns")
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    while !Task.isCancelled { _ = try await reader.value("k", in: "ns") }
                }
            }
            for round in 1...100 {
                try await writer.setValue([UInt8(round)], forKey: "k", in: "ns")
                #expect(try await reader.value("k", in: "ns") == [UInt8(round)])
            }
            group.cancelAll()
            try await group.waitForAll()
        }
        let answers = try await withThrowingTaskGroup(of: (Int, [UInt8]?).self) { group in
            for index in 0..<1_000 {
                group.addTask { (index, try await reader.value(index % 2 == 0 ? "k" : "missing-\(index)", in: "ns")) }
            }
            return try await group.reduce(into: [Int: [UInt8]?]()) { $0[$1.0] = $1.1 }
        }
        #expect(answers.count == 1_000)
        #expect(answers.allSatisfy { $0.key % 2 == 0 ? $0.value == [100] : $0.value == nil })
    }

    @Test("PostgreSQL URLs: user, password, port, database and sslmode; anything else is refused")
    func postgresURLs() throws {
        let configuration = try PostgresServiceStore.configuration(url: "postgres://svc:p%40ss@db.example:6543/switchboard?sslmode=disable")
        #expect(configuration.host == "db.example")
        #expect(configuration.port == 6543)
        #expect(configuration.username == "svc")
        #expect(configuration.password == "p@ss")
        #expect(configuration.database == "switchboard")
        #expect(throws: ServiceError.self) { try PostgresServiceStore.configuration(url: "mysql://db.example/x") }
        #expect(throws: ServiceError.self) { try PostgresServiceStore.configuration(url: "postgres://db.example/x?sslmode=verify-full") }
        #expect(throws: ServiceError.self) { try PostgresServiceStore.configuration(url: "postgres:///x") }
    }
}

@Suite("RequestPolicy: rate limits, in-flight caps and lists")
struct RequestPolicyTests {
    let alice = SecretKey.generate().publicKey
    let bob = SecretKey.generate().publicKey

    func policy(_ change: (inout RequestPolicy.Configuration) -> Void = { _ in }) -> RequestPolicy {
        var configuration = RequestPolicy.Configuration()
        configuration.rate = 2
        configuration.burst = 3
        configuration.maximumConcurrentPerSender = 100
        configuration.maximumQueueWait = 0
        configuration.refusalRepliesPerSecond = 1
        change(&configuration)
        return RequestPolicy(configuration: configuration)
    }

    @Test("a sender gets its burst, then its rate; others are unaffected; one error reply per second")
    func tokenBucket() {
        var policy = policy()
        let decisions = (0..<6).map { _ in policy.admit(alice, now: 10) }
        #expect(decisions.prefix(3).allSatisfy { $0 == .admit })
        guard case .refuse(let error, reply: true) = decisions[3] else {
            Issue.record("the 4th request should be refused with a reply: \(decisions[3])")
            return
        }
        #expect(error.code == .rateLimited)
        #expect(decisions[4] == .refuse(error, reply: false))
        #expect(policy.admit(bob, now: 10) == .admit)
        // Half a second refills one token at 2/s.
        #expect(policy.admit(alice, now: 10.5) == .admit)
        #expect(policy.admit(alice, now: 10.5) != .admit)
        // A full second after the last error reply, the next refusal is answered again.
        #expect(policy.admit(alice, now: 11.01) == .admit)
        #expect(policy.admit(alice, now: 11.01) == .refuse(error, reply: true))
    }

    @Test("in-flight cap per sender, released by finished")
    func inFlight() {
        var policy = policy { $0.maximumConcurrentPerSender = 2; $0.burst = 100; $0.rate = 100 }
        #expect(policy.admit(alice, now: 0) == .admit)
        #expect(policy.admit(alice, now: 0) == .admit)
        guard case .refuse(let error, _) = policy.admit(alice, now: 0) else {
            Issue.record("a third request in flight should be refused")
            return
        }
        #expect(error.code == .tooManyRequests)
        #expect(policy.finished(alice) == nil)
        #expect(policy.admit(alice, now: 0) == .admit)
    }

    @Test("over its rate a request waits the time its token takes to accrue; past the longest wait it is refused")
    func shaped() {
        var policy = policy { $0.maximumQueueWait = 1 }
        #expect((0..<3).map { _ in policy.admit(alice, now: 10) }.allSatisfy { $0 == .admit })
        guard case .queue(let first, let firstDelay) = policy.admit(alice, now: 10),
            case .queue(let second, let secondDelay) = policy.admit(alice, now: 10)
        else {
            Issue.record("the 4th and 5th requests should wait")
            return
        }
        #expect(first != second)
        #expect(abs(firstDelay - 0.5) < 1e-9 && abs(secondDelay - 1.0) < 1e-9)
        guard case .refuse(let error, reply: true) = policy.admit(alice, now: 10) else {
            Issue.record("the 6th request would wait 1.5 s and should be refused")
            return
        }
        #expect(error.code == .rateLimited)
        // The waiting ones start when their delay is over (no cap is reached here).
        #expect(policy.start(alice, ticket: first) == true)
        #expect(policy.startIfFree(alice) == true)
        #expect(policy.admit(bob, now: 10) == .admit)
    }

    @Test("over its cap a request waits for a slot; slots pass in order; the queue is bounded; a waiter can withdraw")
    func queuedForSlot() {
        var policy = policy { $0.maximumConcurrentPerSender = 1; $0.burst = 100; $0.maximumQueueWait = 10; $0.maximumQueuedPerSender = 3 }
        #expect(policy.admit(alice, now: 0) == .admit)
        let tickets = (0..<3).compactMap { _ -> UInt64? in
            guard case .queue(let ticket, let delay) = policy.admit(alice, now: 0), delay == 0 else { return nil }
            return ticket
        }
        #expect(tickets.count == 3)
        guard case .refuse(let error, _) = policy.admit(alice, now: 0) else {
            Issue.record("a 4th waiting request should be refused")
            return
        }
        #expect(error.code == .tooManyRequests)
        #expect(policy.startIfFree(alice) == false)
        for ticket in tickets { #expect(policy.start(alice, ticket: ticket) == false) }
        // The second withdraws (it waited too long); the slot then goes to the first, then the third.
        #expect(policy.withdraw(alice, ticket: tickets[1]) == true)
        #expect(policy.finished(alice) == tickets[0])
        #expect(policy.withdraw(alice, ticket: tickets[0]) == false, "its ticket came up: it holds the slot")
        #expect(policy.finished(alice) == tickets[2])
        #expect(policy.finished(alice) == nil)
        #expect(policy.admit(alice, now: 0) == .admit)
        // Room again in the queue.
        guard case .queue = policy.admit(alice, now: 0) else {
            Issue.record("the queue should have room again")
            return
        }
        policy.abandon(alice)
        #expect(policy.finished(alice) == nil)
        #expect(policy.admit(alice, now: 0) == .admit)
    }

    @Test("the requests waiting over all senders are bounded too")
    func queuedOverall() {
        var policy = policy { $0.maximumConcurrentPerSender = 1; $0.burst = 100; $0.maximumQueueWait = 10; $0.maximumQueued = 2 }
        #expect(policy.admit(alice, now: 0) == .admit && policy.admit(bob, now: 0) == .admit)
        guard case .queue = policy.admit(alice, now: 0), case .queue(let ticket, _) = policy.admit(bob, now: 0) else {
            Issue.record("one waiting request per sender should fit")
            return
        }
        #expect(policy.queuedCount == 2)
        guard case .refuse(let error, _) = policy.admit(SecretKey.generate().publicKey, now: 0) == .admit ? policy.admit(alice, now: 0) : .drop else {
            Issue.record("a third waiting request should be refused")
            return
        }
        #expect(error.code == .tooManyRequests)
        let started = policy.start(bob, ticket: ticket)
        #expect(started == false)
        #expect(policy.finished(bob) == ticket)
        #expect(policy.queuedCount == 1)
    }

    @Test("deny wins; an allow list admits only its members")
    func lists() {
        var denying = policy { $0.deny = [alice] }
        #expect(denying.admit(alice, now: 0) == .drop)
        #expect(denying.admit(bob, now: 0) == .admit)
        var allowing = policy { $0.allow = [bob] }
        #expect(!allowing.permits(alice))
        #expect(allowing.admit(bob, now: 0) == .admit)
    }

    @Test("tracked senders stay bounded (those with requests in flight are kept; the global cap bounds them)")
    func bounded() {
        var policy = policy { $0.trackedSenders = 100; $0.maximumConcurrentPerSender = 1 }
        let busy = SecretKey.generate().publicKey
        #expect(policy.admit(busy, now: 0) == .admit)
        for i in 0..<1_000 {
            let sender = SecretKey.generate().publicKey
            #expect(policy.admit(sender, now: Double(i) / 1000) == .admit)
            _ = policy.finished(sender)
            #expect(policy.trackedCount <= 100)
        }
        // The busy sender was never forgotten: its request in flight still counts against its cap.
        guard case .refuse(let error, _) = policy.admit(busy, now: 1) else {
            Issue.record("the busy sender's in-flight count was lost")
            return
        }
        #expect(error.code == .tooManyRequests)
    }
}

/// Makes the journal refuse every attempt to record an answer, as a full disk would (a real SQLite trigger,
/// added through `other`, a second connection to the store's file; `DROP TRIGGER refuse_answers` ends it).
func refuseAnswers(through other: DatabaseQueue) async throws {
    try await other.write {
        try $0.execute(sql: """
            CREATE TRIGGER refuse_answers BEFORE UPDATE OF finished_at ON journal
            BEGIN SELECT RAISE(ABORT, 'injected: the answer is refused'); END
            """)
    }
}

/// Another connection to the store's SQLite file, which waits (up to 10 s) while the store writes rather than
/// failing with "database is locked".
func secondConnection(_ path: String) throws -> DatabaseQueue {
    var configuration = Configuration()
    configuration.busyMode = .timeout(10)
    return try DatabaseQueue(path: path, configuration: configuration)
}
