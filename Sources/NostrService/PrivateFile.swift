#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import NostrCrypto

/// Files only their owner may read, mode 0600 from their first byte. (`FileManager.createFile` writes a temporary
/// file with the umask's mode, renames it, and only then changes the mode, so for a moment a key file is
/// readable by everyone who may enter the directory.)
public enum PrivateFile {
    /// Writes `contents` to a new file at `path`, whole or not at all (a temporary file is linked into place),
    /// and flushes it to disk; fails if `path` exists.
    public static func create(atPath path: String, contents: [UInt8]) throws {
        let temporary = "\(path).\(Hex.encode(SecureMemory.randomBytes(8))).tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw failure("cannot create", temporary) }
        defer { unlink(temporary) }
        do {
            defer { close(descriptor) }
            var written = 0
            while written < contents.count {
                let count = contents.withUnsafeBytes { bytes -> Int in
                    guard let base = bytes.baseAddress else { return 0 }
                    return write(descriptor, base + written, bytes.count - written)
                }
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { throw failure("cannot write", temporary) }
                written += count
            }
            guard fsync(descriptor) == 0 else { throw failure("cannot flush", temporary) }
        }
        // link, unlike rename, refuses to replace a file that appeared meanwhile.
        guard link(temporary, path) == 0 else { throw failure("cannot create", path) }
    }

    /// Creates an empty file at `path` if there is none (for a database that will hold secrets).
    public static func createIfMissing(atPath path: String) throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw failure("cannot create", path) }
        close(descriptor)
    }

    private static func failure(_ what: String, _ path: String) -> KeyFileError {
        KeyFileError("\(what) \(path): \(String(cString: strerror(errno)))")
    }
}
