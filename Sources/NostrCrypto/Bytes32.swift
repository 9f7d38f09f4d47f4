/// Thirty-two bytes stored inline (no heap allocation): the shape of event ids, x-only public keys,
/// hashes and nonces.
public struct Bytes32: Hashable, Sendable, Comparable, CustomStringConvertible {
    @usableFromInline
    var storage: (UInt64, UInt64, UInt64, UInt64)

    /// All zero bytes.
    public static let zero = Bytes32(storage: (0, 0, 0, 0))

    @inlinable
    init(storage: (UInt64, UInt64, UInt64, UInt64)) { self.storage = storage }

    /// Copies exactly 32 bytes; `nil` for any other count.
    @inlinable
    public init?(_ bytes: some Collection<UInt8>) {
        guard bytes.count == 32 else { return nil }
        self.storage = (0, 0, 0, 0)
        withUnsafeMutableBytes(of: &storage) { raw in
            var i = 0
            for b in bytes {
                raw[i] = b
                i += 1
            }
        }
    }

    /// Copies exactly 32 bytes from raw memory; `nil` for any other count.
    @inlinable
    public init?(_ buffer: UnsafeRawBufferPointer) {
        guard buffer.count == 32 else { return nil }
        self.storage = (0, 0, 0, 0)
        withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: buffer) }
    }

    /// Builds the value by letting `body` write all 32 bytes.
    @inlinable
    public init(unsafeUninitialized body: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        self.storage = (0, 0, 0, 0)
        try withUnsafeMutableBytes(of: &storage, body)
    }

    /// Parses 64 hex characters (either case). Inlinable, so that callers elsewhere decode the string type
    /// they have without going through the generic entry point.
    @inlinable
    public init?(hex: some StringProtocol) {
        var ok = false
        self.storage = (0, 0, 0, 0)
        withUnsafeMutableBytes(of: &storage) { ok = Hex.decode(hex, into: $0) }
        if !ok { return nil }
    }

    /// Parses 64 hex characters (either case) given as UTF-8 code units, as a parser finds them in a message.
    public init?(hexUTF8 utf8: UnsafeBufferPointer<UInt8>) {
        var ok = false
        self.storage = (0, 0, 0, 0)
        withUnsafeMutableBytes(of: &storage) { ok = Hex.decode(utf8, into: $0) }
        if !ok { return nil }
    }

    /// Calls `body` with the 32 bytes.
    @inlinable
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try Swift.withUnsafeBytes(of: storage, body)
    }

    /// The bytes as an array.
    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    /// Lowercase hex, 64 characters.
    public var hex: String { withUnsafeBytes { Hex.encode($0) } }

    public var description: String { hex }

    @inlinable
    public static func == (lhs: Bytes32, rhs: Bytes32) -> Bool {
        lhs.storage.0 == rhs.storage.0 && lhs.storage.1 == rhs.storage.1
            && lhs.storage.2 == rhs.storage.2 && lhs.storage.3 == rhs.storage.3
    }

    @inlinable
    public func hash(into hasher: inout Hasher) {
        hasher.combine(storage.0)
        hasher.combine(storage.1)
        hasher.combine(storage.2)
        hasher.combine(storage.3)
    }

    /// Lexicographic byte order (as the hex strings compare).
    public static func < (lhs: Bytes32, rhs: Bytes32) -> Bool {
        lhs.withUnsafeBytes { a in
            rhs.withUnsafeBytes { b in
                for i in 0..<32 where a[i] != b[i] { return a[i] < b[i] }
                return false
            }
        }
    }
}
