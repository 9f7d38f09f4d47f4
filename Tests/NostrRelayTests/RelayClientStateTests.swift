import Foundation
import NostrCore
import NostrCrypto
import Synchronization
import Testing
import WSClient
@testable import NostrRelay

@Suite("RelayClientState: the client side of one relay connection, without I/O")
struct RelayClientStateTests {
    let author = SecretKey.generate()

    func note(_ t: Timestamp, _ content: String = "") -> Event {
        EventTemplate(kind: 1, content: content, createdAt: t).sign(with: author)
    }

    /// A state machine with the back-offs' jitter fixed (`jitter`: the share of each delay waited).
    func machine(canAuthenticate: Bool = false, jitter: @escaping @Sendable () -> Double = { 1 }) -> RelayClientState {
        var configuration = RelayClientState.Configuration()
        configuration.resumeMargin = 60
        configuration.canAuthenticate = canAuthenticate
        configuration.rateLimitDelay = 1
        configuration.rateLimitRetries = 2
        configuration.jitter = jitter
        return RelayClientState(configuration: configuration)
    }

    func sent(_ actions: [RelayClientState.Action]) throws -> [ClientMessage] {
        try actions.compactMap { action in
            guard case .send(let text) = action else { return nil }
            return try ClientMessage(json: text)
        }
    }

