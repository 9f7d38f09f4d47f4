import NostrCore
import NostrCrypto
import NostrRelay
import NostrServiceTesting
import Testing
@testable import NostrService

@Suite("Extra relays: the publish-only connections to relays requests name", .timeLimit(.minutes(1)))
struct ExtraRelaysTests {
    @Test("a relay a publish is using is never closed to make room: with room for one, another relay is refused at once until the first is idle, then takes its place")
    func inUseIsKept() async throws {
        let silent = TestRelay(store: SilentStore(silencing: 1))
        let silentURL = try await silent.start()
        do {
            try await withTestRelays(1) { relays in
                let good = try #require(relays[0].url)
                var configuration = RelayPool.Configuration()
                configuration.reconnectDelay = .milliseconds(50)
                let extra = ExtraRelays(capacity: 1, configuration: configuration, logger: quiet)
                try await extra.pool.withRunning {
                    let author = SecretKey.generate()
                    // Kind 1 is never confirmed by the silent relay: its publish holds the only place for 3 s.
                    let unconfirmed = EventTemplate(kind: 1, content: "held").sign(with: author)
                    let note = EventTemplate(kind: 2, content: "next").sign(with: author)
                    async let first = extra.publish(unconfirmed, to: [silentURL], timeout: .seconds(3))
                    try await Task.sleep(for: .milliseconds(500))
                    let crowdedOut = await extra.publish(note, to: [good], timeout: .seconds(2))
                    #expect(crowdedOut.results == [good: .unreachable(reason: "more extra relays than the service connects to, all in use")])
                    #expect(extra.pool.relays == [silentURL])
                    #expect(await first.results[silentURL]?.isAccepted == false)
                    let later = await extra.publish(note, to: [good], timeout: .seconds(5))
                    #expect(later.results[good]?.isAccepted == true, "\(later.results)")
                    #expect(extra.pool.relays == [good])
                }
            }
        } catch {
            await silent.stop()
            throw error
        }
        await silent.stop()
    }
}
