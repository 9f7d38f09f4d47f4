import CoreMetrics

/// The runtime's swift-metrics instruments. Names are stable; labels are bounded (kinds are the handlers',
/// reasons and outcomes a fixed set).
struct ServiceMetrics: Sendable {
    let factory: any MetricsFactory

    init(factory: any MetricsFactory) {
        self.factory = factory
    }

    /// A request that reached the journal, by kind and outcome (`answered`, `error`, `rate-limited`, ...).
    func request(kind: String, outcome: String) {
        Counter(label: "switchboard_requests_total", dimensions: [("kind", kind), ("outcome", outcome)], factory: factory).increment()
    }

    /// A request that waited for its sender's turn (over its rate or its requests in flight) instead of
    /// being handled at once.
    func queued(kind: String) {
        Counter(label: "switchboard_requests_queued_total", dimensions: [("kind", kind)], factory: factory).increment()
    }

    /// A copy of a request already claimed (from another relay, or replayed).
    func duplicate(kind: String) {
        Counter(label: "switchboard_duplicates_suppressed_total", dimensions: [("kind", kind)], factory: factory).increment()
    }

    /// A copy of a request another runtime was handling, set aside to be checked again when that runtime's
    /// claim would lapse (it may have stopped: a crash, a restart, a lost replica).
    func deferred(kind: String) {
        Counter(label: "switchboard_requests_deferred_total", dimensions: [("kind", kind)], factory: factory).increment()
    }

    /// A request dropped at ingress, by reason (`too_old`, `expired`, `oversize`, ...).
    func dropped(_ reason: String) {
        Counter(label: "switchboard_requests_dropped_total", dimensions: [("reason", reason)], factory: factory).increment()
    }

    func handlerDuration(kind: String, _ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        Timer(label: "switchboard_handler_duration", dimensions: [("kind", kind)], factory: factory)
            .recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    /// A reply published: accepted by at least one relay, or by none.
    func replyPublished(accepted: Bool) {
        Counter(label: "switchboard_replies_published_total", dimensions: [("accepted", accepted ? "true" : "false")], factory: factory).increment()
    }

    /// An announcement published (relay list, handler information): accepted by at least one relay, or by none.
    func announcementPublished(kind: String, accepted: Bool) {
        Counter(
            label: "switchboard_announcements_published_total",
            dimensions: [("kind", kind), ("accepted", accepted ? "true" : "false")], factory: factory
        ).increment()
    }
}