    @Test("subscriptions wait for the connection, then resume after a reconnect from the newest event seen")
    func resume() throws {
        var state = machine()
        let filter = Filter(kinds: [1], since: 100, limit: 10)
        #expect(state.subscribe("s", filters: [filter]).isEmpty)
        #expect(try sent(state.connected()) == [.request(subscriptionID: "s", filters: [filter])])
        let a = note(5000), b = note(4000)
        for event in [a, b] {
            let actions = state.receive(RelayMessage.event(subscriptionID: "s", event: event).json, now: 10_000, monotonic: 0)
            #expect(actions == [.deliver(subscriptionID: "s", event)])
        }
        #expect(state.receive(RelayMessage.endOfStoredEvents(subscriptionID: "s").json, now: 10_000, monotonic: 0)
            == [.endOfStoredEvents(subscriptionID: "s")])
        state.disconnected()
        var resumed = filter
        resumed.since = 5000 - 60
        resumed.limit = nil
        #expect(try sent(state.connected()) == [.request(subscriptionID: "s", filters: [resumed])])
        // EOSE is reported once per connection: after a reconnect the relay has sent what it stored meanwhile.
        #expect(state.receive(RelayMessage.endOfStoredEvents(subscriptionID: "s").json, now: 10_001, monotonic: 0)
            == [.endOfStoredEvents(subscriptionID: "s")])
        // A second EOSE on the same connection is not news.
        #expect(state.receive(RelayMessage.endOfStoredEvents(subscriptionID: "s").json, now: 10_002, monotonic: 0).isEmpty)
    }

    @Test("a connection lost before EOSE resumes from where the lost request started: stored events come newest first")
    func resumeBeforeEndOfStoredEvents() throws {
        var state = machine()
        let filter = Filter(kinds: [1], since: 100)
        _ = state.subscribe("s", filters: [filter])
        _ = state.connected()
        // A backlog, newest first; the connection drops before the older part and EOSE arrive.
        _ = state.receive(RelayMessage.event(subscriptionID: "s", event: note(5000)).json, now: 10_000, monotonic: 0)
        _ = state.receive(RelayMessage.event(subscriptionID: "s", event: note(4000)).json, now: 10_000, monotonic: 0)
        state.disconnected()
        #expect(try sent(state.connected()) == [.request(subscriptionID: "s", filters: [filter])], "not from 5000 - 60: 3000 was never sent")
        // This time the relay gets to EOSE: the next resume starts from the newest stored event.
        _ = state.receive(RelayMessage.event(subscriptionID: "s", event: note(5000)).json, now: 10_000, monotonic: 0)
        _ = state.receive(RelayMessage.event(subscriptionID: "s", event: note(3000)).json, now: 10_000, monotonic: 0)
        _ = state.receive(RelayMessage.endOfStoredEvents(subscriptionID: "s").json, now: 10_000, monotonic: 0)
        state.disconnected()
        #expect(try sent(state.connected()) == [.request(subscriptionID: "s", filters: [Filter(kinds: [1], since: 5000 - 60)])])
    }

    @Test("a subscription with no events resumes from when the relay first sent EOSE; future timestamps are capped")
    func resumeAnchors() throws {
        var state = machine()
        _ = state.subscribe("quiet", filters: [Filter(kinds: [7])])
        _ = state.subscribe("future", filters: [Filter(kinds: [1])])
        _ = state.connected()
        _ = state.receive(RelayMessage.endOfStoredEvents(subscriptionID: "quiet").json, now: 2000, monotonic: 0)
        _ = state.receive(RelayMessage.endOfStoredEvents(subscriptionID: "future").json, now: 2500, monotonic: 0)
        _ = state.receive(RelayMessage.event(subscriptionID: "future", event: note(999_999)).json, now: 3000, monotonic: 0)
        state.disconnected()
        let requests = try sent(state.connected())
        #expect(requests == [
            .request(subscriptionID: "future", filters: [Filter(kinds: [1], since: 3000 - 60)]),
            .request(subscriptionID: "quiet", filters: [Filter(kinds: [7], since: 2000 - 60)]),
        ])
    }

    @Test("bad events are dropped: wrong signature, not matching the filters, unreadable messages")
    func dropsBadInput() throws {
        var state = machine()
        _ = state.subscribe("s", filters: [Filter(kinds: [1])])
        _ = state.connected()
        let good = note(10, "hello")
        let forged = Event(
            id: good.id, pubkey: good.pubkey, createdAt: good.createdAt, kind: good.kind, tags: good.tags,
            content: "tampered", sig: good.sig)
        let wrongKind = EventTemplate(kind: 7, content: "+", createdAt: 10).sign(with: author)
        for event in [forged, wrongKind] {
            let actions = state.receive(RelayMessage.event(subscriptionID: "s", event: event).json, now: 20, monotonic: 0)
            #expect(actions.count == 1)
            guard case .dropped = actions.first else { Issue.record("expected a drop, got \(actions)"); continue }
        }
        for junk in ["not json", "[\"EVENT\"]", "[\"OK\",\"zz\",true,\"\"]", "{}", "[42]"] {
            let actions = state.receive(junk, now: 20, monotonic: 0)
            guard case .dropped = actions.first else { Issue.record("\(junk) → \(actions)"); continue }
        }
        // Events for a subscription this side does not have (closed meanwhile) are ignored.
        #expect(state.receive(RelayMessage.event(subscriptionID: "other", event: good).json, now: 20, monotonic: 0).isEmpty)
        #expect(state.receive(RelayMessage.event(subscriptionID: "s", event: good).json, now: 20, monotonic: 0)
            == [.deliver(subscriptionID: "s", good)])
    }

    @Test("publishes are re-sent after a reconnect until the relay answers OK")
    func publishResend() throws {
        var state = machine()
        let event = note(10)
        #expect(state.publish(event).isEmpty)
        #expect(try sent(state.connected()) == [.event(event)])
        state.disconnected()
        #expect(try sent(state.connected()) == [.event(event)])
        let ok = RelayMessage.ok(eventID: event.id, accepted: true, message: "duplicate: have it").json
        #expect(state.receive(ok, now: 20, monotonic: 0) == [.publishFinished(event.id, .accepted(message: "duplicate: have it"))])
        state.disconnected()
        #expect(state.connected().isEmpty)
    }

    @Test("a duplicate: answer means the relay has the event, whether its flag says true or (as nostr_relay's does) false")
    func duplicateEitherWay() throws {
        var state = machine()
        let events = [note(10), note(11), note(12)]
        for event in events { #expect(state.publish(event).isEmpty) }
        #expect(try sent(state.connected()).count == events.count)
        let answers: [(Bool, String, PublishResult)] = [
            (false, "duplicate: exists", .accepted(message: "duplicate: exists")),
            (true, "duplicate: have it", .accepted(message: "duplicate: have it")),
            (false, "invalid: bad", .rejected(message: "invalid: bad")),
        ]
        for (event, (flag, message, result)) in zip(events, answers) {
            let ok = RelayMessage.ok(eventID: event.id, accepted: flag, message: message).json
            #expect(state.receive(ok, now: 20, monotonic: 0) == [.publishFinished(event.id, result)])
        }
    }

    @Test("auth-required: authenticates with the current challenge, then re-sends the event and the request")
    func authentication() throws {
        var state = machine(canAuthenticate: true)
        let event = note(10)
        _ = state.connected()
        _ = state.publish(event)
        _ = state.subscribe("dm", filters: [Filter(tags: ["p": ["x"]])])
        #expect(state.receive(RelayMessage.auth(challenge: "c1").json, now: 20, monotonic: 0).isEmpty)
        let refusal = RelayMessage.ok(eventID: event.id, accepted: false, message: "auth-required: sign in").json
        #expect(state.receive(refusal, now: 20, monotonic: 0) == [.authenticate(challenge: "c1", keys: [author.publicKey])])
        // A second refusal while authentication is in progress does not start another.
        let closed = RelayMessage.closed(subscriptionID: "dm", message: "auth-required: p-tagged").json
        #expect(state.receive(closed, now: 20, monotonic: 0).isEmpty)
        let auth = ClientAuthentication.makeEvent(relay: "ws://r", challenge: "c1", secretKey: author)
        #expect(try sent(state.authenticationSigned([auth])) == [.auth(auth)])
        #expect(state.receive(closed, now: 20, monotonic: 0).isEmpty)
        let accepted = try sent(state.receive(RelayMessage.ok(eventID: auth.id, accepted: true, message: "").json, now: 20, monotonic: 0))
        #expect(accepted == [.request(subscriptionID: "dm", filters: [Filter(tags: ["p": ["x"]])]), .event(event)])
        // Once authenticated, another auth-required is final.
        let again = state.receive(refusal, now: 20, monotonic: 0)
        #expect(again == [.publishFinished(event.id, .rejected(message: "auth-required: sign in"))])
    }

    @Test("auth-required for p-tagged keys: one round authenticates as each; refused again for those keys is final, a new key starts a round")
    func authenticationAsSeveralKeys() throws {
        var state = machine(canAuthenticate: true)
        let (k1, k2, k3) = (SecretKey.generate(), SecretKey.generate(), SecretKey.generate())
        let filter = Filter(kinds: [24133], tags: ["p": [k1.publicKey.hex, k2.publicKey.hex, "not a key"]])
        _ = state.connected()
        _ = state.subscribe("requests", filters: [filter])
        _ = state.receive(RelayMessage.auth(challenge: "c").json, now: 20, monotonic: 0)
        let closed = RelayMessage.closed(subscriptionID: "requests", message: "auth-required: authenticate as the recipient").json
        #expect(state.receive(closed, now: 20, monotonic: 0) == [.authenticate(challenge: "c", keys: [k1.publicKey, k2.publicKey])])
        let auths = [author, k1, k2].map { ClientAuthentication.makeEvent(relay: "ws://r", challenge: "c", secretKey: $0) }
        #expect(try sent(state.authenticationSigned(auths)) == auths.map { .auth($0) })
        // Re-sent once every AUTH of the round is answered, whichever were accepted.
        #expect(state.receive(RelayMessage.ok(eventID: auths[0].id, accepted: true, message: "").json, now: 20, monotonic: 0).isEmpty)
        #expect(state.receive(RelayMessage.ok(eventID: auths[1].id, accepted: true, message: "").json, now: 20, monotonic: 0).isEmpty)
        let resent = try sent(state.receive(RelayMessage.ok(eventID: auths[2].id, accepted: false, message: "invalid: no").json, now: 20, monotonic: 0))
        #expect(resent == [.request(subscriptionID: "requests", filters: [filter])])
        // The same keys refused again: no new round; the subscription is closed (and asked for after a back-off).
        #expect(state.receive(closed, now: 20, monotonic: 1) == [.subscriptionClosed(subscriptionID: "requests", message: "auth-required: authenticate as the recipient")])
        // A subscription for a key not asked for yet starts a round for it.
        let other = Filter(kinds: [24133], tags: ["p": [k3.publicKey.hex]])
        _ = state.subscribe("more", filters: [other])
        let closedMore = RelayMessage.closed(subscriptionID: "more", message: "auth-required: authenticate").json
        #expect(state.receive(closedMore, now: 20, monotonic: 2) == [.authenticate(challenge: "c", keys: [k3.publicKey])])
        // Signing failed: what waited is closed with the relay's refusal.
        #expect(state.authenticationFailed("auth-required: signing failed", monotonic: 3) == [.subscriptionClosed(subscriptionID: "more", message: "auth-required: authenticate")])
    }

    @Test("NIP-42 is bounded: a fresh challenge before every refusal allows a few rounds, not endless ones; an unanswered round, or a refusal no challenge comes for, times out")
    func authenticationBounded() throws {
        var state = machine(canAuthenticate: true)
        _ = state.connected()
        _ = state.subscribe("s", filters: [Filter(kinds: [4])])
        let closed = RelayMessage.closed(subscriptionID: "s", message: "auth-required: sign in").json
        var rounds = 0
        for round in 0..<10 {
            let challenge = "c\(round)"
            var actions = state.receive(RelayMessage.auth(challenge: challenge).json, now: 20, monotonic: Double(round))
            actions += state.receive(closed, now: 20, monotonic: Double(round))
            guard actions.contains(.authenticate(challenge: challenge, keys: [])) else { break }
            rounds += 1
            let auth = ClientAuthentication.makeEvent(relay: "ws://r", challenge: challenge, secretKey: author)
            _ = state.authenticationSigned([auth])
            _ = state.receive(RelayMessage.ok(eventID: auth.id, accepted: true, message: "").json, now: 20, monotonic: Double(round))
        }
        #expect(rounds == 4)

        // A round whose AUTH is never answered: after the timeout, what waited is refused.
        var silent = machine(canAuthenticate: true)
        _ = silent.connected()
        _ = silent.subscribe("s", filters: [Filter(kinds: [4])])
        _ = silent.receive(RelayMessage.auth(challenge: "c").json, now: 20, monotonic: 0)
        _ = silent.receive(closed, now: 20, monotonic: 0)
        _ = silent.authenticationSigned([ClientAuthentication.makeEvent(relay: "ws://r", challenge: "c", secretKey: author)])
        #expect(silent.tick(monotonic: 9).isEmpty)
        #expect(silent.tick(monotonic: 10.5) == [.subscriptionClosed(subscriptionID: "s", message: "auth-required: sign in")])
        #expect(silent.closedSubscriptions == 1)

        // Refused with auth-required, but no challenge ever comes.
        var unchallenged = machine(canAuthenticate: true)
        _ = unchallenged.connected()
        _ = unchallenged.subscribe("s", filters: [Filter(kinds: [4])])
        #expect(unchallenged.receive(closed, now: 20, monotonic: 0).isEmpty)
        #expect(unchallenged.tick(monotonic: 10.5) == [.subscriptionClosed(subscriptionID: "s", message: "auth-required: sign in")])
    }

    @Test("auth-required without a signer, or a refused AUTH, is reported as the relay's refusal")
    func authenticationFails() throws {
        var plain = machine()
        let event = note(10)
        _ = plain.connected()
        _ = plain.publish(event)
        let refusal = RelayMessage.ok(eventID: event.id, accepted: false, message: "auth-required: who are you").json
        #expect(plain.receive(refusal, now: 20, monotonic: 0) == [.publishFinished(event.id, .rejected(message: "auth-required: who are you"))])

        var signing = machine(canAuthenticate: true)
        _ = signing.connected()
        _ = signing.publish(event)
        _ = signing.receive(RelayMessage.auth(challenge: "c").json, now: 20, monotonic: 0)
        _ = signing.receive(refusal, now: 20, monotonic: 0)
        let auth = ClientAuthentication.makeEvent(relay: "ws://r", challenge: "c", secretKey: author)
        _ = signing.authenticationSigned([auth])
        let refused = signing.receive(RelayMessage.ok(eventID: auth.id, accepted: false, message: "invalid: bad").json, now: 20, monotonic: 0)
        #expect(refused == [.publishFinished(event.id, .rejected(message: "auth-required: who are you"))])
    }

    @Test("rate-limited: re-sent after the back-off, rejected when the retries run out")
    func rateLimit() throws {
        var state = machine()
        let event = note(10)
        _ = state.connected()
        _ = state.publish(event)
        let limited = RelayMessage.ok(eventID: event.id, accepted: false, message: "rate-limited: slow down").json
        #expect(state.receive(limited, now: 20, monotonic: 100).isEmpty)
        #expect(state.tick(monotonic: 100.5).isEmpty)
        #expect(try sent(state.tick(monotonic: 101.1)) == [.event(event)])
        #expect(state.tick(monotonic: 200).isEmpty)  // in flight: not sent twice
        #expect(state.receive(limited, now: 20, monotonic: 200).isEmpty)
        #expect(state.tick(monotonic: 201.5).isEmpty)  // second back-off is twice as long
        #expect(try sent(state.tick(monotonic: 202.1)) == [.event(event)])
        #expect(state.receive(limited, now: 20, monotonic: 300) == [.publishFinished(event.id, .rejected(message: "rate-limited: slow down"))])

        _ = state.subscribe("s", filters: [Filter()])
        let closed = RelayMessage.closed(subscriptionID: "s", message: "rate-limited: too many REQs").json
        #expect(state.receive(closed, now: 20, monotonic: 400).isEmpty)
        #expect(try sent(state.tick(monotonic: 401.1)) == [.request(subscriptionID: "s", filters: [Filter()])])
    }

    @Test("a subscription the relay closes is reported, asked for again after a growing back-off and on reconnect, until answered")
    func closedSubscriptionRetried() throws {
        var state = machine()
        _ = state.connected()
        _ = state.subscribe("s", filters: [Filter(kinds: [1])])
        #expect(state.closedSubscriptions == 0)
        let blocked = RelayMessage.closed(subscriptionID: "s", message: "restricted: not now").json
        #expect(state.receive(blocked, now: 20, monotonic: 100) == [.subscriptionClosed(subscriptionID: "s", message: "restricted: not now")])
        #expect(state.closedSubscriptions == 1)
        #expect(state.tick(monotonic: 104.9).isEmpty)
        #expect(try sent(state.tick(monotonic: 105.1)) == [.request(subscriptionID: "s", filters: [Filter(kinds: [1])])])
        #expect(state.tick(monotonic: 200).isEmpty)  // in flight: not sent twice
        // Closed again: the back-off doubles.
        _ = state.receive(blocked, now: 20, monotonic: 200)
        #expect(state.tick(monotonic: 209.9).isEmpty)
        #expect(try sent(state.tick(monotonic: 210.1)) == [.request(subscriptionID: "s", filters: [Filter(kinds: [1])])])
        // A new connection asks at once; the relay's EOSE means it is served again.
        _ = state.receive(blocked, now: 20, monotonic: 300)
        state.disconnected()
        #expect(try sent(state.connected()) == [.request(subscriptionID: "s", filters: [Filter(kinds: [1])])])
        #expect(state.closedSubscriptions == 1)
        _ = state.receive(RelayMessage.endOfStoredEvents(subscriptionID: "s").json, now: 20, monotonic: 301)
        #expect(state.closedSubscriptions == 0)
        // Closing it ourselves ends it for good.
        _ = state.unsubscribe("s")
        #expect(state.subscriptions.isEmpty)
        #expect(state.tick(monotonic: 10_000).isEmpty)
    }

    @Test("a subscription is live on a connection only once the relay has answered it there with EOSE: not before, not after a reconnect or CLOSED; new filters keep it live")
    func answeredSubscriptions() throws {
        var state = machine()
        let eose = RelayMessage.endOfStoredEvents(subscriptionID: "s").json
        _ = state.subscribe("s", filters: [Filter(kinds: [1])])
        _ = state.connected()
        #expect(state.unansweredSubscriptions == 1, "sent, not yet registered by the relay")
        // A stored event is not an answer: the relay may register the live subscription only at EOSE.
        _ = state.receive(RelayMessage.event(subscriptionID: "s", event: note(5)).json, now: 10, monotonic: 0)
        #expect(state.unansweredSubscriptions == 1)
        _ = state.receive(eose, now: 10, monotonic: 0)
        #expect(state.unansweredSubscriptions == 0)
        _ = state.subscribe("s", filters: [Filter(kinds: [1, 7])])
        #expect(state.unansweredSubscriptions == 0, "the relay serves the old filters until it has the new ones")
        _ = state.subscribe("t", filters: [Filter(kinds: [3])])
        #expect(state.unansweredSubscriptions == 1)
        _ = state.unsubscribe("t")
        // A new connection: asked again, and unanswered until its EOSE.
        state.disconnected()
        _ = state.connected()
        #expect(state.unansweredSubscriptions == 1)
        _ = state.receive(eose, now: 11, monotonic: 0)
        #expect(state.unansweredSubscriptions == 0)
        // Closed by the relay, for any reason: unanswered until answered again.
        for refusal in ["rate-limited: slow down", "error: shutting down"] {
            _ = state.receive(RelayMessage.closed(subscriptionID: "s", message: refusal).json, now: 12, monotonic: 0)
            #expect(state.unansweredSubscriptions == 1, "\(refusal)")
            _ = state.receive(eose, now: 12, monotonic: 0)
            #expect(state.unansweredSubscriptions == 0, "\(refusal)")
        }
    }

    @Test("EOSE is reported once per connection, at the latest filters' first EOSE, also when the filters were replaced before it")
    func endOfStoredEventsOncePerConnection() throws {
        var state = machine()
        func eose(_ id: String) -> String { RelayMessage.endOfStoredEvents(subscriptionID: id).json }
        func reported(_ actions: [RelayClientState.Action]) -> Bool { actions.contains(.endOfStoredEvents(subscriptionID: "s")) }
        _ = state.connected()
        _ = state.subscribe("s", filters: [Filter(kinds: [1])])
        // Replaced before the relay answered: the earlier request's EOSE is not the report; the latest one's is.
        _ = state.subscribe("s", filters: [Filter(kinds: [1, 7])])
        #expect(!reported(state.receive(eose("s"), now: 10, monotonic: 0)))
        #expect(reported(state.receive(eose("s.1"), now: 10, monotonic: 0)))
        // Once on this connection: a later replacement's EOSE is not reported again.
        _ = state.subscribe("s", filters: [Filter(kinds: [2])])
        #expect(!reported(state.receive(eose("s.2"), now: 11, monotonic: 0)))
        // A new connection reports again.
        state.disconnected()
        _ = state.connected()
        #expect(reported(state.receive(eose("s"), now: 12, monotonic: 0)))
    }

    @Test("new filters for an open subscription go out under a new id, count as registered only at that id's EOSE, and the earlier ids are closed then; a reconnect starts over under the subscription's own id")
    func replacedFiltersConfirmed() throws {
        var state = machine()
        func eose(_ id: String) -> String { RelayMessage.endOfStoredEvents(subscriptionID: id).json }
        func sent(_ actions: [RelayClientState.Action]) -> [String] {
            actions.compactMap { if case .send(let text) = $0 { text } else { nil } }
        }
        _ = state.connected()
        #expect(sent(state.subscribe("s", filters: [Filter(kinds: [1])])).first?.hasPrefix(#"["REQ","s","#) == true)
        #expect(state.unconfirmedSubscriptions == 1 && state.unansweredSubscriptions == 1)
        _ = state.receive(eose("s"), now: 10, monotonic: 0)
        #expect(state.unconfirmedSubscriptions == 0 && state.unansweredSubscriptions == 0)

        // A replacement: a new id, the old filters served meanwhile (their events still delivered).
        #expect(sent(state.subscribe("s", filters: [Filter(kinds: [1, 7])])).first?.hasPrefix(#"["REQ","s.1","#) == true)
        #expect(state.unconfirmedSubscriptions == 1 && state.unansweredSubscriptions == 0)
        let early = note(5)
        #expect(state.receive(RelayMessage.event(subscriptionID: "s", event: early).json, now: 10, monotonic: 0) == [.deliver(subscriptionID: "s", early)])
        // Its EOSE registers the new filters and closes the old id, whose late messages are ignored.
        #expect(sent(state.receive(eose("s.1"), now: 10, monotonic: 0)) == [#"["CLOSE","s"]"#])
        #expect(state.unconfirmedSubscriptions == 0)
        #expect(state.receive(RelayMessage.event(subscriptionID: "s", event: note(6)).json, now: 10, monotonic: 0).isEmpty)

        // Two replacements in flight: the unanswered middle one is closed at once (two of the relay's
        // subscription slots at most), and its late EOSE is not the latest's.
        _ = state.subscribe("s", filters: [Filter(kinds: [2])])
        let again = sent(state.subscribe("s", filters: [Filter(kinds: [3])]))
        #expect(again.count == 2 && again.first == #"["CLOSE","s.2"]"# && again.last?.hasPrefix(#"["REQ","s.3","#) == true)
        #expect(state.receive(eose("s.2"), now: 10, monotonic: 0).isEmpty)
        #expect(state.unconfirmedSubscriptions == 1 && state.unansweredSubscriptions == 0)
        #expect(sent(state.receive(eose("s.3"), now: 10, monotonic: 0)) == [#"["CLOSE","s.1"]"#])
        #expect(state.unconfirmedSubscriptions == 0)

        // A relay that drops the earlier request's EOSE (some cancel a request's stored events when a newer
        // one comes): only the latest request's answer counts.
        state.disconnected()
        _ = state.connected()
        _ = state.subscribe("s", filters: [Filter(kinds: [4])])
        #expect(state.unansweredSubscriptions == 1)
        _ = state.receive(eose("s.4"), now: 11, monotonic: 0)
        #expect(state.unconfirmedSubscriptions == 0 && state.unansweredSubscriptions == 0)

        // A new connection: nothing is open there; the subscription goes out under its own id again.
        _ = state.subscribe("s", filters: [Filter(kinds: [5])])
        state.disconnected()
        #expect(sent(state.connected()).map { $0.prefix(11) } == [#"["REQ","s","#])
        _ = state.receive(eose("s.5"), now: 12, monotonic: 0)
        #expect(state.unconfirmedSubscriptions == 1, "an id of the lost connection")
        _ = state.receive(eose("s"), now: 12, monotonic: 0)
        #expect(state.unconfirmedSubscriptions == 0)

        // A replacement refused (perhaps for the number of subscriptions): the earlier id makes way and the
        // latest is asked for again at once; refused again on its own, it is reported and retried later.
        _ = state.subscribe("s", filters: [Filter(kinds: [6])])
        let refused = state.receive(RelayMessage.closed(subscriptionID: "s.6", message: "error: too many subscriptions").json, now: 13, monotonic: 0)
        #expect(sent(refused).count == 2 && sent(refused).first == #"["CLOSE","s"]"# && sent(refused).last?.hasPrefix(#"["REQ","s.6","#) == true)
        #expect(!refused.contains { if case .subscriptionClosed = $0 { true } else { false } })
        #expect(state.unconfirmedSubscriptions == 1 && state.unansweredSubscriptions == 1 && state.closedSubscriptions == 0)
        let refusedAgain = state.receive(RelayMessage.closed(subscriptionID: "s.6", message: "error: too many subscriptions").json, now: 13, monotonic: 0)
        #expect(refusedAgain == [.subscriptionClosed(subscriptionID: "s", message: "error: too many subscriptions")])
        #expect(state.closedSubscriptions == 1)
        #expect(sent(state.tick(monotonic: 1_000)).first?.hasPrefix(#"["REQ","s.6","#) == true)
        _ = state.receive(eose("s.6"), now: 14, monotonic: 1_000)
        #expect(state.unconfirmedSubscriptions == 0 && state.closedSubscriptions == 0)

        // An earlier id closed by the relay before the latest is answered: nothing registered meanwhile.
        _ = state.subscribe("s", filters: [Filter(kinds: [7])])
        #expect(state.receive(RelayMessage.closed(subscriptionID: "s.6", message: "error: bye").json, now: 15, monotonic: 1_000).isEmpty)
        #expect(state.unansweredSubscriptions == 1)
        _ = state.receive(eose("s.7"), now: 15, monotonic: 1_000)
        #expect(state.unansweredSubscriptions == 0 && state.unconfirmedSubscriptions == 0)

        // A replacement rate-limited: the earlier version serves meanwhile, and is closed once the latest is
        // answered.
        _ = state.subscribe("s", filters: [Filter(kinds: [8])])
        #expect(sent(state.receive(RelayMessage.closed(subscriptionID: "s.8", message: "rate-limited: slow down").json, now: 16, monotonic: 1_000)).isEmpty)
        #expect(state.unansweredSubscriptions == 0 && state.unconfirmedSubscriptions == 1)
        #expect(sent(state.tick(monotonic: 2_000)).first?.hasPrefix(#"["REQ","s.8","#) == true)
        #expect(sent(state.receive(eose("s.8"), now: 17, monotonic: 2_000)) == [#"["CLOSE","s.7"]"#])

        // Closing it closes every id still open.
        _ = state.subscribe("s", filters: [Filter(kinds: [9])])
        #expect(Set(sent(state.unsubscribe("s"))) == [#"["CLOSE","s.8"]"#, #"["CLOSE","s.9"]"#])
    }

    @Test("back-offs are jittered: clients refused at one moment do not all come back at one moment")
    func backOffJitter() throws {
        // The jitter scales the delay: with half of it, a closed subscription is asked for after 2.5 s, not 5 s,
        // and a rate-limited publish is re-sent after 0.5 s, not 1 s.
        var halved = machine(jitter: { 0.5 })
        _ = halved.connected()
        _ = halved.subscribe("s", filters: [Filter(kinds: [1])])
        _ = halved.receive(RelayMessage.closed(subscriptionID: "s", message: "error: busy").json, now: 20, monotonic: 100)
        #expect(halved.tick(monotonic: 102.4).isEmpty)
        #expect(try sent(halved.tick(monotonic: 102.6)) == [.request(subscriptionID: "s", filters: [Filter(kinds: [1])])])
        let event = note(20)
        _ = halved.publish(event)
        _ = halved.receive(RelayMessage.ok(eventID: event.id, accepted: false, message: "rate-limited: slow down").json, now: 20, monotonic: 200)
        #expect(halved.tick(monotonic: 200.4).isEmpty)
        #expect(try sent(halved.tick(monotonic: 200.6)) == [.event(event)])

        // With the default jitter, 20 clients closed at the same moment come back spread over 2.5–5 s.
        var retries: [Double] = []
        for _ in 0..<20 {
            var configuration = RelayClientState.Configuration()
            configuration.closedRetryDelay = 5
            var state = RelayClientState(configuration: configuration)
            _ = state.connected()
            _ = state.subscribe("s", filters: [Filter(kinds: [1])])
            _ = state.receive(RelayMessage.closed(subscriptionID: "s", message: "error: restarting").json, now: 20, monotonic: 0)
            #expect(state.tick(monotonic: 2.49).isEmpty)
            // The first tick (in steps of 10 ms) that asks again.
            let step = try #require((250...500).first { !state.tick(monotonic: Double($0) / 100).isEmpty })
            retries.append(Double(step) / 100)
        }
        #expect(retries.allSatisfy { $0 >= 2.5 && $0 <= 5 })
        #expect(Set(retries).count > 1)
    }

    @Test("a subscription whose AUTH is refused is asked for again after the back-off")
    func refusedAuthenticationRetried() throws {
        var state = machine(canAuthenticate: true)
        _ = state.connected()
        _ = state.subscribe("dm", filters: [Filter(tags: ["p": ["x"]])])
        _ = state.receive(RelayMessage.auth(challenge: "c").json, now: 20, monotonic: 0)
        let closed = RelayMessage.closed(subscriptionID: "dm", message: "auth-required: p-tagged").json
        #expect(state.receive(closed, now: 20, monotonic: 0) == [.authenticate(challenge: "c", keys: [])])
        let auth = ClientAuthentication.makeEvent(relay: "ws://r", challenge: "c", secretKey: author)
        _ = state.authenticationSigned([auth])
        let refused = state.receive(RelayMessage.ok(eventID: auth.id, accepted: false, message: "invalid: bad").json, now: 20, monotonic: 10)
        #expect(refused == [.subscriptionClosed(subscriptionID: "dm", message: "auth-required: p-tagged")])
        #expect(state.closedSubscriptions == 1)
        #expect(try sent(state.tick(monotonic: 15.1)) == [.request(subscriptionID: "dm", filters: [Filter(tags: ["p": ["x"]])])])
    }
}

