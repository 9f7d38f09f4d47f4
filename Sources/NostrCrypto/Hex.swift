/// Lowercase hexadecimal encoding and strict decoding.
public enum Hex {
    static let digits: [UInt8] = Array("0123456789abcdef".utf8)

    /// Encodes bytes as lowercase hex.
    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        Array(bytes).withUnsafeBytes { encode($0) }
    }

    /// Encodes raw memory as lowercase hex.
    public static func encode(_ buffer: UnsafeRawBufferPointer) -> String {
        String(unsafeUninitializedCapacity: buffer.count * 2) { out in
            var i = 0
            for byte in buffer {
                out[i] = digits[Int(byte >> 4)]
                out[i + 1] = digits[Int(byte & 0x0f)]
                i += 2
            }
            return i
        }
    }

    @inlinable
    static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c &- UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c &- UInt8(ascii: "a") &+ 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c &- UInt8(ascii: "A") &+ 10
        default: return nil
        }
    }

    /// Decodes hex (either case) into bytes; `nil` for odd length or a non-hex character.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        var utf8 = Array(text.utf8)
        defer { zero(&utf8) }
        guard utf8.count % 2 == 0 else { return nil }
        var result = [UInt8]()
        result.reserveCapacity(utf8.count / 2)
        var i = 0
        while i < utf8.count {
            guard let hi = nibble(utf8[i]), let lo = nibble(utf8[i + 1]) else {
                zero(&result)
                return nil
            }
            result.append(hi << 4 | lo)
            i += 2
        }
        return result
    }

    /// Decodes exactly `count` bytes of hex into `destination`; returns false on any mismatch.
    @inlinable
    static func decode(_ text: some StringProtocol, into destination: UnsafeMutableRawBufferPointer) -> Bool {
        // Native strings are contiguous UTF-8: decode from the buffer (ids, keys and signatures of every event
        // read from a relay go through here).
        if let result = text.utf8.withContiguousStorageIfAvailable({ decode($0, into: destination) }) { return result }
        return decode(Array(text.utf8), into: destination)
    }

    /// Decodes exactly `destination.count` bytes from hex UTF-8 code units; false on any mismatch.
    @inlinable
    static func decode(_ utf8: some Collection<UInt8>, into destination: UnsafeMutableRawBufferPointer) -> Bool {
        var ok = true
        var index = 0
        var high: UInt8? = nil
        for c in utf8 {
            guard let n = nibble(c), index < destination.count else {
                ok = false
                break
            }
            if let h = high {
                destination[index] = h << 4 | n
                index += 1
                high = nil
            } else {
                high = n
            }
        }
        return ok && high == nil && index == destination.count
    }
}

/// Overwrites an array's bytes with zeros in a way the optimiser cannot remove.
@inlinable
public func zero(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { SecureMemory.zero($0) }
}
