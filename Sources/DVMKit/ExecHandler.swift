import Foundation
import Subprocess

/// Runs a shell command for each job (`dvm-host serve --exec`): the job as JSON (``Job/json``) on standard
/// input, standard output (at most ``maximumOutput`` bytes) as the result. A nonzero exit, a signal, or too
/// much output fails the job with a short reason taken from the end of standard error.
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
        let limit = maximumOutput
        let tail = reasonLength
        let outcome = try await Subprocess.run(
            .path("/bin/sh"), arguments: ["-c", command], platformOptions: options,
            input: .string(job.json), output: .sequence, error: .sequence
        ) { execution in
            async let errors = Self.collect(execution.standardError, keepingLast: 4 * tail)
            var output: [UInt8] = []
            var overflow = false
            for try await buffer in execution.standardOutput {
                // Past the limit the output is drained and dropped, so the command is never blocked on a pipe.
                if overflow { continue }
                if output.count + buffer.count > limit {
                    overflow = true
                    output = []
                    continue
                }
                buffer.withUnsafeBytes { output.append(contentsOf: $0) }
            }
            return (output, overflow, try await errors)
        }
        try Task.checkCancellation()
        let (output, overflow, errors) = outcome.closureResult
        let reason = Self.lastLine(errors, maximum: tail)
        switch outcome.terminationStatus {
        case .exited(0):
            if overflow { throw JobError("the command wrote more than \(limit) bytes") }
            return JobOutput(String(decoding: output, as: UTF8.self))
        case .exited(let code):
            throw JobError("the command exited with status \(code)" + (reason.isEmpty ? "" : ": \(reason)"))
        case .signaled(let signal):
            throw JobError("the command was killed by signal \(signal)" + (reason.isEmpty ? "" : ": \(reason)"))
        }
    }

    /// Reads `stream` to the end, keeping only its last `keep` bytes.
    private static func collect(_ stream: SubprocessOutputSequence, keepingLast keep: Int) async throws -> [UInt8] {
        var kept: [UInt8] = []
        for try await buffer in stream {
            buffer.withUnsafeBytes { kept.append(contentsOf: $0) }
            if kept.count > keep { kept.removeFirst(kept.count - keep) }
        }
        return kept
    }

    /// The last non-empty line of `bytes`, shortened to `maximum` characters.
    static func lastLine(_ bytes: [UInt8], maximum: Int) -> String {
        let text = String(decoding: bytes, as: UTF8.self)
        let line = text.split(whereSeparator: \.isNewline).last.map(String.init) ?? ""
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        return trimmed.count > maximum ? String(trimmed.suffix(maximum)) : trimmed
    }
}
