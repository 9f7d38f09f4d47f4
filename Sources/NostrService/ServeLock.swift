#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// A daemon's claim on its data directory, DIR/serve.lock: each `serve` holds a lock on it while it runs, which
/// the kernel releases when the process ends, however it ends. wallet-bridge's serves share it (several may run
/// on one PostgreSQL database), and its other commands look at it to tell whether one runs; bunker's is
/// exclusive, since two on one directory would both answer the same clients from one SQLite file.
public enum ServeLock {
    static func path(in directory: URL) -> String { directory.appendingPathComponent("serve.lock").path }

    /// Takes the lock (shared, or `exclusive`: then it fails at once if another process holds it); it is held
    /// until `body` returns.
    public static func holding<Result>(in directory: URL, exclusive: Bool = false, _ body: () async throws -> Result) async throws -> Result {
        let descriptor = open(path(in: directory), O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw ServeLockError(code: errno, "cannot open \(path(in: directory))") }
        defer { close(descriptor) }
        // Another command's `isHeld` probe holds the lock for a moment: an exclusive taker tries a few times.
        var busy = 0
        while flock(descriptor, exclusive ? LOCK_EX | LOCK_NB : LOCK_SH) != 0 {
            if errno == EINTR { continue }
            if exclusive && errno == EWOULDBLOCK {
                busy += 1
                if busy < 10 {
                    try await Task.sleep(for: .milliseconds(20))
                    continue
                }
                throw ServeLockError(code: errno, "another serve is running on \(directory.path) (it holds \(path(in: directory)))")
            }
            throw ServeLockError(code: errno, "cannot lock \(path(in: directory))")
        }
        return try await body()
    }

    /// Whether some `serve` holds the lock now. The probe takes the lock exclusively for a moment, so a
    /// probe of another command may be what holds it: it is tried a few times.
    public static func isHeld(in directory: URL) async -> Bool {
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
public struct ServeLockError: Error, CustomStringConvertible {
    public let code: Int32
    public let message: String

    init(code: Int32, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(message): \(String(cString: strerror(code)))" }
}
