import NostrCore
import Synchronization

/// The embedded relay's live connections and the fan-out of new events to them.
///
/// Each connection's task owns its ``RelaySession`` and runs it without a lock (parsing and verifying an
/// event are the relay's most expensive steps, and connections do them in parallel). The hub keeps, per
/// connection and under that connection's own lock, what other connections' tasks need to deliver an event
/// to it: a copy of the session's subscriptions and authentication, refreshed whenever they change, and its
/// outbox.
///
/// A subscription is "pending" from its REQ until its stored events and `EOSE` are queued; live events
/// matching it meanwhile are held back and sent after `EOSE` (minus any the stored result already had), so a
/// client sees NIP-01's order — stored events, `EOSE`, live events — without duplicates.
final class RelayHub: Sendable {
    final class Connection: Sendable {
        struct State {
            /// The session as of its last change of subscriptions or authentication.
            var session: RelaySession
            var pending: [String: [Event]] = [:]
            var overflowed = false
        }

        let id: UInt64
        private let outbox: Outbox
        private let state: Mutex<State>
        /// Closes the connection outright: its writer may be stuck behind a client that stopped reading.
        private let close: @Sendable () -> Void

        init(id: UInt64, session: RelaySession, outbox: Outbox, close: @escaping @Sendable () -> Void) {
            self.id = id
            self.outbox = outbox
            self.state = Mutex(State(session: session))
            self.close = close
        }

        /// Queues a message.
        func send(_ message: RelayMessage) {
            state.withLock { enqueue(message.json, to: &$0) }
        }

        /// Takes the session's new subscriptions and authentication; `opening` are subscriptions whose stored
        /// events are about to be queried (live events for them are held back until ``finishQuery``).
        func update(_ session: RelaySession, opening: [String]) {
            state.withLock { state in
                state.session = session
                for subscriptionID in opening { state.pending[subscriptionID] = [] }
            }
        }

        /// Queues a subscription's stored events (newest first, up to `maximumBytes` of messages: a client pages
        /// back with `until` for more) and `EOSE`, then what arrived live meanwhile.
        func finishQuery(_ subscriptionID: String, stored: [Event], maximumBytes: Int = .max) {
            state.withLock { state in
                let held = state.pending.removeValue(forKey: subscriptionID) ?? []
                var sent = Set<EventID>()
                var bytes = 0
                for event in stored where state.session.mayRead(event) {
                    let text = RelayMessage.event(subscriptionID: subscriptionID, event: event).json
                    bytes += text.utf8.count
                    if bytes > maximumBytes && !sent.isEmpty { break }
                    sent.insert(event.id)
                    enqueue(text, to: &state)
                }
                enqueue(RelayMessage.endOfStoredEvents(subscriptionID: subscriptionID).json, to: &state)
                for event in held where !sent.contains(event.id) {
                    enqueue(RelayMessage.event(subscriptionID: subscriptionID, event: event).json, to: &state)
                }
            }
        }

        /// Ends a subscription whose stored-event query failed (`session` no longer has it): `CLOSED` with
        /// `message`, no live events after it.
        func failQuery(_ subscriptionID: String, session: RelaySession, message: String) {
            state.withLock { state in
                state.session = session
                state.pending[subscriptionID] = nil
                enqueue(RelayMessage.closed(subscriptionID: subscriptionID, message: message).json, to: &state)
            }
        }

        /// Queues `event` for each of this connection's subscriptions it matches.
        func deliver(_ event: Event) {
            state.withLock { state in
                for subscriptionID in state.session.liveSubscriptions(for: event) {
                    if state.pending[subscriptionID] != nil {
                        state.pending[subscriptionID]?.append(event)
                    } else {
                        enqueue(RelayMessage.event(subscriptionID: subscriptionID, event: event).json, to: &state)
                    }
                }
            }
        }

        func finish() { outbox.finish() }

        /// A full outbox means the client reads slower than it is sent to: the connection is closed rather
        /// than letting memory grow (the client reconnects and re-subscribes with `since`). Closed at once, not
        /// after the queued messages: the writer is waiting for the socket to drain, which a client that has
        /// stopped reading never lets happen.
        private func enqueue(_ text: String, to state: inout State) {
            guard !state.overflowed else { return }
            if !outbox.send(text) {
                state.overflowed = true
                outbox.finish()
                close()
            }
        }
    }

    /// The connections, and the same as a list for fan-out (copied out of the lock without copying elements).
    private struct Registry {
        var byID: [UInt64: Connection] = [:]
        var list: [Connection] = []
    }

    private let registry = Mutex(Registry())
    private let nextID = Atomic<UInt64>(1)

    func register(_ session: RelaySession, outbox: Outbox, close: @escaping @Sendable () -> Void) -> Connection {
        let connection = Connection(id: nextID.wrappingAdd(1, ordering: .relaxed).oldValue, session: session, outbox: outbox, close: close)
        registry.withLock { registry in
            registry.byID[connection.id] = connection
            registry.list.append(connection)
        }
        return connection
    }

    func remove(_ connection: Connection) {
        let removed = registry.withLock { registry in
            guard registry.byID.removeValue(forKey: connection.id) != nil else { return false }
            registry.list.removeAll { $0 === connection }
            return true
        }
        if removed { connection.finish() }
    }

    /// Connections registered now.
    var count: Int { registry.withLock { $0.list.count } }

    /// Sends a newly accepted event to every matching subscription on every connection.
    func broadcast(_ event: Event) {
        for connection in registry.withLock({ $0.list }) {
            connection.deliver(event)
        }
    }
}
