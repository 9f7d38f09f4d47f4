import NostrCore
import NostrCrypto
import NostrRelay
import NostrServiceTesting
import Synchronization
import Testing

@Suite("On-demand relays: connections to relays a request names", .timeLimit(.minutes(1)))
struct OnDemandRelaysTests {
    @Test("a relay a publish is using is never closed to make room: with room for one, another relay is refused at once until the first is idle, then takes its place")
    func inUseIsKept() async throws {
        let silent = TestRelay(store: SilentStore(silencing: 1))
        let silentURL = try await silent.start()
        do {
            try await withTestRelays(1) { relays in
                let good = try #require(relays[0].url)
                var configuration = RelayPool.Configuration()
                configuration.reconnectDelay = .milliseconds(50)
                let extra = OnDemandRelays(capacity: 1, configuration: configuration, logger: quiet)
                try await extra.pool.withRunning {
                    let author = SecretKey.generate()
                    // Kind 1 is never confirmed by the silent relay: its publish holds the only place for 15 s.
                    let unconfirmed = EventTemplate(kind: 1, content: "held").sign(with: author)
                    let note = EventTemplate(kind: 2, content: "next").sign(with: author)
                    async let first = extra.withRelays([silentURL]) { lease in
                        await extra.pool.publish(unconfirmed, to: lease.taken, timeout: .seconds(15))
                    }
                    try await withDeadline(.seconds(30), "the publish to take the place") {
                        while extra.pool.relays != [silentURL] { try await Task.sleep(for: .milliseconds(20)) }
                    }
                    let crowdedOut = await extra.take([good])
                    extra.release(crowdedOut)
                    #expect(crowdedOut.taken.isEmpty && crowdedOut.full == [good])
                    #expect(extra.pool.relays == [silentURL])
                    #expect(await first[silentURL]?.isAccepted == false)
                    let later = await extra.withRelays([good]) { lease in
                        await extra.pool.publish(note, to: lease.taken, timeout: .seconds(5))
                    }
                    #expect(later[good]?.isAccepted == true, "\(later)")
                    #expect(extra.pool.relays == [good])
                }
            }
        } catch {
            await silent.stop()
            throw error
        }
        await silent.stop()
    }

    @Test("room is made by closing the least recently taken idle relay")
    func leastRecentlyUsedIdleIsClosed() async throws {
        let urls = try (1...3).map { try RelayURL("ws://127.0.0.1:\(40_000 + $0)") }
        let relays = OnDemandRelays(capacity: 2, configuration: RelayPool.Configuration(), logger: quiet)
        for url in [urls[0], urls[1], urls[0]] {
            relays.release(await relays.take([url]))
            try await Task.sleep(for: .milliseconds(5))
        }
        let third = await relays.take([urls[2]])
        relays.release(third)
        #expect(third.taken == [urls[2]])
        #expect(Set(relays.pool.relays) == [urls[0], urls[2]])
    }

    @Test("private addresses are refused when asked, each relay once, and no more than the capacity is looked up")
    func refusalsAndCapacity() async throws {
        let public1 = try RelayURL("wss://relay.one.example")
        let public2 = try RelayURL("wss://relay.two.example")
        let loopback = try RelayURL("ws://127.0.0.1:7777")
        let rebound = try RelayURL("wss://inside.example")
        let looked = LookupLog()
        var configuration = RelayPool.Configuration()
        configuration.refusesPrivateAddresses = true
        let relays = OnDemandRelays(capacity: 3, configuration: configuration, logger: quiet) { host in
            looked.note(host)
            switch host {
            case "relay.one.example", "relay.two.example": return [[93, 184, 216, 34]]
            case "inside.example": return [[93, 184, 216, 35], [10, 0, 0, 7]]
            default: return AddressPolicy.resolve(host)
            }
        }
        let lease = await relays.take([public1, loopback, public1, rebound, public2])
        relays.release(lease)
        #expect(lease.taken == [public1])
        #expect(Set(lease.refused.keys) == [loopback, rebound])
        #expect(lease.full == [public2])
        #expect(looked.hosts.sorted() == ["127.0.0.1", "inside.example", "relay.one.example"])
        #expect(relays.pool.relays == [public1])

        var allowing = RelayPool.Configuration()
        allowing.refusesPrivateAddresses = false
        let development = OnDemandRelays(capacity: 3, configuration: allowing, logger: quiet)
        let allowed = await development.take([loopback])
        development.release(allowed)
        #expect(allowed.taken == [loopback] && allowed.refused.isEmpty)
    }
}

/// The host names a lookup was asked for.
private final class LookupLog: Sendable {
    private let names = Mutex<[String]>([])
    func note(_ host: String) { names.withLock { $0.append(host) } }
    var hosts: [String] { names.withLock { $0 } }
}
