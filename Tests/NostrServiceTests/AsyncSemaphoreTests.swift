import Testing
@testable import NostrService

@Suite("AsyncSemaphore: slots and waiting for idleness")
struct AsyncSemaphoreTests {
    @Test("waitUntilIdle: true when idle, false on timeout (also with no time left), and a timed-out wait never hangs")
    func idle() async {
        let semaphore = AsyncSemaphore(2)
        #expect(await semaphore.waitUntilIdle(timeout: .zero))
        await semaphore.acquire()
        #expect(await semaphore.waitUntilIdle(timeout: .zero) == false)
        #expect(await semaphore.waitUntilIdle(timeout: .seconds(-1)) == false)
        // Many short waits, each racing its own registration against its timer: every one returns.
        for _ in 0..<200 { #expect(await semaphore.waitUntilIdle(timeout: .nanoseconds(1)) == false) }
        let releasing = Task {
            try? await Task.sleep(for: .milliseconds(50))
            semaphore.release()
        }
        #expect(await semaphore.waitUntilIdle(timeout: .seconds(10)))
        await releasing.value
        #expect(semaphore.isIdle)
    }
}
