import NostrRelay
import Synchronization

/// Counts slots for work in flight: `acquire` waits while all are taken; `waitUntilIdle` waits for every slot
/// to be returned. Waiters are served in order.
package final class AsyncSemaphore: Sendable {
    private struct State {
        var available: Int
        var waiters: [(id: UInt64, continuation: CheckedContinuation<Bool, Never>)] = []
        /// Waits for idleness, each with the timer that ends it.
        var idleWaiters: [UInt64: (continuation: CheckedContinuation<Bool, Never>, timer: Deadlines.Token)] = [:]
        var nextID: UInt64 = 0
        /// Waiters cancelled before they were queued.
        var cancelledEarly: Set<UInt64> = []
    }

    private let capacity: Int
    private let state: Mutex<State>

    package init(_ capacity: Int) {
        self.capacity = max(1, capacity)
        self.state = Mutex(State(available: max(1, capacity)))
    }

    /// Takes a slot, waiting as long as it takes (cancellation does not end the wait).
    package func acquire() async {
        _ = await take(cancellable: false)
    }

    /// Takes a slot, or throws `CancellationError` if the task is cancelled while it waits.
    package func acquireUnlessCancelled() async throws {
        guard await take(cancellable: true) else { throw CancellationError() }
    }

    private func take(cancellable: Bool) async -> Bool {
        let id = state.withLock { state in
            defer { state.nextID &+= 1 }
            return state.nextID
        }
        let wait = {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let outcome: Bool? = self.state.withLock { state in
                    if state.available > 0 {
                        state.available -= 1
                        return true
                    }
                    if state.cancelledEarly.remove(id) != nil { return false }
                    state.waiters.append((id, continuation))
                    return nil
                }
                if let outcome { continuation.resume(returning: outcome) }
            }
        }
        guard cancellable else { return await wait() }
        // A cancellation that arrives after the slot was taken leaves its mark; clear it.
        defer { state.withLock { _ = $0.cancelledEarly.remove(id) } }
        return await withTaskCancellationHandler(operation: wait) {
            let waiter = state.withLock { state -> CheckedContinuation<Bool, Never>? in
                if let index = state.waiters.firstIndex(where: { $0.id == id }) {
                    return state.waiters.remove(at: index).continuation
                }
                state.cancelledEarly.insert(id)
                return nil
            }
            waiter?.resume(returning: false)
        }
    }

    /// Takes a slot if one is free now; false otherwise.
    package func tryAcquire() -> Bool {
        state.withLock { state in
            guard state.available > 0 else { return false }
            state.available -= 1
            return true
        }
    }

    package func release() {
        let (next, idle) = state.withLock { state -> (CheckedContinuation<Bool, Never>?, [(continuation: CheckedContinuation<Bool, Never>, timer: Deadlines.Token)]) in
            if !state.waiters.isEmpty { return (state.waiters.removeFirst().continuation, []) }
            state.available += 1
            guard state.available == capacity else { return (nil, []) }
            defer { state.idleWaiters = [:] }
            return (nil, Array(state.idleWaiters.values))
        }
        next?.resume(returning: true)
        for waiter in idle {
            _ = Deadlines.shared.cancel(waiter.timer)
            waiter.continuation.resume(returning: true)
        }
    }

    /// Whether every slot is free now.
    package var isIdle: Bool { state.withLock { $0.available == capacity } }

    /// Waits until every slot is free, at most `timeout`; false if time ran out first.
    func waitUntilIdle(timeout: Duration) async -> Bool {
        let id = state.withLock { state in
            defer { state.nextID &+= 1 }
            return state.nextID
        }
        // One continuation, resumed by whichever comes first — the last release, the timer or cancellation —
        // since each takes it out of `idleWaiters` under the lock before resuming it.
        @Sendable func resume(_ idle: Bool) {
            state.withLock { $0.idleWaiters.removeValue(forKey: id) }?.continuation.resume(returning: idle)
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let now: Bool? = state.withLock { state in
                    if state.available == capacity { return true }
                    if timeout <= .zero || Task.isCancelled { return false }
                    let timer = Deadlines.shared.schedule(at: .now + timeout) { resume(false) }
                    state.idleWaiters[id] = (continuation, timer)
                    return nil
                }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            resume(false)
        }
    }
}

/// Runs `main` with `companions` beside it until `main` returns; then cancels the companions and waits for them.
/// A companion that returns leaves the rest running; one that throws ends everything with its error. For a
/// daemon, whose runtime alone decides when the command ends (on SIGTERM, after its grace period, while its
/// listener still answers `/health` and its other parts keep going).
package func whileRunning(
    _ main: @escaping @Sendable () async throws -> Void, with companions: [@Sendable () async throws -> Void]
) async throws {
    try await withThrowingTaskGroup(of: Bool.self) { group in
        group.addTask {
            try await main()
            return true
        }
        for companion in companions {
            group.addTask {
                try await companion()
                return false
            }
        }
        while let isMain = try await group.next(), !isMain {}
        group.cancelAll()
    }
}
