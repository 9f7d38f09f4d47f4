import NostrServiceTesting
import Testing
@testable import NostrRelay

@Suite("Outbox: a connection's messages waiting for its writer")
struct OutboxTests {
    @Test("messages from several senders reach the writer in batches, each sender's in order, none lost")
    func ordered() async throws {
        let senders = 4, perSender = 20_000
        let outbox = Outbox()
        let received = try await withTimeout(.seconds(60), "every message arrives") {
            await withTaskGroup(of: Void.self, returning: [[Int]].self) { group in
                for sender in 0..<senders {
                    group.addTask {
                        for i in 0..<perSender {
                            // A sender yields now and then, as one with real work between its messages would.
                            if i % 1_000 == 0 { await Task.yield() }
                            outbox.send("\(sender) \(i)")
                        }
                    }
                }
                var received = [[Int]](repeating: [], count: senders)
                var total = 0
                while total < senders * perSender {
                    let batch = await outbox.takeAll()
                    if batch.isEmpty { break }  // cancelled by the timeout
                    for text in batch {
                        let parts = text.split(separator: " ").compactMap { Int($0) }
                        received[parts[0]].append(parts[1])
                    }
                    total += batch.count
                }
                await group.waitForAll()
                return received
            }
        }
        for sender in 0..<senders { #expect(received[sender] == Array(0..<perSender)) }
    }

    @Test("a full outbox refuses; a finished one still gives what it holds, then ends")
    func capacityAndFinish() async {
        let outbox = Outbox(capacity: 2)
        #expect(outbox.send("a"))
        #expect(outbox.send("b"))
        #expect(!outbox.send("c"))
        outbox.finish()
        #expect(!outbox.send("d"))
        #expect(await outbox.takeAll() == ["a", "b"])
        #expect(await outbox.takeAll() == [])
    }

    @Test("the byte budget: one message alone always fits, more are refused past the budget, taking frees it")
    func byteCapacity() async {
        let outbox = Outbox(byteCapacity: 10)
        #expect(outbox.send(String(repeating: "x", count: 25)))
        #expect(!outbox.send("y"))
        #expect(await outbox.takeAll() == [String(repeating: "x", count: 25)])
        #expect(outbox.send("12345"))
        #expect(outbox.send("é678"))  // 10 bytes of UTF-8 in all
        #expect(!outbox.send("z"))
        #expect(await outbox.takeAll() == ["12345", "é678"])
    }

    @Test("a waiting writer is woken by a message, by finish, and by cancellation")
    func wakeups() async throws {
        let outbox = Outbox()
        async let first = outbox.takeAll()
        try await Task.sleep(for: .milliseconds(50))
        outbox.send("x")
        #expect(await first == ["x"])

        let waiting = Task { await outbox.takeAll() }
        try await Task.sleep(for: .milliseconds(50))
        waiting.cancel()
        #expect(await waiting.value == [])

        async let last = outbox.takeAll()
        try await Task.sleep(for: .milliseconds(50))
        outbox.finish()
        #expect(await last == [])
    }
}
