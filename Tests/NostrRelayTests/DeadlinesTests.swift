import Synchronization
import Testing
@testable import NostrRelay

@Suite("Deadlines")
struct DeadlinesTests {
    final class Fired: Sendable {
        let log = Mutex<[(id: Int, at: ContinuousClock.Instant)]>([])
        func record(_ id: Int) { log.withLock { $0.append((id, .now)) } }
        var all: [Int] { log.withLock { $0.map(\.id) } }
        func time(of id: Int) -> ContinuousClock.Instant? { log.withLock { $0.first { $0.id == id }?.at } }
    }

    /// Polls `condition` every 10 ms for at most `seconds` (long: under a loaded test run the timer task may wait
    /// seconds for a thread; what these tests check is that it fires, and not early).
    func eventually(within seconds: Double = 30, _ condition: () -> Bool) async -> Bool {
        let end = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < end {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition()
    }

    @Test("due deadlines fire once, not before their time; cancelled ones never fire")
    func fireAndCancel() async {
        let deadlines = Deadlines(resolution: .milliseconds(5))
        let fired = Fired()
        let start = ContinuousClock.now
        let late = deadlines.schedule(at: start + .milliseconds(300)) { fired.record(3) }
        _ = deadlines.schedule(at: start + .milliseconds(50)) { fired.record(1) }
        let cancelled = deadlines.schedule(at: start + .milliseconds(100)) { fired.record(2) }
        #expect(deadlines.cancel(cancelled))
        #expect(!deadlines.cancel(cancelled))
        #expect(deadlines.pending == 2)

        #expect(await eventually { Set(fired.all) == [1, 3] })
        try? await Task.sleep(for: .milliseconds(50))
        #expect(fired.all.count == 2)
        #expect(fired.time(of: 1).map { $0 - start >= .milliseconds(50) } == true)
        #expect(fired.time(of: 3).map { $0 - start >= .milliseconds(300) } == true)
        #expect(!deadlines.cancel(late))
        #expect(deadlines.pending == 0)
    }

    @Test("the timer stops when nothing is pending and starts again for a new deadline")
    func restarts() async {
        let deadlines = Deadlines(resolution: .milliseconds(5))
        let fired = Fired()
        _ = deadlines.schedule(at: .now + .milliseconds(20)) { fired.record(1) }
        #expect(await eventually { fired.all == [1] })
        try? await Task.sleep(for: .milliseconds(50))
        _ = deadlines.schedule(at: .now + .milliseconds(20)) { fired.record(2) }
        #expect(await eventually { fired.all == [1, 2] })
    }

    @Test("an earlier deadline scheduled after a later one is not held back by it")
    func earlierAfterLater() async {
        let deadlines = Deadlines(resolution: .milliseconds(5))
        let fired = Fired()
        let start = ContinuousClock.now
        let far = deadlines.schedule(at: start + .seconds(60)) { fired.record(2) }
        _ = deadlines.schedule(at: start + .milliseconds(30)) { fired.record(1) }
        #expect(await eventually(within: 30) { fired.all == [1] })
        #expect(ContinuousClock.now - start < .seconds(30))
        #expect(deadlines.cancel(far))
    }

    @Test("thousands of operations that finish in time leave nothing pending")
    func manyCancelled() async {
        let deadlines = Deadlines(resolution: .milliseconds(5))
        let fired = Fired()
        await withTaskGroup(of: Void.self) { group in
            for id in 0..<5_000 {
                group.addTask {
                    let token = deadlines.schedule(at: .now + .seconds(30)) { fired.record(id) }
                    await Task.yield()
                    _ = deadlines.cancel(token)
                }
            }
        }
        #expect(deadlines.pending == 0)
        #expect(fired.all.isEmpty)
    }
}
