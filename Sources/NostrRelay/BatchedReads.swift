package import GRDB
import Synchronization

/// Reads on a `DatabasePool`, batched: reads that arrive while a batch is being read go together into the next
/// batch, on one reader connection, each in a transaction of its own (so each sees the latest commit when it
/// starts, as `DatabasePool.read` does).
///
/// Under load a `DatabasePool.read` per request costs a wait on GRDB's pool semaphore (on a serial queue, so a
/// blocked thread), two hops between threads and the wake-ups that go with them; the bunker's and the wallet
/// bridge's per-request reads spent more there than in SQLite. One reader connection also means that the reads
/// run one after another: use it for short reads at a high rate (point lookups), and `DatabasePool.read` for
/// long ones, which would hold up every read behind them. Unlike `DatabasePool.read`, a read here is not
/// interrupted when its task is cancelled.
package final class BatchedReads: Sendable {
    private let pool: DatabasePool
    private let queue = Mutex(Queue())

    private struct Queue {
        var pending: [any BatchedRead] = []
        var reading = false
    }

    package init(_ pool: DatabasePool) {
        self.pool = pool
    }

    /// `body`'s result, read in a transaction of its own in the next batch.
    package func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let leads = queue.withLock { queue in
                queue.pending.append(PendingRead(body: body, continuation: continuation))
                defer { queue.reading = true }
                return !queue.reading
            }
            // Outside GRDB's transaction, so that each read's own transaction starts from the latest commit however
            // long the batches go on.
            if leads { pool.asyncUnsafeRead { db in self.drain(db) } }
        }
    }

    /// On a reader connection: answers the pending reads, batch after batch, until none is left.
    private func drain(_ db: Result<Database, any Error>) {
        while true {
            let batch = queue.withLock { queue in
                defer { queue.pending = [] }
                if queue.pending.isEmpty { queue.reading = false }
                return queue.pending
            }
            if batch.isEmpty { return }
            for read in batch { read.run(db) }
        }
    }
}

private protocol BatchedRead: Sendable {
    /// Runs the read and resumes its caller.
    func run(_ db: Result<Database, any Error>)
}

private struct PendingRead<T: Sendable>: BatchedRead {
    let body: @Sendable (Database) throws -> T
    let continuation: CheckedContinuation<T, any Error>

    func run(_ db: Result<Database, any Error>) {
        continuation.resume(with: Result {
            let db = try db.get()
            try db.beginTransaction(.deferred)
            // Read-only: commit, or failing that roll back, so that the connection is left outside a transaction.
            defer {
                do { try db.commit() } catch { try? db.rollback() }
            }
            return try body(db)
        })
    }
}