@Suite("Relay client helpers")
struct RelayClientHelperTests {
    @Test("relay URLs are normalised and validated")
    func urls() throws {
        #expect(try RelayURL("WSS://Relay.Example.COM:443/").string == "wss://relay.example.com")
        #expect(try RelayURL(" ws://127.0.0.1:7000 ").string == "ws://127.0.0.1:7000")
        #expect(try RelayURL("ws://host:80/path/x").string == "ws://host/path/x")
        #expect(try RelayURL("wss://a.example").isSecure)
        // Also refused: what the WebSocket client would read another host from than an address check does (it
        // takes the host up to the first colon), so that no check can be passed by one host and connect to another.
        for bad in [
            "https://a.example", "relay.example", "ws://", "wss:///path", "ws://user@host", "", "ws://0:1::1:9999", "ws://db:1::1:9999",
            "ws://[::1]:8080", "wss://[fe80::1]", "ws://host:port", "ws://host:0", "ws://host:70000", "ws://:80", "ws://host:１２",
        ] {
            #expect(throws: NostrError.self, "\(bad)") { try RelayURL(bad) }
        }
        let hosts = ["wss://Relay.Example:7000/x?y": "relay.example", "ws://127.0.0.1": "127.0.0.1", "ws://h?q=:1": "h", "ws://h:1/a:b": "h"]
        for (text, host) in hosts { #expect(try RelayURL(text).host == host, "\(text)") }
    }

    @Test("private addresses: loopback, private, shared, link-local, multicast, reserved and IPv4-mapped; literal hosts are refused without a lookup of a name")
    func addressPolicy() async throws {
        for address in [
            "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "198.18.0.1",
            "192.0.0.1", "192.0.2.1", "203.0.113.5", "::1", "::", "fe80::1", "fd00::1", "ff02::1", "::ffff:127.0.0.1", "::10.0.0.1",
            "64:ff9b::a00:1", "64:ff9b:1::7f00:1", "2002:a00:1::", "2001::1", "2001:db8::1",
        ] {
            let resolved = AddressPolicy.resolve(address)
            #expect(resolved.count == 1 && AddressPolicy.isPrivate(resolved[0]), "\(address)")
            await #expect(throws: AddressPolicy.Refusal.self, "\(address)") { try await AddressPolicy.checked(address) }
        }
        await #expect(throws: AddressPolicy.Refusal.self) { try await AddressPolicy.checked("[::1]") }
        for address in ["1.1.1.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"] {
            #expect(try await AddressPolicy.checked(address).count == 1, "\(address)")
        }
        // A name is judged by everything it resolves to: one private address among public ones is enough.
        let mixed: @Sendable (String) -> [[UInt8]] = { _ in [[93, 184, 216, 34], [10, 0, 0, 1]] }
        await #expect(throws: AddressPolicy.Refusal.self) { try await AddressPolicy.checked("relay.example", lookup: mixed) }
        await #expect(throws: AddressPolicy.Refusal.self) { try await AddressPolicy.checked("nothing.invalid", lookup: { _ in [] }) }
        // A resolver that does not answer: refused after the timeout, while the lookup still hangs (it answers
        // only once the refusal is in, or after a minute if the refusal never comes).
        let refused = DispatchSemaphore(value: 0)
        let answered = Mutex(false)
        await #expect(throws: AddressPolicy.Refusal.self) {
            try await AddressPolicy.checked("slow.example", timeout: .milliseconds(200)) { _ in
                _ = refused.wait(timeout: .now() + 60)
                answered.withLock { $0 = true }
                return [[1, 1, 1, 1]]
            }
        }
        #expect(!answered.withLock { $0 }, "the refusal waited for the lookup")
        refused.signal()
    }

