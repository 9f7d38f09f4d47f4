import DVMKit
import NostrCrypto

/// Job handlers written against DVMKit's ``JobHandler`` API; `dvm-host serve --handler NAME` runs them.
public enum ExampleHandlers {
    /// The handlers by name.
    public static let all: [String: any JobHandler] = [
        "uppercase": Uppercase(),
        "wordcount": WordCount(),
        "sha256": Digest(),
    ]
}

/// The text of the inputs in capitals (a text-transformation job, e.g. kind 5050 or 5002 style).
public struct Uppercase: JobHandler {
    public init() {}

    public func run(_ job: Job, context: JobContext) async throws -> JobOutput {
        guard let text = job.text else { throw JobError("send at least one input with text") }
        return JobOutput(text.uppercased())
    }
}

/// Words, lines and characters of the inputs, as JSON; `["param", "unit", "words"]` asks for the word count
/// alone.
public struct WordCount: JobHandler {
    public init() {}

    public func run(_ job: Job, context: JobContext) async throws -> JobOutput {
        guard let text = job.text else { throw JobError("send at least one input with text") }
        let words = text.split(whereSeparator: { $0.isWhitespace || $0.isNewline }).count
        let lines = text.isEmpty ? 0 : text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).count
        switch job.request.parameter("unit") {
        case nil:
            return JobOutput("{\"words\":\(words),\"lines\":\(lines),\"characters\":\(text.count)}")
        case "words":
            return JobOutput("\(words)")
        case let other?:
            throw JobError("unknown unit \(other.prefix(32)); leave it out or use words")
        }
    }
}

/// The SHA-256 of each input's content, hex, one per line.
public struct Digest: JobHandler {
    public init() {}

    public func run(_ job: Job, context: JobContext) async throws -> JobOutput {
        guard !job.inputs.isEmpty else { throw JobError("send at least one input") }
        return JobOutput(job.inputs.map { SHA256.hash(Array(($0.content ?? "").utf8)).hex }.joined(separator: "\n"))
    }
}
