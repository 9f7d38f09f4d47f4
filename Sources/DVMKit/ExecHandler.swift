import Foundation
import Subprocess
import Synchronization

/// Runs a shell command for each job (`dvm-host serve --exec`): the job as JSON (``Job/json``) on standard
/// input, standard output (at most ``maximumOutput`` bytes) as the result. A nonzero exit, a signal, or too
/// much output (or more than 1 MiB on standard error) fails the job with a short reason taken from the last
/// line of standard error.
///
/// The command runs through `/bin/sh -c` in a session of its own, so when the job's time is up (the handler
/// is cancelled) the whole process group gets SIGTERM; when the job ends, however it ends, whatever is left
/// in the group gets SIGKILL (a child that handles SIGTERM, a process left in the background).
///
/// Each job's input and output pass through files in a private directory (`dvm-job-<pid>-<UUID>`, 0700) in
/// ``workDirectory``, removed when the job ends. A process killed mid-job leaves its directory behind:
/// ``removeLeftovers(in:olderThan:)`` clears them when the host starts again.
public struct ExecHandler: JobHandler {
    public let command: String
    /// The most standard output taken as a result.
    public var maximumOutput: Int
    /// How much of the end of standard error a failure's reason quotes.
    public var reasonLength = 200
    /// Where each job's private directory is made (`dvm-host` uses `jobs` in its data directory).
    public var workDirectory: URL

    /// Environment variables the command does not get, although it otherwise runs in the host's environment:
    /// the host's own secrets (its key's passphrase, its database, its wallet), so that they do not reach a
    /// command by inheritance (its logs, its children). A command running as the host's user can still read
    /// them from the host's `/proc` entries: run commands you do not trust as another user.
    public var withheldEnvironment: Set<String> = ["DVM_HOST_PASSPHRASE", "DVM_HOST_POSTGRES", "DVM_HOST_WALLET"]

    /// - Parameter workDirectory: where jobs' directories go; the system's temporary directory by default.
    public init(command: String, maximumOutput: Int = 64 * 1024, workDirectory: URL? = nil) {
        self.command = command
        self.maximumOutput = maximumOutput
        self.workDirectory = workDirectory ?? FileManager.default.temporaryDirectory
    }

    static let directoryPrefix = "dvm-job-"

    /// Removes the job directories in `directory` whose process has ended (left by a process killed while it ran
    /// them; a job's own directory goes when the job ends), and any made more than `age` ago (in case a process
    /// id was reused). `age` should exceed the longest a job may run, so that a directory another live process
    /// works in is never taken. Call it before this process runs a job: directories named with its own id are
    /// taken as an earlier process's that had the same id (in a container the host is often process 1 every
    /// time). Returns how many were removed.
    @discardableResult
    public static func removeLeftovers(in directory: URL, olderThan age: Duration, now: Date = Date()) -> Int {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        var removed = 0
        for name in names where name.hasPrefix(directoryPrefix) {
            let url = directory.appendingPathComponent(name)
            let made = (try? FileManager.default.attributesOfItem(atPath: url.path))?[.modificationDate] as? Date
            let old = made.map { now.timeIntervalSince($0) > Double(age.components.seconds) } ?? false
            let owner = owner(of: name)
            guard old || owner == getpid() || !isRunning(owner) else { continue }
            if (try? FileManager.default.removeItem(at: url)) != nil { removed += 1 }
        }
        return removed
    }

    /// The process id in a job directory's name (`dvm-job-<pid>-<UUID>`).
    static func owner(of name: String) -> pid_t? {
        name.dropFirst(directoryPrefix.count).split(separator: "-", maxSplits: 1).first.flatMap { pid_t($0) }
    }

    /// Whether process `pid` exists (true when unsure: a directory is kept rather than taken from a live job).
    static func isRunning(_ pid: pid_t?) -> Bool {
        guard let pid, pid > 0 else { return true }
        return kill(pid, 0) == 0 || errno != ESRCH
    }

