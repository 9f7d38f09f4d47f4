import NostrCore
import NostrCrypto
import Testing
@testable import NostrRelay

@Suite("RelaySession: message handling, limits, NIP-42 policy")
struct RelaySessionTests {
    let url = "ws://127.0.0.1:7777"
    let alice = SecretKey.generate()
    let bob = SecretKey.generate()

    func session(auth: Bool = false, configure: (inout RelayPolicy) -> Void = { _ in }) -> RelaySession {
        var policy = RelayPolicy(relayURL: url)
        policy.authRequired = auth
        configure(&policy)
        return RelaySession(policy: policy, challenge: "challenge-1", now: 0)
    }

    func note(_ key: SecretKey, tags: [NostrCore.Tag] = [], at t: Timestamp = 1000) -> Event {
        EventTemplate(kind: 1, content: "hi", tags: tags, createdAt: t).sign(with: key)
    }

    func okMessage(_ actions: [RelaySession.Action]) -> (Bool, String)? {
        guard case .send(.ok(_, let accepted, let message))? = actions.first else { return nil }
        return (accepted, message)
    }

    @Test("greeting sends the NIP-42 challenge")
    func greeting() {
        #expect(session().greeting == [.send(.auth(challenge: "challenge-1"))])
    }

    @Test("a valid EVENT is stored; a bad signature or id gets OK false invalid:")
    func events() {
        var s = session()
        let e = note(alice)
        #expect(s.receive(ClientMessage.event(e).json, clock: 1000, monotonic: 1) == [.store(e)])
        let forged = Event(id: e.id, pubkey: bob.publicKey, createdAt: e.createdAt, kind: e.kind, tags: e.tags, content: e.content, sig: e.sig)
        let reply = okMessage(s.receive(ClientMessage.event(forged).json, clock: 1000, monotonic: 1))
        #expect(reply?.0 == false)
        #expect(reply?.1.hasPrefix("invalid:") == true)
        let future = note(alice, at: 1000 + 3600)
        #expect(okMessage(s.receive(ClientMessage.event(future).json, clock: 1000, monotonic: 1))?.1.hasPrefix("invalid:") == true)
    }

    @Test("malformed EVENT with a readable id still gets OK false; junk gets a NOTICE")
    func malformed() {
        var s = session()
        let e = note(alice)
        let broken = ClientMessage.event(e).json.replacingOccurrences(of: "\"kind\":1", with: "\"kind\":\"one\"")
        let reply = okMessage(s.receive(broken, clock: 1000, monotonic: 1))
        #expect(reply?.0 == false)
        #expect(reply?.1.hasPrefix("invalid:") == true)
        for junk in ["", "{", "[\"PING\"]", "[1,2]", String(repeating: "[", count: 10_000)] {
            guard case .send(.notice(let text))? = s.receive(junk, clock: 1000, monotonic: 1).first else {
                Issue.record("no NOTICE for \(junk.prefix(20))")
                continue
            }
            #expect(text.hasPrefix("error:"))
        }
    }

    @Test("REQ registers a subscription, caps limit, CLOSE removes it; live matching")
    func subscriptions() {
        var s = session()
        let actions = s.receive("[\"REQ\",\"s1\",{\"kinds\":[1],\"limit\":999999}]", clock: 1000, monotonic: 1)
        #expect(actions == [.query(subscriptionID: "s1", filters: [Filter(kinds: [1], limit: 5_000)])])
        #expect(s.liveSubscriptions(for: note(alice)) == ["s1"])
        #expect(s.liveSubscriptions(for: EventTemplate(kind: 7).sign(with: alice)).isEmpty)
        #expect(s.receive("[\"CLOSE\",\"s1\"]", clock: 1000, monotonic: 1).isEmpty)
        #expect(s.liveSubscriptions(for: note(alice)).isEmpty)
    }

    @Test("too many subscriptions or filters are CLOSED with a reason")
    func limits() {
        var s = session { $0.maximumSubscriptions = 2; $0.maximumFilters = 2 }
        _ = s.receive("[\"REQ\",\"a\",{}]", clock: 1000, monotonic: 1)
        _ = s.receive("[\"REQ\",\"b\",{}]", clock: 1000, monotonic: 1)
        guard case .send(.closed("c", let m))? = s.receive("[\"REQ\",\"c\",{}]", clock: 1000, monotonic: 1).first else {
            Issue.record("no CLOSED")
            return
        }
        #expect(m.hasPrefix("restricted:"))
        // Re-using an open id replaces it rather than counting twice.
        #expect(s.receive("[\"REQ\",\"a\",{\"kinds\":[1]}]", clock: 1000, monotonic: 1).count == 1)
        guard case .send(.closed("d", let m2))? = s.receive("[\"REQ\",\"d\",{},{},{}]", clock: 1000, monotonic: 1).first else {
            Issue.record("no CLOSED for too many filters")
            return
        }
        #expect(m2.hasPrefix("restricted:"))
        guard case .send(.closed("e", let m3))? = s.receive("[\"REQ\",\"e\",{\"bogus\":1}]", clock: 1000, monotonic: 1).first else {
            Issue.record("no CLOSED for a bad filter")
            return
        }
        #expect(m3.hasPrefix("invalid:"))
    }

