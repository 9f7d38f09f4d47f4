import CoreMetrics
import NostrRelay

/// The runtime's swift-metrics instruments. Names are stable; labels are bounded (kinds are the handlers',
/// reasons and outcomes a fixed set).
struct ServiceMetrics: Sendable {
    let instruments: MetricInstruments

    init(factory: any MetricsFactory) {
        instruments = MetricInstruments(factory: factory)
    }

    /// A request that reached the journal, by kind and outcome (`answered`, `error`, `rate-limited`, ...).
    func request(kind: String, outcome: String) {
        instruments.counter("switchboard_requests_total", [("kind", kind), ("outcome", outcome)]).increment()
    }

    /// A request that waited for its sender's turn (over its rate or its requests in flight) instead of
    /// being handled at once.
    func queued(kind: String) {
        instruments.counter("switchboard_requests_queued_total", [("kind", kind)]).increment()
    }

    /// A copy of a request already claimed (from another relay, or replayed).
    func duplicate(kind: String) {
        instruments.counter("switchboard_duplicates_suppressed_total", [("kind", kind)]).increment()
    }

    /// A copy of a request another runtime was handling, set aside to be checked again when that runtime's
    /// claim would lapse (it may have stopped: a crash, a restart, a lost replica).
    func deferred(kind: String) {
        instruments.counter("switchboard_requests_deferred_total", [("kind", kind)]).increment()
    }

    /// A request dropped at ingress, by reason (`too_old`, `expired`, `oversize`, ...).
    func dropped(_ reason: String) {
        instruments.counter("switchboard_requests_dropped_total", [("reason", reason)]).increment()
    }

    /// A journal write that failed (each attempt), by operation (`claim`, `finish`, `release`, ...): the
    /// service cannot keep its exactly-once promise without its journal, so alert on any.
    func journalError(_ operation: String) {
        instruments.counter("switchboard_journal_errors_total", [("operation", operation)]).increment()
    }

    /// A handler given up on: it did not return within the overdue limit after it was cancelled.
    func abandoned(kind: String) {
        instruments.counter("switchboard_handlers_abandoned_total", [("kind", kind)]).increment()
    }

    /// Requests whose handler is running and that are not answered yet (a handler given up on no longer counts):
    /// what a SIGTERM's drain is waiting for.
    func running(kind: String) -> Meter {
        instruments.meter("switchboard_handlers_running", [("kind", kind)])
    }

    func handlerDuration(kind: String, _ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        instruments.timer("switchboard_handler_duration", [("kind", kind)])
            .recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    /// A reply published: accepted by at least one relay, or by none.
    func replyPublished(accepted: Bool) {
        instruments.counter("switchboard_replies_published_total", [("accepted", accepted ? "true" : "false")]).increment()
    }

    /// An announcement published (relay list, handler information): accepted by at least one relay, or by none.
    func announcementPublished(kind: String, accepted: Bool) {
        instruments.counter("switchboard_announcements_published_total", [("kind", kind), ("accepted", accepted ? "true" : "false")])
            .increment()
    }
}
