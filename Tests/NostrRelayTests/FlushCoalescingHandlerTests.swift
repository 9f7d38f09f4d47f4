import NIOCore
import NIOEmbedded
import Testing
@testable import NostrRelay

@Suite("FlushCoalescingHandler: writes flushed in one turn of the event loop leave together")
struct FlushCoalescingHandlerTests {
    func makeChannel() throws -> (EmbeddedChannel, EmbeddedEventLoop) {
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(handler: FlushCoalescingHandler(), loop: loop)
        return (channel, loop)
    }

    func written(_ channel: EmbeddedChannel) throws -> [String] {
        var texts: [String] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { texts.append(String(buffer: buffer)) }
        return texts
    }

    @Test("flushes in one turn become one, after the tasks queued before it")
    func coalesces() throws {
        let (channel, loop) = try makeChannel()
        defer { _ = try? channel.finish() }
        for text in ["one", "two", "three"] {
            channel.write(ByteBuffer(string: text), promise: nil)
            channel.flush()
        }
        #expect(try written(channel).isEmpty)
        loop.run()
        #expect(try written(channel) == ["one", "two", "three"])
        // The next burst is held and sent the same way.
        channel.writeAndFlush(ByteBuffer(string: "four"), promise: nil)
        #expect(try written(channel).isEmpty)
        loop.run()
        #expect(try written(channel) == ["four"])
    }

    @Test("a close sends what is held back first")
    func closeFlushes() throws {
        let (channel, _) = try makeChannel()
        channel.writeAndFlush(ByteBuffer(string: "last words"), promise: nil)
        #expect(try written(channel).isEmpty)
        let closed = channel.close()
        #expect(try written(channel) == ["last words"])
        try closed.wait()
    }
}
