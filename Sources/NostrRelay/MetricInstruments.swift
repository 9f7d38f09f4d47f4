package import CoreMetrics
import Synchronization

/// swift-metrics instruments made once per label and dimensions, then reused. Making one through a factory
/// (swift-prometheus's, say) validates the name and labels and looks the series up under the registry's lock
/// every time, which is a measurable part of a request when done several times for each. Labels must be bounded,
/// as for any metric: the cache keeps every series it was asked for.
package final class MetricInstruments: Sendable {
    package let factory: any MetricsFactory
    private let counters = Mutex<[Series: Counter]>([:])
    private let timers = Mutex<[Series: CoreMetrics.Timer]>([:])

    private struct Series: Hashable {
        let label: String
        let dimensions: [String]

        init(_ label: String, _ dimensions: [(String, String)]) {
            self.label = label
            self.dimensions = dimensions.flatMap { [$0.0, $0.1] }
        }
    }

    package init(factory: any MetricsFactory) {
        self.factory = factory
    }

    package func counter(_ label: String, _ dimensions: [(String, String)] = []) -> Counter {
        let series = Series(label, dimensions)
        if let counter = counters.withLock({ $0[series] }) { return counter }
        let counter = Counter(label: label, dimensions: dimensions, factory: factory)
        return counters.withLock { counters in
            if let existing = counters[series] { return existing }
            counters[series] = counter
            return counter
        }
    }

    package func timer(_ label: String, _ dimensions: [(String, String)] = []) -> CoreMetrics.Timer {
        let series = Series(label, dimensions)
        if let timer = timers.withLock({ $0[series] }) { return timer }
        let timer = CoreMetrics.Timer(label: label, dimensions: dimensions, factory: factory)
        return timers.withLock { timers in
            if let existing = timers[series] { return existing }
            timers[series] = timer
            return timer
        }
    }
}
