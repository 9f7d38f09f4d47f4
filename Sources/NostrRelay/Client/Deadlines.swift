import Synchronization

/// Timeouts for many concurrent operations, served by one timer task.
///
/// Racing each operation against its own `Task.sleep` is costly at service rates: a cancelled sleep keeps its
/// timer and its task allocated until the deadline would have passed, so every request left a few hundred bytes
/// behind for the length of its timeout (tens of megabytes at a few thousand requests per second with 10–30 s
/// timeouts), and each one created a timer. Here a single detached task ticks while any deadline is pending and
/// ends when none is; a tick that finds nothing due costs one comparison.
package final class Deadlines: Sendable {
    /// The instance the library's operations share.
    package static let shared = Deadlines(resolution: .milliseconds(10))

    package struct Token: Hashable, Sendable {
        fileprivate let id: UInt64
    }

    private struct Entry {
        let deadline: ContinuousClock.Instant
        let fire: @Sendable () -> Void
    }

    private struct State {
        var entries: [UInt64: Entry] = [:]
        var next: UInt64 = 0
        /// No pending deadline is earlier than this (it may be earlier than all of them after cancellations).
        var earliest: ContinuousClock.Instant?
        var ticking = false
    }

    private let state = Mutex(State())
    private let resolution: Duration

    /// - Parameter resolution: How late after its deadline an operation may be told (the tick interval).
    package init(resolution: Duration) {
        self.resolution = resolution
    }

    /// Calls `fire` once, soon after `deadline`, unless ``cancel(_:)`` comes first. `fire` runs on the timer
    /// task and must not block; deadlines due in the same tick fire in no particular order.
    package func schedule(at deadline: ContinuousClock.Instant, _ fire: @escaping @Sendable () -> Void) -> Token {
        let (token, start) = state.withLock { state in
            let id = state.next
            state.next &+= 1
            state.entries[id] = Entry(deadline: deadline, fire: fire)
            state.earliest = min(state.earliest ?? deadline, deadline)
            defer { state.ticking = true }
            return (Token(id: id), !state.ticking)
        }
        if start {
            Task.detached { await self.tick() }
        }
        return token
    }

    /// Forgets the deadline; false if it had already fired (or was cancelled before).
    @discardableResult
    package func cancel(_ token: Token) -> Bool {
        state.withLock { $0.entries.removeValue(forKey: token.id) != nil }
    }

    /// Deadlines not yet fired or cancelled.
    package var pending: Int { state.withLock { $0.entries.count } }

    private func tick() async {
        while true {
            // Never cancelled (a detached task no one holds), so each sleep ends at its deadline.
            try? await Task.sleep(for: resolution)
            let now = ContinuousClock.now
            let due = state.withLock { state -> [@Sendable () -> Void]? in
                if state.entries.isEmpty {
                    state.ticking = false
                    state.earliest = nil
                    return nil
                }
                guard let earliest = state.earliest, earliest <= now else { return [] }
                var expired: [UInt64] = []
                var next: ContinuousClock.Instant?
                for (id, entry) in state.entries {
                    if entry.deadline <= now {
                        expired.append(id)
                    } else {
                        next = min(next ?? entry.deadline, entry.deadline)
                    }
                }
                state.earliest = next
                return expired.compactMap { state.entries.removeValue(forKey: $0)?.fire }
            }
            guard let due else { return }
            for fire in due { fire() }
        }
    }
}