    @Test("events with too many tags, a NUL in a tag, or of kind 22242 are refused; filters with too many values are CLOSED")
    func eventAndFilterLimits() {
        var s = session { $0.maximumEventTags = 3; $0.maximumFilterValues = 2 }
        let tagged = note(alice, tags: [["t", "a"], ["t", "b"], ["t", "c"], ["t", "d"]])
        #expect(okMessage(s.receive(ClientMessage.event(tagged).json, clock: 1000, monotonic: 1))?.1.hasPrefix("restricted:") == true)
        #expect(okMessage(s.receive(ClientMessage.event(note(alice, tags: [["d", "a\u{0}b"]])).json, clock: 1000, monotonic: 1))?.1 == "invalid: tag values may not contain NUL")
        let auth = ClientAuthentication.makeEvent(relay: url, challenge: "challenge-1", secretKey: alice, createdAt: 1000)
        #expect(okMessage(s.receive(ClientMessage.event(auth).json, clock: 1000, monotonic: 1))?.1.hasPrefix("invalid: kind 22242") == true)
        if case .store = s.receive(ClientMessage.event(note(alice, tags: [["t", "a"], ["t", "b"], ["t", "c"]])).json, clock: 1000, monotonic: 1).first {
        } else {
            Issue.record("an event with as many tags as allowed was not stored")
        }
        for filter in [#"{"kinds":[1,2,3]}"#, ##"{"#t":["a","b","c"]}"##, #"{"authors":["\#(alice.publicKey.hex)","\#(bob.publicKey.hex)","\#(SecretKey.generate().publicKey.hex)"]}"#] {
            guard case .send(.closed("f", let message))? = s.receive("[\"REQ\",\"f\",\(filter)]", clock: 1000, monotonic: 1).first else {
                Issue.record("no CLOSED for \(filter)")
                continue
            }
            #expect(message == "restricted: at most 2 values per filter list")
        }
        #expect(s.receive(#"["REQ","g",{"kinds":[1,2]}]"#, clock: 1000, monotonic: 1).count == 1)
    }

    @Test("auth required: COUNT is not served (it could not leave out what the connection may not read); a connection authenticates as at most so many keys")
    func authLimits() {
        var s = session(auth: true) { $0.maximumAuthenticatedKeys = 2 }
        guard case .send(.closed("c", let message))? = s.receive(#"["COUNT","c",{"kinds":[1059]}]"#, clock: 1000, monotonic: 1).first else {
            Issue.record("COUNT served under auth-required")
            return
        }
        #expect(message.hasPrefix("restricted:"))
        let keys = (0..<3).map { _ in SecretKey.generate() }
        let answers = keys.map { key in
            okMessage(s.receive(ClientMessage.auth(ClientAuthentication.makeEvent(relay: url, challenge: "challenge-1", secretKey: key, createdAt: 1000)).json, clock: 1000, monotonic: 1))
        }
        #expect(answers.map { $0?.0 } == [true, true, false])
        #expect(answers[2]?.1 == "restricted: at most 2 keys per connection")
        #expect(s.authenticated == Set(keys.prefix(2).map(\.publicKey)))
        // Authenticating again as a key it has is fine.
        let again = ClientAuthentication.makeEvent(relay: url, challenge: "challenge-1", secretKey: keys[0], createdAt: 1001)
        #expect(okMessage(s.receive(ClientMessage.auth(again).json, clock: 1000, monotonic: 1))?.0 == true)
    }

    @Test("oversized messages and floods are refused")
    func sizeAndRate() {
        var s = session { $0.maximumMessageLength = 100; $0.messagesPerSecond = 1; $0.messageBurst = 3 }
        guard case .send(.notice(let big))? = s.receive(String(repeating: "x", count: 101), clock: 1000, monotonic: 0).first else {
            Issue.record("no NOTICE for size")
            return
        }
        #expect(big.contains("larger"))
        var limited = 0
        for _ in 0..<10 {
            if case .send(.notice(let n))? = s.receive("[\"CLOSE\",\"x\"]", clock: 1000, monotonic: 0).first, n.hasPrefix("rate-limited:") {
                limited += 1
            }
        }
        #expect(limited == 8)  // the oversized message took one token, the burst allows two more
        #expect(s.receive("[\"CLOSE\",\"x\"]", clock: 1000, monotonic: 5).isEmpty)
    }

