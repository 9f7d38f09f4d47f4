#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// How the other commands tell whether `serve` runs on a data directory: each `serve` holds a shared lock on
/// DIR/serve.lock while it runs (several may), which the kernel releases when the process ends, however it
/// ends.
enum ServeLock {
    static func path(in directory: URL) -> String { directory.appendingPathComponent("serve.lock").path }

    /// Takes the shared lock; it is held until `body` returns.
    static func holding<Result>(in directory: URL, _ body: () async throws -> Result) async throws -> Result {
        let descriptor = open(path(in: directory), O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw ServeLockError(code: errno, "cannot open \(path(in: directory))") }
        defer { close(descriptor) }
        guard flock(descriptor, LOCK_SH) == 0 else { throw ServeLockError(code: errno, "cannot lock \(path(in: directory))") }
        return try await body()
    }

    /// Whether some `serve` holds the lock now. The probe takes the lock exclusively for a moment, so a
    /// probe of another command may be what holds it: it is tried a few times.
    static func isHeld(in directory: URL) async -> Bool {
        let descriptor = open(path(in: directory), O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return false }  // no serve has run here
        defer { close(descriptor) }
        for _ in 0..<5 {
            if flock(descriptor, LOCK_EX | LOCK_NB) == 0 {
                flock(descriptor, LOCK_UN)
                return false
            }
            guard errno == EWOULDBLOCK || errno == EINTR else { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }
}

/// The lock file could not be opened or locked: the system's error number and what was tried.
struct ServeLockError: Error, CustomStringConvertible {
    let code: Int32
    let message: String

    init(code: Int32, _ message: String) {
        self.code = code
        self.message = message
    }

    var description: String { "\(message): \(String(cString: strerror(code)))" }
}
