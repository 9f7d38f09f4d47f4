public import Logging
import NostrCore

/// A log handler that escapes control characters in messages and metadata before `base` writes them: log lines
/// carry text from the network (a relay's NOTICE, a client's name), which must not move a terminal's cursor or
/// forge log lines.
///
/// The logger's own metadata is kept here and handed to `base` with each line, escaped then: setting it (the
/// runtime does per request) costs nothing until something is logged.
public struct EscapingLogHandler<Base: LogHandler>: LogHandler {
    var base: Base
    public var metadata: Logger.Metadata = [:]

    public init(base: Base) {
        self.base = base
    }

    public var logLevel: Logger.Level {
        get { base.logLevel }
        set { base.logLevel = newValue }
    }

    public var metadataProvider: Logger.MetadataProvider? {
        get { base.metadataProvider }
        set { base.metadataProvider = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var event = event
        event.message = "\(event.message.description.escapingControlCharacters)"
        let merged = metadata.merging(event.metadata ?? [:]) { _, explicit in explicit }
        event.metadata = merged.isEmpty ? nil : merged.mapValues(Self.escape)
        base.log(event: event)
    }

    static func escape(_ value: Logger.Metadata.Value) -> Logger.Metadata.Value {
        switch value {
        case .string(let text): .string(text.escapingControlCharacters)
        case .stringConvertible(let value): .string(value.description.escapingControlCharacters)
        case .array(let values): .array(values.map(escape))
        case .dictionary(let values): .dictionary(values.mapValues(escape))
        }
    }
}
