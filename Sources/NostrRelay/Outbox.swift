import Synchronization

/// A connection's messages waiting to be written: senders never wait (they add under their own locks, in
/// order), and the one writer takes everything queued at once.
///
/// Used by both ends of a connection (the relay's sessions and the pool's connections) instead of an
/// `AsyncStream`: a burst of messages wakes the writer once rather than once per message.
final class Outbox: Sendable {
    private struct State {
        var queue: [String] = []
        /// UTF-8 bytes of `queue`.
        var bytes = 0
        var writer: CheckedContinuation<[String], Never>?
        var finished = false
    }

    private let state = Mutex(State())
    /// Messages it holds at most, and their bytes at most (one message alone is always taken); a message sent to
    /// a full outbox is refused.
    let capacity: Int
    let byteCapacity: Int

    init(capacity: Int = .max, byteCapacity: Int = .max) {
        self.capacity = max(1, capacity)
        self.byteCapacity = max(1, byteCapacity)
    }

    /// Queues `text`; false (and nothing queued) if the outbox is full or finished.
    @discardableResult
    func send(_ text: String) -> Bool {
        let (accepted, writer) = state.withLock { state -> (Bool, CheckedContinuation<[String], Never>?) in
            let size = text.utf8.count
            guard !state.finished, state.queue.count < capacity, state.queue.isEmpty || state.bytes + size <= byteCapacity else {
                return (false, nil)
            }
            if let writer = state.writer {
                state.writer = nil
                return (true, writer)
            }
            state.queue.append(text)
            state.bytes += size
            return (true, nil)
        }
        writer?.resume(returning: [text])
        return accepted
    }

    /// Ends the outbox: what is queued can still be taken; later sends are refused.
    func finish() {
        let writer = state.withLock { state in
            state.finished = true
            defer { state.writer = nil }
            return state.writer
        }
        writer?.resume(returning: [])
    }

    /// Everything queued, in order, waiting for at least one message; empty once the outbox is finished and
    /// drained, or when the waiting task is cancelled.
    func takeAll() async -> [String] {
        if let queued = state.withLock({ Self.takeQueued(&$0) }) { return queued }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<[String], Never>) in
                let immediate: [String]? = state.withLock { state in
                    if let queued = Self.takeQueued(&state) { return queued }
                    if state.finished || Task.isCancelled { return [] }
                    state.writer = continuation
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let writer = state.withLock { state in
                defer { state.writer = nil }
                return state.writer
            }
            writer?.resume(returning: [])
        }
    }

    private static func takeQueued(_ state: inout State) -> [String]? {
        guard !state.queue.isEmpty else { return nil }
        defer {
            state.queue = []
            state.bytes = 0
        }
        return state.queue
    }
}
