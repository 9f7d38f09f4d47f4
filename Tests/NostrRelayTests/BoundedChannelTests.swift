import NostrServiceTesting
import Testing
@testable import NostrRelay

@Suite("BoundedChannel: the backpressure between a connection's reader and its handler")
struct BoundedChannelTests {
    /// Senders outrun a batch-reading consumer on a tiny channel, so the buffer keeps going from full to
    /// empty: a sender that finds it full must not be stranded once the consumer has emptied it and waits.
    @Test("several senders and a batch reader on a tiny channel: everything arrives, in each sender's order")
    func noLostWakeups() async throws {
        let senders = 4, perSender = 20_000
        let received = try await withTimeout(.seconds(60), "every element arrives") {
            let channel = BoundedChannel<(Int, Int)>(capacity: 2)
            return await withTaskGroup(of: Void.self, returning: [[Int]].self) { group in
                for sender in 0..<senders {
                    group.addTask {
                        for i in 0..<perSender { await channel.send((sender, i)) }
                    }
                }
                var received = [[Int]](repeating: [], count: senders)
                var total = 0
                while total < senders * perSender {
                    let batch = await channel.nextBatch(maximum: 3)
                    if batch.isEmpty { break }  // cancelled by the timeout
                    for (sender, i) in batch { received[sender].append(i) }
                    total += batch.count
                    if total % 7 == 0 { await Task.yield() }
                }
                await group.waitForAll()
                return received
            }
        }
        for sequence in received { #expect(sequence == Array(0..<perSender)) }
    }

    @Test("finishing releases waiting senders, which learn their element was not added; buffered elements are still read, then nil")
    func finish() async throws {
        let channel = BoundedChannel<Int>(capacity: 1)
        #expect(await channel.send(1))
        let blocked = Task { await channel.send(2) }
        // The second send waits for room until the channel is finished.
        try await Task.sleep(for: .milliseconds(50))
        channel.finish()
        #expect(await blocked.value == false)
        #expect(await channel.send(3) == false)
        #expect(await channel.next() == 1)
        #expect(await channel.next() == nil)
    }

    @Test("a send cancelled while waiting for room says its element was not added; one that got room says it was")
    func cancelledSend() async throws {
        let channel = BoundedChannel<Int>(capacity: 1)
        #expect(await channel.send(1))
        let cancelled = Task { await channel.send(2) }
        let waiting = Task { await channel.send(3) }
        try await Task.sleep(for: .milliseconds(50))
        cancelled.cancel()
        #expect(await cancelled.value == false)
        #expect(await channel.next() == 1)
        #expect(await waiting.value)
        #expect(await channel.next() == 3)
    }
}
