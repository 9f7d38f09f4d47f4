import Synchronization

/// Runs work one at a time per key, in arrival order, without holding a thread while waiting: so that a check
/// and the write it guards (a connection's count of unpaid invoices, then a new invoice) are not interleaved
/// with another request's for the same key in this process.
final class KeyedSerializer: Sendable {
    /// Keys in use, with those waiting for each.
    private let state = Mutex<[String: [CheckedContinuation<Void, Never>]]>([:])

    func run<T>(_ key: String, _ body: () async throws -> T) async rethrows -> T {
        await acquire(key)
        defer { release(key) }
        return try await body()
    }

    private func acquire(_ key: String) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let free = state.withLock { state -> Bool in
                guard state[key] != nil else {
                    state[key] = []
                    return true
                }
                state[key, default: []].append(continuation)
                return false
            }
            if free { continuation.resume() }
        }
    }

    private func release(_ key: String) {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard var waiting = state[key], !waiting.isEmpty else {
                state[key] = nil
                return nil
            }
            let first = waiting.removeFirst()
            state[key] = waiting
            return first
        }
        next?.resume()
    }
}
