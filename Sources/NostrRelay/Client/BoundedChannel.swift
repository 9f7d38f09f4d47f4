import Synchronization

/// A single-consumer channel holding at most `capacity` elements: `send` suspends while it is full, which is
/// how a slow subscriber slows the relays that feed it instead of growing memory.
///
/// Iterating again after a `break` continues where the previous iteration stopped. Cancelling a suspended
/// `send` drops its element; cancelling a suspended `next` ends that iteration with `nil`.
final class BoundedChannel<Element: Sendable>: Sendable {
    private struct Producer {
        let id: UInt64
        let element: Element
        let continuation: CheckedContinuation<Bool, Never>
    }

    private struct State {
        var buffer: [Element] = []
        var head = 0
        var producers: [Producer] = []
        var consumer: CheckedContinuation<Element?, Never>?
        var finished = false
        var nextID: UInt64 = 0

        var count: Int { buffer.count - head }

        mutating func pop() -> Element? {
            guard head < buffer.count else { return nil }
            let element = buffer[head]
            head += 1
            if head > 64 && head * 2 > buffer.count {
                buffer.removeFirst(head)
                head = 0
            }
            return element
        }
    }

    private let state = Mutex(State())
    let capacity: Int

    init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    /// Adds `element`, waiting while the channel is full; false, and nothing added, once the channel is finished
    /// or the wait is cancelled.
    @discardableResult
    func send(_ element: Element) async -> Bool {
        let (added, waitingID): (Bool, UInt64?) = state.withLock { state in
            if state.finished { return (false, nil) }
            if let consumer = state.consumer {
                state.consumer = nil
                consumer.resume(returning: element)
                return (true, nil)
            }
            if state.count < capacity {
                state.buffer.append(element)
                return (true, nil)
            }
            state.nextID += 1
            return (false, state.nextID)
        }
        guard let id = waitingID else { return added }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                // Everything is checked again: between the two locks the consumer may have emptied the buffer
                // and started waiting, and a sender that only queued itself would then wait forever.
                let (resumeNow, consumer) = state.withLock { state -> (Bool?, CheckedContinuation<Element?, Never>?) in
                    if state.finished || Task.isCancelled { return (false, nil) }
                    if let consumer = state.consumer {
                        state.consumer = nil
                        return (true, consumer)
                    }
                    if state.count < capacity {
                        state.buffer.append(element)
                        return (true, nil)
                    }
                    state.producers.append(Producer(id: id, element: element, continuation: continuation))
                    return (nil, nil)
                }
                consumer?.resume(returning: element)
                if let resumeNow { continuation.resume(returning: resumeNow) }
            }
        } onCancel: {
            let producer = state.withLock { state -> Producer? in
                guard let index = state.producers.firstIndex(where: { $0.id == id }) else { return nil }
                return state.producers.remove(at: index)
            }
            producer?.continuation.resume(returning: false)
        }
    }

    /// The next element, waiting for one; `nil` once the channel is finished and empty.
    func next() async -> Element? {
        if let element = takeBuffered() { return element }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Element?, Never>) in
                let immediate: Element?? = state.withLock { state in
                    if let element = Self.take(&state) { return .some(element) }
                    if state.finished || Task.isCancelled { return .some(nil) }
                    state.consumer = continuation
                    return .none
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let consumer = state.withLock { state in
                defer { state.consumer = nil }
                return state.consumer
            }
            consumer?.resume(returning: nil)
        }
    }

    /// The next element (waiting for one) and up to `maximum − 1` more that are already buffered, in order;
    /// empty once the channel is finished and empty.
    func nextBatch(maximum: Int) async -> [Element] {
        guard let first = await next() else { return [] }
        var batch = [first]
        state.withLock { state in
            while batch.count < maximum, let element = Self.take(&state) { batch.append(element) }
        }
        return batch
    }

    /// Elements buffered and not read yet.
    var count: Int { state.withLock(\.count) }

    /// Ends the channel: buffered elements can still be read; waiting senders are released.
    func finish() {
        let (producers, consumer) = state.withLock { state in
            state.finished = true
            defer {
                state.producers = []
                state.consumer = nil
            }
            return (state.producers, state.consumer)
        }
        for producer in producers { producer.continuation.resume(returning: false) }
        consumer?.resume(returning: nil)
    }

    private func takeBuffered() -> Element? {
        state.withLock { Self.take(&$0) }
    }

    /// Pops one buffered element and lets the longest-waiting sender move its element in.
    private static func take(_ state: inout State) -> Element? {
        guard let element = state.pop() else { return nil }
        if !state.producers.isEmpty {
            let producer = state.producers.removeFirst()
            state.buffer.append(producer.element)
            producer.continuation.resume(returning: true)
        }
        return element
    }
}
