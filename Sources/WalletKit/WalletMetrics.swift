import CoreMetrics

/// wallet-bridge's swift-metrics instruments (besides the runtime's request metrics). Labels are bounded: a
/// fixed set of outcomes; never a connection or an amount as a label.
struct WalletMetrics: Sendable {
    let factory: any MetricsFactory

    /// A `pay_invoice` that reached the backend or was refused before it, by outcome: `paid`, `pending`,
    /// `failed`, `quota_exceeded`, `insufficient_balance`, `already_paid`, `not_live`, `expired_invoice`.
    func payment(_ outcome: String) {
        Counter(label: "switchboard_wallet_payments_total", dimensions: [("outcome", outcome)], factory: factory).increment()
    }

    /// Amount and fees of paid invoices, in msat.
    func paid(amountMsat: Int64, feesMsat: Int64) {
        Counter(label: "switchboard_wallet_paid_msat_total", factory: factory).increment(by: Int(clamping: amountMsat))
        Counter(label: "switchboard_wallet_fees_msat_total", factory: factory).increment(by: Int(clamping: feesMsat))
    }

    /// An invoice made (`make_invoice`).
    func invoiceMade() {
        Counter(label: "switchboard_wallet_invoices_total", factory: factory).increment()
    }

    /// A notification published, by type (`payment_received`, `payment_sent`).
    func notification(_ type: String) {
        Counter(label: "switchboard_wallet_notifications_total", dimensions: [("type", type)], factory: factory).increment()
    }
}
