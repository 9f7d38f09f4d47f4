internal import CSodium

/// Helpers for memory that holds secrets: zeroing the compiler cannot elide, constant-time comparison,
/// secure random bytes.
public enum SecureMemory {
    /// Zeroes `buffer` with `sodium_memzero`, which the optimiser cannot remove.
    public static func zero(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        sodium_memzero(base, buffer.count)
    }

    /// Compares two buffers in time that depends only on their length.
    public static func constantTimeEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        guard a.count == b.count else { return false }
        guard a.count > 0, let pa = a.baseAddress, let pb = b.baseAddress else { return true }
        return sodium_memcmp(pa, pb, a.count) == 0
    }

    /// Fills `buffer` from the operating system's CSPRNG (libsodium `randombytes_buf`).
    public static func fillRandom(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        Sodium.ensureInitialized()
        randombytes_buf(base, buffer.count)
    }

    /// Returns `count` random bytes from the CSPRNG.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        bytes.withUnsafeMutableBytes { fillRandom($0) }
        return bytes
    }
}

enum Sodium {
    /// `sodium_init` is idempotent and thread-safe; a lazily initialised global runs it once.
    private static let initialized: Bool = sodium_init() >= 0

    static func ensureInitialized() {
        precondition(initialized, "libsodium failed to initialise")
    }
}

/// A heap buffer for secret bytes: never copied, zeroed when the last reference goes away.
///
/// Copies of a value that holds a `SecureBuffer` share the one buffer; nothing else ever sees its address.
final class SecureBuffer: @unchecked Sendable {
    // Invariant for @unchecked Sendable: the bytes are written only inside `init` (before the
    // buffer is shared) and in `deinit` (after the last reference is gone); otherwise read-only.
    let pointer: UnsafeMutableRawBufferPointer

    init(count: Int, initializer: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 16)
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        do {
            try initializer(buffer)
        } catch {
            SecureMemory.zero(buffer)
            buffer.deallocate()
            throw error
        }
        pointer = buffer
    }

    deinit {
        SecureMemory.zero(pointer)
        pointer.deallocate()
    }

    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(pointer) }
}
