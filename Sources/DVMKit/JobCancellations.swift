import NostrCore
import NostrCrypto
import NostrService
import Synchronization

/// Jobs their customers may still cancel (NIP-90 § Cancellation: a kind 5 deletion request naming the job),
/// and cancellations that arrived before their job.
///
/// Only the job request's author can cancel it. A cancellation is kept in memory only: every worker on the key
/// sees every deletion (they are watched, not claimed), and after a restart the catch-up delivers the deletions
/// again along with the requests.
final class JobCancellations: Sendable {
    private struct Running {
        let requester: PublicKey
        var work: Task<[ServiceReply], any Error>?
        var cancelled = false
    }

    /// A deletion seen before its job: the job's id and the deletion's author.
    private struct Early: Hashable, Sendable {
        let job: EventID
        let author: PublicKey
    }

    private struct State {
        var running: [EventID: Running] = [:]
        var early = BoundedCache<Early, Bool>(capacity: 10_000)
    }

    private let state = Mutex(State())

    /// Registers job `id` of `requester`; false when a deletion by `requester` already cancelled it.
    func begin(_ id: EventID, requester: PublicKey) -> Bool {
        state.withLock { state in
            // One lock for the check and the registration: a deletion in between would be missed.
            if state.early[Early(job: id, author: requester)] != nil { return false }
            state.running[id] = Running(requester: requester)
            return true
        }
    }

    /// The task doing job `id`'s work; cancelled at once if a deletion came since ``begin(_:requester:)``.
    func attach(_ work: Task<[ServiceReply], any Error>, to id: EventID) {
        let cancelled = state.withLock { state in
            state.running[id]?.work = work
            return state.running[id]?.cancelled ?? false
        }
        if cancelled { work.cancel() }
    }

    /// Whether a deletion by `author` naming job `id` came before the job.
    func cancelledEarly(_ id: EventID, by author: PublicKey) -> Bool {
        state.withLock { $0.early[Early(job: id, author: author)] != nil }
    }

    /// Forgets job `id`; returns whether its customer cancelled it.
    func end(_ id: EventID) -> Bool {
        state.withLock { $0.running.removeValue(forKey: id)?.cancelled ?? false }
    }

    /// A deletion request: cancels the jobs it names (`e` tags) that its author requested, and remembers the
    /// ones not seen yet.
    func deletion(_ event: Event) {
        let named = event.tagValues("e").prefix(100).compactMap { try? EventID(hex: $0) }
        let stopped = state.withLock { state -> [Task<[ServiceReply], any Error>] in
            var stopped: [Task<[ServiceReply], any Error>] = []
            for id in named {
                if var running = state.running[id] {
                    guard running.requester == event.pubkey else { continue }
                    running.cancelled = true
                    state.running[id] = running
                    if let work = running.work { stopped.append(work) }
                } else {
                    state.early.insert(true, forKey: Early(job: id, author: event.pubkey))
                }
            }
            return stopped
        }
        for work in stopped { work.cancel() }
    }
}
