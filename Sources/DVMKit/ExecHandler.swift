import Foundation
import Subprocess

/// Runs a shell command for each job (`dvm-host serve --exec`): the job as JSON (``Job/json``) on standard
/// input, standard output (at most ``maximumOutput`` bytes) as the result. A nonzero exit, a signal, or too
/// much output (or more than 16 KiB on standard error) fails the job with a short reason taken from the last
/// line of standard error.
///
/// The command runs through `/bin/sh -c` in a session of its own, so when the job's time is up (the handler
/// is cancelled) the whole process group gets SIGTERM and, two seconds later, SIGKILL.
public struct ExecHandler: JobHandler {
    public let command: String
    /// The most standard output taken as a result.
    public var maximumOutput: Int
    /// How much of the end of standard error a failure's reason quotes.
    public var reasonLength = 200

    public init(command: String, maximumOutput: Int = 64 * 1024) {
        self.command = command
        self.maximumOutput = maximumOutput
    }

    public func run(_ job: Job, context: JobContext) async throws -> JobOutput {
        var options = PlatformOptions()
        options.createSession = true
        options.teardownSequence = [.gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: .seconds(2))]
        let result: ExecutionResult<Void, BytesOutput, BytesOutput>
        do {
            result = try await Subprocess.run(
                .path("/bin/sh"), arguments: ["-c", command], platformOptions: options, input: .string(job.json),
                output: .bytes(limit: maximumOutput), error: .bytes(limit: Self.errorLimit))
        } catch let error as SubprocessError where error.code == .outputLimitExceeded {
            let toStderr = maximumOutput != Self.errorLimit && error.description.contains("limit of \(Self.errorLimit) bytes")
            throw JobError("the command wrote more than " + (toStderr ? "\(Self.errorLimit) bytes to stderr" : "\(maximumOutput) bytes"))
        }
        try Task.checkCancellation()
        let reason = Self.lastLine(result.standardError, maximum: reasonLength)
        switch result.terminationStatus {
        case .exited(0):
            return JobOutput(String(decoding: result.standardOutput, as: UTF8.self))
        case .exited(let code):
            throw JobError("the command exited with status \(code)" + (reason.isEmpty ? "" : ": \(reason)"))
        case .signaled(let signal):
            throw JobError("the command was killed by signal \(signal)" + (reason.isEmpty ? "" : ": \(reason)"))
        }
    }

    /// The most standard error kept (for the failure's reason).
    static let errorLimit = 16 * 1024

    /// The last non-empty line of `bytes`, shortened to `maximum` characters.
    static func lastLine(_ bytes: [UInt8], maximum: Int) -> String {
        let text = String(decoding: bytes, as: UTF8.self)
        let line = text.split(whereSeparator: \.isNewline).last.map(String.init) ?? ""
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        return trimmed.count > maximum ? String(trimmed.suffix(maximum)) : trimmed
    }
}