    @Test("the deduplication window is bounded and forgets the oldest ids first")
    func recentIDs() {
        var recent = RecentEventIDs(capacity: 3)
        let ids = (0..<5).map { i in EventID(Bytes32(Array(repeating: UInt8(i), count: 32))!) }
        let inserted = [0, 1, 2, 1, 3, 0, 2, 3, 1].map { recent.insert(ids[$0]) }
        // 3 forgets ids[0]; 0 then forgets ids[1]; 2 and 3 are still remembered; 1 is new again.
        #expect(inserted == [true, true, true, false, true, true, false, false, true])
    }

    @Test("reconnect back-off doubles, is capped, and is jittered within half to all of its ceiling")
    func backoff() {
        for failures in 0..<40 {
            let ceiling = min(Duration.seconds(30), .milliseconds(500) * (1 << min(failures, 20)))
            let delay = RelayConnection.backoff(failures, base: .milliseconds(500), cap: .seconds(30))
            #expect(delay >= ceiling / 2 && delay <= ceiling, "\(failures): \(delay)")
        }
    }

    @Test("a burst parsed and verified across cores keeps the relay's order and each verdict")
    func preparedBatchKeepsOrder() async throws {
        let key = SecretKey.generate()
        var messages: [WebSocketMessage] = []
        var expected: [String] = []
        for i in 0..<97 {
            let event = EventTemplate(kind: 1, content: "n\(i)", createdAt: Timestamp(1000 + Int64(i))).sign(with: key)
            switch i % 5 {
            case 0:
                let forged = Event(id: event.id, pubkey: event.pubkey, createdAt: event.createdAt, kind: event.kind,
                    tags: event.tags, content: "altered", sig: event.sig)
                messages.append(.text(RelayMessage.event(subscriptionID: "s", event: forged).json))
                expected.append("event \(event.id.hex) invalid")
            case 3:
                messages.append(.text(RelayMessage.endOfStoredEvents(subscriptionID: "s\(i)").json))
                expected.append("eose s\(i)")
            case 4:
                messages.append(.text("[\"EVENT\",\"s\",{\"id\":\(i)}]"))
                expected.append("unreadable")
            default:
                messages.append(.text(RelayMessage.event(subscriptionID: "s", event: event).json))
                expected.append("event \(event.id.hex) valid")
            }
        }
        func summary(_ received: RelayClientState.Received) -> String {
            switch received {
            case .unreadable: "unreadable"
            case .message(.event(_, let event), let valid): "event \(event.id.hex) \(valid ? "valid" : "invalid")"
            case .message(.endOfStoredEvents(let id), _): "eose \(id)"
            case .message(let other, _): "other \(other)"
            }
        }
        for size in [1, 3, 8, 64, 97] {
            let batch = Array(messages.prefix(size))
            let prepared = await RelayConnection.prepare(batch, limits: MessageLimits())
            #expect(prepared.map(summary) == Array(expected.prefix(size)), "batch of \(size)")
        }
    }
}
