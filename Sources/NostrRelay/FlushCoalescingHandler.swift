import HummingbirdCore
import Logging
import NIOCore

/// Holds a connection's flush back until its event loop has run the tasks already queued, so that messages
/// written to one connection in a burst leave in one `writev` instead of one system call (and one wake-up of
/// the reader) each.
///
/// swift-websocket flushes after every frame. A relay under load queues several frames for a connection
/// within one turn of the event loop (`OK`s, events matching its subscriptions); each flush becomes a task
/// that runs after the ones already queued, so those writes go out together. Nothing waits longer than that
/// turn. A close first sends what is held back.
final class FlushCoalescingHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = NIOAny

    private var flushScheduled = false
    private var removed = false

    func flush(context: ChannelHandlerContext) {
        guard !flushScheduled else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute {
            self.flushIfScheduled(context: context)
        }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        flushIfScheduled(context: context)
        context.close(mode: mode, promise: promise)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        flushIfScheduled(context: context)
        removed = true
    }

    private func flushIfScheduled(context: ChannelHandlerContext) {
        guard flushScheduled, !removed else { return }
        flushScheduled = false
        context.flush()
    }
}

/// A server child channel that puts a ``FlushCoalescingHandler`` next to the socket before `Base` sets the
/// channel up, so it stays through the WebSocket upgrade, and lends the channel to the connection's task
/// (``ConnectionChannel/current``) so the relay can close a connection whose writes are stuck.
struct RelayChildChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value

    let base: Base

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        do {
            try channel.pipeline.syncOperations.addHandler(FlushCoalescingHandler(), position: .first)
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        return base.setup(channel: channel, logger: logger)
    }

    func handle(value: Value, logger: Logger) async {
        await ConnectionChannel.$current.withValue(value.channel) {
            await base.handle(value: value, logger: logger)
        }
    }
}

enum ConnectionChannel {
    /// The channel of the connection this task serves (set by ``RelayChildChannel``).
    @TaskLocal static var current: (any Channel)?
}
