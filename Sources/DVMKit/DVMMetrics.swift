import CoreMetrics

/// dvm-host's swift-metrics instruments (besides the runtime's request metrics). Labels are bounded: kinds
/// are the host's, outcomes a fixed set.
struct DVMMetrics: Sendable {
    let factory: any MetricsFactory
    /// Jobs waiting for a free slot, running, and waiting for their invoice to be paid.
    let queued: Meter
    let running: Meter
    let awaitingPayment: Meter

    init(factory: any MetricsFactory) {
        self.factory = factory
        queued = Meter(label: "switchboard_dvm_jobs_queued", factory: factory)
        running = Meter(label: "switchboard_dvm_jobs_running", factory: factory)
        awaitingPayment = Meter(label: "switchboard_dvm_jobs_awaiting_payment", factory: factory)
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
