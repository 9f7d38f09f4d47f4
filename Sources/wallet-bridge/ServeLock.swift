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
        guard descriptor >= 0 else { throw ServeLockError("cannot open \(path(in: directory)): errno \(errno)") }
        defer { close(descriptor) }
        guard flock(descriptor, LOCK_SH) == 0 else { throw ServeLockError("cannot lock \(path(in: directory)): errno \(errno)") }
        return try await body()
    }

    /// Whether some `serve` holds the lock now.
    static func isHeld(in directory: URL) -> Bool {
        let descriptor = open(path(in: directory), O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return false }  // no serve has run here
        defer { close(descriptor) }
        if flock(descriptor, LOCK_EX | LOCK_NB) == 0 {
            flock(descriptor, LOCK_UN)
            return false
        }
        return errno == EWOULDBLOCK
    }
}

struct ServeLockError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
