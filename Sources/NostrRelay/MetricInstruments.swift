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
    private let meters = Mutex<[Series: Meter]>([:])

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
        Self.instrument(Series(label, dimensions), in: counters) { Counter(label: label, dimensions: dimensions, factory: factory) }
    }

    package func timer(_ label: String, _ dimensions: [(String, String)] = []) -> CoreMetrics.Timer {
        Self.instrument(Series(label, dimensions), in: timers) { CoreMetrics.Timer(label: label, dimensions: dimensions, factory: factory) }
    }

    /// A level that goes up and down (exposed as a gauge).
    package func meter(_ label: String, _ dimensions: [(String, String)] = []) -> Meter {
        Self.instrument(Series(label, dimensions), in: meters) { Meter(label: label, dimensions: dimensions, factory: factory) }
    }

    /// The instrument made for `series` before, or one made now (the first made wins a race).
    private static func instrument<Instrument: Sendable>(
        _ series: Series, in made: borrowing Mutex<[Series: Instrument]>, _ make: () -> Instrument
    ) -> Instrument {
        if let instrument = made.withLock({ $0[series] }) { return instrument }
        let instrument = make()
        return made.withLock { made in
            if let existing = made[series] { return existing }
            made[series] = instrument
            return instrument
        }
    }
}