    public func run(_ job: Job, context: JobContext) async throws -> JobOutput {
        // The job goes in, and the output comes back, through files in a private directory: swift-subprocess
        // traps when one of its pipes is left open after another fails (an output limit, a cancellation), so
        // no pipe is used; the output's size is watched instead.
        let directory = workDirectory.appendingPathComponent("\(Self.directoryPrefix)\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(at: directory) }
        let input = directory.appendingPathComponent("job.json"), output = directory.appendingPathComponent("stdout"),
            errors = directory.appendingPathComponent("stderr")
        try Data(job.json.utf8).write(to: input)
        var options = PlatformOptions()
        options.createSession = true
        options.teardownSequence = [.gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: .seconds(2))]
        let script = #"exec <"$1" >"$2" 2>"$3"; eval "$4""#
        let arguments = Arguments(["-c", script, "sh", input.path, output.path, errors.path, command])
        // The session's id (the shell's pid): whatever the command left in it is killed when the job ends, on
        // every path. The teardown above only follows the shell, which SIGTERM ends at once, and a child that
        // handles SIGTERM (or one left in the background) would otherwise outlive the job.
        let group = Mutex<pid_t?>(nil)
        let environment = Environment.inherit.updating(
            Dictionary(uniqueKeysWithValues: withheldEnvironment.compactMap { name in Environment.Key(rawValue: name).map { ($0, String?.none) } }))
        let process = Task {
            try await Subprocess.run(
                .path("/bin/sh"), arguments: arguments, environment: environment, platformOptions: options, input: .none,
                output: .discarded, error: .discarded
            ) { execution in
                group.withLock { $0 = execution.processIdentifier.value }
            }
        }
        let limit = maximumOutput
        let overflow = Mutex(false)
        let watcher = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(100))
                if Self.size(of: output) > limit || Self.size(of: errors) > Self.errorLimit {
                    overflow.withLock { $0 = true }
                    process.cancel()
                    return
                }
            }
        }
        let result = await withTaskCancellationHandler { await process.result } onCancel: { process.cancel() }
        // At once, while the session's id is most likely still its own: once the group is empty the number is
        // free for another process to take.
        if let session = group.withLock({ $0 }), killpg(session, 0) == 0 { killpg(session, SIGKILL) }
        watcher.cancel()
        try Task.checkCancellation()
        let written = Self.size(of: output)
        if overflow.withLock({ $0 }) || written > limit {
            throw JobError("the command wrote more than " + (written > limit ? "\(limit) bytes" : "\(Self.errorLimit) bytes to stderr"))
        }
        let status: TerminationStatus
        switch result {
        case .success(let execution): status = execution.terminationStatus
        case .failure(let error):
            throw JobError("the command could not run (\(String(describing: error).prefix(80)))")
        }
        let reason = Self.lastLine(Self.tail(of: errors, keeping: 4 * reasonLength), maximum: reasonLength)
        switch status {
        case .exited(0):
            return JobOutput(String(decoding: (try? Data(contentsOf: output)) ?? Data(), as: UTF8.self))
        case .exited(let code):
            throw JobError("the command exited with status \(code)" + (reason.isEmpty ? "" : ": \(reason)"))
        case .signaled(let signal):
            throw JobError("the command was killed by signal \(signal)" + (reason.isEmpty ? "" : ": \(reason)"))
        }
    }

    /// The most standard error written before the job fails (its last line is the failure's reason).
    static let errorLimit = 1024 * 1024

    static func size(of file: URL) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: file.path))?[.size] as? NSNumber)?.intValue ?? 0
    }

    /// The last `keep` bytes of `file`.
    static func tail(of file: URL, keeping keep: Int) -> [UInt8] {
        guard let handle = try? FileHandle(forReadingFrom: file) else { return [] }
        defer { try? handle.close() }
        let size = UInt64(size(of: file))
        try? handle.seek(toOffset: size > UInt64(keep) ? size - UInt64(keep) : 0)
        return Array((try? handle.readToEnd()) ?? Data())
    }

    /// The last non-empty line of `bytes`, shortened to `maximum` characters.
    static func lastLine(_ bytes: [UInt8], maximum: Int) -> String {
        let text = String(decoding: bytes, as: UTF8.self)
        let line = text.split(whereSeparator: \.isNewline).last.map(String.init) ?? ""
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        return trimmed.count > maximum ? String(trimmed.suffix(maximum)) : trimmed
    }
}
