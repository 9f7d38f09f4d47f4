import NostrCore
import Synchronization

/// The embedded relay's live connections: each one's session and outbox, and the fan-out of new events.
///
/// A subscription is "pending" from its REQ until its stored events and `EOSE` are queued; live events
/// matching it meanwhile are held back and sent after `EOSE` (minus any the stored result already had), so a
/// client sees NIP-01's order — stored events, `EOSE`, live events — without duplicates.
final class RelayHub: Sendable {
    struct Connection {
        var session: RelaySession
        let outbox: AsyncStream<String>.Continuation
        var pending: [String: [Event]] = [:]
        var overflowed = false
    }

    private let connections = Mutex<[UInt64: Connection]>([:])
    private let nextID = Atomic<UInt64>(1)

    func register(_ session: RelaySession, outbox: AsyncStream<String>.Continuation) -> UInt64 {
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        connections.withLock { $0[id] = Connection(session: session, outbox: outbox) }
        return id
    }

    func remove(_ id: UInt64) {
        let connection = connections.withLock { $0.removeValue(forKey: id) }
        connection?.outbox.finish()
    }

    var connectionCount: Int { connections.withLock { $0.count } }

    /// Runs the session's state machine on one message; marks new subscriptions pending.
    func receive(_ id: UInt64, text: String, clock: Timestamp, monotonic: Double) -> [RelaySession.Action] {
        connections.withLock { all in
            guard var connection = all[id] else { return [] }
            let actions = connection.session.receive(text, clock: clock, monotonic: monotonic)
            for case .query(let subscriptionID, _) in actions {
                connection.pending[subscriptionID] = []
            }
            all[id] = connection
            return actions
        }
    }

    /// Queues a message for one connection.
    func send(_ id: UInt64, _ message: RelayMessage) {
        connections.withLock { all in
            guard var connection = all[id] else { return }
            Self.enqueue(message.json, to: &connection)
            all[id] = connection
        }
    }

    /// Queues a subscription's stored events and `EOSE`, then what arrived live meanwhile.
    func finishQuery(_ id: UInt64, subscriptionID: String, stored: [Event]) {
        connections.withLock { all in
            guard var connection = all[id] else { return }
            let held = connection.pending.removeValue(forKey: subscriptionID) ?? []
            // The subscription may have been closed (or replaced) while the query ran.
            guard connection.session.subscriptions[subscriptionID] != nil else {
                all[id] = connection
                return
            }
            var sent = Set<EventID>()
            for event in stored where connection.session.mayRead(event) {
                sent.insert(event.id)
                Self.enqueue(RelayMessage.event(subscriptionID: subscriptionID, event: event).json, to: &connection)
            }
            Self.enqueue(RelayMessage.endOfStoredEvents(subscriptionID: subscriptionID).json, to: &connection)
            for event in held where !sent.contains(event.id) {
                Self.enqueue(RelayMessage.event(subscriptionID: subscriptionID, event: event).json, to: &connection)
            }
            all[id] = connection
        }
    }

    /// Ends a subscription whose stored-event query failed: `CLOSED` with `message`, no live events after it.
    func failQuery(_ id: UInt64, subscriptionID: String, message: String) {
        connections.withLock { all in
            guard var connection = all[id] else { return }
            connection.pending[subscriptionID] = nil
            connection.session.dropSubscription(subscriptionID)
            Self.enqueue(RelayMessage.closed(subscriptionID: subscriptionID, message: message).json, to: &connection)
            all[id] = connection
        }
    }

    /// Sends a newly accepted event to every matching subscription on every connection.
    func broadcast(_ event: Event) {
        connections.withLock { all in
            for (id, var connection) in all {
                let matches = connection.session.liveSubscriptions(for: event)
                guard !matches.isEmpty else { continue }
                for subscriptionID in matches {
                    if connection.pending[subscriptionID] != nil {
                        connection.pending[subscriptionID]?.append(event)
                    } else {
                        Self.enqueue(RelayMessage.event(subscriptionID: subscriptionID, event: event).json, to: &connection)
                    }
                }
                all[id] = connection
            }
        }
    }

    /// A full outbox means the client reads slower than it is sent to: the connection is closed rather than
    /// letting memory grow (the client reconnects and re-subscribes with `since`).
    private static func enqueue(_ text: String, to connection: inout Connection) {
        guard !connection.overflowed else { return }
        if case .dropped = connection.outbox.yield(text) {
            connection.overflowed = true
            connection.outbox.finish()
        }
    }
}
