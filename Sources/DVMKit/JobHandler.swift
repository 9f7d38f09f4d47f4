public import Logging
public import NostrCore
public import NostrCrypto

/// What a job host runs: one job at a time per call, as many calls at once as the host's concurrency allows.
///
/// The host has already checked the request, taken the payment (when priced) and resolved the inputs; it
/// publishes the result (kind = request kind + 1000) and the feedback around it. Return the result's content;
/// throw ``JobError`` to answer with an `error` feedback carrying its reason. A handler is cancelled when the
/// job's time is up.
///
/// ```swift
/// struct Reverse: JobHandler {
///     func run(_ job: Job, context: JobContext) async throws -> JobOutput {
///         guard let text = job.text else { throw JobError("send a text input") }
///         return JobOutput(String(text.reversed()))
///     }
/// }
/// ```
public protocol JobHandler: Sendable {
    func run(_ job: Job, context: JobContext) async throws -> JobOutput
}

/// A job as a handler sees it: the request and its inputs, resolved.
public struct Job: Sendable {
    public let request: JobRequest
    /// The inputs in the request's order, each with its content where it could be resolved.
    public let inputs: [ResolvedInput]

    public init(request: JobRequest, inputs: [ResolvedInput]) {
        self.request = request
        self.inputs = inputs
    }

    public var id: EventID { request.id }
    public var kind: Kind { request.kind }
    public var requester: PublicKey { request.requester }
    public var parameters: [JobParameter] { request.parameters }
    public var output: String? { request.output }

    /// The contents of the inputs, joined by newlines; nil when no input has content.
    public var text: String? {
        let contents = inputs.compactMap(\.content)
        return contents.isEmpty ? nil : contents.joined(separator: "\n")
    }

    /// The job as one JSON object, as `--exec` commands read it on standard input:
    /// `{"id", "kind", "requester", "inputs": [{"type", "data", "relay", "marker", "content", "event"}],
    /// "params": {name: value}, "param_list": [[name, value...]], "output", "encrypted"}`.
    public var json: String {
        var writer = JSONWriter(capacity: 512)
        writer.raw("{\"id\":")
        writer.string(id.hex)
        writer.raw(",\"kind\":")
        writer.integer(kind.rawValue)
        writer.raw(",\"requester\":")
        writer.string(requester.hex)
        writer.raw(",\"inputs\":[")
        for (index, input) in inputs.enumerated() {
            if index > 0 { writer.raw(",") }
            writer.raw("{\"type\":")
            writer.string(input.input.type.rawValue)
            writer.raw(",\"data\":")
            writer.string(input.input.data)
            writer.raw(",\"relay\":")
            if let relay = input.input.relay { writer.string(relay) } else { writer.raw("null") }
            writer.raw(",\"marker\":")
            if let marker = input.input.marker { writer.string(marker) } else { writer.raw("null") }
            writer.raw(",\"content\":")
            if let content = input.content { writer.string(content) } else { writer.raw("null") }
            writer.raw(",\"event\":")
            if let event = input.event { event.write(to: &writer) } else { writer.raw("null") }
            writer.raw("}")
        }
        writer.raw("],\"params\":{")
        var named = Set<String>()
        var first = true
        for parameter in parameters where named.insert(parameter.name).inserted {
            if !first { writer.raw(",") }
            first = false
            writer.string(parameter.name)
            writer.raw(":")
            writer.string(parameter.value)
        }
        writer.raw("},\"param_list\":[")
        for (index, parameter) in parameters.enumerated() {
            if index > 0 { writer.raw(",") }
            writer.stringArray([parameter.name] + parameter.values)
        }
        writer.raw("],\"output\":")
        if let output { writer.string(output) } else { writer.raw("null") }
        writer.raw(",\"encrypted\":")
        writer.bool(request.isEncrypted)
        writer.raw("}")
        return writer.text
    }
}

/// An input and what it resolved to.
public struct ResolvedInput: Sendable {
    public let input: JobInput
    /// `text`: the data; `url`: the fetched body (UTF-8); `event`: the event's content; `job`: that job's
    /// result content.
    public let content: String?
    /// The event, for `event` inputs and (the result event) for `job` inputs.
    public let event: Event?

    public init(input: JobInput, content: String?, event: Event? = nil) {
        self.input = input
        self.content = content
        self.event = event
    }
}

/// A job's result.
public struct JobOutput: Sendable, Hashable {
    /// The result event's content (encrypted to the customer when the request was encrypted).
    public var content: String
    /// Extra tags for the result event.
    public var tags: [Tag]

    public init(_ content: String, tags: [Tag] = []) {
        self.content = content
        self.tags = tags
    }
}

/// A job that cannot be done; `reason` goes to the customer in an `error` feedback, so keep it short and
/// free of secrets.
public struct JobError: Error, Hashable, Sendable, CustomStringConvertible {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// What a handler may use while it runs a job.
public struct JobContext: Sendable {
    /// A logger carrying the job's metadata.
    public let logger: Logger
    /// When the job's time is up (the handler is cancelled then).
    public let deadline: ContinuousClock.Instant
    let sendPartial: @Sendable (String) async -> Void

    public init(logger: Logger, deadline: ContinuousClock.Instant, sendPartial: @escaping @Sendable (String) async -> Void) {
        self.logger = logger
        self.deadline = deadline
        self.sendPartial = sendPartial
    }

    /// Publishes a `partial` feedback with a sample of the result so far.
    public func partial(_ sample: String) async {
        await sendPartial(sample)
    }
}
