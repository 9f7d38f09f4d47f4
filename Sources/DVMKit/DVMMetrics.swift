import CoreMetrics
import Synchronization

/// dvm-host's swift-metrics instruments (besides the runtime's request metrics). Labels are bounded: kinds
/// are the host's, outcomes a fixed set.
struct DVMMetrics: Sendable {
    let factory: any MetricsFactory
    /// Jobs waiting for a free slot, running, and waiting for their invoice to be paid.
    let queued: LevelGauge
    let running: LevelGauge
    let awaitingPayment: LevelGauge

    init(factory: any MetricsFactory) {
        self.factory = factory
        queued = LevelGauge(Gauge(label: "switchboard_dvm_jobs_queued", factory: factory))
        running = LevelGauge(Gauge(label: "switchboard_dvm_jobs_running", factory: factory))
        awaitingPayment = LevelGauge(Gauge(label: "switchboard_dvm_jobs_awaiting_payment", factory: factory))
    }

    /// A job that ended, by kind and outcome (`success`, `failed`, `timeout`, `bad_request`, `input_failed`,
    /// `unpaid`, `bid_too_low`, `queue_timeout`, `cancelled`).
    func job(kind: String, outcome: String) {
        Counter(label: "switchboard_dvm_jobs_total", dimensions: [("kind", kind), ("outcome", outcome)], factory: factory).increment()
    }

    /// A job's invoice paid.
    func paid(kind: String) {
        Counter(label: "switchboard_dvm_jobs_paid_total", dimensions: [("kind", kind)], factory: factory).increment()
    }

    /// From request to result, for successful jobs.
    func duration(kind: String, _ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        Timer(label: "switchboard_dvm_job_duration", dimensions: [("kind", kind)], factory: factory)
            .recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

/// A gauge counting something up and down.
final class LevelGauge: Sendable {
    private let gauge: Gauge
    private let level = Mutex<Int>(0)

    init(_ gauge: Gauge) { self.gauge = gauge }

    func increment() { gauge.record(level.withLock { $0 += 1; return $0 }) }
    func decrement() { gauge.record(level.withLock { $0 -= 1; return $0 }) }
}