    @Test("refused before parsing (rate, size), EVENTs still get OK false and REQs CLOSED")
    func refusalsKeepTheProtocol() {
        var s = session { $0.messagesPerSecond = 0.001; $0.messageBurst = 1; $0.maximumMessageLength = 2000 }
        _ = s.receive("[\"CLOSE\",\"x\"]", clock: 1000, monotonic: 0)
        let e = note(alice)
        let reply = okMessage(s.receive(ClientMessage.event(e).json, clock: 1000, monotonic: 0))
        #expect(reply?.0 == false)
        #expect(reply?.1.hasPrefix("rate-limited:") == true)
        guard case .send(.closed("sub", let m))? = s.receive("[\"REQ\", \"sub\", {}]", clock: 1000, monotonic: 0).first else {
            Issue.record("no CLOSED for a rate-limited REQ")
            return
        }
        #expect(m.hasPrefix("rate-limited:"))
        var big = session { $0.maximumMessageLength = 300 }
        let large = EventTemplate(kind: 1, content: String(repeating: "\"quoted \\\"id\\\":\\\"x\" ", count: 20), createdAt: 5).sign(with: alice)
        let sizeReply = okMessage(big.receive(ClientMessage.event(large).json, clock: 1000, monotonic: 0))
        #expect(sizeReply?.0 == false)
        #expect(sizeReply?.1.hasPrefix("invalid:") == true)
        guard case .send(.ok(let id, _, _))? = big.receive(ClientMessage.event(large).json, clock: 1000, monotonic: 0).first else {
            Issue.record("no OK")
            return
        }
        #expect(id == large.id)
    }

    @Test("the sniffer finds EVENT ids and subscription ids, and nothing in junk")
    func sniffing() {
        let e = note(alice)
        #expect(RelaySession.sniff(ClientMessage.event(e).json) == .event(e.id))
        #expect(RelaySession.sniff(" [ \"COUNT\" , \"c1\" ,{}]") == .subscription("c1"))
        for junk in ["", "[", "[\"EVENT\"", "[\"EVENT\",{\"id\":\"zz\"}]", "{\"id\":1}", "[\"REQ\",5]", "[\"X\",\"y\"]"] {
            #expect(RelaySession.sniff(junk) == .other, "\(junk)")
        }
    }

    @Test("auth required: writes need the author's AUTH, p-tagged reads need the tagged key's")
    func authRequired() {
        var s = session(auth: true)
        let e = note(alice)
        #expect(okMessage(s.receive(ClientMessage.event(e).json, clock: 1000, monotonic: 1))?.1.hasPrefix("auth-required:") == true)
        let dm = note(alice, tags: [["p", bob.publicKey.hex]])
        guard case .send(.closed("dms", let m))? = s.receive("[\"REQ\",\"dms\",{\"#p\":[\"\(bob.publicKey.hex)\"]}]", clock: 1000, monotonic: 1).first else {
            Issue.record("no CLOSED auth-required")
            return
        }
        #expect(m.hasPrefix("auth-required:"))
        // Wrong challenge, then the right one.
        let wrong = ClientAuthentication.makeEvent(relay: url, challenge: "nope", secretKey: bob, createdAt: 1000)
        #expect(okMessage(s.receive(ClientMessage.auth(wrong).json, clock: 1000, monotonic: 1))?.0 == false)
        let right = ClientAuthentication.makeEvent(relay: url, challenge: "challenge-1", secretKey: bob, createdAt: 1000)
        #expect(okMessage(s.receive(ClientMessage.auth(right).json, clock: 1000, monotonic: 1))?.0 == true)
        #expect(s.receive("[\"REQ\",\"dms\",{\"#p\":[\"\(bob.publicKey.hex)\"]}]", clock: 1000, monotonic: 1).count == 1)
        #expect(s.liveSubscriptions(for: dm) == ["dms"])
        // A DM to someone else is not delivered to Bob even on an open filter.
        _ = s.receive("[\"REQ\",\"all\",{}]", clock: 1000, monotonic: 1)
        let other = note(alice, tags: [["p", SecretKey.generate().publicKey.hex]])
        #expect(s.liveSubscriptions(for: other).isEmpty)
        #expect(!s.mayRead(other))
        #expect(s.receive(ClientMessage.event(note(bob)).json, clock: 1000, monotonic: 1).count == 1)
    }
}

import Foundation
