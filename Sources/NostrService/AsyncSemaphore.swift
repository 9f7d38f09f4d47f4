import Synchronization

/// Counts slots for work in flight: `acquire` waits while all are taken; `waitUntilIdle` waits for every slot
/// to be returned. Waiters are served in order.
package final class AsyncSemaphore: Sendable {
    private struct State {
        var available: Int
        var waiters: [(id: UInt64, continuation: CheckedContinuation<Bool, Never>)] = []
        var idleWaiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        /// Idle waits that timed out before their waiter registered (it then returns at once).
        var idleAbandoned: Set<UInt64> = []
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

    package func release() {
        let (next, idle) = state.withLock { state -> (CheckedContinuation<Bool, Never>?, [CheckedContinuation<Void, Never>]) in
            if !state.waiters.isEmpty { return (state.waiters.removeFirst().continuation, []) }
            state.available += 1
            guard state.available == capacity else { return (nil, []) }
            defer { state.idleWaiters = [:] }
            return (nil, Array(state.idleWaiters.values))
        }
        next?.resume(returning: true)
        for waiter in idle { waiter.resume() }
    }

    /// Whether every slot is free now.
    package var isIdle: Bool { state.withLock { $0.available == capacity } }

    /// Waits until every slot is free, at most `timeout`; false if time ran out first.
    func waitUntilIdle(timeout: Duration) async -> Bool {
        if isIdle { return true }
        guard timeout > .zero else { return false }
        let id = state.withLock { state in
            defer { state.nextID &+= 1 }
            return state.nextID
        }
        return await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let now = self.state.withLock { state in
                        // Idle already, or the wait timed out before this got to register.
                        if state.available == self.capacity || state.idleAbandoned.remove(id) != nil { return true }
                        state.idleWaiters[id] = continuation
                        return false
                    }
                    if now { continuation.resume() }
                }
                return true
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            if !first {
                // Release this call's idle waiter so the group can end, whether it registered yet or not.
                let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                    if let waiter = state.idleWaiters.removeValue(forKey: id) { return waiter }
                    // Not registered yet: it returns at once when it does (idle by then, or marked here).
                    if state.available != self.capacity { state.idleAbandoned.insert(id) }
                    return nil
                }
                waiter?.resume()
            }
            group.cancelAll()
            return first
        }
    }
}
