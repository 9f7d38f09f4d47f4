import Logging
import NostrRelay
import Synchronization
import Testing

@Suite("Log lines with control characters escaped")
struct EscapingLogHandlerTests {
    final class Lines: Sendable {
        let all = Mutex<[String]>([])
    }

    /// Keeps what it is asked to write.
    struct Capture: LogHandler {
        let lines: Lines
        var logLevel: Logger.Level = .trace
        var metadata: Logger.Metadata = [:]
        var metadataProvider: Logger.MetadataProvider?

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let all = metadata.merging(event.metadata ?? [:]) { $1 }
            let rendered = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            lines.all.withLock { $0.append("\(event.message) \(rendered)") }
        }
    }

    @Test("the message, per-line metadata and the logger's own metadata reach the writer escaped")
    func escapes() {
        let lines = Lines()
        var logger = Logger(label: "test") { _ in EscapingLogHandler(base: Capture(lines: lines)) }
        logger[metadataKey: "client"] = "\u{1b}[2Kadmin"
        logger.notice("NOTICE \u{1b}]0;title\u{7}", metadata: ["message": "line\nforged", "list": .array(["\u{202e}x"])])
        // (An array renders its strings quoted, so the escape's backslash shows doubled there.)
        #expect(lines.all.withLock { $0 } == ["NOTICE \\u{1b}]0;title\\u{7} client=\\u{1b}[2Kadmin list=[\"\\\\u{202e}x\"] message=line\\u{a}forged"])
        // Metadata set as a whole, and a line's own metadata winning over the logger's for the same key.
        var metadata = logger.handler.metadata
        metadata["name"] = "\u{7}bell"
        logger.handler.metadata = metadata
        logger.info("next", metadata: ["client": "explicit"])
        #expect(lines.all.withLock { $0.last } == "next client=explicit name=\\u{7}bell")
    }
}
